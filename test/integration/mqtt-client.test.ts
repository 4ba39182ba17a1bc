/**
 * Client mode against a real Mosquitto: the driver contract, a restart of the gateway with
 * readings published while it is down, a store failure (no PUBACK → redelivered), and two
 * instances on one shared subscription (every reading stored exactly once across both).
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import mqtt, { type MqttClient } from 'mqtt';
import { afterEach, describe, expect, it } from 'vitest';
import { MqttSubscriberDriver, redactUrl, type MqttSubscriberOptions } from '../../drivers/mqtt/client.js';
import { readingsTopic } from '../../drivers/mqtt/payload.js';
import { DriverState } from '../../src/driver.js';
import { ErrorCode, GatewayError } from '../../src/errors.js';
import { driverContract, RecordingContext, waitFor, type ContractPeer } from '../contract/driver-contract.js';
import { freePort, startMosquitto, type TestMosquitto } from '../helpers/mosquitto.js';

const run = promisify(execFile);
const FAST = { initialDelayMs: 100, maxDelayMs: 1000 };
let seq = 0;

function reading(id?: string): string {
  return JSON.stringify({ ts: Date.now(), ...(id ? { id } : {}), readings: [{ code: '150456', value: 97, unit: '%' }, { code: 'masimo:BPM', value: 70, unit: '' }] });
}

function subscriber(url: string, ctx: RecordingContext, extra: Partial<MqttSubscriberOptions> = {}): MqttSubscriberDriver {
  return new MqttSubscriberDriver({ url, clientId: `gw-test-${process.pid}-${++seq}`, reconnect: FAST, ...extra }, ctx);
}

async function device(url: string, deviceId = 'dev-1'): Promise<MqttClient> {
  return mqtt.connectAsync(url, { clientId: `sim-${deviceId}-${++seq}`, protocolVersion: 5, reconnectPeriod: 200 });
}

/** The contract's device: a publisher on Mosquitto, every 100 ms. */
driverContract(
  'mqtt client mode (Mosquitto)',
  async (ctx, options) => {
    if (options.absent) {
      const port = await freePort();
      const driver = subscriber(`mqtt://127.0.0.1:${port}`, ctx as RecordingContext);
      return { driver, peer: null, close: () => driver.stop() };
    }
    const broker = await startMosquitto();
    const driver = subscriber(broker.url, ctx as RecordingContext);
    const pub = await device(broker.url);
    let next: 'garbage' | 'huge' | null = null;
    const timer = setInterval(() => {
      const what = next;
      next = null;
      const body = what === 'garbage' ? '{"ts": oops' : what === 'huge' ? `{"ts":1,"pad":"${'x'.repeat(300 * 1024)}"}` : reading();
      pub.publish(readingsTopic('dev-1'), body, { qos: 1 });
    }, 100);
    const peer: ContractPeer = {
      garbage: () => void (next = 'garbage'),
      huge: () => void (next = 'huge'),
      unplug: () => broker.stop(),
      replug: () => broker.start(),
    };
    return {
      driver,
      peer,
      close: async () => {
        clearInterval(timer);
        await driver.stop();
        await pub.endAsync(true);
        await broker.close();
      },
    };
  },
  { reconnectMs: 8000 },
);

