/**
 * The InfluxDB feeder against a real influxd 1.x (Debian package `influxdb`; `.ci/run` installs
 * it), started per test on free ports with its own folders (test/helpers/influxd.ts).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { silentLogger } from '../../src/log.js';
import type { Observation } from '../../src/model/observation.js';
import { createInfluxFeeder, INFLUX_CURSOR, type InfluxFeeder, type InfluxFeederStatus } from '../../src/sinks/influx/index.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { getJson, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { INFLUXD_AVAILABLE, INFLUXD_SKIP_NOTE, startInfluxd, type InfluxQueryResult, type TestInfluxd } from '../helpers/influxd.js';
import { MllpTestClient } from '../helpers/mllp-client.js';
import { pcd01Message } from '../helpers/pcd01-message.js';

const CPR = '0101901234';
const T0 = Date.UTC(2026, 10, 21, 9, 0, 0, 0);

if (!INFLUXD_AVAILABLE) console.warn(INFLUXD_SKIP_NOTE);

function reading(i: number, overrides: Partial<Observation> = {}): Observation {
  return {
    time: T0 + i * 1000 + 7, // distinct, with milliseconds that must survive
    tzOffset: 60,
    deviceId: `mon-${i % 3}`,
    code: 147842,
    system: 'MDC',
    vendorCode: '147842',
    metric: 'MDC_ECG_HEART_RATE',
    value: i + 1, // 1..N: the sum proves each reading is there once
    text: null,
    unit: '/min',
    loinc: '8867-4',
    flags: i % 4,
    containment: '1.1.1.1',
    patient: { system: 'urn:oid:1.2.208.176.1.2', value: CPR },
    location: 'ICU7/3/1',
    ...overrides,
  };
}

/** Rows of the first series of the first statement as objects (column → value). */
function rows(result: InfluxQueryResult): Record<string, unknown>[] {
  const r = result.results[0]!;
  if (r.error) throw new Error(r.error);
  return (r.series ?? []).flatMap((s) => s.values.map((v) => ({ ...s.tags, ...Object.fromEntries(s.columns.map((c, i) => [c, v[i]])) })));
}

