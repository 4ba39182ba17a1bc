import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { escapeLabelValue, renderDeviceMetrics } from '../../src/api/metrics.js';
import { DriverState, type Driver, type DriverStatus } from '../../src/driver.js';
import { createLogger, silentLogger, type Logger } from '../../src/log.js';
import { connectionResolver } from '../../src/registry/connection.js';
import { DeviceHealth, type ConnectionState, type DeviceHealthOptions, type HealthBatch } from '../../src/registry/health.js';
import { SqliteStore } from '../../src/store/sqlite.js';

const MIN = 60_000;
/** A minute boundary, so slot arithmetic in the tests is plain. */
const T0 = Date.UTC(2026, 10, 21, 10, 0, 0);

let dir: string;
let store: SqliteStore;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'mdi-health-'));
  store = new SqliteStore({ file: join(dir, 'mdi.sqlite') });
});

afterEach(async () => {
  await store.close();
  rmSync(dir, { recursive: true, force: true });
});

function capture(): { lines: () => Record<string, unknown>[]; log: Logger } {
  const raw: string[] = [];
  const destination = new Writable({
    write(chunk, _enc, done) {
      raw.push(String(chunk));
      done();
    },
  });
  return { lines: () => raw.map((l) => JSON.parse(l) as Record<string, unknown>), log: createLogger({ level: 'debug', destination }) };
}

interface Harness {
  health: DeviceHealth;
  clock: { now: number };
  bound: Set<string>;
  active: Set<string>;
  connection: Map<string, ConnectionState>;
}

function harness(overrides: Partial<DeviceHealthOptions> = {}): Harness {
  const clock = { now: T0 };
  const bound = new Set<string>();
  const active = new Set<string>();
  const connection = new Map<string, ConnectionState>();
  const health = new DeviceHealth({
    db: store.database(),
    log: silentLogger(),
    activeDevices: () => active,
    isBound: (id) => bound.has(id),
    defaultExpectedIntervalMs: 60_000,
    clockDriftLimitMs: 300_000,
    connectionOf: (source) => connection.get(source) ?? 'unknown',
    startedAt: T0,
    now: () => clock.now,
    ...overrides,
  });
  return { health, clock, bound, active, connection };
}

function batch(received: number, newestReadingTime: number | null, extra: Partial<HealthBatch> = {}): HealthBatch {
  return { received, newestReadingTime, readings: 2, rejects: 0, source: 'mllp 10.0.0.7:40000', ...extra };
}

describe('message rate (5 one-minute slots)', () => {
  it('counts messages per minute over the last five minutes and falls to 0 when the device stops', () => {
    const { health } = harness();
    for (let i = 0; i < 10; i++) health.noteBatch('m1', batch(T0 + i * 1000, null));
    for (let i = 0; i < 20; i++) health.noteBatch('m1', batch(T0 + 2 * MIN + i * 1000, null));
    // 30 messages since first heard 2.5 minutes ago.
    expect(health.ratePerMinute('m1', T0 + 2.5 * MIN)).toBe(12);
    // Six minutes on, the first minute has left the window: 20 messages over the last 4 minutes.
    expect(health.ratePerMinute('m1', T0 + 6 * MIN)).toBe(5);
    expect(health.ratePerMinute('m1', T0 + 10 * MIN)).toBe(0);
    expect(health.snapshot('m1', T0 + 10 * MIN)).toMatchObject({ messages: 30, readings: 60, errors: 0 });
  });

  it('does not inflate the rate of a device heard for a second only', () => {
    const { health } = harness();
    health.noteBatch('m1', batch(T0, null));
    health.noteBatch('m1', batch(T0 + 500, null));
    expect(health.ratePerMinute('m1', T0 + 1000)).toBe(2);
  });

  it('reuses a slot when its minute comes round again (old counts are not added)', () => {
    const { health } = harness();
    for (let i = 0; i < 50; i++) health.noteBatch('m1', batch(T0 + i, null));
    // Same slot index five minutes later.
    health.noteBatch('m1', batch(T0 + 5 * MIN, null));
    expect(health.ratePerMinute('m1', T0 + 5 * MIN + 1000)).toBe(0.25);
  });
});