describe('mqtt client mode: delivery', () => {
  let broker: TestMosquitto | null = null;
  const cleanup: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const c of cleanup.splice(0).reverse()) await c();
    await broker?.close();
    broker = null;
  });

  it('readings published while the gateway is down arrive after it comes back (persistent session, QoS 1)', async () => {
    broker = await startMosquitto();
    const ctx = new RecordingContext();
    const driver = subscriber(broker.url, ctx);
    cleanup.push(() => driver.stop());
    await driver.start();
    await waitFor(() => driver.status().state === DriverState.UP, 5000, 'connected');
    await driver.stop();
    // A third-party client publishes while the gateway is away.
    for (let i = 0; i < 20; i++) {
      await run('mosquitto_pub', ['-p', String(broker.port), '-h', '127.0.0.1', '-q', '1', '-V', 'mqttv5', '-t', readingsTopic(`bed-${i % 4}`), '-m', reading(`m${i}`)]);
    }
    expect(ctx.readings()).toBe(0);
    await driver.start();
    await waitFor(() => ctx.batches.length >= 20, 5000, 'the 20 queued messages');
    expect(ctx.readings()).toBe(40);
    expect(new Set(ctx.batches.map((b) => b.message?.controlId)).size).toBe(20);
    expect(ctx.batches.map((b) => b.measurements[0]!.deviceId).sort()[0]).toBe('bed-0');
  });

  it('a store failure sends no PUBACK: the broker redelivers and the reading is stored', async () => {
    broker = await startMosquitto();
    const ctx = new RecordingContext();
    const real = ctx.submit;
    let failures = 1;
    ctx.submit = async (batch) => {
      if (failures-- > 0) throw new GatewayError(ErrorCode.STORE_FAILED, 'disk full');
      return real(batch);
    };
    const driver = subscriber(broker.url, ctx);
    cleanup.push(() => driver.stop());
    await driver.start();
    await waitFor(() => driver.status().state === DriverState.UP, 5000, 'connected');
    const pub = await device(broker.url);
    cleanup.push(() => pub.endAsync(true));
    await pub.publishAsync(readingsTopic('dev-9'), reading('only-one'), { qos: 1 });
    await waitFor(() => ctx.batches.length === 1, 8000, 'the redelivered message');
    expect(ctx.batches[0]!.message).toMatchObject({ sender: 'mqtt:dev-9', controlId: 'only-one' });
    expect(driver.status().counters.storeErrors).toBe(1);
    expect(driver.status().lastError).toBe(ErrorCode.STORE_FAILED);
  });

  it('a broker that refuses the credentials: down, MDI_ERR_MQTT_AUTH_FAILED, retried with backoff, the password never in the status', async () => {
    broker = await startMosquitto({ anonymous: false });
    const ctx = new RecordingContext();
    const driver = subscriber(broker.url, ctx, { auth: { username: 'gw', password: 'Sup3rSecretPw' } });
    cleanup.push(() => driver.stop());
    await driver.start();
    await waitFor(() => driver.status().counters.connectFailures! >= 2, 5000, 'two refused attempts');
    const status = driver.status();
    expect(status.state).toBe(DriverState.DOWN);
    expect(status.lastError).toBe(ErrorCode.MQTT_AUTH_FAILED);
    expect(JSON.stringify(status)).not.toContain('Sup3rSecretPw');
    // Credentials written into a URL never reach the status or the logs either.
    expect(redactUrl('mqtt://gw:Sup3rSecretPw@broker.example:1883')).toBe('mqtt://broker.example:1883');
  });

  it('a malformed payload and a foreign topic become dead letters; the connection stays up', async () => {
    broker = await startMosquitto();
    const ctx = new RecordingContext();
    const driver = subscriber(broker.url, ctx, { topics: ['mdi/v1/devices/+/readings', 'mdi/v1/other/#'] });
    cleanup.push(() => driver.stop());
    await driver.start();
    await waitFor(() => driver.status().state === DriverState.UP, 5000, 'connected');
    const pub = await device(broker.url);
    cleanup.push(() => pub.endAsync(true));
    await pub.publishAsync(readingsTopic('dev-1'), '{"ts":', { qos: 1 });
    await pub.publishAsync('mdi/v1/other/x', reading(), { qos: 1 });
    await pub.publishAsync(readingsTopic('dev-1'), reading(), { qos: 1 });
    await waitFor(() => ctx.batches.length === 3, 5000, 'three messages');
    expect(ctx.rejects().map((r) => r.code)).toEqual([ErrorCode.MQTT_BAD_PAYLOAD, ErrorCode.MQTT_BAD_TOPIC]);
    expect(ctx.readings()).toBe(2);
    expect(driver.status()).toMatchObject({ state: 'up', counters: { connects: 1, rejected: 2 } });
  });

  it('two instances on one shared subscription: every reading stored exactly once across both', async () => {
    broker = await startMosquitto();
    const a = new RecordingContext();
    const b = new RecordingContext();
    const da = subscriber(broker.url, a, { sharedGroup: 'mdi' });
    const db = subscriber(broker.url, b, { sharedGroup: 'mdi' });
    cleanup.push(() => da.stop(), () => db.stop());
    await Promise.all([da.start(), db.start()]);
    await waitFor(() => da.status().state === DriverState.UP && db.status().state === DriverState.UP, 5000, 'both connected');
    expect(da.status().topics).toEqual(['$share/mdi/mdi/v1/devices/+/readings']);
    const pubs = await Promise.all([0, 1, 2, 3].map((i) => device(broker!.url, `bed-${i}`)));
    cleanup.push(() => Promise.all(pubs.map((p) => p.endAsync(true))));
    const total = 400;
    await Promise.all(
      pubs.map(async (p, i) => {
        for (let k = i; k < total; k += pubs.length) await p.publishAsync(readingsTopic(`bed-${i}`), reading(`m${k}`), { qos: 1 });
      }),
    );
    await waitFor(() => a.batches.length + b.batches.length >= total, 10_000, 'every message');
    await new Promise((r) => setTimeout(r, 200));
    const ids = [...a.batches, ...b.batches].map((x) => x.message!.controlId);
    expect(ids).toHaveLength(total);
    expect(new Set(ids).size).toBe(total);
    expect(a.batches.length).toBeGreaterThan(0);
    expect(b.batches.length).toBeGreaterThan(0);
  });

  it('one instance of two stops: what the broker assigned to it waits for it; nothing is lost, nothing doubled', async () => {
    // Mosquitto keeps a stopped member's persistent session in the shared group and queues
    // its share of the messages there (EMQX can redispatch them instead): they arrive when the
    // instance is back, and are lost only if it stays away longer than the session expiry.
    broker = await startMosquitto();
    const a = new RecordingContext();
    const b = new RecordingContext();
    const da = subscriber(broker.url, a, { sharedGroup: 'mdi' });
    const db = subscriber(broker.url, b, { sharedGroup: 'mdi' });
    cleanup.push(() => da.stop(), () => db.stop());
    await Promise.all([da.start(), db.start()]);
    await waitFor(() => da.status().state === DriverState.UP && db.status().state === DriverState.UP, 5000, 'both connected');
    const pub = await device(broker.url);
    cleanup.push(() => pub.endAsync(true));
    for (let k = 0; k < 50; k++) await pub.publishAsync(readingsTopic('bed-1'), reading(`a${k}`), { qos: 1 });
    await waitFor(() => a.batches.length + b.batches.length >= 50, 5000, 'the first 50');
    await db.stop();
    for (let k = 0; k < 50; k++) await pub.publishAsync(readingsTopic('bed-1'), reading(`b${k}`), { qos: 1 });
    await waitFor(() => a.batches.filter((x) => x.message!.controlId.startsWith('b')).length > 0, 5000, 'the survivor gets its share');
    await db.start();
    await waitFor(() => a.batches.length + b.batches.length >= 100, 5000, 'all 100 once the stopped one is back');
    await new Promise((r) => setTimeout(r, 200));
    const ids = [...a.batches, ...b.batches].map((x) => x.message!.controlId);
    expect(ids).toHaveLength(100);
    expect(new Set(ids).size).toBe(100);
  });
});
