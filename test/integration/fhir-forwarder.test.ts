/**
 * Charting over real HTTP against the EPJ stand-in (a validating FHIR R4 server): what is
 * charted validates and matches the golden JSON, Devices are created once, a poison resource
 * does not block the queue, a whole-Bundle refusal is bisected, 429 Retry-After is honoured.
 *
 * Volumes are small on purpose: the stand-in validates every Observation against its profile
 * (a few ms each, one request at a time), and the default run must stay short on 2 cores.
 */
import { Writable } from 'node:stream';
import type { Bundle, Device, Observation as FhirObservation, OperationOutcome, Patient } from '@medplum/fhirtypes';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { loadValidator, startEpj, type EpjServer, type EpjValidator } from '../../simulators/epj/index.js';
import { createLogger, silentLogger, type Logger } from '../../src/log.js';
import { createFhirForwarder, FhirErrorCode, OUTBOX_CURSOR, OutboxState, type FhirCharting, type SubjectMode } from '../../src/sinks/fhir/index.js';
import type { SqliteStore } from '../../src/store/sqlite.js';
import { HEART_RATE, golden } from '../helpers/epj-golden.js';
import {
  allResources,
  commit,
  countByIdentifier,
  fhirSettings,
  PATIENTS,
  reading,
  startRecordingProxy,
  tempStore,
  waitFor,
  type RecordingProxy,
} from '../helpers/fhir-harness.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** Patients the stand-in knows (conditional references resolve to them). */
function patients(list = PATIENTS): Patient[] {
  return list.map((p, i) => ({ resourceType: 'Patient', id: `pat-${i}`, identifier: [{ system: p.system, value: p.value }] }));
}

async function epjWith(options: Parameters<typeof startEpj>[0] = {}): Promise<EpjServer> {
  const epj = await startEpj({ port: 0, preload: patients(), ...options });
  cleanups.push(() => epj.close());
  return epj;
}

async function chartingTo(
  baseUrl: string,
  settings = fhirSettings(),
  extra: { store?: SqliteStore; log?: Logger; subject?: SubjectMode } = {},
): Promise<{ charting: FhirCharting; store: SqliteStore }> {
  const store = extra.store ?? tempStore().store;
  const charting = createFhirForwarder({ settings, baseUrl, store, log: extra.log ?? silentLogger(), ...(extra.subject ? { subject: extra.subject } : {}) });
  await charting.start();
  cleanups.push(async () => {
    await charting.stop();
    if (!extra.store) await store.close();
  });
  return { charting, store };
}

/** Every stored reading read by the outbox, and nothing left to send. */
const settledAll = (charting: FhirCharting, store: SqliteStore) => () => {
  const s = charting.status();
  return store.cursor(OUTBOX_CURSOR) === store.counts().observations && s.depth === 0 && s.states.open === 0;
};

let validator: EpjValidator;
beforeAll(() => {
  validator = loadValidator();
});