describe('clock offset estimate', () => {
  const LIMIT = 300_000;

  /** A live device sending every 5 s with 0.2–3 s of delay; returns the time after the last batch. */
  function live(health: DeviceHealth, id: string, from: number, until: number, clockOffset: number): number {
    let t = from;
    let i = 0;
    while (t < until) {
      const delay = 200 + ((i * 7919) % 2800);
      health.noteBatch(id, batch(t + delay, t - clockOffset));
      t += 5000;
      i++;
    }
    return t;
  }

  it('is the live offset of a device with a good clock despite network delay', () => {
    const { health } = harness();
    live(health, 'm1', T0, T0 + 15 * MIN, 0);
    const offset = health.clockOffsetMs('m1')!;
    expect(offset).toBeGreaterThanOrEqual(200);
    expect(offset).toBeLessThan(1000);
    expect(health.clockDrifting('m1', LIMIT)).toBe(false);
  });

  it('is not moved by a monitor resending an hour of buffered readings after an outage', () => {
    const { health } = harness();
    const outageStart = live(health, 'm1', T0, T0 + 15 * MIN, 0);
    const back = outageStart + 60 * MIN;
    // 720 buffered messages (one per 5 s of the outage), resent oldest first within 40 s.
    for (let i = 0; i < 720; i++) {
      const arrival = back + Math.floor((i * 40_000) / 720);
      health.noteBatch('m1', batch(arrival, outageStart + i * 5000));
      expect(health.clockOffsetMs('m1')!).toBeLessThan(5000);
      expect(health.clockDrifting('m1', LIMIT)).toBe(false);
    }
    live(health, 'm1', back + 40_000, back + 20 * MIN, 0);
    expect(health.clockOffsetMs('m1')!).toBeLessThan(5000);
  });

  it('is not moved by one message delayed for minutes', () => {
    const { health } = harness();
    const t = live(health, 'm1', T0, T0 + 5 * MIN, 0);
    health.noteBatch('m1', batch(t + 8 * MIN, t));
    expect(health.clockDrifting('m1', LIMIT)).toBe(false);
  });

  it('shows a clock 10 minutes ahead at once, and one 10 minutes behind', () => {
    const { health } = harness();
    live(health, 'ahead', T0, T0 + 2 * MIN, -10 * MIN);
    live(health, 'behind', T0, T0 + 2 * MIN, 10 * MIN);
    expect(health.clockOffsetMs('ahead')! / 1000).toBeCloseTo(-600, -1);
    expect(health.clockOffsetMs('behind')! / 1000).toBeCloseTo(600, -1);
    expect(health.clockDrifting('ahead', LIMIT)).toBe(true);
    expect(health.clockDrifting('behind', LIMIT)).toBe(true);
    // The first batch of a device 10 minutes ahead is enough: delay cannot make a clock ahead.
    health.noteBatch('fresh', batch(T0 + 1000, T0 + 1000 + 10 * MIN));
    expect(health.clockDrifting('fresh', LIMIT)).toBe(true);
    expect(health.snapshot('behind', T0 + 2 * MIN)).toMatchObject({ clockDrifting: true });
    expect(health.snapshot('behind', T0 + 2 * MIN)!.clockOffsetSeconds!).toBeGreaterThan(600);
  });

  it('follows a clock that is set 10 minutes behind once it has been so for ten active minutes', () => {
    const { health } = harness();
    const t = live(health, 'm1', T0, T0 + 15 * MIN, 0);
    const t2 = live(health, 'm1', t, t + 5 * MIN, 10 * MIN);
    expect(health.clockDrifting('m1', LIMIT)).toBe(false);
    live(health, 'm1', t2, t2 + 6 * MIN, 10 * MIN);
    expect(health.clockDrifting('m1', LIMIT)).toBe(true);
  });

  it('is null for a device that never sent a reading time', () => {
    const { health } = harness();
    health.noteBatch('m1', batch(T0, null));
    expect(health.clockOffsetMs('m1')).toBeNull();
    expect(health.clockOffsetMs('nobody')).toBeNull();
    expect(health.clockDrifting('m1', LIMIT)).toBe(false);
  });
});

