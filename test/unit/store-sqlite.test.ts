import { spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ErrorCode } from '../../src/errors.js';
import type { Observation } from '../../src/model/observation.js';
import { encodeGroup } from '../../src/store/commit-group.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { StoreWriter } from '../../src/store/writer.js';

const obs = (over: Partial<Observation> = {}): Observation => ({
  time: Date.UTC(2026, 10, 21, 9, 0, 0),
  tzOffset: 60,
  deviceId: 'DEV1',
  code: 147842,
  system: 'MDC',
  vendorCode: '147842',
  metric: 'MDC_ECG_HEART_RATE',
  value: 80,
  text: null,
  unit: '/min',
  loinc: '8867-4',
  flags: 0,
  containment: '1.1.1.1',
  patient: { system: 'urn:oid:1.2.208.176.1.2', value: '0101901234' },
  location: 'ICU/1/1',
  ...over,
});

const stores: SqliteStore[] = [];
function open(file = join(mkdtempSync(join(tmpdir(), 'mdi-store-')), 'mdi.sqlite')) {
  const store = new SqliteStore({ file });
  stores.push(store);
  return { store, file };
}
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close();
});

describe('SqliteStore', () => {
  it('never prunes the newest row, so a feeder cursor never sees its id given to another reading', async () => {
    const { store } = open();
    const commit = (o: Observation) => store.commit({ received: 1, source: 's', message: null, observations: [o], deadLetters: [] });
    expect(store.lastObservationId()).toBe(0);
    await commit(obs({ time: Date.UTC(2026, 0, 1) }));
    await commit(obs({ time: 0 })); // a device clock at 1970: older than any retention
    expect(store.lastObservationId()).toBe(2);
    store.setCursor('feeder', 2); // a feeder has already passed it
    expect(store.prune(Date.UTC(2025, 0, 1)).observations).toBe(0);
    await commit(obs({ time: Date.UTC(2026, 0, 2) }));
    expect(store.observationsAfter(store.cursor('feeder'), 10).map((r) => r.id)).toEqual([3]);
    expect(store.prune(Date.UTC(2025, 0, 1)).observations).toBe(1);
    expect(store.lastObservationId()).toBe(3);
  });

  it('commits observations and dead letters and reads them back', async () => {
    const { store } = open();
    const result = await store.commit({
      received: 1,
      source: 'test',
      message: { sender: 'A', controlId: 'M1', digest: 'd1' },
      observations: [obs(), obs({ metric: 'MDC_PULS_OXIM_SAT_O2', code: 150456, value: Number.NaN, text: 'x' })],
      deadLetters: [{ code: ErrorCode.HL7_BAD_VALUE, reason: 'NM value is not a number', location: 'OBX[3]-5', controlId: 'M1', raw: Buffer.from('OBX|3|NM|…|abc') }],
    });
    expect(result).toEqual({ stored: 2, deadLetters: 1, duplicate: false, previouslyStored: 0 });
    const rows = store.queryObservations({ limit: 10, order: 'asc' });
    expect(rows).toHaveLength(2);
    expect(rows[0]!.observation).toEqual(obs());
    expect(rows[1]!.observation.value).toBeNaN();
    const [dl] = store.listDeadLetters({ limit: 10 });
    expect(dl).toMatchObject({ code: ErrorCode.HL7_BAD_VALUE, location: 'OBX[3]-5', controlId: 'M1', size: 16 });
    expect(store.deadLetterRaw(dl!.id)!.toString()).toBe('OBX|3|NM|…|abc');
  });

  it('stores a retransmitted message once and says it was a duplicate', async () => {
    const { store } = open();
    const unit = { received: 1, source: 's', message: { sender: 'A', controlId: 'M1', digest: 'd1' }, observations: [obs()], deadLetters: [] };
    const [a, b] = await Promise.all([store.commit(unit), store.commit(unit)]);
    expect(a.duplicate).toBe(false);
    expect(b).toEqual({ stored: 0, deadLetters: 0, duplicate: true, previouslyStored: 1 });
    expect(store.counts().observations).toBe(1);
    // Another sender may use the same id.
    expect((await store.commit({ ...unit, message: { sender: 'B', controlId: 'M1', digest: 'd1' } })).duplicate).toBe(false);
    // A different message that reuses an id (a device whose counter restarted) is stored, not dropped.
    expect((await store.commit({ ...unit, message: { sender: 'A', controlId: 'M1', digest: 'd2' } })).duplicate).toBe(false);
    expect(store.counts().observations).toBe(3);
  });

  it('groups concurrent commits into one transaction and keeps them durable across reopen', async () => {
    const { store, file } = open();
    const commits = Array.from({ length: 200 }, (_, i) =>
      store.commit({ received: i, source: 's', message: { sender: 'A', controlId: `M${i}`, digest: 'd' }, observations: [obs({ time: i })], deadLetters: [] }),
    );
    const results = await Promise.all(commits);
    expect(results.every((r) => r.stored === 1)).toBe(true);
    await store.close();
    const { store: again } = open(file);
    expect(again.counts().observations).toBe(200);
    expect(again.messageCommitted({ sender: 'A', controlId: 'M199', digest: 'd' })).toEqual({ observations: 1 });
  });

  it('filters by device, metric (refid or code) and time window', async () => {
    const { store } = open();
    await store.commit({
      received: 1,
      source: 's',
      message: null,
      observations: [obs({ time: 1000 }), obs({ time: 2000, deviceId: 'DEV2' }), obs({ time: 3000, code: 150456, metric: 'MDC_PULS_OXIM_SAT_O2' })],
      deadLetters: [],
    });
    expect(store.queryObservations({ device: 'DEV2', limit: 10 }).map((r) => r.observation.time)).toEqual([2000]);
    expect(store.queryObservations({ metric: '150456', limit: 10 }).map((r) => r.observation.time)).toEqual([3000]);
    expect(store.queryObservations({ metric: 'MDC_ECG_HEART_RATE', limit: 10 }).map((r) => r.observation.time)).toEqual([2000, 1000]);
    expect(store.queryObservations({ since: 1500, until: 3000, limit: 10 }).map((r) => r.observation.time)).toEqual([2000]);
    expect(store.queryObservations({ limit: 1, order: 'asc' }).map((r) => r.observation.time)).toEqual([1000]);
  });

  it('gives stable pseudonyms that do not reveal the CPR number', () => {
    const { store } = open();
    const p = { system: 'urn:oid:1.2.208.176.1.2', value: '0101901234' };
    expect(store.pseudonym(p)).toBe(store.pseudonym({ ...p }));
    expect(store.pseudonym(p)).toMatch(/^pt-[0-9a-f]{16}$/);
    expect(store.pseudonym(p)).not.toBe(store.pseudonym({ ...p, value: '0101901235' }));
  });

  it('refuses commits after close with a clear code', async () => {
    const { store } = open();
    await store.close();
    await expect(store.commit({ received: 1, source: 's', message: null, observations: [], deadLetters: [] })).rejects.toMatchObject({
      code: ErrorCode.STORE_CLOSED,
    });
  });
});