describe('charting into the EPJ stand-in', () => {
  it('charts every kind of reading; what arrives validates and matches the golden JSON; Devices are created once', async () => {
    const epj = await epjWith();
    const proxy = await startRecordingProxy(epj.url);
    cleanups.push(() => proxy.close());
    let deviceCreates = 0;
    proxy.hook = ({ body }) => {
      deviceCreates += (body.toString().match(/"url":"Device"/g) ?? []).length;
      return undefined;
    };
    const settings = fhirSettings({ charting: { metrics: ['MDC_FLOW_FLUID_PUMP'] } });
    const { charting, store } = await chartingTo(proxy.url, settings);
    // A probe at start (GET metadata) tells whether the EPJ answers before anything is sent.
    await waitFor(() => charting.status().epj.reachable === true, 5_000, 'the start probe');
    expect(proxy.requests[0]).toMatchObject({ method: 'GET', path: '/metadata', status: 200 });
    const t = Date.UTC(2025, 2, 12, 9, 15);
    await commit(store, [
      reading('hr', { time: t }),
      reading('spo2', { time: t }),
      reading('rr', { time: t }),
      reading('temp', { time: t }),
      reading('sys', { time: t - 30_000 }),
      reading('dia', { time: t - 30_000 }),
      reading('mean', { time: t - 30_000 }),
      reading('artSys', { time: t }),
      reading('artDia', { time: t }),
      reading('pump', { time: t, deviceId: '001A010000000001' }),
      reading('pump', { time: t }), // not the first device of its kind, but the same monitor
    ]);
    await waitFor(settledAll(charting, store), 20_000, 'all charted');
    expect(charting.status().states.rejected).toBe(0);
    const stored = await allResources<FhirObservation>(epj.url, 'Observation');
    expect(stored).toHaveLength(8);
    for (const o of stored) {
      const verdict = validator.validate(o);
      expect(verdict.valid, JSON.stringify(verdict)).toBe(true);
    }
    // Same content as the golden example, apart from the documented differences.
    const hr = stored.find((o) => o.code.coding?.[0]?.code === '8867-4')!;
    const devices = await allResources<Device>(epj.url, 'Device');
    const monitor = devices.find((d) => d.identifier?.[0]?.value === '01-23-45-67-89-AB-CD-EF')!;
    const expected = golden(HEART_RATE) as FhirObservation;
    expected.meta = { ...expected.meta, profile: ['http://hl7.org/fhir/StructureDefinition/heartrate'] };
    delete expected.encounter;
    expected.subject = { reference: 'Patient/pat-0' };
    expected.device = { reference: `Device/${monitor.id}` };
    const { id: _id, meta, ...rest } = hr;
    expect({ ...rest, meta: { profile: meta?.profile, security: meta?.security } }).toEqual(expected);
    expect(devices).toHaveLength(2);
    expect(deviceCreates).toBe(2);

    // More readings, and a restart: the Devices are remembered (created once).
    await charting.stop();
    const again = await chartingTo(proxy.url, settings, { store });
    await commit(store, [reading('hr', { time: t + 60_000 }), reading('pump', { time: t + 60_000, deviceId: '001A010000000001' })]);
    await waitFor(settledAll(again.charting, store), 20_000, 'second round charted');
    expect(await allResources<Device>(epj.url, 'Device')).toHaveLength(2);
    expect(deviceCreates).toBe(2);
    expect(await allResources<FhirObservation>(epj.url, 'Observation')).toHaveLength(10);
  }, 60_000);

  it('a poison resource becomes a dead letter with the EPJ OperationOutcome; the queue behind it moves on; no CPR in logs', async () => {
    const epj = await epjWith({ preload: patients(PATIENTS.slice(0, 3)) }); // PATIENTS[3] is unknown to the EPJ
    const lines: string[] = [];
    const log = createLogger({
      level: 'debug',
      destination: new Writable({
        write(chunk: Buffer, _enc, done) {
          lines.push(chunk.toString());
          done();
        },
      }),
    });
    const { charting, store } = await chartingTo(epj.url, fhirSettings({ batchSize: 10 }), { log });
    const t = Date.now() - 3_600_000;
    const poison = reading('hr', { time: t, patient: PATIENTS[3]!, deviceId: 'AAAAAAAAAAAAAAAA' });
    const others = Array.from({ length: 24 }, (_, i) => reading(i % 2 ? 'spo2' : 'hr', { time: t + i * 1000, patient: PATIENTS[i % 3]! }));
    await commit(store, [poison, ...others]);
    await waitFor(settledAll(charting, store), 20_000, 'queue drained');
    const status = charting.status();
    expect(status.states.rejected).toBe(1);
    expect(status.confirmedSinceStart).toBe(24);
    const [dead] = charting.entries(OutboxState.REJECTED, 10);
    expect(dead).toMatchObject({ httpStatus: 404, errorCode: FhirErrorCode.REJECTED, observations: [1] });
    expect((dead!.outcome as OperationOutcome).issue?.[0]?.code).toBe('not-found');
    expect(charting.deliveryState(1)).toMatchObject({ state: 'rejected' });
    expect(charting.deliveryState(2)).toMatchObject({ state: 'confirmed' });

    // rejectAll: every resource refused while it lasts; later ones chart normally.
    await epj.setFaults({ rejectAll: true });
    await commit(store, [reading('rr', { time: t + 100_000 })]);
    await waitFor(() => charting.status().states.rejected === 2, 10_000, 'refused under rejectAll');
    await epj.resetFaults();
    await commit(store, [reading('rr', { time: t + 200_000 })]);
    await waitFor(() => charting.status().confirmedSinceStart === 25, 10_000, 'charted after rejectAll');
    expect(charting.entries(OutboxState.REJECTED, 10)[0]!.httpStatus).toBe(422);

    const text = lines.join('') + JSON.stringify(charting.entries(undefined, 100)) + JSON.stringify(charting.status());
    expect(lines.some((l) => l.includes('chart entry rejected'))).toBe(true);
    for (const p of PATIENTS) expect(text).not.toContain(p.value);
  }, 60_000);

  it('bisects a Bundle that the server refuses as a whole, down to the one bad entry', async () => {
    const epj = await epjWith();
    const proxy = await startRecordingProxy(epj.url);
    cleanups.push(() => proxy.close());
    const { charting, store } = await chartingTo(proxy.url, fhirSettings({ batchSize: 16 }));
    const t = Date.now() - 60_000;
    const readings = Array.from({ length: 16 }, (_, i) => reading('hr', { time: t + i * 1000, value: 60 + i }));
    const poisonValue = 60 + 11;
    // A transaction-minded server: one bad entry fails the whole Bundle with 400.
    proxy.hook = ({ method, path, body }) => {
      if (method !== 'POST' || path !== '') return undefined;
      const bundle = JSON.parse(body.toString()) as Bundle;
      const bad = bundle.entry?.some((e) => (e.resource as FhirObservation | undefined)?.valueQuantity?.value === poisonValue);
      if (!bad) return undefined;
      return { status: 400, body: { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'invalid', diagnostics: 'one entry is bad' }] } };
    };
    await commit(store, readings);
    await waitFor(settledAll(charting, store), 20_000, 'queue drained');
    expect(charting.status().confirmedSinceStart).toBe(15);
    const [dead] = charting.entries(OutboxState.REJECTED, 10);
    expect(dead).toMatchObject({ httpStatus: 400, observations: [12] });
    // 16 → 8+8 → 4+4 → 2+2 → 1+1, plus the Device create: a handful of requests, not one per entry.
    expect(proxy.requests.length).toBeLessThanOrEqual(12);
    expect((await allResources<FhirObservation>(epj.url, 'Observation')).length).toBe(15);
  }, 60_000);

  it('honours 429 Retry-After', async () => {
    const epj = await epjWith();
    const proxy = await startRecordingProxy(epj.url);
    cleanups.push(() => proxy.close());
    const { charting, store } = await chartingTo(proxy.url);
    await waitFor(() => charting.status().epj.reachable === true, 5_000, 'the start probe');
    await epj.setFaults({ throttle: 2 });
    await commit(store, [reading('hr', { time: Date.now() - 1000 }), reading('spo2', { time: Date.now() - 1000 })]);
    await waitFor(() => proxy.requests.some((r) => r.status === 429), 10_000, 'a 429');
    await epj.resetFaults();
    await waitFor(settledAll(charting, store), 20_000, 'charted after the throttle');
    const first429 = proxy.requests.find((r) => r.status === 429)!;
    const next = proxy.requests.find((r) => r.at > first429.at)!;
    const waited = next.at - first429.at;
    expect(waited).toBeGreaterThanOrEqual(1950);
    expect(waited).toBeLessThan(4000);
    expect(proxy.requests.filter((r) => r.status === 429)).toHaveLength(1);
    expect(charting.status().lastError).toMatchObject({ code: FhirErrorCode.UNAVAILABLE, status: 429 });
    expect(countByIdentifier(await allResources<FhirObservation>(epj.url, 'Observation')).size).toBe(2);
  }, 30_000);

  it('a throttled EPJ at start: the start probe\'s Retry-After holds the first Bundle too', async () => {
    const epj = await epjWith({ faults: { throttle: 1 } });
    const proxy = await startRecordingProxy(epj.url);
    cleanups.push(() => proxy.close());
    const { charting, store } = await chartingTo(proxy.url);
    await commit(store, [reading('hr', { time: Date.now() - 1000 })]);
    await waitFor(() => proxy.requests.length >= 1, 5_000, 'the probe');
    await epj.resetFaults();
    await waitFor(settledAll(charting, store), 10_000, 'charted');
    const [probe, first] = proxy.requests;
    expect(probe).toMatchObject({ path: '/metadata', status: 429 });
    expect(first!.at - probe!.at).toBeGreaterThanOrEqual(950);
  }, 30_000);

  it('resends after lost answers without duplicating (dropped connections, conditional create)', async () => {
    const epj = await epjWith({ seed: 7 });
    const { charting, store } = await chartingTo(epj.url, fhirSettings({ batchSize: 5 }));
    await epj.setFaults({ dropRate: 0.5 });
    const t = Date.now() - 60_000;
    await commit(store, Array.from({ length: 30 }, (_, i) => reading(i % 2 ? 'hr' : 'rr', { time: t + i * 1000 })));
    await waitFor(settledAll(charting, store), 30_000, 'charted despite drops');
    await epj.resetFaults(); // our own read-back must not be dropped
    const stats = epj.stats();
    expect(stats.dropped).toBeGreaterThan(0);
    expect(stats.duplicatesAvoided).toBeGreaterThan(0);
    const counts = countByIdentifier(await allResources<FhirObservation>(epj.url, 'Observation'));
    expect(counts.size).toBe(30);
    expect([...counts.values()].every((n) => n === 1)).toBe(true);
  }, 60_000);

  it('resolves the subject by a POST _search when configured (no CPR in the URL)', async () => {
    const epj = await epjWith();
    const proxy = await startRecordingProxy(epj.url);
    cleanups.push(() => proxy.close());
    const { charting, store } = await chartingTo(proxy.url, fhirSettings({ subject: 'resolved' }));
    await commit(store, [reading('hr', { time: Date.now() - 5000, patient: PATIENTS[2]! }), reading('hr', { time: Date.now() - 4000, patient: PATIENTS[3]!, deviceId: 'FFFFFFFFFFFFFFFF' })]);
    await waitFor(settledAll(charting, store), 20_000, 'charted');
    const [stored] = await allResources<FhirObservation>(epj.url, 'Observation');
    expect(stored!.subject).toEqual({ reference: 'Patient/pat-2' });
    expect(proxy.requests.some((r) => r.path === '/Patient/_search')).toBe(true);
    for (const p of PATIENTS) expect(proxy.requests.map((r) => r.path).join()).not.toContain(p.value);
  }, 30_000);
});
