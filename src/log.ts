import { pino, type DestinationStream, type Logger } from 'pino';

export type { Logger } from 'pino';

/**
 * Patient data never reaches a log line in clear, by two independent means:
 * 1. Redaction by path: any field named like patient data is replaced, wherever it is nested.
 * 2. A scrub of every string that is logged: anything shaped like a CPR number (DDMMYY-SSSS,
 *    with or without the dash, with a valid day and month) is masked. This catches a CPR
 *    smuggled into a message or an error text by a future change.
 * Raw device bytes are never logged: callers log sizes, codes and locations, not payloads.
 */
// `authorization`: a request logged with its headers must not carry the bearer token.
const REDACT_PATHS = ['patient', 'cpr', 'patientName', 'pid', 'raw', 'authorization'].flatMap((key) => [key, `*.${key}`, `*.*.${key}`]);

/** DDMMYY then four digits, not inside a longer run of digits. */
const CPR_PATTERN = /(?<!\d)(0[1-9]|[12]\d|3[01])(0[1-9]|1[0-2])(\d{2})-?(\d{4})(?!\d)/g;

/** Masks CPR-shaped numbers in text. */
export function scrubCpr(text: string): string {
  return text.replace(CPR_PATTERN, '******-****');
}

function scrubValue(value: unknown, depth: number): unknown {
  if (typeof value === 'string') return scrubCpr(value);
  if (depth > 6 || value === null || typeof value !== 'object') return value;
  if (value instanceof Error) {
    // Still an Error, so pino's serializer keeps type and stack; message and stack scrubbed.
    const copy = new Error(scrubCpr(value.message));
    copy.name = value.name;
    copy.stack = scrubCpr(value.stack ?? '');
    const code = (value as { code?: unknown }).code;
    if (code !== undefined) (copy as Error & { code?: unknown }).code = code;
    return copy;
  }
  if (Array.isArray(value)) return value.map((v) => scrubValue(v, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [key, child] of Object.entries(value)) out[key] = scrubValue(child, depth + 1);
  return out;
}

export interface LogOptions {
  level?: string;
  /** Where lines go; stdout by default. Tests pass a stream to read what was logged. */
  destination?: DestinationStream;
}

export function createLogger(options: LogOptions = {}): Logger {
  return pino(
    {
      level: options.level ?? 'info',
      base: { service: 'mdi-gateway' },
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      formatters: {
        log: (object) => scrubValue(object, 0) as Record<string, unknown>,
      },
      hooks: {
        logMethod(args, method) {
          for (let i = 0; i < args.length; i++) {
            const arg = args[i];
            if (typeof arg === 'string') (args as unknown[])[i] = scrubCpr(arg);
          }
          return method.apply(this, args);
        },
      },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    options.destination,
  );
}

/** A logger that writes nothing (tests, the inspect command). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}

/**
 * An interval end for a log line: ISO 8601, or `open` for the ends that stand for ±infinity
 * (beyond the range of a Date: open-ended binding changes are kept as the largest safe integers).
 */
export function logTime(ms: number): string {
  return Math.abs(ms) > 8.64e15 ? 'open' : new Date(ms).toISOString();
}
