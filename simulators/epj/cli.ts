/**
 * Command line of the EPJ stand-in, ready to be mounted as `mdi epj` by the real CLI:
 * `runEpjCli(process.argv.slice(3))`. Also runnable on its own: `npx tsx simulators/epj/main.ts`.
 */
import { readFile } from 'node:fs/promises';
import type { Writable } from 'node:stream';
import { parseArgs } from 'node:util';
import type { Resource } from '@medplum/fhirtypes';
import { pino } from 'pino';
import type { Level } from 'pino';
import { z } from 'zod';
import { describeZodError, EpjFaultsSchema } from './faults.js';
import type { EpjFaults } from './faults.js';
import { startEpj } from './server.js';
import type { EpjOptions, EpjServer } from './server.js';

/** Port of the stand-in when none is given on the command line (embedded defaults use it too). */
export const EPJ_DEFAULT_PORT = 8090;

/** Help text of `mdi epj --help`. */
export const EPJ_CLI_HELP = `Usage: mdi epj [options]

Runs the EPJ stand-in: a small but real FHIR R4 server (on @medplum/fhir-router) standing in
for a hospital's patient record. The gateway forwards Observations to it in tests and on
embedded defaults. Every resource it receives is validated like a validating server would:
FHIR R4 base rules (refused with 400) and, for Observations with a vital-sign LOINC code or a
claimed vital-signs profile, the R4 vital-signs profiles heartrate, oxygensat, resprate,
bodytemp, bp, ... (refused with 422). Refusals carry an OperationOutcome. Data lives in
memory only and is gone when the process ends.

Options:
  --port N             FHIR port (default ${EPJ_DEFAULT_PORT}; 0 = any free port)
  --host HOST          interface to bind (default 127.0.0.1). The admin API has no
                       authentication: do not expose it beyond a test machine
  --admin-port N       also serve /admin on port N; that port stays up while --down is in
                       force, so an outage can be ended with curl
  --latency MS         wait MS milliseconds before every FHIR answer
  --error-rate R       answer a fraction R (0..1) of FHIR requests with 500 or 503 without
                       processing them
  --error-status S     with --error-rate: always answer S (500 or 503)
  --throttle SECONDS   answer every FHIR request 429 Too Many Requests with
                       "Retry-After: SECONDS" without processing it
  --reject-all         refuse every resource written (directly or in a Bundle) with 422 and
                       an OperationOutcome (code business-rule); reads still work
  --drop-rate R        process a fraction R (0..1) of FHIR requests, then close the
                       connection without answering ("outcome unknown")
  --down               start in an outage: the port is closed (connections are refused)
                       until the fault is lifted (admin API, --down-for)
  --down-for MS        with --down: come back up on the same port after MS milliseconds
  --seed N             make fault decisions and resource ids reproducible
  --preload FILE       JSON file with a resource, an array of resources or a Bundle, stored
                       at start and after every /admin/reset (e.g. the Patient your
                       Observations reference). Resources with an id keep it
  --log-level LEVEL    fatal, error, warn, info (default), debug or silent. Logs show
                       method, path without query, status and duration; never patient data
  -h, --help           show this help

FHIR endpoints (base http://HOST:PORT/fhir):
  GET  /fhir/metadata                              CapabilityStatement
  POST /fhir                                       batch or transaction Bundle
  POST /fhir/Observation                           create; conditional create with
                                                   "If-None-Exist: identifier=SYSTEM|VALUE"
  GET  /fhir/Observation/ID[/_history[/VID]]       read, history, vread
  PUT  /fhir/Observation/ID                        update (If-Match: W/"VID" honoured)
  PUT  /fhir/Device?identifier=SYSTEM|VALUE        conditional update
  GET  /fhir/Observation?identifier=...&subject=...&patient=...&code=...&_count=N
  POST /fhir/Patient/_search                       search with a form body (keeps CPR
                                                   numbers out of URLs)

Admin endpoints (JSON):
  GET    /admin/faults          faults in force
  PUT    /admin/faults          replace them, e.g. {"throttle": 5} (omitted fields = off)
  POST   /admin/faults          change some, e.g. {"down": true, "downForMs": 10000}
  DELETE /admin/faults          all faults off (also POST /admin/faults/reset)
  GET    /admin/stats           counts of requests, created resources, duplicates avoided
                                by conditional create, rejections, faults
  POST   /admin/reset           delete all data (then re-store --preload) and zero stats

Examples:
  mdi epj                                  validating FHIR server on port ${EPJ_DEFAULT_PORT}
  mdi epj --port 0 --error-rate 0.2 --seed 7
  mdi epj --throttle 30                    every request: 429, Retry-After: 30
  mdi epj --admin-port 8091 --down         outage until: curl -X DELETE localhost:8091/admin/faults
`;

