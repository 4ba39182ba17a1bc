/**
 * A fleet of simulated MQTT bedside devices: each connects with its own client id and
 * credentials and publishes batches of vital signs to `mdi/v1/devices/<id>/readings` with
 * QoS 1, one message in flight at a time (like a real device), and measures PUBACK latency.
 *
 * Credentials: until the device registry exists, a fleet is derived from one fleet secret:
 * device `<prefix>-<n>` has the password HMAC-SHA256(secret, id). `fleetBrokerDevices()` gives
 * the matching `mqtt.broker.devices` entries (scrypt hashes) for the gateway's config, so the
 * gateway never sees a password in clear.
 */
import { createHmac, randomBytes } from 'node:crypto';
import mqtt, { type MqttClient } from 'mqtt';
import { hashSecret } from '../drivers/mqtt/auth.js';
import { readingsTopic } from '../drivers/mqtt/payload.js';
import { gaussian, mixSeed, mulberry32, type Rng } from './random.js';

/** One simulated device's identity. */
export interface FleetDevice {
  readonly deviceId: string;
  readonly password: string;
}

/** The fleet's devices: `<prefix>-1` … `<prefix>-<n>`, passwords derived from `secret`. */
export function fleetDevices(count: number, secret: string, prefix = 'sim-mon'): FleetDevice[] {
  return Array.from({ length: count }, (_, i) => {
    const deviceId = `${prefix}-${i + 1}`;
    return { deviceId, password: createHmac('sha256', secret).update(deviceId).digest('base64url') };
  });
}

/** `mqtt.broker.devices` entries for a fleet (scrypt-hashed; `cost` lower only in tests and benches). */
export async function fleetBrokerDevices(
  devices: readonly FleetDevice[],
  cost?: { N: number; r: number; p: number },
): Promise<{ deviceId: string; passwordHash: string }[]> {
  const out: { deviceId: string; passwordHash: string }[] = [];
  for (const d of devices) out.push({ deviceId: d.deviceId, passwordHash: await hashSecret(d.password, cost) });
  return out;
}

/** What `runMqttSimulation` does. */
export interface MqttSimulationOptions {
  /** `mqtt://host:port`. */
  readonly url: string;
  readonly devices: readonly FleetDevice[];
  /** Messages per second per device; 0 = as fast as PUBACKs come. */
  readonly rate: number;
  /** Stop after this many messages in total. */
  readonly count?: number;
  readonly durationMs?: number;
  /** 4 (MQTT 3.1.1, default: the embedded broker speaks it) or 5. */
  readonly protocolVersion?: 4 | 5;
  /** Readings per message (default 4: SpO2, pulse, RR, PI). */
  readonly readingsPerMessage?: number;
  /** Fraction of messages sent malformed (truncated JSON), to see dead letters. */
  readonly faultRate?: number;
  readonly seed?: number;
  /** Authenticate with user name + password (default true; false for an open broker). */
  readonly auth?: boolean;
  readonly signal?: AbortSignal;
  readonly onProgress?: (report: MqttSimulationReport) => void;
}

/** The outcome of a run. */
export interface MqttSimulationReport {
  readonly devices: number;
  readonly connected: number;
  readonly sent: number;
  readonly acked: number;
  readonly readings: number;
  readonly faults: number;
  readonly errors: number;
  /** Time until every device had connected (or failed to), ms; not part of `elapsedMs`. */
  readonly connectMs: number;
  /** From the moment every device had connected to the end, ms. */
  readonly elapsedMs: number;
  readonly msgsPerSecond: number;
  readonly readingsPerSecond: number;
  /** PUBACK latency percentiles, ms. */
  readonly latencyMs: { readonly p50: number; readonly p95: number; readonly p99: number };
  readonly firstError: string | null;
}

const VITALS: readonly { code: string; unit: string; mean: number; sd: number }[] = [
  { code: '150456', unit: '%', mean: 97, sd: 1 },
  { code: '147842', unit: '/min', mean: 72, sd: 4 },
  { code: '151562', unit: '/min', mean: 14, sd: 2 },
  { code: 'masimo:PI', unit: '', mean: 3.2, sd: 0.5 },
];

/** Latencies kept for percentiles: a bounded reservoir, so a long run does not grow memory. */
const MAX_SAMPLES = 100_000;

