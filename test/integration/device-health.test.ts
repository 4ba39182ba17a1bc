/**
 * Device health end to end: a real MLLP listener and a real HTTP API over a temp SQLite store.
 * A PCD-01 sender connects, sends, goes away and comes back; the API, the events and /metrics
 * must follow: connection connected → disconnected, silent once, connection-lost, then resumed
 * and connection-restored.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import mqtt from 'mqtt';
import { MllpListener } from '../../drivers/mllp/listener.js';
import { hashSecret } from '../../drivers/mqtt/auth.js';
import { MqttBrokerDriver } from '../../drivers/mqtt/broker.js';
import { readingsTopic } from '../../drivers/mqtt/payload.js';
import { createApi, type Api } from '../../src/api/server.js';
import { silentLogger } from '../../src/log.js';
import { loadMappings } from '../../src/mappings.js';
import { Attributor } from '../../src/pipeline/attribute.js';
import { Ingest } from '../../src/pipeline/ingest.js';
import { Normalizer } from '../../src/pipeline/normalize.js';
import { connectionResolver } from '../../src/registry/connection.js';
import { DeviceHealth } from '../../src/registry/health.js';
import { DeviceStatus, type Attribution, type DeviceRecord } from '../../src/registry/types.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { hashToken } from '../../src/registry/tokens.js';
import { MllpTestClient } from '../helpers/mllp-client.js';
import { pcd01Message } from '../helpers/pcd01-message.js';

const DEVICE = '0012A0FFFE3B7C01';
const CPR = '0101901234';
const EXPECTED_MS = 1500;

/** HL7 TS of `ms` in UTC (second resolution, as monitors send it). */
function hl7Time(ms: number): string {
  const d = new Date(ms);
  const p = (n: number, w = 2) => String(n).padStart(w, '0');
  return `${d.getUTCFullYear()}${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}${p(d.getUTCHours())}${p(d.getUTCMinutes())}${p(d.getUTCSeconds())}+0000`;
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('device health over HTTP with a real MLLP sender', () => {
  let dir: string;
  let store: SqliteStore;
  let health: DeviceHealth;
  let listener: MllpListener;
  let broker: MqttBrokerDriver;
  let api: Api;
  let base: string;

  const record: DeviceRecord = {
    id: DEVICE,
    kind: 'monitor',
    vendor: null,
    model: null,
    serialNumber: null,
    eui64: DEVICE,
    transport: { type: 'mllp', sender: null },
    location: 'ICU/12/1',
    status: DeviceStatus.ACTIVE,
    expectedIntervalSeconds: EXPECTED_MS / 1000,
    created: 0,
    updated: 0,
  };
  const bound: Attribution = { device: record, bed: 'ICU/12/1', patient: null, validFrom: 0, validTo: Number.MAX_SAFE_INTEGER };

  async function get(path: string): Promise<{ status: number; text: string; type: string }> {
    const res = await fetch(`${base}${path}`);
    return { status: res.status, text: await res.text(), type: res.headers.get('content-type') ?? '' };
  }
  async function json<T>(path: string): Promise<T> {
    const res = await get(path);
    expect(res.status, res.text).toBe(200);
    return JSON.parse(res.text) as T;
  }
  async function events(query: string): Promise<{ type: string; device: string; time: string; detail: Record<string, unknown> }[]> {
    return (await json<{ items: { type: string; device: string; time: string; detail: Record<string, unknown> }[] }>(`/api/events?${query}`)).items;
  }
  async function send(controlId: string): Promise<MllpTestClient> {
    const client = await MllpTestClient.connect(listener.port());
    client.send(pcd01Message({ controlId, device: DEVICE, cpr: CPR, time: hl7Time(Date.now()) }));
    const [ack] = await client.waitForAcks(1);
    expect(ack!.code).toBe('AA');
    return client;
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'mdi-health-it-'));
    store = new SqliteStore({ file: join(dir, 'mdi.sqlite') });
    const log = silentLogger();
    let drivers: (MllpListener | MqttBrokerDriver)[] = [];
    health = new DeviceHealth({
      db: store.database(),
      log,
      activeDevices: () => [DEVICE],
      isBound: (id) => id === DEVICE,
      expectedIntervalMs: (id) => (id === DEVICE ? record.expectedIntervalSeconds * 1000 : null),
      defaultExpectedIntervalMs: 60_000,
      clockDriftLimitMs: 300_000,
      connectionOf: connectionResolver(() => drivers),
      checkIntervalMs: 100,
    });
    const attributor = new Attributor(
      {
        devices: { get: (id) => (id === DEVICE ? record : null) },
        bindings: { attribution: () => bound },
        clockOffsetMs: (id) => health.clockOffsetMs(id),
      },
      { unregistered: 'store', clockDriftLimitMs: 300_000 },
    );
    const ingest = new Ingest(new Normalizer(loadMappings()), store, {
      attributor,
      noteUnregistered: () => {},
      noteBatch: (id, stats) => health.noteBatch(id, stats),
    });
    listener = new MllpListener(
      { host: '127.0.0.1', port: 0, maxMessageBytes: 1 << 20, maxConnections: 10, maxInFlight: 8, idleTimeoutMs: 0 },
      ingest.contextFor(log, 'Europe/Copenhagen'),
    );
    broker = new MqttBrokerDriver(
      {
        port: 0,
        host: '127.0.0.1',
        // Low scrypt cost: this test is about connection state, not password strength.
        devices: [{ deviceId: 'pump-1', passwordHash: await hashSecret('pump secret', { N: 1024, r: 8, p: 1 }) }],
      },
      ingest.contextFor(log, 'Europe/Copenhagen'),
    );
    drivers = [listener, broker];
    await listener.start();
    await broker.start();
    api = createApi({ store, log, ready: () => true, drivers: () => [listener.status()], counters: () => ingest.counters(), health });
    await api.listen({ port: 0, host: '127.0.0.1' });
    const address = api.server.address();
    base = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
  });

  afterAll(async () => {
    health?.stop();
    await listener?.stop();
    await broker?.stop();
    await api?.close();
    await store?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('follows a sender through connect, silence, disconnect and return', async () => {
    const client = await send('H1');
    health.start();

    const snap = await json<Record<string, unknown>>(`/api/devices/${DEVICE}/health`);
    expect(snap).toMatchObject({ device: DEVICE, messages: 1, readings: 2, errors: 0, connection: 'connected', silent: false, clockDrifting: false });
    expect(Date.parse(snap.lastSeen as string)).toBeGreaterThan(Date.now() - 10_000);
    // Reading times have second resolution: arrival is at or a little after the reading.
    expect(snap.clockOffsetSeconds as number).toBeGreaterThanOrEqual(0);
    expect(snap.clockOffsetSeconds as number).toBeLessThan(5);
    expect(snap.source).toMatch(/^mllp 127\.0\.0\.1:\d+$/);

    const metrics = await get('/metrics');
    expect(metrics.status).toBe(200);
    expect(metrics.type).toContain('text/plain; version=0.0.4');
    expect(metrics.text).toContain(`mdi_device_connected{device="${DEVICE}"} 1`);
    expect(metrics.text).toContain(`mdi_device_readings_total{device="${DEVICE}"} 2`);
    expect(metrics.text).toContain(`mdi_device_silent{device="${DEVICE}"} 0`);

    await client.close();
    await until('the connection to show as closed', async () => {
      const s = await json<{ connection: string }>(`/api/devices/${DEVICE}/health`);
      return s.connection === 'disconnected' ? s : undefined;
    });
    const [silent] = await until('a silent event', async () => {
      const items = await events(`device=${DEVICE}&type=silent`);
      return items.length > 0 ? items : undefined;
    });
    expect(silent!.detail).toMatchObject({ expectedIntervalSeconds: 2 });
    await until('a connection-lost event', async () => {
      const items = await events('type=connection-lost');
      return items.length > 0 ? items : undefined;
    });
    // More checks pass: still one silent event, and the metric says silent.
    await new Promise((r) => setTimeout(r, 500));
    expect(await events(`device=${DEVICE}&type=silent`)).toHaveLength(1);
    expect((await get('/metrics')).text).toContain(`mdi_device_silent{device="${DEVICE}"} 1`);
    expect(await json<Record<string, unknown>>(`/api/devices/${DEVICE}/health`)).toMatchObject({ silent: true, connection: 'disconnected' });

    const again = await send('H2');
    const types = await until('resumed and connection-restored', async () => {
      const items = (await events(`device=${DEVICE}`)).map((e) => e.type);
      return items.includes('resumed') && items.includes('connection-restored') ? items : undefined;
    });
    expect(types.filter((t) => t === 'silent')).toHaveLength(1);
    expect(await json<{ items: { device: string; messages: number; silent: boolean }[] }>('/api/health/devices')).toMatchObject({
      items: [{ device: DEVICE, messages: 2, silent: false }],
    });
    const all = await get(`/api/events?device=${DEVICE}&limit=100`);
    const sinceNow = await events(`since=${encodeURIComponent(new Date(Date.now() + 60_000).toISOString())}`);
    expect(sinceNow).toEqual([]);
    await again.close();

    // No patient data anywhere the health answers reach.
    for (const text of [all.text, (await get('/metrics')).text, (await get('/api/health/devices')).text]) {
      expect(text).not.toContain(CPR);
      expect(text).not.toContain('Søren');
    }
  });

  it('shows an MQTT device connected to the embedded broker, and disconnected when it leaves', async () => {
    const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${broker.port()}`, {
      clientId: 'pump-1',
      username: 'pump-1',
      password: 'pump secret',
      reconnectPeriod: 0,
    });
    await client.publishAsync(readingsTopic('pump-1'), JSON.stringify({ ts: Date.now(), readings: [{ code: '150456', value: 97, unit: '%' }] }), { qos: 1 });
    const snap = await json<Record<string, unknown>>('/api/devices/pump-1/health');
    expect(snap).toMatchObject({ device: 'pump-1', messages: 1, readings: 1, connection: 'connected', source: 'mqtt-broker pump-1' });
    expect((await get('/metrics')).text).toContain('mdi_device_connected{device="pump-1"} 1');
    await client.endAsync();
    await until('the MQTT device to show as disconnected', async () => {
      const s = await json<{ connection: string }>('/api/devices/pump-1/health');
      return s.connection === 'disconnected' ? s : undefined;
    });
  });

  it('describes its routes in the OpenAPI document', async () => {
    const doc = await json<{ paths: Record<string, { get?: { summary?: string; parameters?: { name: string; in: string }[] } }> }>('/api/openapi.json');
    expect(doc.paths['/api/events']?.get?.parameters?.map((p) => p.name).sort()).toEqual(['device', 'limit', 'since', 'type']);
    expect(doc.paths['/api/devices/{id}/health']?.get?.summary).toBe('Health of one device');
    expect(doc.paths['/metrics']?.get).toBeDefined();
  });

  it('wants a viewer token for /metrics when auth is on, like /api', async () => {
    const token = 'prometheus-scraper-token';
    const secured = createApi({
      store,
      log: silentLogger(),
      ready: () => true,
      drivers: () => [],
      counters: () => ({}),
      health,
      auth: { enabled: true, tokens: [{ name: 'prometheus', role: 'viewer', hash: hashToken(token) }] },
    });
    await secured.listen({ port: 0, host: '127.0.0.1' });
    try {
      const address = secured.server.address();
      const url = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
      expect((await fetch(`${url}/metrics`)).status).toBe(401);
      expect((await fetch(`${url}/api/health/devices`)).status).toBe(401);
      const ok = await fetch(`${url}/metrics`, { headers: { authorization: `Bearer ${token}` } });
      expect(ok.status).toBe(200);
      expect(await ok.text()).toContain('# TYPE mdi_device_silent gauge');
      expect((await fetch(`${url}/health`)).status).toBe(200);
    } finally {
      await secured.close();
    }
  });

  it('answers 404 for a device it never heard of and 400 naming a bad parameter', async () => {
    expect((await get('/api/devices/NOPE/health')).status).toBe(404);
    const bad = await get('/api/events?type=exploded');
    expect(bad.status).toBe(400);
    expect(bad.text).toContain('type');
    const unknown = await get('/api/events?patient=x');
    expect(unknown.status).toBe(400);
    expect(unknown.text).toContain('patient');
    expect((await get('/api/events?since=yesterday')).status).toBe(400);
  });
});
