import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log.js';
import { CPR_SYSTEM, Quality, type PatientId } from '../../src/model/measurement.js';
import type { Observation } from '../../src/model/observation.js';
import { Reattributor } from '../../src/pipeline/reattribute.js';
import type { Attribution, AttributionChange, DeviceRecord } from '../../src/registry/types.js';
import { SqliteStore } from '../../src/store/sqlite.js';

const T0 = Date.UTC(2026, 10, 21, 9, 0, 0);
const ANNA: PatientId = { system: CPR_SYSTEM, value: '0101001111' };
const BO: PatientId = { system: CPR_SYSTEM, value: '0202002222' };
const EUI = '0012A0FFFE3B7C01';

const obs = (time: number, over: Partial<Observation> = {}): Observation => ({
  time,
  tzOffset: 60,
  deviceId: EUI,
  code: 147842,
  system: 'MDC',
  vendorCode: '147842',
  metric: 'MDC_ECG_HEART_RATE',
  value: 80,
  text: null,
  unit: '/min',
  loinc: '8867-4',
  flags: Quality.PATIENT_MISMATCH,
  containment: '1.1.1.1',
  patient: ANNA,
  location: 'ICU/1/1',
  ...over,
});

const record: DeviceRecord = {
  id: 'mon-icu-1',
  kind: 'monitor',
  vendor: null,
  model: null,
  serialNumber: null,
  eui64: EUI,
  transport: null,
  location: null,
  status: 'active',
  expectedIntervalSeconds: 60,
  created: 0,
  updated: 0,
};

/** Bo lies in ICU/1/1 from T0 + 1000 s on (the corrected truth); before that nobody is bound. */
const bindings = {
  attribution(id: string, time: number): Attribution {
    expect(id).toBe('mon-icu-1');
    return time >= T0 + 1_000_000
      ? { device: record, bed: 'ICU/1/1', patient: BO, validFrom: T0 + 1_000_000, validTo: Infinity }
      : { device: record, bed: null, patient: null, validFrom: -Infinity, validTo: T0 + 1_000_000 };
  },
};

const stores: SqliteStore[] = [];
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close();
});

function setup(file: string) {
  const store = new SqliteStore({ file });
  stores.push(store);
  const calls: AttributionChange[] = [];
  const r = new Reattributor({
    store,
    devices: { get: (id) => (id === record.id || id === EUI ? record : null) },
    bindings,
    charting: () => ({ reattributed: (c) => calls.push(c) }),
    log: silentLogger(),
  });
  return { store, r, calls };
}

describe('re-attribution of stored readings', () => {
  it('gives every reading of the interval the patient bound now, resumes after a crash, and tells charting once', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'mdi-reattr-')), 'mdi.sqlite');
    const first = setup(file);
    // 5000 readings one second apart, all charted to Anna; another device's readings too.
    const readings = Array.from({ length: 5000 }, (_, i) => obs(T0 + i * 1000));
    await first.store.commit({ received: T0, source: 't', message: null, observations: readings, deadLetters: [] });
    await first.store.commit({ received: T0, source: 't', message: null, observations: [obs(T0 + 2_000_000, { deviceId: 'OTHER' })], deadLetters: [] });
    first.r.enqueue({ device: 'mon-icu-1', from: T0 + 500_000, to: Infinity, reason: 'ADT A11' });
    // One slice, then the process dies.
    (first.r as unknown as { step(): boolean }).step();
    expect(first.calls).toEqual([]);
    await first.store.close();

    const second = setup(file);
    expect(second.r.status().pending).toBe(1);
    second.r.start();
    await second.r.drain();
    expect(second.r.status()).toEqual({ pending: 0, done: 1 });
    expect(second.calls).toEqual([{ device: EUI, from: T0 + 500_000, to: Number.MAX_SAFE_INTEGER, reason: 'ADT A11' }]);

    const rows = second.store.queryObservations({ device: EUI, limit: 10_000, order: 'asc' }).map((s) => s.observation);
    const at = (i: number) => rows[i]!;
    expect(at(499).patient).toEqual(ANNA); // before the interval: untouched
    expect(at(499).flags).toBe(Quality.PATIENT_MISMATCH);
    expect(at(500).patient).toBeNull(); // in it, bound to nobody: no patient, message location kept
    expect(at(500).location).toBe('ICU/1/1');
    // The message named someone else than the binding did: still true, still flagged.
    expect(at(500).flags).toBe(Quality.PATIENT_MISMATCH);
    expect(at(1000).patient).toEqual(BO);
    expect(at(4999).patient).toEqual(BO);
    const other = second.store.queryObservations({ device: 'OTHER', limit: 10 });
    expect(other[0]!.observation.patient).toEqual(ANNA);
    await second.r.stop();
  });

  it('waits for readings accepted before the change but not yet committed', async () => {
    const { store, r } = setup(join(mkdtempSync(join(tmpdir(), 'mdi-reattr-')), 'mdi.sqlite'));
    r.start();
    // Attributed to Anna and on its way to the writer thread when the binding is corrected.
    const committing = store.commit({ received: T0, source: 't', message: null, observations: [obs(T0 + 2_000_000)], deadLetters: [] });
    r.enqueue({ device: 'mon-icu-1', from: T0, to: Infinity, reason: 'ADT A02' });
    await committing;
    const deadline = Date.now() + 5000;
    while (r.status().done < 1 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 5));
    expect(store.queryObservations({ device: EUI, limit: 10 })[0]!.observation.patient).toEqual(BO);
    await r.stop();
  });

  it('does not call charting when no reading changed patient', async () => {
    const { store, r, calls } = setup(join(mkdtempSync(join(tmpdir(), 'mdi-reattr-')), 'mdi.sqlite'));
    await store.commit({ received: T0, source: 't', message: null, observations: [obs(T0 + 2_000_000, { patient: BO, flags: 0, location: 'ICU/1/1' })], deadLetters: [] });
    r.enqueue({ device: 'mon-icu-1', from: T0, to: T0 + 3_000_000, reason: 'test' });
    await r.drain();
    expect(calls).toEqual([]);
    expect(r.status().pending).toBe(0);
  });
});
