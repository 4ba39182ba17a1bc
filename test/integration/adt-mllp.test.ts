import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adtDriver, type MllpListener } from '../../drivers/mllp/index.js';
import { encodeFrame } from '../../src/codec/mllp.js';
import type { DriverContext } from '../../src/driver.js';
import { ErrorCode } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { CPR_SYSTEM } from '../../src/model/measurement.js';
import { AuditLog } from '../../src/registry/audit.js';
import { Bindings } from '../../src/registry/bindings.js';
import type { DeviceRecord } from '../../src/registry/types.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { AdtWard, adtMessage, runAdtSimulation, syntheticCpr } from '../../simulators/adt.js';
import { MllpTestClient } from '../helpers/mllp-client.js';

const BEDS = ['ICU/1/1', 'ICU/1/2', 'ICU/2/1', 'ICU/2/2', 'ICU/3/1'];
const T0 = Date.UTC(2026, 10, 20, 8, 0, 0);
const MIN = 60_000;

// One monitor per bed, bound from before any ADT time.
const DEVICES = new Map<string, DeviceRecord>(
  BEDS.map((bed, i) => [
    `mon-${i}`,
    {
      id: `mon-${i}`,
      kind: 'monitor',
      vendor: null,
      model: null,
      serialNumber: null,
      eui64: null,
      transport: null,
      location: null,
      status: 'active',
      expectedIntervalSeconds: 60,
      created: 0,
      updated: 0,
    },
  ]),
);

