import type { SerialFault, SerialSimulator, SerialSimulatorOptions } from '../../simulators/serial-common.js';
import { UsageError } from '../cli.js';
import { numberOption } from './args.js';

/** Serial devices `mdi simulate` plays. */
export const SERIAL_SIMULATORS = ['masimo', 'medibus', 'bbraun'] as const;
export type SerialSimulatorKind = (typeof SERIAL_SIMULATORS)[number];

/** Options of `mdi simulate pcd01` that mean nothing to a serial device. */
const PCD01_ONLY = ['to', 'devices', 'rate', 'window', 'count', 'profile', 'charset'];

/**
 * `mdi simulate masimo|medibus|bbraun`: plays one serial device on `--port` (the device end of a
 * line someone else made, e.g. a socat pair), on a pty pair it makes itself (and names the
 * gateway's end), or — B. Braun — as a TCP server on `--tcp-port`. Runs until Ctrl-C or
 * `--duration`, then prints what it sent and which faults it injected.
 */
export async function runSerialSimulate(kind: SerialSimulatorKind, values: Record<string, unknown>): Promise<number> {
  for (const name of PCD01_ONLY) if (values[name] !== undefined) throw new UsageError(`--${name} is for pcd01, not for ${kind}`);
  let faults: SerialFault[] | undefined;
  try {
    const { parseSerialFaults } = await import('../../simulators/serial-common.js');
    faults = values.faults === undefined ? undefined : parseSerialFaults(values.faults as string);
  } catch (err) {
    throw new UsageError(`--faults: ${(err as Error).message}`);
  }
  const tcpPort = numberOption(values['tcp-port'], '--tcp-port');
  if (tcpPort !== undefined && kind !== 'bbraun') throw new UsageError('--tcp-port is for bbraun (the ComDevice listens on TCP)');
  if (tcpPort !== undefined && values.port !== undefined) throw new UsageError('give --port or --tcp-port, not both');
  const intervalMs = numberOption(values['interval-ms'], '--interval-ms');
  if (intervalMs !== undefined && kind !== 'masimo') throw new UsageError('--interval-ms is for masimo');
  const common: SerialSimulatorOptions = {
    ...(values.port !== undefined ? { path: values.port as string } : {}),
    ...(tcpPort !== undefined ? { tcpPort } : {}),
    ...(faults ? { faults } : {}),
    ...optional('faultRate', numberOption(values['fault-rate'], '--fault-rate')),
    ...optional('pauseMs', numberOption(values['pause-ms'], '--pause-ms')),
    ...optional('unplugMs', numberOption(values['unplug-ms'], '--unplug-ms')),
    ...optional('seed', numberOption(values.seed, '--seed')),
  };
  let sim: SerialSimulator;
  if (kind === 'masimo') {
    const { startMasimoSimulator } = await import('../../simulators/masimo.js');
    sim = await startMasimoSimulator({ ...common, ...optional('intervalMs', intervalMs) });
  } else if (kind === 'medibus') {
    const { startMedibusSimulator } = await import('../../simulators/medibus.js');
    sim = await startMedibusSimulator(common);
  } else {
    const { startBbraunSimulator } = await import('../../simulators/bbraun.js');
    sim = await startBbraunSimulator(common);
  }
  if (sim.devicePath) process.stdout.write(`${kind}: pty pair made; give the gateway this port: ${sim.devicePath}\n`);
  if (sim.tcpPort !== null) process.stdout.write(`${kind}: listening on TCP 127.0.0.1:${sim.tcpPort}\n`);
  if (values.port !== undefined) process.stdout.write(`${kind}: playing on ${values.port as string}\n`);

  const durationS = numberOption(values.duration, '--duration');
  await new Promise<void>((resolve) => {
    const done = () => resolve();
    process.once('SIGINT', done);
    process.once('SIGTERM', done);
    if (durationS !== undefined) setTimeout(done, durationS * 1000).unref();
  });
  await sim.stop();
  const s = sim.stats;
  const faultText = Object.entries(s.faults)
    .filter(([, n]) => n > 0)
    .map(([f, n]) => `${f} ${n}`)
    .join(', ');
  process.stdout.write(
    `${kind}: ${s.framesSent} frames, ${s.bytesSent} bytes sent; ${s.requests} requests, ${s.acks} ACKs, ${s.naks} NAKs; faults: ${faultText || 'none'}\n`,
  );
  return 0;
}

function optional<K extends string>(key: K, value: number | undefined): { [P in K]?: number } {
  return (value === undefined ? {} : { [key]: value }) as { [P in K]?: number };
}
