import { spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
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
    expect(again.database().prepare("SELECT observations FROM messages WHERE sender = 'A' AND control_id = 'M199'").pluck().get()).toBe(1);
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

describe('SqliteStore series', () => {
  it('keeps what a reading is once per kind, shared by devices, and reads every reading back whole', async () => {
    const { store } = open();
    const spo2 = { code: 150456, metric: 'MDC_PULS_OXIM_SAT_O2', vendorCode: '150456', unit: '%', loinc: '59408-5', containment: '1.3.1.1' };
    const readings = [obs(), obs({ deviceId: 'DEV2' }), obs({ ...spo2, value: 97 }), obs({ code: null, system: '99MNDRY', vendorCode: '1234', metric: '99MNDRY:1234', loinc: null, unit: '' })];
    await store.commit({ received: 1, source: 's', message: null, observations: readings, deadLetters: [] });
    await store.commit({ received: 2, source: 's', message: null, observations: [obs({ deviceId: 'DEV3', time: 5 })], deadLetters: [] });
    expect(store.database().prepare('SELECT count(*) FROM series').pluck().get()).toBe(3);
    const back = store.observationsAfter(0, 10).map((r) => r.observation);
    expect(back).toEqual([...readings, obs({ deviceId: 'DEV3', time: 5 })]);
  });

  it('a series made in a rolled-back group is made again, not referenced', async () => {
    const { store } = open();
    const fresh = obs({ code: 151562, metric: 'MDC_RESP_RATE', vendorCode: '151562' });
    const bad = obs({ deviceId: null as unknown as string });
    await Promise.allSettled([store.commit({ received: 1, source: 's', message: null, observations: [fresh, bad], deadLetters: [] })]);
    await store.commit({ received: 2, source: 's', message: null, observations: [fresh], deadLetters: [] });
    expect(store.queryObservations({ metric: 'MDC_RESP_RATE', limit: 10 }).map((r) => r.observation)).toEqual([fresh]);
  });

  it('upgrades a store written before the series table, keeping ids and every column', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'mdi-store-v1-')), 'mdi.sqlite');
    const v1 = new Database(file);
    v1.exec(`CREATE TABLE observations (id INTEGER PRIMARY KEY, time INTEGER NOT NULL, tz INTEGER NOT NULL, device TEXT NOT NULL,
      code INTEGER, system TEXT NOT NULL, vendor_code TEXT NOT NULL, metric TEXT NOT NULL, value REAL, text TEXT, unit TEXT NOT NULL,
      loinc TEXT, flags INTEGER NOT NULL, containment TEXT NOT NULL, patient_system TEXT, patient_value TEXT, location TEXT,
      message_id INTEGER, received INTEGER NOT NULL);
      CREATE INDEX observations_device_time ON observations (device, time);
      CREATE INDEX observations_time ON observations (time);
      CREATE TABLE cursors (name TEXT PRIMARY KEY, position INTEGER NOT NULL);
      INSERT INTO cursors VALUES ('fhir-outbox', 7);
      CREATE TABLE messages (id INTEGER PRIMARY KEY, received INTEGER NOT NULL, source TEXT NOT NULL, sender TEXT NOT NULL,
        control_id TEXT NOT NULL, digest TEXT NOT NULL, observations INTEGER NOT NULL, UNIQUE (sender, control_id, digest));
      INSERT INTO messages VALUES (1, 1, 'mllp', 'A', 'M1', 'd1', 1);`);
    const insert = v1.prepare('INSERT INTO observations VALUES (?, ?, 60, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, 1, 1)');
    insert.run(7, 1000, 'DEV1', 147842, 'MDC', '147842', 'MDC_ECG_HEART_RATE', 80, null, '/min', '8867-4', '1.1.1.1', 'urn:oid:1.2.208.176.1.2', '0101901234', 'ICU/1/1');
    insert.run(9, 2000, 'DEV2', null, '99MNDRY', 'x"y', '99MNDRY:x"y', null, 'Åben', '', null, '', null, null, null);
    v1.close();

    const { store } = open(file);
    expect(store.observationsAfter(0, 10).map((r) => [r.id, r.observation])).toEqual([
      [7, obs({ time: 1000 })],
      [9, obs({ time: 2000, deviceId: 'DEV2', code: null, system: '99MNDRY', vendorCode: 'x"y', metric: '99MNDRY:x"y', value: Number.NaN, text: 'Åben', unit: '', loinc: null, containment: '', patient: null, location: null })],
    ]);
    expect(store.cursor('fhir-outbox')).toBe(7);
    // The upgraded indexes serve the device path; new readings of an old series share its row.
    expect(store.queryObservations({ device: 'DEV2', limit: 10 })).toHaveLength(1);
    await store.commit({ received: 3, source: 's', message: null, observations: [obs({ time: 3000 })], deadLetters: [] });
    expect(store.lastObservationId()).toBe(10);
    expect(store.database().prepare('SELECT count(*) FROM series').pluck().get()).toBe(2);
    const indexes = store.database().prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name IN ('observations', 'messages')").pluck().all();
    expect(indexes.sort()).toEqual(['observations_device_time', 'observations_time']);
    // The resend of a message stored before the upgrade is still recognised.
    const resend = { received: 4, source: 'mllp', message: { sender: 'A', controlId: 'M1', digest: 'd1' }, observations: [obs({ time: 1000 })], deadLetters: [] };
    expect(await store.commit(resend)).toEqual({ stored: 0, deadLetters: 0, duplicate: true, previouslyStored: 1 });
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