async function until(what: string, check: () => boolean | Promise<boolean>, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe.skipIf(!INFLUXD_AVAILABLE)('InfluxDB feeder (real influxd 1.x)', () => {
  let influxd: TestInfluxd;
  let dir: string;
  let store: SqliteStore;
  let feeder: InfluxFeeder | null = null;
  let gateway: TestGateway | null = null;

  beforeEach(async () => {
    influxd = await startInfluxd();
    dir = mkdtempSync(join(tmpdir(), 'mdi-influx-'));
    store = new SqliteStore({ file: join(dir, 'mdi.sqlite'), synchronous: 'normal' });
  });

  afterEach(async () => {
    await feeder?.stop();
    feeder = null;
    await gateway?.stop();
    gateway = null;
    await store.close();
    await influxd.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function startFeeder(database = 'mdi'): Promise<InfluxFeeder> {
    const config = parseConfig({
      store: { influx: { url: influxd.url, database, pollIntervalMs: 20, timeoutMs: 2000, batchSize: 250, retry: { initialDelayMs: 50, maxDelayMs: 200 } } },
    });
    feeder = await createInfluxFeeder({ settings: config.store.influx!, store, log: silentLogger() });
    feeder.start();
    return feeder;
  }

  async function commit(observations: Observation[]): Promise<void> {
    await store.commit({ received: Date.now(), source: 'test', message: null, observations, deadLetters: [] });
  }

  it('writes points that query back with their exact values, types, tags and times (ms)', async () => {
    await commit([
      reading(0, { value: 72.5, flags: 5 }),
      reading(1, { value: 0, code: null, metric: 'VENDOR:X1', location: null }),
      reading(2, { value: Number.NaN, text: 'LEAD OFF' }),
      reading(3, { value: -12.25, deviceId: 'mon 7,a=b', location: 'ward 7, room=3' }),
    ]);
    const f = await startFeeder();
    await until('the feeder to catch up', () => f.status().lag === 0);

    const points = rows(await influxd.query('SELECT * FROM vitals ORDER BY time', 'mdi'));
    expect(points).toEqual([
      { time: T0 + 7, device: 'mon-0', metric: 'MDC_ECG_HEART_RATE', unit: '/min', location: 'ICU7/3/1', value: 72.5, flags: 5, code: 147842 },
      { time: T0 + 1007, device: 'mon-1', metric: 'VENDOR:X1', unit: '/min', location: null, value: 0, flags: 1, code: null },
      { time: T0 + 3007, device: 'mon 7,a=b', metric: 'MDC_ECG_HEART_RATE', unit: '/min', location: 'ward 7, room=3', value: -12.25, flags: 3, code: 147842 },
    ]);
    const fields = rows(await influxd.query('SHOW FIELD KEYS FROM vitals', 'mdi'));
    expect(Object.fromEntries(fields.map((r) => [r.fieldKey, r.fieldType]))).toEqual({ value: 'float', flags: 'integer', code: 'integer' });
    expect(f.status()).toMatchObject<Partial<InfluxFeederStatus>>({
      reachable: true,
      pointsWritten: 3,
      skippedNoValue: 1,
      refusedPoints: 0,
      cursor: 4,
      lag: 0,
      lastError: null,
    });
  });

  it('loses nothing when influxd stops (and is killed) mid-stream while readings keep being committed', async () => {
    const f = await startFeeder();
    let n = 0;
    let committing = true;
    // The ingest side: one small commit every few ms, never waiting for InfluxDB.
    const producer = (async () => {
      while (committing) {
        await commit([reading(n), reading(n + 1)]);
        n += 2;
        await new Promise((r) => setTimeout(r, 3));
      }
    })();
    const count = async () => {
      const result = await influxd.query('SELECT count(value), sum(value) FROM vitals', 'mdi');
      if (result.results[0]?.error?.includes('database not found')) return { count: 0, sum: 0 }; // not created yet
      const r = rows(result);
      return { count: (r[0]?.count as number | undefined) ?? 0, sum: (r[0]?.sum as number | undefined) ?? 0 };
    };

    try {
      await until('first points', async () => (await count()).count > 50);
      await influxd.stop();
      const atStop = n;
      await until('a failed write', () => f.status().reachable === false && f.status().consecutiveFailures >= 2);
      await until('more readings committed while influxd is down', () => n > atStop + 100);
      expect(f.status().lag).toBeGreaterThan(0);
      expect(f.status().lastError).not.toBeNull();
      await influxd.start();
      await until('writes after the restart', () => f.status().reachable === true && f.status().consecutiveFailures === 0);

      // A crash of influxd: what it acknowledged is in its WAL; what it did not is written again.
      await influxd.kill();
      const atKill = n;
      await until('more readings committed after the kill', () => n > atKill + 100);
      await influxd.start();
    } finally {
      committing = false;
      await producer;
    }
    await until('the feeder to catch up', () => f.status().lag === 0);
    const total = await count();
    expect(total.count).toBe(n);
    expect(total.sum).toBe((n * (n + 1)) / 2);
    expect(store.cursor(INFLUX_CURSOR)).toBe(n);
    const perSecond = rows(await influxd.query(`SELECT count(value) FROM vitals WHERE time >= ${T0}ms GROUP BY time(1s) FILL(none)`, 'mdi'));
    expect(perSecond.every((r) => r.count === 1)).toBe(true); // every reading exactly once
    expect(perSecond).toHaveLength(n);
  }, 30_000);

  it('creates a missing database, and resumes from its cursor after a restart of the feeder', async () => {
    await commit([reading(0), reading(1)]);
    const first = await startFeeder('fresh_db');
    await until('two points', () => first.status().pointsWritten === 2);
    await first.stop();
    feeder = null;
    await commit([reading(2)]);
    const second = await startFeeder('fresh_db');
    await until('caught up', () => second.status().lag === 0);
    expect(second.status().pointsWritten).toBe(1); // only the new one: it resumed after reading 2's predecessor
    const r = rows(await influxd.query('SELECT count(value) FROM vitals', 'fresh_db'));
    expect(r[0]?.count).toBe(3);
  });

  it('doubles nothing on a replay (a crash between the acknowledged write and the cursor move)', async () => {
    await commit(Array.from({ length: 300 }, (_, i) => reading(i)));
    const first = await startFeeder();
    await until('caught up', () => first.status().lag === 0);
    await first.stop();
    feeder = null;
    store.setCursor(INFLUX_CURSOR, 0); // as if the cursor moves had been lost
    const second = await startFeeder();
    await until('caught up again', () => second.status().lag === 0);
    expect(second.status().pointsWritten).toBe(300);
    const r = rows(await influxd.query('SELECT count(value), sum(value) FROM vitals', 'mdi'));
    expect(r[0]).toMatchObject({ count: 300, sum: (300 * 301) / 2 });
  });

  it('writes into a retention policy; points older than it are refused for good, counted, and do not block the rest', async () => {
    await influxd.query('CREATE DATABASE mdi');
    await influxd.query('CREATE RETENTION POLICY one_hour ON mdi DURATION 1h REPLICATION 1');
    const now = Date.now();
    await commit([reading(0, { time: now - 3 * 3_600_000 }), reading(1, { time: now - 2 * 3_600_000 }), reading(2, { time: now - 1000 }), reading(3, { time: now })]);
    const config = parseConfig({ store: { influx: { url: influxd.url, retentionPolicy: 'one_hour', pollIntervalMs: 20, retry: { initialDelayMs: 20, maxDelayMs: 100 } } } });
    feeder = await createInfluxFeeder({ settings: config.store.influx!, store, log: silentLogger() });
    feeder.start();
    const f = feeder;
    await until('the feeder to pass the batch', () => f.status().lag === 0);
    expect(f.status()).toMatchObject({ pointsWritten: 2, refusedPoints: 2, cursor: 4, retentionPolicy: 'one_hour' });
    expect(f.status().lastError?.message).toMatch(/beyond retention policy/);
    expect(rows(await influxd.query('SELECT count(value) FROM mdi.one_hour.vitals', 'mdi'))[0]?.count).toBe(2);
  });

  it('is fed by a gateway with store.influx, and no patient identity reaches InfluxDB', async () => {
    await store.close();
    gateway = await startTestGateway({
      store: { influx: { url: influxd.url, database: 'gw', pollIntervalMs: 20, retry: { initialDelayMs: 50, maxDelayMs: 200 } } },
    });
    // Reopen the per-test store handle on a throwaway file so afterEach can close it.
    store = new SqliteStore({ file: join(dir, 'unused.sqlite') });
    const client = await MllpTestClient.connect(gateway.mllpPort);
    for (let i = 0; i < 5; i++) client.send(pcd01Message({ controlId: `msg-${i}`, cpr: CPR, time: `2026112110145${i}+0100` }));
    const acks = await client.waitForAcks(5);
    await client.close();
    expect(acks.every((a) => a.code === 'AA')).toBe(true);

    type Status = { influx: InfluxFeederStatus };
    await until('the gateway to feed InfluxDB', async () => (await getJson<Status>(`${gateway!.httpUrl}/api/status`)).body.influx.pointsWritten === 10);
    const status = (await getJson<Status>(`${gateway.httpUrl}/api/status`)).body.influx;
    expect(status).toMatchObject({ reachable: true, lag: 0, database: 'gw', lastError: null });

    const points = rows(await influxd.query('SELECT * FROM vitals', 'gw'));
    expect(points).toHaveLength(10);
    expect(new Set(points.map((p) => p.location))).toEqual(new Set(['ICU/12/1']));

    // Everything InfluxDB holds about the data: measurements, series keys, tag keys and values,
    // field keys and every point. None of it may carry the CPR, the name or the pseudonym.
    const pseudonym = gateway.gateway.storeForTests().pseudonym({ system: 'urn:oid:1.2.208.176.1.2', value: CPR });
    const everything = JSON.stringify(
      await Promise.all(
        ['SHOW MEASUREMENTS', 'SHOW SERIES', 'SHOW TAG KEYS', 'SHOW TAG VALUES WITH KEY =~ /.*/', 'SHOW FIELD KEYS', 'SELECT * FROM /.*/'].map((q) =>
          influxd.query(q, 'gw'),
        ),
      ),
    );
    expect(everything).toContain('MDC_ECG_HEART_RATE');
    for (const secret of [CPR, '010190', '1.2.208.176.1.2', 'Søren', 'Ærø', pseudonym]) expect(everything).not.toContain(secret);
    expect(rows(await influxd.query('SHOW MEASUREMENTS', 'gw')).map((r) => r.name)).toEqual(['vitals']);
  });
});

describe.skipIf(!INFLUXD_AVAILABLE)('InfluxDB feeder with authentication (real influxd 1.x)', () => {
  it('writes with a user and a password file; wrong credentials keep the cursor and show in the status', async () => {
    const influxd = await startInfluxd({ auth: { adminPassword: 'admin-pw' } });
    const dir = mkdtempSync(join(tmpdir(), 'mdi-influx-auth-'));
    const store = new SqliteStore({ file: join(dir, 'mdi.sqlite'), synchronous: 'normal' });
    const feeders: InfluxFeeder[] = [];
    try {
      await influxd.query('CREATE DATABASE mdi');
      await influxd.query("CREATE USER writer WITH PASSWORD 'w-secret'");
      await influxd.query('GRANT WRITE ON mdi TO writer');
      await store.commit({ received: Date.now(), source: 'test', message: null, observations: [reading(0), reading(1)], deadLetters: [] });
      const passwordFile = join(dir, 'influx-password');
      const start = async (password: string) => {
        writeFileSync(passwordFile, `${password}\n`); // a trailing newline, as `echo` leaves it
        const config = parseConfig({
          store: { influx: { url: influxd.url, username: 'writer', passwordFile, pollIntervalMs: 20, retry: { initialDelayMs: 20, maxDelayMs: 100 } } },
        });
        const f = await createInfluxFeeder({ settings: config.store.influx!, store, log: silentLogger() });
        feeders.push(f);
        f.start();
        return f;
      };

      const wrong = await start('not-it');
      await until('a refused write', () => wrong.status().consecutiveFailures >= 2);
      expect(wrong.status()).toMatchObject({ reachable: true, pointsWritten: 0, lag: 2, cursor: 0 });
      expect(wrong.status().lastError?.message).toMatch(/401|authorization failed/);
      expect(JSON.stringify(wrong.status())).not.toContain('not-it');
      await wrong.stop();

      // The writer may not CREATE DATABASE: that is logged and the writes go on.
      const right = await start('w-secret');
      await until('caught up', () => right.status().lag === 0);
      expect(right.status()).toMatchObject({ reachable: true, pointsWritten: 2 });
      expect(rows(await influxd.query('SELECT count(value) FROM vitals', 'mdi'))[0]?.count).toBe(2);
    } finally {
      for (const f of feeders) await f.stop();
      await store.close();
      await influxd.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('lets a gateway start while InfluxDB is down, and catches up once it is up', async () => {
    const influxd = await startInfluxd();
    await influxd.stop();
    const gateway = await startTestGateway({
      store: { influx: { url: influxd.url, pollIntervalMs: 20, timeoutMs: 1000, retry: { initialDelayMs: 20, maxDelayMs: 100 } } },
    });
    try {
      const client = await MllpTestClient.connect(gateway.mllpPort);
      client.send(pcd01Message({ controlId: 'down-1', cpr: CPR }));
      expect((await client.waitForAcks(1))[0]!.code).toBe('AA'); // the ACK does not wait for InfluxDB
      await client.close();
      type Status = { influx: InfluxFeederStatus };
      const status = async () => (await getJson<Status>(`${gateway.httpUrl}/api/status`)).body.influx;
      await until('a failed attempt', async () => (await status()).reachable === false);
      expect((await status()).lag).toBe(2);
      await influxd.start();
      await until('caught up', async () => (await status()).lag === 0);
      expect(await status()).toMatchObject({ reachable: true, pointsWritten: 2, consecutiveFailures: 0 });
    } finally {
      await gateway.stop();
      await influxd.close();
    }
  });
});

/** openssl makes the test CA and server certificate; without it the TLS test is skipped. */
function hasOpenssl(): boolean {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

describe.skipIf(!INFLUXD_AVAILABLE || !hasOpenssl())('InfluxDB feeder over https (real influxd 1.x)', () => {
  it('trusts the hospital CA from caFile, and refuses a server it cannot verify', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mdi-influx-tls-'));
    const run = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
    run('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=mdi test CA');
    run('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1');
    writeFileSync(join(dir, 'san.ext'), 'subjectAltName=IP:127.0.0.1\n');
    run('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '2', '-extfile', 'san.ext');
    const caFile = join(dir, 'ca.pem');
    const influxd = await startInfluxd({ tls: { certFile: join(dir, 'server.pem'), keyFile: join(dir, 'server.key'), ca: readFileSync(caFile, 'utf8') } });
    const store = new SqliteStore({ file: join(dir, 'mdi.sqlite'), synchronous: 'normal' });
    const feeders: InfluxFeeder[] = [];
    const start = async (extra: { caFile?: string }) => {
      const config = parseConfig({ store: { influx: { url: influxd.url, ...extra, pollIntervalMs: 20, retry: { initialDelayMs: 20, maxDelayMs: 100 } } } });
      const f = await createInfluxFeeder({ settings: config.store.influx!, store, log: silentLogger() });
      feeders.push(f);
      f.start();
      return f;
    };
    try {
      expect(influxd.url).toMatch(/^https:/);
      await store.commit({ received: Date.now(), source: 'test', message: null, observations: [reading(0)], deadLetters: [] });

      const untrusting = await start({});
      await until('a refused connection', () => untrusting.status().consecutiveFailures >= 2);
      expect(untrusting.status()).toMatchObject({ reachable: false, pointsWritten: 0, lag: 1 });
      expect(untrusting.status().lastError?.message).toMatch(/certificate/i);
      await untrusting.stop();

      const trusting = await start({ caFile });
      await until('caught up', () => trusting.status().lag === 0);
      expect(trusting.status()).toMatchObject({ reachable: true, pointsWritten: 1 });
      expect(rows(await influxd.query('SELECT count(value) FROM vitals', 'mdi'))[0]?.count).toBe(1);
    } finally {
      for (const f of feeders) await f.stop();
      await store.close();
      await influxd.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
