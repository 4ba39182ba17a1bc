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