describe('silence', () => {
  it('raises one silent event for a bound device that goes quiet, and resumed when it sends again', () => {
    const { lines, log } = capture();
    const h = harness({ log });
    h.active.add('m1');
    h.bound.add('m1');
    h.health.noteBatch('m1', batch(T0, T0));
    h.health.check(T0 + 30_000);
    expect(h.health.eventLog({ limit: 10 })).toEqual([]);

    for (const s of [61, 70, 80, 120]) h.health.check(T0 + s * 1000);
    let events = h.health.eventLog({ limit: 10 });
    expect(events.map((e) => e.type)).toEqual(['silent']);
    expect(events[0]).toMatchObject({ device: 'm1', time: T0 + 61_000, detail: { expectedIntervalSeconds: 60, silentForSeconds: 61 } });
    expect(h.health.snapshot('m1', T0 + 120_000)).toMatchObject({ silent: true, silentSince: new Date(T0).toISOString() });

    h.health.noteBatch('m1', batch(T0 + 125_000, T0 + 125_000));
    h.health.check(T0 + 126_000);
    h.health.check(T0 + 130_000);
    events = h.health.eventLog({ limit: 10 });
    expect(events.map((e) => e.type)).toEqual(['resumed', 'silent']);
    expect(events[0]).toMatchObject({ time: T0 + 125_000, detail: { silentForSeconds: 125 } });
    expect(h.health.snapshot('m1', T0 + 130_000)).toMatchObject({ silent: false, silentSince: null });
    expect(h.health.eventTotals().get('silent')).toBe(1);
    expect(h.health.eventTotals().get('resumed')).toBe(1);

    const logged = lines().filter((l) => l.event === 'silent' || l.event === 'resumed');
    expect(logged.map((l) => [l.event, l.level, l.device])).toEqual([
      ['silent', 40, 'm1'],
      ['resumed', 30, 'm1'],
    ]);
  });

  it('counts silence from the gateway start for a bound device never heard, with its own interval', () => {
    const h = harness({ expectedIntervalMs: (id) => (id === 'slow' ? 10 * MIN : null) });
    for (const id of ['never', 'slow']) {
      h.active.add(id);
      h.bound.add(id);
    }
    h.health.check(T0 + 59_000);
    expect(h.health.eventLog({ limit: 10 })).toEqual([]);
    h.health.check(T0 + 61_000);
    expect(h.health.eventLog({ limit: 10 }).map((e) => [e.device, e.type])).toEqual([['never', 'silent']]);
    expect(h.health.snapshot('never', T0 + 61_000)).toMatchObject({ lastSeen: null, silent: true, silentSince: new Date(T0).toISOString() });
    h.health.check(T0 + 10 * MIN + 1);
    expect(h.health.eventLog({ device: 'slow', limit: 10 }).map((e) => e.type)).toEqual(['silent']);
  });

  it('gives a device bound after the start one interval from the binding before it is silent', () => {
    const h = harness();
    h.health.noteBatch('late', batch(T0, T0));
    h.health.check(T0 + 1000);
    h.active.add('late');
    h.bound.add('late');
    h.health.check(T0 + 10 * MIN);
    h.health.check(T0 + 10 * MIN + 59_000);
    expect(h.health.eventLog({ limit: 10 })).toEqual([]);
    h.health.check(T0 + 11 * MIN + 1000);
    const [silent] = h.health.eventLog({ limit: 10 });
    expect(silent).toMatchObject({ type: 'silent', device: 'late', detail: { lastSeen: new Date(T0).toISOString(), silentForSeconds: 61 } });
    expect(h.health.snapshot('late', T0 + 11 * MIN + 1000)!.silentSince).toBe(new Date(T0 + 10 * MIN).toISOString());
  });

  it('watches only devices that are active and bound now; unbinding clears silence without a resumed event', () => {
    const h = harness();
    h.active.add('unbound');
    h.bound.add('inactive');
    h.active.add('m1');
    h.bound.add('m1');
    h.health.noteBatch('unbound', batch(T0, T0));
    h.health.noteBatch('inactive', batch(T0, T0));
    h.health.noteBatch('m1', batch(T0, T0));
    h.health.check(T0 + 5 * MIN);
    expect(h.health.eventLog({ limit: 10 }).map((e) => e.device)).toEqual(['m1']);
    h.bound.delete('m1');
    h.health.check(T0 + 6 * MIN);
    expect(h.health.snapshot('m1', T0 + 6 * MIN)!.silent).toBe(false);
    expect(h.health.eventLog({ limit: 10 }).map((e) => e.type)).toEqual(['silent']);
  });
});

describe('forgetting', () => {
  it('forgets a device neither watched nor heard for a day, keeps watched ones', () => {
    const h = harness();
    h.active.add('bound');
    h.bound.add('bound');
    h.health.noteBatch('gone', batch(T0, T0));
    h.health.noteBatch('bound', batch(T0, T0));
    h.health.check(T0 + 23 * 60 * MIN);
    expect(h.health.all(T0 + 23 * 60 * MIN).map((s) => s.device)).toEqual(['bound', 'gone']);
    h.health.check(T0 + 25 * 60 * MIN);
    expect(h.health.all(T0 + 25 * 60 * MIN).map((s) => s.device)).toEqual(['bound']);
    expect(h.health.snapshot('gone')).toBeNull();
  });
});