/** Plays the fleet until `count`, `durationMs` or `signal`; resolves with the report. */
export async function runMqttSimulation(options: MqttSimulationOptions): Promise<MqttSimulationReport> {
  const seed = options.seed ?? Math.floor(Math.random() * 2 ** 31);
  const perMessage = Math.max(1, Math.min(options.readingsPerMessage ?? 4, 1000));
  const runId = randomBytes(4).toString('hex');
  const begun = Date.now();
  let started = begun;
  let connectMs = 0;
  const latencies: number[] = [];
  let sent = 0;
  let acked = 0;
  let readings = 0;
  let faults = 0;
  let errors = 0;
  let connected = 0;
  let firstError: string | null = null;
  const stop = new AbortController();
  const onAbort = () => stop.abort();
  options.signal?.addEventListener('abort', onAbort, { once: true });
  let timer: NodeJS.Timeout | null = null;

  const report = (): MqttSimulationReport => {
    const elapsedMs = Math.max(1, Date.now() - started);
    const sorted = [...latencies].sort((a, b) => a - b);
    const pct = (p: number) => (sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!);
    return {
      devices: options.devices.length,
      connected,
      sent,
      acked,
      readings,
      faults,
      errors,
      connectMs,
      elapsedMs,
      msgsPerSecond: (acked * 1000) / elapsedMs,
      readingsPerSecond: (readings * 1000) / elapsedMs,
      latencyMs: { p50: pct(0.5), p95: pct(0.95), p99: pct(0.99) },
      firstError,
    };
  };
  const progress = options.onProgress ? setInterval(() => options.onProgress!(report()), 1000) : null;

  const claim = (): boolean => {
    if (stop.signal.aborted) return false;
    if (options.count !== undefined && sent >= options.count) {
      stop.abort();
      return false;
    }
    sent++;
    return true;
  };

  const connectOne = async (device: FleetDevice): Promise<MqttClient | null> => {
    try {
      const client = await mqtt.connectAsync(options.url, {
        clientId: device.deviceId,
        ...(options.auth === false ? {} : { username: device.deviceId, password: device.password }),
        protocolVersion: options.protocolVersion ?? 4,
        reconnectPeriod: 1000,
        // Generous: after a gateway restart the whole fleet reconnects at once, and each
        // connect costs the broker one scrypt check.
        connectTimeout: 60_000,
      });
      connected++;
      return client;
    } catch (err) {
      errors++;
      firstError ??= `${device.deviceId}: ${(err as Error).message}`;
      return null;
    }
  };

  const playOne = async (device: FleetDevice, client: MqttClient, index: number): Promise<void> => {
    const rnd: Rng = mulberry32(mixSeed(seed, index));
    const topic = readingsTopic(device.deviceId);
    const intervalMs = options.rate > 0 ? 1000 / options.rate : 0;
    // Spread the devices' first messages over one interval: a fleet does not publish in lock-step.
    let next = Date.now() + rnd() * intervalMs;
    let seq = 0;
    try {
      while (!stop.signal.aborted) {
        const wait = next - Date.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        if (!claim()) break;
        next += intervalMs;
        const now = Date.now();
        const rows = [];
        for (let k = 0; k < perMessage; k++) {
          const v = VITALS[k % VITALS.length]!;
          rows.push({ code: v.code, value: Math.round((v.mean + gaussian(rnd) * v.sd) * 10) / 10, unit: v.unit });
        }
        let body = JSON.stringify({ ts: now, id: `${runId}-${++seq}`, readings: rows });
        const fault = options.faultRate !== undefined && rnd() < options.faultRate;
        if (fault) {
          body = body.slice(0, Math.floor(body.length / 2));
          faults++;
        }
        const t0 = performance.now();
        try {
          await client.publishAsync(topic, body, { qos: 1 });
          acked++;
          if (!fault) readings += perMessage;
          if (latencies.length < MAX_SAMPLES) latencies.push(performance.now() - t0);
          else latencies[Math.floor(rnd() * MAX_SAMPLES)] = performance.now() - t0;
        } catch (err) {
          errors++;
          firstError ??= `${device.deviceId}: ${(err as Error).message}`;
        }
      }
    } finally {
      await client.endAsync().catch(() => undefined);
    }
  };

  try {
    // Connect the whole fleet first, so the rates measure traffic, not the connect storm.
    const clients = await Promise.all(options.devices.map((d) => connectOne(d)));
    connectMs = Date.now() - begun;
    started = Date.now();
    if (options.durationMs !== undefined) timer = setTimeout(() => stop.abort(), options.durationMs);
    await Promise.all(options.devices.map((d, i) => (clients[i] ? playOne(d, clients[i], i) : Promise.resolve())));
  } finally {
    if (timer) clearTimeout(timer);
    if (progress) clearInterval(progress);
    options.signal?.removeEventListener('abort', onAbort);
  }
  return report();
}

/** A short human-readable summary of a run. */
export function formatMqttReport(r: MqttSimulationReport): string {
  return [
    `devices ${r.connected}/${r.devices} connected in ${(r.connectMs / 1000).toFixed(1)} s; ${r.sent} messages sent, ${r.acked} acknowledged (PUBACK), ${r.faults} malformed on purpose, ${r.errors} errors`,
    `${r.msgsPerSecond.toFixed(0)} msgs/s, ${r.readingsPerSecond.toFixed(0)} readings/s over ${(r.elapsedMs / 1000).toFixed(1)} s`,
    `PUBACK latency p50 ${r.latencyMs.p50.toFixed(1)} ms, p95 ${r.latencyMs.p95.toFixed(1)} ms, p99 ${r.latencyMs.p99.toFixed(1)} ms`,
    ...(r.firstError ? [`first error: ${r.firstError}`] : []),
  ].join('\n');
}
