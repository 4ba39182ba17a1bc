/**
 * End-to-end benchmark: PCD-01 simulator → MLLP → decode → normalize → SQLite commit → ACK.
 *
 *   npx tsx bench/e2e.bench.ts [--seconds 15] [--profile obx20] [--rate 5000] [--devices 500]
 *
 * The gateway runs as its own process (as in production; here from the TypeScript sources via
 * tsx) on its embedded defaults (SQLite, synchronous=full, group commit on the store's writer
 * thread) in a temp folder; the simulator runs in this process, on the same two cores. Each run
 * starts with a warm-up by the same fleet (JIT, and the gateway's first contact with every
 * device), then measures. Two runs:
 *  1. saturation: a few connections with a pipelining window, as fast as ACKs allow;
 *  2. offered load: `--devices` devices (default 500), one message in flight each (like real device gateways), at a
 *     fixed total rate (default 5,000 msgs/s) — the target is ACK p99 < 50 ms at that rate.
 * Prints a Markdown table with the machine, Node version and command.
 */
import { cpus, tmpdir } from 'node:os';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { runPcd01Simulation, type Pcd01Profile, type Pcd01SimulationReport } from '../simulators/pcd01.js';
import { startChildGateway } from '../test/helpers/child-gateway.js';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '15' },
    profile: { type: 'string', default: 'obx20' },
    rate: { type: 'string', default: '5000' },
    devices: { type: 'string', default: '500' },
  },
});
const seconds = Number(values.seconds);
const profile = values.profile as Pcd01Profile;
const offered = Number(values.rate);
const offeredDevices = Number(values.devices);

interface Row {
  scenario: string;
  report: Pcd01SimulationReport;
}

async function scenario(name: string, options: { devices: number; window: number; rate: number }): Promise<Row> {
  const dataDir = mkdtempSync(join(tmpdir(), 'mdi-e2e-'));
  const gw = await startChildGateway(dataDir);
  // An interrupted bench (Ctrl-C, timeout) must not leave its gateway running.
  const abort = () => {
    gw.child.kill('SIGKILL');
    process.exit(130);
  };
  process.once('SIGINT', abort);
  process.once('SIGTERM', abort);
  try {
    // Warm-up with the same fleet: JIT the decode path and the SQLite statements, and let the
    // gateway meet every device once (first contact records it in the registry) before measuring.
    await runPcd01Simulation({ port: gw.mllpPort, devices: options.devices, rate: 0, window: options.window, count: Math.max(4000, options.devices * 8), profile, seed: 2 });
    const report = await runPcd01Simulation({
      port: gw.mllpPort,
      devices: options.devices,
      rate: options.rate,
      window: options.window,
      durationMs: seconds * 1000,
      profile,
      seed: 2,
    });
    return { scenario: name, report };
  } finally {
    process.off('SIGINT', abort);
    process.off('SIGTERM', abort);
    await gw.terminate();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

const rows: Row[] = [];
rows.push(await scenario('saturation: 8 connections, window 16', { devices: 8, window: 16, rate: 0 }));
rows.push(
  await scenario(`offered ${offered} msgs/s: ${offeredDevices} devices × ${offered / offeredDevices}/s, window 1`, {
    devices: offeredDevices,
    window: 1,
    rate: offered / offeredDevices,
  }),
);

const cpu = cpus()[0]?.model ?? 'unknown CPU';
console.log(`\n## End to end: simulator → MLLP → committed → ACK (${profile} messages)\n`);
console.log(`Machine: ${cpu}, ${cpus().length} cores; Node ${process.version}; ${new Date().toISOString().slice(0, 10)}`);
console.log(`Command: npx tsx bench/e2e.bench.ts --seconds ${seconds} --profile ${profile} --rate ${offered} --devices ${offeredDevices}\n`);
console.log('| scenario | acked msgs/s | AA | AE+AR | timeouts | ACK p50 ms | p95 ms | p99 ms | max ms |');
console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|');
for (const { scenario: name, report: r } of rows) {
  const l = r.latencyMs;
  console.log(
    `| ${name} | ${r.msgsPerSecond.toFixed(0)} | ${r.aa} | ${r.ae + r.ar} | ${r.timeouts} | ${l.p50.toFixed(2)} | ${l.p95.toFixed(2)} | ${l.p99.toFixed(2)} | ${l.max.toFixed(1)} |`,
  );
}