/** Parsed command-line flags of `mdi epj`. */
export interface EpjCliOptions {
  readonly help: boolean;
  readonly port: number;
  readonly host: string;
  readonly adminPort: number | undefined;
  readonly faults: EpjFaults;
  readonly seed: number | undefined;
  /** Path of a JSON file with resources to preload. */
  readonly preload: string | undefined;
  readonly logLevel: Level | 'silent';
}

/** A command line that cannot be run; `message` says which flag and why. */
export class EpjCliUsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'EpjCliUsageError';
  }
}

/** Where the CLI writes and what stops it (defaults: process streams and SIGINT/SIGTERM). */
export interface EpjCliIo {
  readonly stdout?: Writable;
  readonly stderr?: Writable;
  /** Stops the server when aborted; without it, SIGINT and SIGTERM do. */
  readonly signal?: AbortSignal;
  /** Called once the server listens (tests use it to learn the URL). */
  readonly onListening?: (server: EpjServer) => void;
}

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

/**
 * Parses `mdi epj` flags.
 * @throws {EpjCliUsageError} naming the bad flag.
 */
export function parseEpjCliArgs(argv: readonly string[]): EpjCliOptions {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: [...argv],
      strict: true,
      allowPositionals: false,
      options: {
        help: { type: 'boolean', short: 'h' },
        port: { type: 'string' },
        host: { type: 'string' },
        'admin-port': { type: 'string' },
        latency: { type: 'string' },
        'error-rate': { type: 'string' },
        'error-status': { type: 'string' },
        throttle: { type: 'string' },
        'reject-all': { type: 'boolean' },
        'drop-rate': { type: 'string' },
        down: { type: 'boolean' },
        'down-for': { type: 'string' },
        seed: { type: 'string' },
        preload: { type: 'string' },
        'log-level': { type: 'string' },
      },
    }));
  } catch (err) {
    throw new EpjCliUsageError((err as Error).message);
  }
  const str = (name: string): string | undefined => {
    const v = values[name];
    return typeof v === 'string' ? v : undefined;
  };
  const int = (name: string): number | undefined => {
    const raw = str(name);
    if (raw === undefined) {
      return undefined;
    }
    if (!/^-?\d+$/.test(raw)) {
      throw new EpjCliUsageError(`--${name} must be an integer, got "${raw}"`);
    }
    return Number(raw);
  };
  const num = (name: string): number | undefined => {
    const raw = str(name);
    if (raw === undefined) {
      return undefined;
    }
    const n = Number(raw);
    if (raw.trim() === '' || !Number.isFinite(n)) {
      throw new EpjCliUsageError(`--${name} must be a number, got "${raw}"`);
    }
    return n;
  };
  const port = int('port') ?? EPJ_DEFAULT_PORT;
  const adminPort = int('admin-port');
  for (const [name, p] of [['port', port], ['admin-port', adminPort]] as const) {
    if (p !== undefined && (p < 0 || p > 65_535)) {
      throw new EpjCliUsageError(`--${name} must be from 0 to 65535, got ${p}`);
    }
  }
  const logLevel = str('log-level') ?? 'info';
  if (!(LOG_LEVELS as readonly string[]).includes(logLevel)) {
    throw new EpjCliUsageError(`--log-level must be one of ${LOG_LEVELS.join(', ')}, got "${logLevel}"`);
  }
  const throttle = int('throttle');
  const downFor = int('down-for');
  if (downFor !== undefined && values.down !== true) {
    throw new EpjCliUsageError('--down-for needs --down');
  }
  let faults: EpjFaults;
  try {
    faults = EpjFaultsSchema.parse({
      down: values.down === true,
      ...(downFor !== undefined ? { downForMs: downFor } : {}),
      latencyMs: int('latency') ?? 0,
      errorRate: num('error-rate') ?? 0,
      ...(str('error-status') !== undefined ? { errorStatus: int('error-status') } : {}),
      throttle: throttle ?? false,
      rejectAll: values['reject-all'] === true,
      dropRate: num('drop-rate') ?? 0,
    });
  } catch (err) {
    throw new EpjCliUsageError(err instanceof z.ZodError ? flagNames(describeZodError(err)) : String(err));
  }
  return {
    help: values.help === true,
    port,
    host: str('host') ?? '127.0.0.1',
    adminPort,
    faults,
    seed: int('seed'),
    preload: str('preload'),
    logLevel: logLevel as Level | 'silent',
  };
}

