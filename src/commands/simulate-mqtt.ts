import { UsageError } from '../cli.js';
import { abortOnSignals, integerOption, numberOption } from './args.js';

/** Options of other simulators that mean nothing to the MQTT fleet. */
const NOT_FOR_MQTT = ['window', 'profile', 'charset', 'port', 'tcp-port', 'pause-ms', 'unplug-ms', 'interval-ms'];

/**
 * `mdi simulate mqtt --to mqtt://HOST:PORT --devices N --rate R`: a fleet of devices with
 * credentials derived from `--secret`. `--print-config` prints the `mqtt.broker.devices` block
 * (scrypt hashes) for the gateway's config instead of playing.
 */
export async function runMqttSimulate(values: Record<string, unknown>): Promise<number> {
  for (const name of NOT_FOR_MQTT) if (values[name] !== undefined) throw new UsageError(`--${name} is not an option of the mqtt simulator`);
  const { fleetDevices, fleetBrokerDevices, runMqttSimulation, formatMqttReport } = await import('../../simulators/mqtt.js');
  const count = integerOption(values.devices, '--devices') ?? 10;
  if (count < 1 || count > 100_000) throw new UsageError('--devices must be between 1 and 100000');
  const secret = (values.secret as string | undefined) ?? process.env.MDI_SIM_SECRET ?? 'mdi-simulator';
  const prefix = (values.prefix as string | undefined) ?? 'sim-mon';
  if (!/^[A-Za-z0-9._:-]{1,100}$/.test(prefix)) throw new UsageError('--prefix: letters, digits and . _ : - only');
  const devices = fleetDevices(count, secret, prefix);

  if (values['print-config'] === true) {
    const entries = await fleetBrokerDevices(devices);
    process.stdout.write('mqtt:\n  broker:\n    enabled: true\n    devices:\n');
    for (const e of entries) process.stdout.write(`      - { deviceId: ${e.deviceId}, passwordHash: "${e.passwordHash}" }\n`);
    return 0;
  }

  const to = (values.to as string | undefined) ?? 'mqtt://127.0.0.1:1883';
  if (!/^(mqtts?|wss?):\/\/[^\s]+$/.test(to)) throw new UsageError(`--to must be an mqtt:// URL (mqtt://HOST:PORT), got '${to}'`);
  const rate = numberOption(values.rate, '--rate') ?? 1;
  if (rate < 0) throw new UsageError('--rate must be ≥ 0');
  const faultRate = numberOption(values['fault-rate'], '--fault-rate') ?? (values.faults !== undefined ? 0.01 : undefined);
  if (values.faults !== undefined && values.faults !== 'bad-json') throw new UsageError('--faults for mqtt: bad-json');
  const durationS = numberOption(values.duration, '--duration');
  const total = integerOption(values.count, '--count');
  const seed = integerOption(values.seed, '--seed');

  const stop = abortOnSignals();
  try {
    const report = await runMqttSimulation({
      url: to,
      devices,
      rate,
      ...(total !== undefined ? { count: total } : {}),
      ...(durationS !== undefined ? { durationMs: durationS * 1000 } : {}),
      ...(faultRate !== undefined ? { faultRate } : {}),
      ...(seed !== undefined ? { seed } : {}),
      auth: values['no-auth'] !== true,
      signal: stop.signal,
      onProgress: (r) => process.stderr.write(`\r${r.connected}/${r.devices} connected, ${r.acked} acked, ${r.msgsPerSecond.toFixed(0)} msgs/s   `),
    });
    process.stderr.write('\n');
    process.stdout.write(`${formatMqttReport(report)}\n`);
    return report.errors > 0 || report.connected < report.devices ? 1 : 0;
  } finally {
    stop.release();
  }
}
