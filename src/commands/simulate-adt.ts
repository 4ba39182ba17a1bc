import { UsageError } from '../cli.js';
import { abortOnSignals, hostPortOption, integerOption, numberOption } from './args.js';

/** Options of the other simulators that mean nothing to an ADT feed. */
const NOT_FOR_ADT = ['devices', 'window', 'profile', 'faults', 'fault-rate', 'port', 'tcp-port', 'pause-ms', 'unplug-ms', 'interval-ms', 'secret', 'prefix', 'print-config', 'no-auth'];

/**
 * `mdi simulate adt --to HOST:PORT --beds ICU/1/1,ICU/1/2 --patients N --rate R
 * --transfer-every S [--cancels]`: a ward's ADT feed (admits, transfers, discharges, updates,
 * and cancels when asked) over one MLLP connection, one message in flight.
 */
export async function runAdtSimulate(values: Record<string, unknown>): Promise<number> {
  for (const name of NOT_FOR_ADT) if (values[name] !== undefined) throw new UsageError(`--${name} is not an option of the adt simulator`);
  const { ADT_SIMULATION_DEFAULTS, formatAdtReport, runAdtSimulation } = await import('../../simulators/adt.js');
  const to = (values.to as string | undefined) ?? `${ADT_SIMULATION_DEFAULTS.host}:${ADT_SIMULATION_DEFAULTS.port}`;
  const target = hostPortOption(to);
  const beds = ((values.beds as string | undefined) ?? 'ICU/1/1,ICU/1/2,ICU/2/1,ICU/2/2')
    .split(',')
    .map((b) => b.trim())
    .filter((b) => b !== '');
  if (beds.length === 0 || beds.some((b) => !/^[^/^|~\\&\s]+(\/[^/^|~\\&\s]+){0,2}$/.test(b))) {
    throw new UsageError('--beds: a comma list of bed keys ward/room/bed (no HL7 delimiters or spaces)');
  }
  const patients = integerOption(values.patients, '--patients') ?? beds.length * 2;
  if (patients < 1 || patients > 1000) throw new UsageError('--patients must be between 1 and 1000');
  const rate = numberOption(values.rate, '--rate') ?? ADT_SIMULATION_DEFAULTS.rate;
  if (rate < 0) throw new UsageError('--rate must be ≥ 0');
  const transferEvery = numberOption(values['transfer-every'], '--transfer-every') ?? 600;
  if (transferEvery < 0) throw new UsageError('--transfer-every must be ≥ 0 (seconds; 0 = no transfers)');
  const charset = (values.charset as string | undefined) ?? 'utf8';
  if (charset !== 'utf8' && charset !== 'latin1') throw new UsageError(`--charset must be utf8 or latin1, got '${charset}'`);
  const durationS = numberOption(values.duration, '--duration');
  const count = integerOption(values.count, '--count');
  const seed = integerOption(values.seed, '--seed');

  const stop = abortOnSignals();
  try {
    const report = await runAdtSimulation({
      ...target,
      beds,
      patients,
      rate,
      transferEveryMs: transferEvery * 1000,
      cancels: values.cancels === true,
      charset,
      signal: stop.signal,
      ...(count !== undefined ? { count } : {}),
      ...(durationS !== undefined ? { durationMs: durationS * 1000 } : {}),
      ...(seed !== undefined ? { seed } : {}),
      onProgress: (r) => process.stderr.write(`\r${r.sent} sent, ${r.aa} AA, ${r.ae} AE, ${r.ar} AR   `),
    });
    process.stderr.write('\n');
    process.stdout.write(`${formatAdtReport(report)}\n`);
    return report.timeouts > 0 || report.errors > 0 || report.ar > 0 ? 1 : 0;
  } catch (err) {
    if (err instanceof RangeError) throw new UsageError(err.message);
    throw err;
  } finally {
    stop.release();
  }
}
