/**
 * MQTT end-to-end benchmark: simulated devices → broker → gateway → normalize → SQLite commit.
 *
 *   npx tsx bench/mqtt.bench.ts [--seconds 15] [--devices 100] [--count 40000]
 *
 * The gateway runs as its own process (`mdi start`, from the TypeScript sources via tsx) on its
 * embedded defaults (SQLite, synchronous=full); the device fleet runs in this process.
 *  1. Embedded broker (aedes): `--devices` authenticated devices, one QoS 1 message in flight
 *     each, as fast as PUBACKs come. PUBACK is sent after the commit, so the rate the devices
 *     see is the stored rate.
 *  2. Embedded broker, offered load: 250 devices at 4 messages/s each (1,000 msgs/s).
 *  3. Mosquitto (client mode, one gateway subscribed with QoS 1): the fleet publishes `--count`
 *     messages as fast as Mosquitto acknowledges them; the clock stops when the gateway has
 *     stored every reading (read from /api/status).
 * Each message carries 4 readings. Prints Markdown rows with the machine and Node version.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fleetBrokerDevices, fleetDevices, runMqttSimulation, type MqttSimulationReport } from '../simulators/mqtt.js';
import { startChildGateway, type ChildGateway } from '../test/helpers/child-gateway.js';
import { startMosquitto } from '../test/helpers/mosquitto.js';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '15' },
    devices: { type: 'string', default: '100' },
    count: { type: 'string', default: '40000' },
  },
});
const seconds = Number(values.seconds);
const deviceCount = Number(values.devices);
const mosquittoCount = Number(values.count);
const SECRET = 'bench-secret';

interface Row {
  readonly scenario: string;
  readonly msgsPerSecond: number;
  readonly readingsPerSecond: number;
  readonly p50: number | null;
  readonly p99: number | null;
  readonly note: string;
}

function mqttPort(gw: ChildGateway): number {
  for (const line of gw.lines) {
    try {
      const entry = JSON.parse(line) as { msg?: string; mqtt?: { port: number } | null };
      if (entry.msg === 'mdi-gateway started' && entry.mqtt) return entry.mqtt.port;
    } catch {
      // not JSON
    }
  }
  throw new Error('the gateway did not log its MQTT port');
}

async function storedReadings(gw: ChildGateway): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${gw.httpPort}/api/status`);
  const body = (await res.json()) as { drivers: { kind: string; counters: Record<string, number> }[] };
  return body.drivers.filter((d) => d.kind.startsWith('mqtt')).reduce((n, d) => n + (d.counters.readings ?? 0), 0);
}

async function embedded(name: string, devices: number, rate: number): Promise<Row> {
  const dataDir = mkdtempSync(join(tmpdir(), 'mdi-mqtt-bench-'));
  const fleet = fleetDevices(devices, SECRET);
  // Production scrypt cost: the connect storm is part of the gateway's real work.
  const entries = await fleetBrokerDevices(fleet);
  const yaml = [
    'fhir: { enabled: false }',
    'mqtt:',
    '  broker:',
    '    enabled: true',
    '    port: 0',
    '    host: 127.0.0.1',
    '    devices:',
    ...entries.map((e) => `      - { deviceId: ${e.deviceId}, passwordHash: "${e.passwordHash}" }`),
    '',
  ].join('\n');
  const gw = await startChildGateway(dataDir, yaml);
  try {
    const url = `mqtt://127.0.0.1:${mqttPort(gw)}`;
    // Warm-up: JIT the decode path and the SQLite statements before measuring.
    await runMqttSimulation({ url, devices: fleet.slice(0, 8), rate: 0, count: 4000, seed: 1 });
    const report: MqttSimulationReport = await runMqttSimulation({ url, devices: fleet, rate, durationMs: seconds * 1000, seed: 2 });
    if (report.errors > 0) throw new Error(`simulation errors: ${report.firstError}`);
    return {
      scenario: name,
      msgsPerSecond: report.msgsPerSecond,
      readingsPerSecond: report.readingsPerSecond,
      p50: report.latencyMs.p50,
      p99: report.latencyMs.p99,
      note: `${report.acked} msgs in ${(report.elapsedMs / 1000).toFixed(1)} s; fleet connect (scrypt N=2^14 each) ${(report.connectMs / 1000).toFixed(1)} s`,
    };
  } finally {
    await gw.terminate();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

async function viaMosquitto(name: string, devices: number, count: number): Promise<Row> {
  const dataDir = mkdtempSync(join(tmpdir(), 'mdi-mqtt-bench-'));
  const broker = await startMosquitto({ persistence: false });
  const yaml = ['fhir: { enabled: false }', 'mqtt:', '  subscribe:', `    - { url: "${broker.url}", clientId: bench-gw, sharedGroup: mdi, receiveMaximum: 64 }`, ''].join('\n');
  const gw = await startChildGateway(dataDir, yaml);
  try {
    const fleet = fleetDevices(devices, SECRET);
    // Wait until the gateway is subscribed: probe until a reading comes through (a message
    // published before the first subscription exists is dropped by the broker).
    for (const deadline = Date.now() + 20_000; (await storedReadings(gw)) < 4; ) {
      if (Date.now() > deadline) throw new Error('the gateway did not subscribe');
      await runMqttSimulation({ url: broker.url, devices: fleet.slice(0, 1), rate: 0, count: 1, auth: false, protocolVersion: 5 });
      await new Promise((r) => setTimeout(r, 200));
    }
    const base = await storedReadings(gw);
    const t0 = performance.now();
    const report = await runMqttSimulation({ url: broker.url, devices: fleet, rate: 0, count, auth: false, protocolVersion: 5, seed: 3 });
    const target = base + report.readings;
    const deadline = Date.now() + 300_000;
    while ((await storedReadings(gw)) < target) {
      if (Date.now() > deadline) throw new Error('the gateway did not store every reading within 5 minutes');
      await new Promise((r) => setTimeout(r, 20));
    }
    const elapsed = (performance.now() - t0) / 1000;
    return {
      scenario: name,
      msgsPerSecond: report.acked / elapsed,
      readingsPerSecond: report.readings / elapsed,
      p50: null,
      p99: null,
      note: `${report.acked} msgs; publish side alone ${report.msgsPerSecond.toFixed(0)} msgs/s; clock stops at the last stored reading`,
    };
  } finally {
    await gw.terminate();
    await broker.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

const rows: Row[] = [];
const progress = (r: Row) => {
  rows.push(r);
  process.stderr.write(`${r.scenario}: ${Math.round(r.readingsPerSecond)} readings/s\n`);
};
progress(await embedded(`embedded broker: ${deviceCount} devices, saturation (1 in flight each)`, deviceCount, 0));
progress(await embedded('embedded broker: 250 devices × 4 msgs/s offered (1,000 msgs/s)', 250, 4));
progress(await viaMosquitto(`Mosquitto → 1 gateway (QoS 1, shared sub): ${deviceCount} devices`, deviceCount, mosquittoCount));

const cpu = cpus()[0]?.model ?? 'unknown CPU';
process.stdout.write(`\nMachine: ${cpu} × ${cpus().length}, Node ${process.version}, ${new Date().toISOString().slice(0, 10)}\n`);
process.stdout.write(`Command: npx tsx bench/mqtt.bench.ts --seconds ${seconds} --devices ${deviceCount} --count ${mosquittoCount}\n\n`);
process.stdout.write('| scenario | msgs/s | readings/s | PUBACK p50 ms | PUBACK p99 ms | note |\n|---|---:|---:|---:|---:|---|\n');
for (const r of rows) {
  const ms = (v: number | null) => (v === null ? '–' : v.toFixed(1));
  process.stdout.write(
    `| ${r.scenario} | ${Math.round(r.msgsPerSecond).toLocaleString('en')} | ${Math.round(r.readingsPerSecond).toLocaleString('en')} | ${ms(r.p50)} | ${ms(r.p99)} | ${r.note} |\n`,
  );
}
