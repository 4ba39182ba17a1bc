/**
 * InfluxDB feeder benchmark: how fast a backlog in the SQLite store drains into a local influxd
 * 1.x (the catch-up after an InfluxDB outage), per write batch size.
 *
 *   npx tsx bench/influx.bench.ts [--points 200000] [--batches 1000,5000,10000]
 *
 * Per batch size: a fresh influxd (test/helpers/influxd.ts, free ports, temp folders) and a
 * fresh SQLite store (synchronous=normal) holding `--points` readings of 200 beds × 6 metrics at
 * distinct times; the feeder (src/sinks/influx) starts with the whole backlog behind its cursor,
 * and the clock stops when its lag is 0. The count in InfluxDB is checked afterwards. Prints
 * Markdown rows with the machine and Node version.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parseConfig } from '../src/config/load.js';
import { silentLogger } from '../src/log.js';
import type { Observation } from '../src/model/observation.js';
import { createInfluxFeeder } from '../src/sinks/influx/index.js';
import { SqliteStore } from '../src/store/sqlite.js';
import { INFLUXD_AVAILABLE, INFLUXD_SKIP_NOTE, startInfluxd } from '../test/helpers/influxd.js';

const { values } = parseArgs({
  options: {
    points: { type: 'string', default: '200000' },
    batches: { type: 'string', default: '1000,5000,10000' },
  },
});
const total = Number(values.points);
const batchSizes = values.batches.split(',').map(Number);

const METRICS: ReadonlyArray<[string, number, string, number]> = [
  ['MDC_ECG_HEART_RATE', 147842, '/min', 72],
  ['MDC_PULS_OXIM_SAT_O2', 150456, '%', 97],
  ['MDC_RESP_RATE', 151562, '/min', 16],
  ['MDC_PRESS_BLD_NONINV_SYS', 150021, 'mm[Hg]', 120],
  ['MDC_PRESS_BLD_NONINV_DIA', 150022, 'mm[Hg]', 80],
  ['MDC_TEMP_BODY', 150364, 'Cel', 37],
];
const BEDS = 200;
const T0 = Date.UTC(2026, 10, 21, 0, 0, 0);

function reading(i: number): Observation {
  const [metric, code, unit, base] = METRICS[i % METRICS.length]!;
  const bed = Math.floor(i / METRICS.length) % BEDS;
  const round = Math.floor(i / (METRICS.length * BEDS));
  return {
    time: T0 + round * 1000 + bed, // distinct per bed and metric
    tzOffset: 60,
    deviceId: `mon-${bed}`,
    code,
    system: 'MDC',
    vendorCode: String(code),
    metric,
    value: base + (i % 7) * 0.5,
    text: null,
    unit,
    loinc: null,
    flags: 0,
    containment: '1.1.1.1',
    patient: { system: 'urn:oid:1.2.208.176.1.2', value: '0101901234' },
    location: `ICU/${Math.floor(bed / 10)}/${bed % 10}`,
  };
}

async function fill(store: SqliteStore): Promise<void> {
  const chunk = 5000;
  for (let i = 0; i < total; i += chunk) {
    const observations: Observation[] = [];
    for (let j = i; j < Math.min(total, i + chunk); j++) observations.push(reading(j));
    await store.commit({ received: Date.now(), source: 'bench', message: null, observations, deadLetters: [] });
  }
}

async function run(batchSize: number): Promise<string> {
  const influxd = await startInfluxd();
  const dir = mkdtempSync(join(tmpdir(), 'mdi-influx-bench-'));
  const store = new SqliteStore({ file: join(dir, 'mdi.sqlite'), synchronous: 'normal' });
  try {
    await fill(store);
    const config = parseConfig({ store: { influx: { url: influxd.url, batchSize, pollIntervalMs: 10, timeoutMs: 60_000 } } });
    const feeder = await createInfluxFeeder({ settings: config.store.influx!, store, log: silentLogger() });
    const started = process.hrtime.bigint();
    const cpuBefore = process.cpuUsage();
    feeder.start();
    while (feeder.status().lag > 0) await new Promise((r) => setTimeout(r, 5));
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const cpu = process.cpuUsage(cpuBefore);
    await feeder.stop();
    const status = feeder.status();
    const answer = await influxd.query('SELECT count(value) FROM vitals', 'mdi');
    const counted = answer.results[0]?.series?.[0]?.values[0]?.[1];
    if (counted !== total || status.pointsWritten !== total) throw new Error(`expected ${total} points, InfluxDB has ${String(counted)}, feeder wrote ${status.pointsWritten}`);
    const rate = Math.round(total / seconds);
    const feederCpu = ((cpu.user + cpu.system) / 1e6 / seconds) * 100;
    return `| ${batchSize.toLocaleString('en')} | ${total.toLocaleString('en')} | ${seconds.toFixed(2)} | ${rate.toLocaleString('en')} | ${feederCpu.toFixed(0)} % |`;
  } finally {
    await store.close();
    await influxd.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (!INFLUXD_AVAILABLE) {
  console.log(INFLUXD_SKIP_NOTE);
} else {
  console.log(`Machine: ${cpus()[0]?.model ?? 'unknown'} × ${cpus().length}; Node ${process.version}; ${new Date().toISOString().slice(0, 10)}`);
  console.log('');
  console.log('| batch size | points | seconds | points/s | gateway process CPU |');
  console.log('|---:|---:|---:|---:|---:|');
  for (const size of batchSizes) console.log(await run(size));
}
