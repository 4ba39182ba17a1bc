/**
 * Store benchmark: the commit path alone (SqliteStore → writer thread → SQLite), without
 * sockets or decoding, as the ingest path uses it.
 *
 *   npx tsx bench/store.bench.ts [--devices 500] [--seconds 10] [--rows 20] [--synchronous full]
 *
 * Every simulated device commits one 20-reading message, waits until it is durable, and
 * commits the next (like a device with one unacknowledged message, as fast as ACKs come). It
 * reports committed messages and readings per second, the commit latency, how busy the event
 * loop was (what the drivers have left for sockets and decoding) and the process CPU (event
 * loop + writer thread). Many devices make the store's (device, time) index take one insertion
 * point per device, which is what a ward of monitors costs. It also reports what a group costs
 * to cross to the writer thread, as objects and as `encodeGroup` sends it.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { deserialize, serialize } from 'node:v8';
import { CPR_SYSTEM } from '../src/model/measurement.js';
import type { Observation } from '../src/model/observation.js';
import { encodeGroup } from '../src/store/commit-group.js';
import { SqliteStore } from '../src/store/sqlite.js';
import type { CommitUnit } from '../src/store/store.js';

const { values } = parseArgs({
  options: {
    devices: { type: 'string', default: '500' },
    seconds: { type: 'string', default: '10' },
    rows: { type: 'string', default: '20' },
    synchronous: { type: 'string', default: 'full' },
  },
});
const devices = Number(values.devices);
const seconds = Number(values.seconds);
const rowsPerMessage = Number(values.rows);
const synchronous = values.synchronous === 'normal' ? 'normal' : 'full';

const METRICS = [
  [147842, 'MDC_ECG_HEART_RATE', '/min', '8867-4'],
  [150456, 'MDC_PULS_OXIM_SAT_O2', '%', '59408-5'],
  [151562, 'MDC_RESP_RATE', '/min', '9279-1'],
  [150021, 'MDC_PRESS_BLD_NONINV_SYS', 'mm[Hg]', '8480-6'],
  [150022, 'MDC_PRESS_BLD_NONINV_DIA', 'mm[Hg]', '8462-4'],
] as const;

function message(device: number, seq: number): CommitUnit {
  const deviceId = `0012A1FFFE${device.toString(16).toUpperCase().padStart(6, '0')}`;
  const time = Date.UTC(2026, 10, 21, 9) + seq * 1000;
  const observations: Observation[] = [];
  for (let r = 0; r < rowsPerMessage; r++) {
    const [code, metric, unit, loinc] = METRICS[r % METRICS.length]!;
    observations.push({
      time,
      tzOffset: 60,
      deviceId,
      code,
      system: 'MDC',
      vendorCode: String(code),
      metric,
      value: 60 + ((seq + r) % 40),
      text: null,
      unit,
      loinc,
      flags: 0,
      containment: `1.1.1.${r + 1}`,
      patient: { system: CPR_SYSTEM, value: `01019${String(device).padStart(5, '0')}` },
      location: `ICU/${device >> 4}/${device & 15}`,
    });
  }
  return { received: Date.now(), source: 'bench', message: { sender: deviceId, controlId: `M${seq}`, digest: 'd' }, observations, deadLetters: [] };
}

/**
 * What a group costs to cross to the writer thread (CPU µs per message): posting serializes it
 * on the event loop, the writer deserializes it. CommitUnits as they are (objects) against
 * `encodeGroup` (flat values and a string table), on 250 messages from as many devices.
 */
function crossingCost(): { objects: [number, number]; encoded: [number, number] } {
  const units = Array.from({ length: 250 }, (_, i) => message(i % devices, i));
  const cpuMicros = (f: () => unknown): number => {
    for (let i = 0; i < 20; i++) f();
    const c = process.cpuUsage();
    for (let i = 0; i < 200; i++) f();
    const u = process.cpuUsage(c);
    return (u.user + u.system) / 200 / units.length;
  };
  const side = (make: () => unknown): [number, number] => {
    const bytes = serialize(make());
    return [cpuMicros(() => serialize(make())), cpuMicros(() => deserialize(bytes))];
  };
  return { objects: side(() => units), encoded: side(() => encodeGroup(units)) };
}
const crossing = crossingCost();

const dir = mkdtempSync(join(tmpdir(), 'mdi-store-bench-'));
const store = new SqliteStore({ file: join(dir, 'mdi.sqlite'), synchronous });
const latencies: number[] = [];
let committed = 0;
let measuring = false;
let running = true;

async function device(d: number): Promise<void> {
  for (let seq = 0; running; seq++) {
    const unit = message(d, seq);
    const t0 = performance.now();
    await store.commit(unit);
    if (measuring) {
      latencies.push(performance.now() - t0);
      committed++;
    }
  }
}

const fleet = Array.from({ length: devices }, (_, d) => device(d));
// Warm-up: JIT, prepared statements, the writer thread started.
await new Promise((r) => setTimeout(r, 2000));
measuring = true;
const elu0 = performance.eventLoopUtilization();
const cpu0 = process.cpuUsage();
const t0 = performance.now();
await new Promise((r) => setTimeout(r, seconds * 1000));
measuring = false;
const elapsed = (performance.now() - t0) / 1000;
const elu = performance.eventLoopUtilization(elu0).utilization;
const cpu = process.cpuUsage(cpu0);
running = false;
await Promise.all(fleet);
await store.close();
rmSync(dir, { recursive: true, force: true });

latencies.sort((a, b) => a - b);
const q = (p: number) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] ?? Number.NaN;
console.log(`\nMachine: ${cpus()[0]?.model ?? 'unknown CPU'}, ${cpus().length} cores; Node ${process.version}; ${new Date().toISOString().slice(0, 10)}`);
console.log(`Command: npx tsx bench/store.bench.ts --devices ${devices} --seconds ${seconds} --rows ${rowsPerMessage} --synchronous ${synchronous}\n`);
console.log('| devices | msgs/s | readings/s | commit p50 ms | p99 ms | event loop busy | process CPU |');
console.log('|---:|---:|---:|---:|---:|---:|---:|');
console.log(
  `| ${devices} | ${(committed / elapsed).toFixed(0)} | ${((committed * rowsPerMessage) / elapsed).toFixed(0)} | ${q(0.5).toFixed(1)} | ${q(0.99).toFixed(1)} | ${(elu * 100).toFixed(0)} % | ${(((cpu.user + cpu.system) / 1e6 / elapsed) * 100).toFixed(0)} % |`,
);
console.log('\nCrossing to the writer thread, CPU µs per message (post = serialize on the event loop, read = deserialize in the writer):\n');
console.log('| group as | post µs | read µs |');
console.log('|---|---:|---:|');
console.log(`| CommitUnit objects | ${crossing.objects[0].toFixed(1)} | ${crossing.objects[1].toFixed(1)} |`);
console.log(`| encodeGroup (flat values + string table) | ${crossing.encoded[0].toFixed(1)} | ${crossing.encoded[1].toFixed(1)} |`);