describe('clock drift and connection events', () => {
  it('raises clock-drift once when the estimate crosses the limit', () => {
    const h = harness();
    h.health.noteBatch('m1', batch(T0, T0 - 20 * MIN));
    h.health.check(T0 + 1000);
    h.health.check(T0 + 2000);
    const events = h.health.eventLog({ type: 'clock-drift', limit: 10 });
    expect(events).toHaveLength(1);
    expect(events[0]!.detail).toMatchObject({ clockOffsetSeconds: 1200, limitSeconds: 300 });
  });

  it('raises connection-lost after two checks see it down, and connection-restored when it is back', () => {
    const h = harness();
    h.active.add('m1');
    h.bound.add('m1');
    const source = 'serial /dev/ttyUSB0';
    h.connection.set(source, 'connected');
    h.health.noteBatch('m1', batch(T0, T0, { source }));
    h.health.check(T0 + 1000);
    h.connection.set(source, 'disconnected');
    h.health.check(T0 + 2000);
    expect(h.health.eventLog({ limit: 10 })).toEqual([]);
    h.health.check(T0 + 3000);
    h.health.check(T0 + 4000);
    expect(h.health.eventLog({ limit: 10 }).map((e) => e.type)).toEqual(['connection-lost']);
    expect(h.health.snapshot('m1', T0 + 4000)!.connection).toBe('disconnected');
    h.connection.set(source, 'connected');
    h.health.check(T0 + 5000);
    expect(h.health.eventLog({ limit: 10 }).map((e) => e.type)).toEqual(['connection-restored', 'connection-lost']);
    expect(h.health.eventLog({ limit: 10 })[0]!.detail).toEqual({ source });
  });

  it('counts a connection that delivered data and closed between two checks as lost', () => {
    const h = harness();
    h.active.add('m1');
    h.bound.add('m1');
    const source = 'mllp 10.0.0.7:40000';
    h.connection.set(source, 'disconnected');
    h.health.check(T0 + 1000);
    h.health.check(T0 + 2000);
    // Never seen connected and never sent: nothing was lost.
    expect(h.health.eventLog({ limit: 10 })).toEqual([]);
    h.health.noteBatch('m1', batch(T0 + 2500, T0 + 2500, { source }));
    h.health.check(T0 + 3000);
    h.health.check(T0 + 4000);
    expect(h.health.eventLog({ limit: 10 }).map((e) => e.type)).toEqual(['connection-lost']);
  });

  it('keeps events across a reopen of the database, and seeds the event counters from them', async () => {
    const h = harness();
    h.active.add('m1');
    h.bound.add('m1');
    h.health.check(T0 + 2 * MIN);
    h.health.noteBatch('m1', batch(T0 + 3 * MIN, T0 + 3 * MIN));
    h.health.check(T0 + 3 * MIN + 1);
    await store.close();
    store = new SqliteStore({ file: join(dir, 'mdi.sqlite') });
    const again = harness();
    expect(again.health.eventLog({ device: 'm1', limit: 10 }).map((e) => e.type)).toEqual(['resumed', 'silent']);
    expect(again.health.eventLog({ since: T0 + 3 * MIN, limit: 10 }).map((e) => e.type)).toEqual(['resumed']);
    expect(again.health.eventLog({ type: 'silent', limit: 10 })).toHaveLength(1);
    expect(again.health.eventLog({ device: 'other', limit: 10 })).toEqual([]);
    expect(again.health.eventTotals().get('silent')).toBe(1);
    expect(again.health.eventTotals().get('resumed')).toBe(1);
  });
});