let dir: string;
let store: SqliteStore;
let bindings: Bindings;
let listener: MllpListener;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'mdi-adt-mllp-'));
  store = new SqliteStore({ file: join(dir, 'store.db') });
  const db = store.database();
  bindings = new Bindings(db, new AuditLog(db), { get: (id) => DEVICES.get(id) ?? null });
  BEDS.forEach((bed, i) => bindings.bind({ device: `mon-${i}`, bed, from: T0 - 60 * MIN }, 'config'));
  const ctx: DriverContext = {
    log: silentLogger(),
    timezone: 'Europe/Copenhagen',
    submit: (batch) => store.commit({ received: batch.received, source: batch.source, message: batch.message, observations: [], deadLetters: batch.rejects }),
  };
  listener = adtDriver.create({ host: '127.0.0.1', port: 0, maxMessageBytes: 64 * 1024, maxConnections: 10, bindings }, ctx) as MllpListener;
  await listener.start();
});
afterAll(async () => {
  await listener?.stop();
  await store?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('ADT over MLLP', () => {
  it('applies a pipelined ward feed in order, ACKs each AA with MSA-2 = MSH-10, and the bindings match the ward\'s ground truth', async () => {
    const ward = new AdtWard({ beds: BEDS, patients: 12, transferEveryMs: 7 * MIN, cancels: true, cancelRate: 0.3, seed: 42 });
    const events = Array.from({ length: 150 }, (_, i) => ward.next(T0 + i * MIN));
    const types = new Set(events.map((e) => e.spec.type));
    for (const t of ['A01', 'A02', 'A03', 'A11', 'A12', 'A13']) expect(types, t).toContain(t);

    const client = await MllpTestClient.connect(listener.port());
    // All in one write: pipelined, split wherever TCP likes.
    client.write(Buffer.concat(events.map((e) => encodeFrame(e.message))));
    const acks = await client.waitForAcks(events.length);
    expect(acks.map((a) => a.controlId)).toEqual(events.map((e) => e.spec.controlId));
    expect(acks.filter((a) => a.code !== 'AA').map((a) => a.errors)).toEqual([]);
    expect(acks.find((a) => a.type === 'ACK^A12^ACK')).toBeDefined();
    await client.close();

    // Every minute of the feed, every bed: the monitor's readings land on the ward's occupant.
    let checked = 0;
    for (let t = T0 - MIN; t < T0 + 151 * MIN; t += MIN / 2) {
      BEDS.forEach((bed, i) => {
        const expected = ward.occupantAt(bed, t);
        const got = bindings.attribution(`mon-${i}`, t).patient;
        expect(got?.value ?? null, `${bed} at +${(t - T0) / MIN} min`).toBe(expected);
        if (expected !== null) expect(got!.system).toBe(CPR_SYSTEM);
        checked++;
      });
    }
    expect(checked).toBeGreaterThan(1000);

    // Replaying the whole feed (a sender that resends after a reconnect) changes nothing.
    const before = JSON.stringify(bindings.occupancies({ limit: 100_000 }));
    const again = await MllpTestClient.connect(listener.port());
    again.write(Buffer.concat(events.map((e) => encodeFrame(e.message))));
    const replayAcks = await again.waitForAcks(events.length);
    expect(new Set(replayAcks.map((a) => a.code))).toEqual(new Set(['AA']));
    expect(JSON.stringify(bindings.occupancies({ limit: 100_000 }))).toBe(before);
    await again.close();
  });

  it('a bad message gets AR/AE with ERR and a dead letter, and the connection keeps working', async () => {
    const client = await MllpTestClient.connect(listener.port());
    const cpr = syntheticCpr(900);
    const good = (controlId: string, time: number) => adtMessage({ type: 'A01', cpr, bed: 'ICU/9/1', time, controlId });
    const oru = Buffer.from('MSH|^~\\&|GW|RH|||20261121101500||ORU^R01^ORU_R01|BAD-ORU|P|2.6\rPID|1||x\r');
    const noCpr = Buffer.from(adtMessage({ type: 'A01', cpr, bed: 'ICU/9/1', time: T0, controlId: 'BAD-PID' }).toString('utf8').replace(/\^\^\^CPR&1\.2\.208\.176\.1\.2&ISO\^NNDNK/, '^^^RH^MR'));
    const noBed = adtMessage({ type: 'A02', cpr, bed: null, time: T0, controlId: 'BAD-PV1' });
    const unknownCancel = adtMessage({ type: 'A11', cpr: syntheticCpr(901), bed: 'ICU/9/2', time: T0, controlId: 'BAD-A11' });

    const deadBefore = store.counts().deadLetters;
    for (const m of [good('OK-1', T0 + 200 * MIN), oru, noCpr, noBed, unknownCancel, good('OK-2', T0 + 201 * MIN)]) client.send(m);
    const acks = await client.waitForAcks(6);
    expect(acks.map((a) => [a.controlId, a.code])).toEqual([
      ['OK-1', 'AA'],
      ['BAD-ORU', 'AR'],
      ['BAD-PID', 'AE'],
      ['BAD-PV1', 'AE'],
      ['BAD-A11', 'AE'],
      ['OK-2', 'AA'],
    ]);
    expect(acks[1]!.errors[0]).toContain('200^Unsupported message type^HL70357');
    expect(acks[2]!.errors[0]).toContain('PID^1^3');
    expect(acks[3]!.errors[0]).toContain('PV1^1^3');
    expect(acks[4]!.errors[0]).toContain(ErrorCode.ADT_NOT_APPLICABLE);
    for (const a of acks) expect(a.raw.toString('latin1')).not.toContain(cpr);

    expect(store.counts().deadLetters).toBe(deadBefore + 4);
    const letters = store.listDeadLetters({ limit: 10 });
    expect(letters.map((l) => l.code).sort()).toEqual(
      [ErrorCode.ADT_NOT_APPLICABLE, ErrorCode.HL7_MISSING_FIELD, ErrorCode.HL7_MISSING_FIELD, ErrorCode.HL7_UNSUPPORTED_MESSAGE].sort(),
    );
    for (const l of letters) expect(l.reason).not.toContain(cpr);
    expect(listener.status().counters).toMatchObject({ rejected: 4 });
    await client.close();
  });

  it('an oversized frame gets AR naming its MSH-10 and a dead letter; the next message is applied', async () => {
    const client = await MllpTestClient.connect(listener.port());
    const big = Buffer.concat([adtMessage({ type: 'A01', cpr: syntheticCpr(950), bed: 'ICU/8/1', time: T0, controlId: 'HUGE-1' }), Buffer.from(`NTE|1||${'x'.repeat(70_000)}\r`)]);
    const deadBefore = store.counts().deadLetters;
    client.send(big);
    client.send(adtMessage({ type: 'A01', cpr: syntheticCpr(951), bed: 'ICU/8/2', time: T0, controlId: 'AFTER-HUGE' }));
    const acks = await client.waitForAcks(2);
    expect(acks.map((a) => [a.controlId, a.code])).toEqual([
      ['HUGE-1', 'AR'],
      ['AFTER-HUGE', 'AA'],
    ]);
    expect(acks[0]!.errors[0]).toContain(ErrorCode.MLLP_FRAME_TOO_LARGE);
    expect(store.counts().deadLetters).toBe(deadBefore + 1);
    expect(bindings.occupancies({ bed: 'ICU/8/1' })).toEqual([]);
    expect(bindings.occupancies({ bed: 'ICU/8/2' })).toHaveLength(1);
    expect(listener.status()).toMatchObject({ name: 'adt', kind: 'mllp', state: 'up' });
    await client.close();
  });

  it('the simulator plays a ward against the listener and every message is answered AA', async () => {
    const report = await runAdtSimulation({ host: '127.0.0.1', port: listener.port(), beds: ['SIM/1/1', 'SIM/1/2'], patients: 4, rate: 0, count: 40, cancels: true, seed: 7, transferEveryMs: 1 });
    expect(report).toMatchObject({ sent: 40, aa: 40, ae: 0, ar: 0, timeouts: 0, errors: 0 });
  });
});
