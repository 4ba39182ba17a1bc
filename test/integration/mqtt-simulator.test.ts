/**
 * The MQTT device fleet simulator and its CLI (`mdi simulate mqtt`, `mdi mqtt-hash-password`)
 * against the embedded broker.
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { verifySecret } from '../../drivers/mqtt/auth.js';
import { MqttBrokerDriver } from '../../drivers/mqtt/broker.js';
import { ErrorCode } from '../../src/errors.js';
import { PACKAGE_ROOT } from '../../src/paths.js';
import { fleetBrokerDevices, fleetDevices, runMqttSimulation } from '../../simulators/mqtt.js';
import { RecordingContext } from '../contract/driver-contract.js';

const run = promisify(execFile);
const COST = { N: 1024, r: 8, p: 1 };

function mdi(args: string[], input?: string): Promise<{ stdout: string; stderr: string }> {
  const child = run(process.execPath, ['--import', 'tsx', join(PACKAGE_ROOT, 'src/main.ts'), ...args], { cwd: PACKAGE_ROOT, timeout: 30_000 });
  if (input !== undefined) {
    child.child.stdin!.end(input);
  }
  return child;
}

describe('mqtt simulator', () => {
  let broker: MqttBrokerDriver | null = null;
  afterEach(async () => {
    await broker?.stop();
    broker = null;
  });

  async function startBroker(secret: string, n: number): Promise<{ ctx: RecordingContext; url: string }> {
    const ctx = new RecordingContext();
    broker = new MqttBrokerDriver({ port: 0, host: '127.0.0.1', devices: await fleetBrokerDevices(fleetDevices(n, secret), COST) }, ctx);
    await broker.start();
    return { ctx, url: `mqtt://127.0.0.1:${broker.port()}` };
  }

  it('plays a fleet with its credentials: every message acknowledged after it was stored', async () => {
    const { ctx, url } = await startBroker('fleet-secret', 5);
    const report = await runMqttSimulation({ url, devices: fleetDevices(5, 'fleet-secret'), rate: 0, count: 100, seed: 7, faultRate: 0.1 });
    expect(report).toMatchObject({ devices: 5, connected: 5, sent: 100, acked: 100, errors: 0 });
    expect(report.faults).toBeGreaterThan(0);
    expect(ctx.readings()).toBe(report.readings);
    expect(ctx.readings()).toBe((100 - report.faults) * 4);
    expect(ctx.rejects().length).toBe(report.faults);
    expect(ctx.rejects().every((r) => r.code === ErrorCode.MQTT_BAD_PAYLOAD)).toBe(true);
    expect(new Set(ctx.batches.map((b) => b.measurements[0]?.deviceId).filter(Boolean))).toEqual(new Set(['sim-mon-1', 'sim-mon-2', 'sim-mon-3', 'sim-mon-4', 'sim-mon-5']));
  });

  it('a fleet with the wrong secret cannot connect', async () => {
    const { ctx, url } = await startBroker('fleet-secret', 2);
    const report = await runMqttSimulation({ url, devices: fleetDevices(2, 'other-secret'), rate: 0, count: 10 });
    expect(report.connected).toBe(0);
    expect(report.errors).toBe(2);
    expect(ctx.batches).toEqual([]);
  });

  it('mdi simulate mqtt --to mqtt://HOST:PORT --devices N --rate R', async () => {
    const { ctx, url } = await startBroker('cli-secret', 3);
    const { stdout } = await mdi(['simulate', 'mqtt', '--to', url, '--devices', '3', '--rate', '50', '--count', '30', '--secret', 'cli-secret']);
    expect(stdout).toMatch(/devices 3\/3 connected in [\d.]+ s; 30 messages sent, 30 acknowledged/);
    expect(ctx.readings()).toBe(120);
  });

  it('mdi mqtt-hash-password reads stdin and prints a hash that verifies', async () => {
    const { stdout } = await mdi(['mqtt-hash-password'], 'bed 12 secret\n');
    const hash = stdout.trim();
    expect(hash).toMatch(/^scrypt\$16384\$8\$1\$/);
    expect(await verifySecret('bed 12 secret', hash)).toBe(true);
  });
});
