import { UsageError } from '../cli.js';

/** A numeric command-line option: undefined when absent, a UsageError (exit 2) naming the flag when not a number. */
export function numberOption(value: unknown, flag: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isFinite(n)) throw new UsageError(`${flag} must be a number, got '${String(value)}'`);
  return n;
}

/** As `numberOption`, and it must be a whole number. */
export function integerOption(value: unknown, flag: string): number | undefined {
  const n = numberOption(value, flag);
  if (n !== undefined && !Number.isInteger(n)) throw new UsageError(`${flag} must be a whole number, got '${String(value)}'`);
  return n;
}

/** `--to HOST:PORT` (`:2575` is the local host; an IPv6 host in brackets). */
export function hostPortOption(to: string): { host: string; port: number } {
  const match = /^(.*):(\d+)$/.exec(to);
  if (!match) throw new UsageError(`--to must be HOST:PORT, got '${to}'`);
  return { host: match[1] === '' ? '127.0.0.1' : match[1]!.replace(/^\[|\]$/g, ''), port: Number(match[2]) };
}

/** An abort signal that Ctrl-C (SIGINT) or SIGTERM fires; `release()` stops listening. */
export function abortOnSignals(): { signal: AbortSignal; release(): void } {
  const controller = new AbortController();
  const onSignal = () => controller.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  return {
    signal: controller.signal,
    release() {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    },
  };
}
