/**
 * The embedded broker's security and ingest, with the real `mqtt` client and Mosquitto's
 * command-line clients as third-party devices: authentication (CONNACK codes), publish and
 * subscribe ACLs, malformed payloads, oversized packets, PUBACK after the commit, and logs
 * without secrets.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tcpConnect } from 'node:net';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { hashSecret, isSecretHash, verifySecret } from '../../drivers/mqtt/auth.js';
import { MqttBrokerDriver } from '../../drivers/mqtt/broker.js';
import { commandsTopic, readingsTopic } from '../../drivers/mqtt/payload.js';
import { ErrorCode, GatewayError } from '../../src/errors.js';
import { createLogger } from '../../src/log.js';
import { RecordingContext, waitFor } from '../contract/driver-contract.js';

const run = promisify(execFile);
const PASSWORDS = { 'mon-1': 'correct horse battery', 'mon-2': 'staple 2 secret' } as const;
// Low scrypt cost keeps the many connects of this file fast; production uses SCRYPT_DEFAULTS.
const TEST_COST = { N: 1024, r: 8, p: 1 };
let hashes: Record<string, string> = {};

beforeAll(async () => {
  hashes = {
    'mon-1': await hashSecret(PASSWORDS['mon-1'], TEST_COST),
    'mon-2': await hashSecret(PASSWORDS['mon-2'], TEST_COST),
  };
});

function body(value = 97, id?: string): string {
  return JSON.stringify({ ts: Date.now(), ...(id ? { id } : {}), readings: [{ code: '150456', value, unit: '%' }] });
}

describe('device secrets (scrypt)', () => {
  it('hashes and verifies; a wrong password, an unknown device and a broken hash fail', async () => {
    const h = await hashSecret('s3cret', TEST_COST);
    expect(isSecretHash(h)).toBe(true);
    expect(h).not.toContain('s3cret');
    expect(await verifySecret('s3cret', h)).toBe(true);
    expect(await verifySecret('s3cret!', h)).toBe(false);
    expect(await verifySecret('s3cret', null)).toBe(false);
    expect(await verifySecret('s3cret', 'scrypt$1048577$8$1$AAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAA==')).toBe(false);
    expect(isSecretHash('plain-text-password')).toBe(false);
    expect(await hashSecret('s3cret', TEST_COST)).not.toBe(h); // salted
  });
});

describe('embedded broker', () => {
  let ctx: RecordingContext;
  let driver: MqttBrokerDriver;
  let logged = '';
  let url = '';
  let port = 0;
  const clients: MqttClient[] = [];

  beforeAll(async () => {
    ctx = new RecordingContext();
    const sink = new Writable({
      write(chunk: Buffer, _e, cb) {
        logged += chunk.toString();
        cb();
      },
    });
    (ctx as { log: unknown }).log = createLogger({ level: 'debug', destination: sink });
    driver = new MqttBrokerDriver(
      {
        port: 0,
        host: '127.0.0.1',
        devices: [
          { deviceId: 'mon-1', passwordHash: hashes['mon-1']! },
          { deviceId: 'mon-2', username: 'mon-2-user', passwordHash: hashes['mon-2']! },
        ],
        maxPayloadBytes: 4096,
        maxPacketBytes: 64 * 1024,
      },
      ctx,
    );
    await driver.start();
    port = driver.port();
    url = `mqtt://127.0.0.1:${port}`;
  });
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.endAsync(true)));
  });
  afterAll(async () => {
    await driver.stop();
    expect(driver.status().state).toBe('stopped');
  });

  async function connectAs(clientId: string, username?: string, password?: string, extra: IClientOptions = {}): Promise<MqttClient> {
    const c = await mqtt.connectAsync(url, {
      clientId,
      protocolVersion: 4,
      reconnectPeriod: 0,
      ...(username !== undefined ? { username } : {}),
      ...(password !== undefined ? { password } : {}),
      ...extra,
    });
    clients.push(c);
    return c;
  }

  async function refusal(clientId: string, username?: string, password?: string): Promise<number> {
    try {
      await connectAs(clientId, username, password);
    } catch (err) {
      return (err as { code?: number }).code ?? -1;
    }
    throw new Error('connected, but should have been refused');
  }

  it('a registered device connects and its readings are stored under its id (PUBACK after the commit)', async () => {
    ctx.submitDelayMs = 200;
    const c = await connectAs('mon-1', 'mon-1', PASSWORDS['mon-1']);
    const before = ctx.readings();
    const t0 = Date.now();
    await c.publishAsync(readingsTopic('mon-1'), body(96), { qos: 1 });
    // The PUBACK came only after the (slow) commit.
    expect(Date.now() - t0).toBeGreaterThanOrEqual(190);
    expect(ctx.readings()).toBe(before + 1);
    ctx.submitDelayMs = 0;
    const last = ctx.batches.at(-1)!;
    expect(last.measurements[0]).toMatchObject({ deviceId: 'mon-1', code: '150456', value: 96 });
    expect(last.source).toBe('mqtt-broker mon-1');
    expect(driver.status()).toMatchObject({ state: 'up', devicesConfigured: 2, devicesConnected: 1 });
  });

  it('cannot connect without valid credentials: CONNACK 4 without, 5 for wrong or unknown ones', async () => {
    const failures = driver.status().counters.authFailures!;
    expect(await refusal('mon-1')).toBe(4);
    expect(await refusal('mon-1', 'mon-1', 'Wr0ngPassw0rd')).toBe(5);
    expect(await refusal('mon-1', 'mon-2-user', PASSWORDS['mon-2'])).toBe(5); // someone else's credentials
    expect(await refusal('mon-2', 'mon-2', PASSWORDS['mon-2'])).toBe(5); // wrong user name
    expect(await refusal('intruder', 'intruder', 'x')).toBe(5); // unknown id: same answer as a wrong password
    expect(driver.status().counters.authFailures).toBe(failures + 5);
    const ok = await connectAs('mon-2', 'mon-2-user', PASSWORDS['mon-2']);
    expect(ok.connected).toBe(true);
  });

  it('a device that reconnects with the password it proved before skips scrypt; any other password does not', async () => {
    const c1 = await connectAs('mon-1', 'mon-1', PASSWORDS['mon-1']);
    await c1.endAsync();
    const checks = driver.status().counters.scryptChecks!;
    for (let i = 0; i < 3; i++) await (await connectAs('mon-1', 'mon-1', PASSWORDS['mon-1'])).endAsync();
    expect(driver.status().counters.scryptChecks).toBe(checks);
    expect(await refusal('mon-1', 'mon-1', 'An0therPassw0rd')).toBe(5);
    expect(driver.status().counters.scryptChecks).toBe(checks + 1);
  });

  it('cannot publish as another device: the connection is closed and nothing is stored', async () => {
    const c = await connectAs('mon-1', 'mon-1', PASSWORDS['mon-1']);
    const before = ctx.batches.length;
    const closed = new Promise<void>((resolve) => c.once('close', () => resolve()));
    c.publish(readingsTopic('mon-2'), body(50), { qos: 1 });
    await closed;
    await new Promise((r) => setTimeout(r, 100));
    expect(ctx.batches.length).toBe(before);
    expect(driver.status().counters.notAuthorized).toBeGreaterThan(0);
    // Nor to any topic outside its own readings topic.
    const d = await connectAs('mon-1', 'mon-1', PASSWORDS['mon-1']);
    const closed2 = new Promise<void>((resolve) => d.once('close', () => resolve()));
    d.publish('mdi/v1/beds/7/MDC_PULS_OXIM_SAT_O2', '{"value":0}', { qos: 0 });
    await closed2;
    expect(ctx.batches.length).toBe(before);
  });

  it('cannot subscribe to other topics (SUBACK 0x80), only to its own command topic', async () => {
    const c = await connectAs('mon-1', 'mon-1', PASSWORDS['mon-1']);
    // mqtt.js rejects a SUBACK that refuses anything; the packet it carries has the codes.
    const suback = await c
      .subscribeAsync([commandsTopic('mon-1'), commandsTopic('mon-2'), readingsTopic('mon-2'), '#', 'mdi/v1/devices/+/readings'], { qos: 1 })
      .then(() => null, (err: { packet?: { granted?: number[] } }) => err.packet?.granted ?? null);
    expect(suback).toEqual([1, 128, 128, 128, 128]);
    expect(c.connected).toBe(true);
    // Readings of another device are never delivered to it.
    const got: string[] = [];
    c.on('message', (topic) => got.push(topic));
    const other = await connectAs('mon-2', 'mon-2-user', PASSWORDS['mon-2']);
    await other.publishAsync(readingsTopic('mon-2'), body(), { qos: 1 });
    await new Promise((r) => setTimeout(r, 150));
    expect(got).toEqual([]);
  });

  it('a malformed payload is a dead letter, never a reading; the device is told nothing and stays connected', async () => {
    const c = await connectAs('mon-1', 'mon-1', PASSWORDS['mon-1']);
    const got: string[] = [];
    await c.subscribeAsync(commandsTopic('mon-1'), { qos: 1 });
    c.on('message', (topic) => got.push(topic));
    const readings = ctx.readings();
    const rejects = ctx.rejects().length;
    for (const bad of ['{"ts":', '[]', JSON.stringify({ ts: Date.now(), readings: [{ code: 'x y', value: 1, unit: '' }] }), 'x'.repeat(5000)]) {
      await c.publishAsync(readingsTopic('mon-1'), bad, { qos: 1 });
    }
    expect(ctx.readings()).toBe(readings);
    expect(ctx.rejects().slice(rejects).map((r) => r.code)).toEqual([
      ErrorCode.MQTT_BAD_PAYLOAD,
      ErrorCode.MQTT_BAD_PAYLOAD,
      ErrorCode.MQTT_UNKNOWN_CODE,
      ErrorCode.MQTT_PAYLOAD_TOO_LARGE,
    ]);
    await c.publishAsync(readingsTopic('mon-1'), body(99), { qos: 1 });
    expect(ctx.readings()).toBe(readings + 1);
    expect(c.connected).toBe(true);
    expect(got).toEqual([]);
  });

  it('a packet larger than maxPacketBytes closes the connection before it is buffered', async () => {
    const c = await connectAs('mon-1', 'mon-1', PASSWORDS['mon-1']);
    const closed = new Promise<void>((resolve) => c.once('close', () => resolve()));
    const before = driver.status().counters.tooLarge!;
    c.publish(readingsTopic('mon-1'), Buffer.alloc(200 * 1024, 0x20), { qos: 1 });
    await closed;
    expect(driver.status().counters.tooLarge).toBe(before + 1);
    // Also before CONNECT: a raw socket announcing a 100 MiB packet is cut off at once.
    const sock = tcpConnect(port, '127.0.0.1');
    await new Promise<void>((resolve) => sock.once('connect', () => resolve()));
    const gone = new Promise<void>((resolve) => sock.once('close', () => resolve()));
    sock.on('error', () => undefined);
    sock.write(Buffer.from([0x30, 0xff, 0xff, 0xff, 0x7f]));
    await gone;
    expect(driver.status().counters.tooLarge).toBe(before + 2);
  });

  it('a store failure sends no PUBACK: the device resends after reconnecting, and the reading is stored', async () => {
    const real = ctx.submit;
    let failures = 1;
    ctx.submit = async (batch) => {
      if (failures-- > 0) throw new GatewayError(ErrorCode.STORE_FAILED, 'disk full');
      return real(batch);
    };
    try {
      const c = await connectAs('mon-1', 'mon-1', PASSWORDS['mon-1'], { reconnectPeriod: 100, clean: false });
      const before = ctx.readings();
      await c.publishAsync(readingsTopic('mon-1'), body(88, 'retry-1'), { qos: 1 });
      expect(ctx.readings()).toBe(before + 1);
      expect(ctx.batches.at(-1)!.message).toMatchObject({ sender: 'mqtt:mon-1', controlId: 'retry-1' });
      expect(driver.status().counters.storeErrors).toBe(1);
    } finally {
      ctx.submit = real;
    }
  });

  it('works with mosquitto_pub and mosquitto_sub as third-party clients', async () => {
    const before = ctx.readings();
    const p = ['-h', '127.0.0.1', '-p', String(port), '-V', 'mqttv311', '-q', '1'];
    await run('mosquitto_pub', [...p, '-i', 'mon-2', '-u', 'mon-2-user', '-P', PASSWORDS['mon-2'], '-t', readingsTopic('mon-2'), '-m', body(91)]);
    expect(ctx.readings()).toBe(before + 1);
    expect(ctx.batches.at(-1)!.measurements[0]!.deviceId).toBe('mon-2');
    // A wrong password: refused.
    const wrong = await run('mosquitto_pub', [...p, '-i', 'mon-2', '-u', 'mon-2-user', '-P', 'N0peN0pe', '-t', readingsTopic('mon-2'), '-m', body()]).catch((e: { code: number; stderr: string }) => e);
    expect((wrong as { code: number }).code).not.toBe(0);
    expect((wrong as { stderr: string }).stderr).toMatch(/not authori[sz]ed/i);
    // Publishing as another device: nothing stored.
    const n = ctx.batches.length;
    await run('mosquitto_pub', [...p, '-i', 'mon-2', '-u', 'mon-2-user', '-P', PASSWORDS['mon-2'], '-t', readingsTopic('mon-1'), '-m', body()]).catch(() => undefined);
    expect(ctx.batches.length).toBe(n);
    // Subscribing to another device's topics: refused by SUBACK (mosquitto_sub reports it and exits).
    const sub = await run('mosquitto_sub', [...p, '-i', 'mon-2', '-u', 'mon-2-user', '-P', PASSWORDS['mon-2'], '-t', readingsTopic('mon-1'), '-W', '2']).catch((e: { code: number; stderr: string }) => e);
    expect(JSON.stringify(sub)).toMatch(/denied|refused|fail|timed out/i);
  });

  it('never logs a password', () => {
    expect(logged.length).toBeGreaterThan(0);
    expect(logged).toContain('MDI_ERR_MQTT_AUTH_FAILED');
    for (const secret of [...Object.values(PASSWORDS), 'Wr0ngPassw0rd', 'N0peN0pe', 'An0therPassw0rd']) expect(logged).not.toContain(secret);
  });
});

describe('embedded broker over TLS', () => {
  it('takes readings on the TLS port with a verified certificate; a client that does not trust it cannot connect', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mdi-mqtt-tls-'));
    const cert = join(dir, 'cert.pem');
    const key = join(dir, 'key.pem');
    await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1']);
    const ctx = new RecordingContext();
    const driver = new MqttBrokerDriver(
      { port: 0, host: '127.0.0.1', devices: [{ deviceId: 'mon-1', passwordHash: hashes['mon-1']! }], tls: { port: 0, cert, key } },
      ctx,
    );
    await driver.start();
    try {
      const tlsPort = driver.tlsPort()!;
      expect(driver.status().tlsPort).toBe(tlsPort);
      const c = await mqtt.connectAsync(`mqtts://127.0.0.1:${tlsPort}`, {
        clientId: 'mon-1',
        username: 'mon-1',
        password: PASSWORDS['mon-1'],
        protocolVersion: 4,
        reconnectPeriod: 0,
        ca: readFileSync(cert),
      });
      await c.publishAsync(readingsTopic('mon-1'), body(95), { qos: 1 });
      await c.endAsync();
      expect(ctx.readings()).toBe(1);
      // Without the CA the certificate does not verify: no connection, nothing stored.
      const refused = await mqtt
        .connectAsync(`mqtts://127.0.0.1:${tlsPort}`, { clientId: 'mon-1', username: 'mon-1', password: PASSWORDS['mon-1'], protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 3000 })
        .then((x) => x.endAsync().then(() => 'connected'), (err: Error) => err.message);
      expect(refused).toMatch(/self[- ]signed|certificate/i);
      // mosquitto_pub over TLS, as a third-party device.
      await run('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(tlsPort), '--cafile', cert, '-V', 'mqttv311', '-q', '1', '-i', 'mon-1', '-u', 'mon-1', '-P', PASSWORDS['mon-1'], '-t', readingsTopic('mon-1'), '-m', body(94)]);
      expect(ctx.readings()).toBe(2);
    } finally {
      await driver.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('authenticates a device by a client certificate from the device CA (CN = device id), and only that way', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mdi-mqtt-mtls-'));
    const f = (name: string) => join(dir, name);
    const ssl = (args: string[]) => run('openssl', args);
    await ssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('server-key.pem'), '-out', f('server.pem'), '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1']);
    await ssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('ca-key.pem'), '-out', f('ca.pem'), '-days', '1', '-subj', '/CN=device-ca']);
    await ssl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('mon1-key.pem'), '-out', f('mon1.csr'), '-subj', '/CN=mon-1']);
    await ssl(['x509', '-req', '-in', f('mon1.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca-key.pem'), '-CAcreateserial', '-out', f('mon1.pem'), '-days', '1']);
    // The same CN, but not signed by the device CA.
    await ssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('rogue-key.pem'), '-out', f('rogue.pem'), '-days', '1', '-subj', '/CN=mon-1']);
    const ctx = new RecordingContext();
    const driver = new MqttBrokerDriver(
      {
        port: 0,
        host: '127.0.0.1',
        devices: [
          { deviceId: 'mon-1', passwordHash: hashes['mon-1']! },
          { deviceId: 'mon-2', passwordHash: hashes['mon-2']! },
        ],
        tls: { port: 0, cert: f('server.pem'), key: f('server-key.pem'), clientCa: f('ca.pem') },
      },
      ctx,
    );
    await driver.start();
    const url = `mqtts://127.0.0.1:${driver.tlsPort()!}`;
    const base = { protocolVersion: 4 as const, reconnectPeriod: 0, ca: readFileSync(f('server.pem')), connectTimeout: 3000 };
    const attempt = (clientId: string, cert: string | null) =>
      mqtt
        .connectAsync(url, { ...base, clientId, ...(cert ? { cert: readFileSync(f(`${cert}.pem`)), key: readFileSync(f(`${cert}-key.pem`)) } : {}) })
        .then(async (c) => {
          await c.publishAsync(readingsTopic(clientId), body(93), { qos: 1 });
          await c.endAsync();
          return 'ok';
        }, (err: { code?: number }) => err.code ?? -1);
    try {
      expect(await attempt('mon-1', 'mon1')).toBe('ok');
      expect(ctx.readings()).toBe(1);
      expect(await attempt('mon-1', 'rogue')).toBe(4); // not from the device CA: falls back to password, none given
      expect(await attempt('mon-2', 'mon1')).toBe(4); // mon-1's certificate does not make anyone mon-2
      expect(await attempt('mon-1', null)).toBe(4);
      expect(ctx.readings()).toBe(1);
    } finally {
      await driver.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