describe('connection resolver', () => {
  function stub(status: Partial<DriverStatus> & Record<string, unknown>, methods: Record<string, (arg: string) => boolean> = {}): Driver {
    const full = { name: 'x', kind: 'x', state: DriverState.UP, lastError: null, since: 0, counters: {}, ...status };
    return { name: full.name as string, start: async () => {}, stop: async () => {}, status: () => full as DriverStatus, ...methods };
  }

  it('asks the driver that owns the source', () => {
    const drivers = [
      stub({ name: 'mllp', kind: 'mllp' }, { isOpen: (s) => s === 'mllp 10.0.0.1:4000' }),
      stub({ name: 'serial:a', kind: 'serial', port: '/dev/ttyUSB0', link: 'open' }),
      stub({ name: 'serial:b', kind: 'serial', port: '/dev/ttyUSB1', link: 'closed' }),
      stub({ name: 'mqtt-broker', kind: 'mqtt-broker' }, { isConnected: (id) => id === 'pump-7' }),
    ];
    const of = connectionResolver(() => drivers);
    expect(of('mllp 10.0.0.1:4000')).toBe('connected');
    expect(of('mllp 10.0.0.1:4001')).toBe('disconnected');
    expect(of('serial /dev/ttyUSB0')).toBe('connected');
    expect(of('serial /dev/ttyUSB1')).toBe('disconnected');
    expect(of('serial /dev/ttyUSB9')).toBe('unknown');
    expect(of('mqtt-broker pump-7')).toBe('connected');
    expect(of('mqtt-broker pump-8')).toBe('disconnected');
    expect(of('mqtt mqtt://broker:1883 mdi/v1/devices/x/readings')).toBe('unknown');
  });
});

describe('metrics text', () => {
  /** A strict reader of the exposition format 0.0.4 (what Prometheus would refuse, this throws on). */
  function parse(text: string): { types: Map<string, string>; samples: { name: string; labels: Record<string, string>; value: number }[] } {
    expect(text.endsWith('\n')).toBe(true);
    const types = new Map<string, string>();
    const samples: { name: string; labels: Record<string, string>; value: number }[] = [];
    for (const line of text.slice(0, -1).split('\n')) {
      const type = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line);
      if (type) {
        expect(types.has(type[1]!)).toBe(false);
        types.set(type[1]!, type[2]!);
        continue;
      }
      if (/^# HELP [a-zA-Z_:][a-zA-Z0-9_:]* .*$/.test(line)) continue;
      const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*)\} (\S+)$/.exec(line);
      if (!m) throw new Error(`not an exposition line: ${JSON.stringify(line)}`);
      const labels: Record<string, string> = {};
      for (const l of m[2]!.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
        labels[l[1]!] = l[2]!.replace(/\\(.)/g, (_x, c: string) => (c === 'n' ? '\n' : c));
      }
      const value = Number(m[3]);
      expect(Number.isNaN(value)).toBe(false);
      expect(types.has(m[1]!)).toBe(true);
      samples.push({ name: m[1]!, labels, value });
    }
    return { types, samples };
  }

  it('is parse-able, escapes device ids and carries no patient label', () => {
    const h = harness();
    const odd = 'dev"quote\\back\nline';
    h.health.noteBatch(odd, batch(T0, T0 - 1500, { rejects: 1 }));
    h.health.noteBatch('m1', batch(T0, T0 - 20 * MIN, { source: 'serial /dev/ttyUSB0' }));
    h.connection.set('serial /dev/ttyUSB0', 'connected');
    h.active.add('never');
    h.bound.add('never');
    h.health.check(T0 + 2 * MIN);
    const text = renderDeviceMetrics(h.health.all(T0 + 2 * MIN), h.health.eventTotals());
    const { types, samples } = parse(text);
    expect(types.get('mdi_device_messages_total')).toBe('counter');
    expect(types.get('mdi_device_silent')).toBe('gauge');
    const of = (name: string, device: string) => samples.find((s) => s.name === name && s.labels.device === device)?.value;
    expect(of('mdi_device_messages_total', odd)).toBe(1);
    expect(of('mdi_device_errors_total', odd)).toBe(1);
    expect(of('mdi_device_last_seen_seconds', odd)).toBe(T0 / 1000);
    expect(of('mdi_device_clock_offset_seconds', odd)).toBe(1.5);
    expect(of('mdi_device_clock_offset_seconds', 'm1')).toBe(1200);
    expect(of('mdi_device_connected', 'm1')).toBe(1);
    expect(of('mdi_device_connected', odd)).toBeUndefined();
    expect(of('mdi_device_silent', 'never')).toBe(1);
    expect(of('mdi_device_last_seen_seconds', 'never')).toBeUndefined();
    const events = samples.filter((s) => s.name === 'mdi_device_events_total');
    expect(events.find((s) => s.labels.type === 'silent')?.value).toBe(1);
    expect(events.find((s) => s.labels.type === 'clock-drift')?.value).toBe(1);
    for (const s of samples) expect(Object.keys(s.labels).every((k) => k === 'device' || k === 'type')).toBe(true);
  });

  it('escapes label values as the format says', () => {
    expect(escapeLabelValue('a"b\\c\nd')).toBe('a\\"b\\\\c\\nd');
  });
});
