import type { IPoint, IWriteOptions } from 'influx';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/log.js';
import type { Observation } from '../../src/model/observation.js';
import {
  INFLUX_CURSOR,
  InfluxFeeder,
  classifyInfluxError,
  tagValue,
  toInfluxPoint,
  type InfluxClient,
  type InfluxFeederOptions,
} from '../../src/sinks/influx/feeder.js';
import { SqliteStore } from '../../src/store/sqlite.js';

const CPR = '0101701234';

function observation(overrides: Partial<Observation> = {}): Observation {
  return {
    time: Date.UTC(2026, 0, 2, 3, 4, 5, 678),
    tzOffset: 60,
    deviceId: 'mon-icu7-bed3',
    code: 147842,
    system: 'MDC',
    vendorCode: '147842',
    metric: 'MDC_ECG_HEART_RATE',
    value: 72.5,
    text: null,
    unit: '/min',
    loinc: '8867-4',
    flags: 0,
    containment: '1.1.1.147842',
    patient: { system: 'urn:oid:1.2.208.176.1.2', value: CPR },
    location: 'ICU7/3/1',
    ...overrides,
  };
}

describe('toInfluxPoint', () => {
  it('maps a reading to measurement vitals with device, metric, unit and location tags and the reading time in ms', () => {
    expect(toInfluxPoint(observation({ flags: 5 }))).toEqual({
      measurement: 'vitals',
      tags: { device: 'mon-icu7-bed3', metric: 'MDC_ECG_HEART_RATE', unit: '/min', location: 'ICU7/3/1' },
      fields: { value: 72.5, flags: 5, code: 147842 },
      timestamp: String(Date.UTC(2026, 0, 2, 3, 4, 5, 678)),
    });
  });

  it('never carries the patient (no CPR, no system, nothing derived)', () => {
    const text = JSON.stringify(toInfluxPoint(observation()));
    expect(text).not.toContain(CPR);
    expect(text).not.toContain('1.2.208.176.1.2');
    expect(text).not.toMatch(/patient|subject/i);
  });

  it('makes no point of a reading without a numeric value (NaN, ±Infinity)', () => {
    expect(toInfluxPoint(observation({ value: Number.NaN, text: 'LEAD OFF' }))).toBeNull();
    expect(toInfluxPoint(observation({ value: Number.POSITIVE_INFINITY }))).toBeNull();
    expect(toInfluxPoint(observation({ value: Number.NEGATIVE_INFINITY }))).toBeNull();
  });

  it('leaves out an absent location and MDC code, and keeps 0 values and time 0', () => {
    const point = toInfluxPoint(observation({ location: null, code: null, value: 0, time: 0 }))!;
    expect(point.tags).toEqual({ device: 'mon-icu7-bed3', metric: 'MDC_ECG_HEART_RATE', unit: '/min' });
    expect(point.fields).toEqual({ value: 0, flags: 0 });
    expect(point.timestamp).toBe('0');
  });

  it('cleans tag values that would break line protocol, and bounds them', () => {
    expect(tagValue('a\nb\\c\u0000d')).toBe('a_b_c_d');
    expect(tagValue('x'.repeat(1000))).toHaveLength(256);
    expect(tagValue('ward 7,room=3')).toBe('ward 7,room=3'); // the influx package escapes these
  });
});

describe('classifyInfluxError', () => {
  const requestError = (status: number, body: string) => Object.assign(new Error(`A ${status} error occurred: ${body}`), { res: { statusCode: status } });

  it('tells partial writes, refused requests, a missing database and retryable failures apart', () => {
    expect(classifyInfluxError(requestError(400, '{"error":"partial write: points beyond retention policy dropped=3"}'))).toMatchObject({ kind: 'partial', dropped: 3 });
    expect(classifyInfluxError(requestError(400, '{"error":"unable to parse"}'))).toMatchObject({ kind: 'refused' });
    expect(classifyInfluxError(requestError(413, 'too large'))).toMatchObject({ kind: 'refused' });
    expect(classifyInfluxError(requestError(404, '{"error":"database not found: \\"mdi\\""}'))).toMatchObject({ kind: 'no-database' });
    expect(classifyInfluxError(requestError(401, 'authorization failed'))).toMatchObject({ kind: 'retry', answered: true });
    expect(classifyInfluxError(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }))).toMatchObject({ kind: 'retry', answered: false });
  });
});

/** A client that fails on demand and refuses points whose value is negative (as a stand-in for a type conflict). */
class FakeInflux implements InfluxClient {
  written: IPoint[] = [];
  requests = 0;
  down = false;
  async createDatabase(): Promise<void> {
    if (this.down) throw Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
  }
  async writePoints(points: IPoint[], options?: IWriteOptions): Promise<void> {
    this.requests++;
    expect(options).toMatchObject({ database: 'mdi', precision: 'ms' });
    if (this.down) throw Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
    if (points.some((p) => (p.fields!.value as number) < 0)) throw Object.assign(new Error('A 400 Bad Request error occurred: {"error":"unable to parse"}'), { res: { statusCode: 400 } });
    this.written.push(...points);
  }
}

