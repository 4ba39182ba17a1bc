/**
 * MQTT through the whole gateway (config → driver → normalize → SQLite store): the embedded
 * broker with a registered device, and client mode against Mosquitto across a gateway restart.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import mqtt from 'mqtt';
import { afterEach, describe, expect, it } from 'vitest';
import { hashSecret } from '../../drivers/mqtt/auth.js';
import { readingsTopic } from '../../drivers/mqtt/payload.js';
import { ErrorCode } from '../../src/errors.js';
import { waitFor } from '../contract/driver-contract.js';
import { getJson, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { startMosquitto, type TestMosquitto } from '../helpers/mosquitto.js';

const run = promisify(execFile);

describe('MQTT through the gateway', () => {
  const gateways: TestGateway[] = [];
  let broker: TestMosquitto | null = null;
  afterEach(async () => {
    for (const g of gateways.splice(0)) await g.stop();
    await broker?.close();
    broker = null;
  });

  it('embedded broker: a registered device’s readings are normalized and stored; a malformed one is a dead letter', async () => {
    const passwordHash = await hashSecret('pw-bed-3', { N: 1024, r: 8, p: 1 });
    const gw = await startTestGateway({
      mqtt: { broker: { enabled: true, port: 0, host: '127.0.0.1', devices: [{ deviceId: 'bed-3-mon', passwordHash }] } },
    });
    gateways.push(gw);
    const port = gw.addresses.mqtt!.port;
    const c = await mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, { clientId: 'bed-3-mon', username: 'bed-3-mon', password: 'pw-bed-3', protocolVersion: 4, reconnectPeriod: 0 });
    try {
      await c.publishAsync(
        readingsTopic('bed-3-mon'),
        JSON.stringify({ ts: '2026-11-21T10:00:00+01:00', readings: [{ code: 'masimo:SPO2', value: 97, unit: '' }, { code: 147842, value: 72, unit: '/min' }] }),
        { qos: 1 },
      );
      await c.publishAsync(readingsTopic('bed-3-mon'), '{"ts": nope', { qos: 1 });
    } finally {
      await c.endAsync();
    }
    const store = gw.gateway.storeForTests();
    const rows = store.queryObservations({ device: 'bed-3-mon', limit: 10, order: 'asc' });
    expect(rows.map((r) => [r.observation.metric, r.observation.loinc, r.observation.value])).toEqual([
      ['MDC_PULS_OXIM_SAT_O2', '59408-5', 97],
      ['MDC_ECG_HEART_RATE', '8867-4', 72],
    ]);
    expect(rows[0]!.observation.time).toBe(Date.UTC(2026, 10, 21, 9));
    const dead = store.listDeadLetters({ limit: 10 });
    expect(dead.map((d) => d.code)).toEqual([ErrorCode.MQTT_BAD_PAYLOAD]);
    expect(dead[0]!.source).toBe('mqtt-broker bed-3-mon');
    const status = await getJson<{ drivers: { name: string; state: string; counters: Record<string, number> }[] }>(`${gw.httpUrl}/api/status`);
    expect(status.body.drivers.find((d) => d.name === 'mqtt-broker')).toMatchObject({ state: 'up', counters: { messages: 2, readings: 2, rejected: 1 } });
  });

  it('client mode: readings published while the gateway is stopped are stored after it starts again', async () => {
    broker = await startMosquitto();
    const subscribe = [{ url: broker.url, clientId: 'gw-restart-test', sharedGroup: 'mdi', reconnect: { initialDelayMs: 100, maxDelayMs: 1000 } }];
    const first = await startTestGateway({ mqtt: { subscribe } });
    gateways.push(first);
    const name = 'mqtt-client:gw-restart-test';
    for (let t = Date.now(); ; ) {
      const status = await getJson<{ drivers: { name: string; state: string }[] }>(`${first.httpUrl}/api/status`);
      if (status.body.drivers.some((d) => d.name === name && d.state === 'up')) break;
      if (Date.now() - t > 5000) throw new Error('not subscribed within 5 s');
      await new Promise((r) => setTimeout(r, 50));
    }
    await first.stop();
    gateways.splice(0);
    for (let i = 0; i < 10; i++) {
      const body = JSON.stringify({ ts: Date.now(), id: `r${i}`, readings: [{ code: '150456', value: 90 + i, unit: '%' }] });
      await run('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(broker.port), '-V', 'mqttv5', '-q', '1', '-t', readingsTopic('bed-9'), '-m', body]);
    }
    const second = await startTestGateway({ dataDir: first.dataDir, mqtt: { subscribe } });
    gateways.push(second);
    const store = second.gateway.storeForTests();
    await waitFor(() => store.queryObservations({ device: 'bed-9', limit: 100 }).length >= 10, 8000, 'the 10 readings');
    const values = store.queryObservations({ device: 'bed-9', limit: 100, order: 'asc' }).map((r) => r.observation.value);
    expect(values).toEqual([90, 91, 92, 93, 94, 95, 96, 97, 98, 99]);
  });

  it('republish: the latest value per bed and metric is retained on a broker, without patient identity', async () => {
    broker = await startMosquitto();
    const passwordHash = await hashSecret('pw', { N: 1024, r: 8, p: 1 });
    const gw = await startTestGateway({
      mqtt: {
        broker: { enabled: true, port: 0, host: '127.0.0.1', devices: [{ deviceId: 'mon-7', passwordHash }] },
        republish: { enabled: true, url: broker.url, intervalMs: 50, beds: { 'mon-7': 'icu7-bed3' } },
      },
    });
    gateways.push(gw);
    const c = await mqtt.connectAsync(`mqtt://127.0.0.1:${gw.addresses.mqtt!.port}`, { clientId: 'mon-7', username: 'mon-7', password: 'pw', protocolVersion: 4, reconnectPeriod: 0 });
    try {
      const t = Date.UTC(2026, 10, 21, 9);
      await c.publishAsync(readingsTopic('mon-7'), JSON.stringify({ ts: t, readings: [{ code: '150456', value: 97, unit: '%' }, { code: '150456', value: 95, unit: '%', ts: t + 1000 }] }), { qos: 1 });
      await c.publishAsync(readingsTopic('mon-7'), JSON.stringify({ ts: t - 60_000, readings: [{ code: '150456', value: 80, unit: '%' }] }), { qos: 1 });
    } finally {
      await c.endAsync();
    }
    const store = gw.gateway.storeForTests();
    await waitFor(() => store.cursor('mqtt-republish') >= 3, 5000, 'the republisher to pass the three readings');
    // A late subscriber gets the retained latest value at once (mosquitto_sub as a dashboard).
    const { stdout } = await run('mosquitto_sub', ['-h', '127.0.0.1', '-p', String(broker.port), '-t', 'mdi/v1/beds/#', '-C', '1', '-v', '-W', '5']);
    const status = await getJson<{ drivers: { name: string; state: string; counters: Record<string, number> }[] }>(`${gw.httpUrl}/api/status`);
    expect(status.body.drivers.find((d) => d.name === 'mqtt-republish')).toMatchObject({ state: 'up', counters: { failures: 0 } });
    const [topic, ...rest] = stdout.trim().split(' ');
    expect(topic).toBe('mdi/v1/beds/icu7-bed3/MDC_PULS_OXIM_SAT_O2');
    const payload = JSON.parse(rest.join(' ')) as Record<string, unknown>;
    expect(payload).toEqual({
      ts: '2026-11-21T10:00:01+01:00',
      value: 95,
      unit: '%',
      metric: 'MDC_PULS_OXIM_SAT_O2',
      mdc: 150456,
      loinc: '59408-5',
      device: 'mon-7',
      quality: [],
    });
  });

  it('two gateways on one shared subscription: every reading stored exactly once across their two stores', async () => {
    broker = await startMosquitto();
    const sub = (clientId: string) => ({ mqtt: { subscribe: [{ url: broker!.url, clientId, sharedGroup: 'ward', reconnect: { initialDelayMs: 100, maxDelayMs: 1000 } }] } });
    const a = await startTestGateway(sub('gw-a'));
    const b = await startTestGateway(sub('gw-b'));
    gateways.push(a, b);
    for (const gw of [a, b]) {
      for (let t = Date.now(); ; ) {
        const status = await getJson<{ drivers: { kind: string; state: string }[] }>(`${gw.httpUrl}/api/status`);
        if (status.body.drivers.some((d) => d.kind === 'mqtt-client' && d.state === 'up')) break;
        if (Date.now() - t > 5000) throw new Error('not subscribed within 5 s');
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    const pub = await mqtt.connectAsync(broker.url, { clientId: 'ward-pub', protocolVersion: 5 });
    const total = 300;
    try {
      await Promise.all(
        Array.from({ length: total }, (_, k) =>
          pub.publishAsync(readingsTopic(`bed-${k % 10}`), JSON.stringify({ ts: Date.now(), id: `w${k}`, readings: [{ code: '147842', value: k, unit: '/min' }] }), { qos: 1 }),
        ),
      );
    } finally {
      await pub.endAsync();
    }
    const values = () =>
      [a, b].flatMap((gw) => Array.from({ length: 10 }, (_, i) => gw.gateway.storeForTests().queryObservations({ device: `bed-${i}`, limit: 1000 })).flat().map((r) => r.observation.value));
    await waitFor(() => values().length >= total, 8000, 'every reading in one of the stores');
    await new Promise((r) => setTimeout(r, 200));
    const all = values();
    expect(all).toHaveLength(total);
    expect(new Set(all).size).toBe(total);
    expect(a.gateway.storeForTests().counts().observations).toBeGreaterThan(0);
    expect(b.gateway.storeForTests().counts().observations).toBeGreaterThan(0);
  });
});