describe('SqliteStore writer thread', () => {
  const unit = (i: number, o: Observation = obs({ time: i })) => ({
    received: i,
    source: 's',
    message: { sender: 'A', controlId: `M${i}`, digest: 'd' },
    observations: [o],
    deadLetters: [],
  });

  it('needs a file: an in-memory database cannot be shared with the writer thread', () => {
    expect(() => new SqliteStore({ file: ':memory:' })).toThrow(/needs a file/);
  });

  it('commits on its own thread while this thread writes to the same file', async () => {
    const { store } = open();
    const commits: Promise<unknown>[] = [];
    for (let round = 0; round < 20; round++) {
      for (let i = 0; i < 50; i++) commits.push(store.commit(unit(round * 50 + i)));
      // The event loop's connection writes while the writer holds or wants the lock.
      store.setCursor('feeder', round);
      await new Promise((r) => setImmediate(r));
    }
    await Promise.all(commits);
    expect(store.counts().observations).toBe(1000);
    expect(store.cursor('feeder')).toBe(19);
    // Ids are given in commit order without gaps: what feeders rely on.
    expect(store.lastObservationId()).toBe(1000);
  });

  it('exclusive() runs a write of this thread only while the writer holds no lock', async () => {
    const { store } = open();
    expect(await store.exclusive(() => 'at once')).toBe('at once'); // idle writer
    void store.commit(unit(1));
    await new Promise((r) => setImmediate(r)); // the group is with the writer now
    let ran = false;
    const seen = store.exclusive(() => {
      ran = true;
      store.setCursor('feeder', 1);
      return store.counts().observations;
    });
    expect(ran).toBe(false);
    expect(await seen).toBe(1); // after the group was committed, before any next one
    expect(store.cursor('feeder')).toBe(1);
    await expect(store.exclusive(() => JSON.parse('{'))).rejects.toThrow(SyntaxError);
  });

  it('settled() waits for everything submitted before it', async () => {
    const { store } = open();
    for (let i = 0; i < 100; i++) void store.commit(unit(i));
    expect(store.counts().observations).toBe(0);
    await store.settled();
    expect(store.counts().observations).toBe(100);
  });

  it('close() commits what was submitted before it', async () => {
    const { store, file } = open();
    const committed = Array.from({ length: 50 }, (_, i) => store.commit(unit(i)));
    await store.close();
    expect((await Promise.all(committed)).every((r) => r.stored === 1)).toBe(true);
    const { store: again } = open(file);
    expect(again.counts().observations).toBe(50);
  });

  it('close() ends the writer thread and lets the process exit on its own', () => {
    const file = join(mkdtempSync(join(tmpdir(), 'mdi-store-')), 'mdi.sqlite');
    const script = `
      const { SqliteStore } = await import(${JSON.stringify(new URL('../../src/store/sqlite.ts', import.meta.url).href)});
      const store = new SqliteStore({ file: ${JSON.stringify(file)} });
      await store.commit({ received: 1, source: 's', message: null, observations: [], deadLetters: [] });
      await store.close();
      console.log('closed');`;
    const run = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 20_000 });
    expect(run.stderr).toBe('');
    expect(run.stdout.trim()).toBe('closed');
    expect(run.status).toBe(0);
  });

  it('rolls a failed group back whole, answers every unit of it "not stored", and goes on', async () => {
    const { store } = open();
    // A reading the schema refuses (device NOT NULL) fails its whole group's transaction.
    const bad = obs({ deviceId: null as unknown as string });
    const group = [store.commit(unit(1)), store.commit(unit(2, bad))];
    for (const r of await Promise.allSettled(group)) {
      expect(r.status).toBe('rejected');
      expect((r as PromiseRejectedResult).reason).toMatchObject({ code: ErrorCode.STORE_FAILED });
    }
    expect(store.counts().observations).toBe(0);
    // The sender retries; the retry is not mistaken for a duplicate of the rolled-back unit.
    expect(await store.commit(unit(1))).toMatchObject({ stored: 1, duplicate: false });
  });
});