/** Maps schema field names in a validation message back to the flags a user typed. */
function flagNames(message: string): string {
  const flags: Record<string, string> = {
    latencyMs: '--latency',
    errorRate: '--error-rate',
    errorStatus: '--error-status',
    throttle: '--throttle',
    dropRate: '--drop-rate',
    downForMs: '--down-for',
  };
  return message.replace(/\b(latencyMs|errorRate|errorStatus|throttle|dropRate|downForMs)\b/g, (m) => flags[m] ?? m);
}

/**
 * Runs the stand-in from parsed flags until `io.signal` aborts (or SIGINT/SIGTERM).
 * @returns the process exit code: 0 after a clean stop, 1 if the server could not start.
 */
export async function runEpjFromFlags(flags: EpjCliOptions, io: EpjCliIo = {}): Promise<number> {
  const stdout = io.stdout ?? process.stdout;
  const stderr = io.stderr ?? process.stderr;
  if (flags.help) {
    stdout.write(EPJ_CLI_HELP);
    return 0;
  }
  const log = pino({ name: 'epj', level: flags.logLevel }, stdout);
  let server: EpjServer;
  try {
    const preload = flags.preload ? await readPreload(flags.preload) : [];
    const options: EpjOptions = {
      port: flags.port,
      host: flags.host,
      faults: flags.faults,
      log,
      preload,
      ...(flags.adminPort !== undefined ? { adminPort: flags.adminPort } : {}),
      ...(flags.seed !== undefined ? { seed: flags.seed } : {}),
    };
    server = await startEpj(options);
  } catch (err) {
    stderr.write(`mdi epj: ${(err as Error).message}\n`);
    return 1;
  }
  io.onListening?.(server);
  await waitForStop(io.signal);
  await server.close();
  return 0;
}

/**
 * `mdi epj [flags]`: parses `argv` (the arguments after `epj`) and runs the stand-in.
 * @returns the exit code: 0 (stopped or --help), 1 (could not start), 2 (bad flags).
 */
export async function runEpjCli(argv: readonly string[], io: EpjCliIo = {}): Promise<number> {
  let flags: EpjCliOptions;
  try {
    flags = parseEpjCliArgs(argv);
  } catch (err) {
    (io.stderr ?? process.stderr).write(`mdi epj: ${(err as Error).message}\nRun "mdi epj --help" for the options.\n`);
    return 2;
  }
  return runEpjFromFlags(flags, io);
}

async function readPreload(file: string): Promise<Resource[]> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(await readFile(file, 'utf8'));
  } catch (err) {
    throw new Error(`--preload ${file}: ${(err as Error).message}`);
  }
  const list = Array.isArray(parsed) ? parsed : [parsed];
  const resources: Resource[] = [];
  for (const item of list) {
    const r = item as Resource;
    if (r?.resourceType === 'Bundle' && (r.type === 'collection' || r.type === 'batch' || r.type === 'transaction')) {
      for (const e of r.entry ?? []) {
        if (e.resource) {
          resources.push(e.resource);
        }
      }
    } else if (typeof r?.resourceType === 'string') {
      resources.push(r);
    } else {
      throw new Error(`--preload ${file}: not a FHIR resource, array or Bundle`);
    }
  }
  return resources;
}

function waitForStop(signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    if (signal) {
      if (signal.aborted) {
        resolve();
        return;
      }
      signal.addEventListener('abort', () => resolve(), { once: true });
      return;
    }
    const stop = (): void => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      resolve();
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
}