describe('InfluxFeeder (fake client)', () => {
  let store: SqliteStore;
  let feeder: InfluxFeeder | null = null;
  const options: InfluxFeederOptions = {
    url: 'http://influx.test:8086',
    database: 'mdi',
    createDatabase: true,
    batchSize: 100,
    pollIntervalMs: 10,
    retry: { initialDelayMs: 10, maxDelayMs: 20 },
  };

  let dir = '';
  function tempStore(): SqliteStore {
    dir = mkdtempSync(join(tmpdir(), 'mdi-influx-feeder-'));
    return new SqliteStore({ file: join(dir, 'mdi.sqlite'), synchronous: 'normal' });
  }

  afterEach(async () => {
    await feeder?.stop();
    feeder = null;
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function commit(values: number[]): Promise<void> {
    await store.commit({
      received: Date.now(),
      source: 'test',
      message: null,
      observations: values.map((value, i) => observation({ value, time: 1_700_000_000_000 + i })),
      deadLetters: [],
    });
  }

  async function until(check: () => boolean): Promise<void> {
    const deadline = Date.now() + 5000;
    while (!check()) {
      if (Date.now() > deadline) throw new Error('timed out');
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  it('moves the cursor only after a write, and catches up after an outage', async () => {
    store = tempStore();
    const client = new FakeInflux();
    client.down = true;
    feeder = new InfluxFeeder(options, client, store, createLogger({ level: 'silent' }));
    await commit([1, 2, 3]);
    feeder.start();
    await until(() => feeder!.status().consecutiveFailures >= 2);
    expect(store.cursor(INFLUX_CURSOR)).toBe(0);
    expect(feeder.status()).toMatchObject({ reachable: false, lag: 3, pointsWritten: 0 });
    expect(feeder.status().lastError?.message).toContain('ECONNREFUSED');
    client.down = false;
    await until(() => feeder!.status().lag === 0);
    expect(client.written.map((p) => p.fields!.value)).toEqual([1, 2, 3]);
    expect(feeder.status()).toMatchObject({ reachable: true, pointsWritten: 3, consecutiveFailures: 0, cursor: 3 });
  });

  it('creates the database again when influxd says it is missing, then writes the same batch', async () => {
    store = tempStore();
    const client = new FakeInflux();
    let exists = false;
    let creates = 0;
    client.createDatabase = async () => {
      creates++;
      exists = true;
    };
    const write = client.writePoints.bind(client);
    client.writePoints = async (points, options) => {
      if (!exists) throw Object.assign(new Error('A 404 Not Found error occurred: {"error":"database not found: \\"mdi\\""}'), { res: { statusCode: 404 } });
      return write(points, options);
    };
    feeder = new InfluxFeeder(options, client, store, createLogger({ level: 'silent' }));
    await commit([1, 2]);
    feeder.start();
    await until(() => feeder!.status().lag === 0);
    exists = false; // dropped by an operator while the gateway runs
    await commit([3]);
    await until(() => feeder!.status().lag === 0);
    expect(creates).toBe(2);
    expect(client.written.map((p) => p.fields!.value)).toEqual([1, 2, 3]);
  });

  it('on stop, lets the write in flight finish and moves the cursor only if it was acknowledged', async () => {
    store = tempStore();
    const client = new FakeInflux();
    let release: (() => void) | null = null;
    const write = client.writePoints.bind(client);
    client.writePoints = async (points, opts) => {
      await new Promise<void>((resolve) => (release = resolve));
      return write(points, opts);
    };
    feeder = new InfluxFeeder(options, client, store, createLogger({ level: 'silent' }));
    await commit([1, 2]);
    feeder.start();
    await until(() => release !== null); // the write is in flight
    const stopping = feeder.stop();
    await new Promise((r) => setTimeout(r, 20));
    expect(store.cursor(INFLUX_CURSOR)).toBe(0);
    release!();
    await stopping;
    expect(store.cursor(INFLUX_CURSOR)).toBe(2);
    expect(client.written).toHaveLength(2);
  });

  it('isolates a refused point by splitting the batch, skips readings without a value, and goes on', async () => {
    store = tempStore();
    const client = new FakeInflux();
    feeder = new InfluxFeeder(options, client, store, createLogger({ level: 'silent' }));
    await commit([1, 2, -1, 4, Number.NaN, 6, 7, 8]);
    feeder.start();
    await until(() => feeder!.status().lag === 0);
    expect(client.written.map((p) => p.fields!.value).sort()).toEqual([1, 2, 4, 6, 7, 8]);
    expect(feeder.status()).toMatchObject({ pointsWritten: 6, refusedPoints: 1, skippedNoValue: 1 });
  });
});
