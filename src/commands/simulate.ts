import {
  formatPcd01Report,
  parseFaultList,
  PCD01_PROFILES,
  PCD01_SIMULATION_DEFAULTS,
  runPcd01Simulation,
  type Pcd01Charset,
  type Pcd01Profile,
} from '../../simulators/pcd01.js';
import { UsageError } from '../cli.js';
import { abortOnSignals, hostPortOption, numberOption } from './args.js';

/** `mdi simulate <kind>`: plays simulated devices against a running gateway. */
export async function runSimulate(positionals: string[], values: Record<string, unknown>): Promise<number> {
  const [kind, ...extra] = positionals;
  if (extra.length > 0) throw new UsageError(`unexpected argument '${extra[0]}'`);
  if (kind === 'masimo' || kind === 'medibus' || kind === 'bbraun') {
    const { runSerialSimulate } = await import('./simulate-serial.js');
    return runSerialSimulate(kind, values);
  }
  if (kind === 'mqtt') {
    const { runMqttSimulate } = await import('./simulate-mqtt.js');
    return runMqttSimulate(values);
  }
  if (kind === 'adt') {
    const { runAdtSimulate } = await import('./simulate-adt.js');
    return runAdtSimulate(values);
  }
  if (kind !== 'pcd01') {
    throw new UsageError(kind ? `unknown simulator '${kind}' (available: pcd01, masimo, medibus, bbraun, mqtt, adt)` : 'name a simulator: pcd01, masimo, medibus, bbraun, mqtt, adt');
  }
  for (const name of ['secret', 'prefix', 'print-config', 'no-auth']) {
    if (values[name] !== undefined) throw new UsageError(`--${name} is for the mqtt simulator, not for pcd01`);
  }
  for (const name of ['beds', 'patients', 'transfer-every', 'cancels']) {
    if (values[name] !== undefined) throw new UsageError(`--${name} is for the adt simulator, not for pcd01`);
  }
  for (const name of ['port', 'tcp-port', 'pause-ms', 'unplug-ms', 'interval-ms']) {
    if (values[name] !== undefined) throw new UsageError(`--${name} is for the serial simulators, not for pcd01`);
  }

  const to = (values.to as string | undefined) ?? `${PCD01_SIMULATION_DEFAULTS.host}:${PCD01_SIMULATION_DEFAULTS.port}`;
  const target = hostPortOption(to);
  const profile = (values.profile as string | undefined) ?? PCD01_SIMULATION_DEFAULTS.profile;
  if (!PCD01_PROFILES.includes(profile as Pcd01Profile)) {
    throw new UsageError(`--profile must be one of ${PCD01_PROFILES.join(', ')}, got '${profile}'`);
  }
  const charset = (values.charset as string | undefined) ?? PCD01_SIMULATION_DEFAULTS.charset;
  if (charset !== 'utf8' && charset !== 'latin1') throw new UsageError(`--charset must be utf8 or latin1, got '${charset}'`);
  let faults;
  try {
    faults = values.faults === undefined ? undefined : parseFaultList(values.faults as string);
  } catch (err) {
    throw new UsageError(`--faults: ${(err as Error).message}`);
  }

  const stop = abortOnSignals();
  const durationS = numberOption(values.duration, '--duration');
  const count = numberOption(values.count, '--count');
  try {
    const report = await runPcd01Simulation({
      ...target,
      devices: numberOption(values.devices, '--devices'),
      rate: numberOption(values.rate, '--rate'),
      window: numberOption(values.window, '--window'),
      count,
      durationMs: durationS === undefined ? undefined : durationS * 1000,
      profile: profile as Pcd01Profile,
      charset: charset as Pcd01Charset,
      faults,
      faultRate: numberOption(values['fault-rate'], '--fault-rate'),
      seed: numberOption(values.seed, '--seed'),
      signal: stop.signal,
      onProgress: (r) => process.stderr.write(`\r${r.sent} sent, ${r.aa} AA, ${r.ae} AE, ${r.ar} AR, ${r.msgsPerSecond.toFixed(0)} msgs/s   `),
    });
    process.stderr.write('\n');
    process.stdout.write(`${formatPcd01Report(report)}\n`);
    // Ctrl-C leaves messages in flight by design; only failures the user did not cause count.
    const unanswered = report.unacknowledged > 0 && !stop.signal.aborted;
    return report.timeouts > 0 || report.errors > 0 || unanswered ? 1 : 0;
  } catch (err) {
    if (err instanceof RangeError) throw new UsageError(err.message);
    throw err;
  } finally {
    stop.release();
  }
}