describe('StoreWriter', () => {
  it('fails a write when its thread cannot start, and starts a new thread for the next write', async () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'mdi-writer-')), 'not-yet');
    const file = join(dir, 'mdi.sqlite');
    const writer = new StoreWriter({ file, synchronous: 'normal' });
    const group = encodeGroup([{ received: 1, source: 's', message: null, observations: [obs()], deadLetters: [] }]);
    await expect(writer.write(group)).rejects.toThrow(/store writer thread (failed|exited)/);
    // The folder and schema appear (a store opens the file); the next write gets a new thread.
    const { store } = open(file);
    expect(await writer.write(group)).toEqual([1, 0, 0, 0]);
    await writer.close();
    expect(store.counts().observations).toBe(1);
  });
});

describe('SqliteStore feeder cursors', () => {
  it('hands out observations in commit order after a durable cursor', async () => {
    const { store, file } = open();
    await store.commit({ received: 1, source: 's', message: null, observations: [obs({ time: 3 }), obs({ time: 1 }), obs({ time: 2 })], deadLetters: [] });
    expect(store.cursor('fhir')).toBe(0);
    const first = store.observationsAfter(0, 2);
    expect(first.map((r) => r.observation.time)).toEqual([3, 1]);
    store.setCursor('fhir', first[1]!.id);
    await store.close();
    const { store: again } = open(file);
    expect(again.observationsAfter(again.cursor('fhir'), 10).map((r) => r.observation.time)).toEqual([2]);
    expect(again.cursor('influx')).toBe(0);
  });
});
