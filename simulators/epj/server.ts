/**
 * The EPJ stand-in's HTTP server: FHIR R4 under `/fhir`, a JSON admin API under `/admin`, and the
 * fault modes of {@link EpjFaults}.
 *
 * Built on `node:http`, not fastify, for three reasons: `@medplum/fhir-router` already does the
 * FHIR routing, so fastify's router would only forward everything to it; the `down` fault needs
 * socket-level control — stop listening, destroy every open socket, listen again on the same
 * port with the same server object — and a fastify instance cannot listen again once closed;
 * and FHIR bodies (`application/fhir+json`, form-encoded `_search`) would each need a custom
 * content-type parser anyway.
 *
 * Logs: one line per FHIR request with method, path (query dropped, CPR-like digits redacted),
 * status, duration and the fault applied — never bodies, queries or OperationOutcome texts,
 * because conditional URLs and payloads carry CPR numbers.
 */
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Resource } from '@medplum/fhirtypes';
import { pino } from 'pino';
import type { Logger } from 'pino';
import { z } from 'zod';
import { describeZodError, NO_FAULTS, parseFaults, seededRandom, seededUuid } from './faults.js';
import type { EpjFaults, EpjFaultsInput } from './faults.js';
import { FhirService } from './fhir-service.js';
import type { FhirHttpResponse } from './fhir-service.js';
import { errorOutcome, redactCpr } from './outcome.js';
import { EpjRepository } from './repository.js';
import { StatsCounter } from './stats.js';
import type { EpjStats } from './stats.js';
import { loadValidator } from './validation.js';

/** Options of {@link startEpj}. */
export interface EpjOptions {
  /** TCP port; 0 (the default) picks a free one. The `down` fault re-listens on the same port. */
  readonly port?: number;
  /** Interface to bind; default `127.0.0.1`. The admin API has no authentication: keep it local. */
  readonly host?: string;
  /**
   * Also serve `/admin` on this port (0 = pick one). That listener stays up during a `down`
   * outage, so an outage can be ended over HTTP. Without it, `/admin` shares the FHIR port.
   */
  readonly adminPort?: number;
  /** Faults in force from the start (`{ down: true }` starts in an outage). */
  readonly faults?: EpjFaultsInput;
  /** Seed for fault decisions and resource ids: the same seed and requests give the same run. */
  readonly seed?: number;
  /** A pino logger to log to, `true` for pino at info on stdout, `false`/absent for silence. */
  readonly log?: Logger | boolean;
  /** Largest request body accepted, bytes (default 16 MiB); larger bodies get 413. */
  readonly maxBodyBytes?: number;
  /**
   * Resources stored at start and again after every {@link EpjServer.reset} — e.g. the Patient a
   * test's Observations point at. With an id they are PUT (id kept), without one POSTed. Each is
   * validated; a refused one makes `startEpj` reject.
   */
  readonly preload?: readonly Resource[];
}

/** A running EPJ stand-in. */
export interface EpjServer {
  /** FHIR base URL, e.g. `http://127.0.0.1:41234/fhir`. */
  readonly url: string;
  /** The FHIR port (stable across `down` outages). */
  readonly port: number;
  readonly host: string;
  /** Admin base URL (`…/admin`), on `adminPort` when one was given. */
  readonly adminUrl: string;
  /** Time from `startEpj()` to listening, ms (includes loading definitions on first start). */
  readonly startupMs: number;
  /**
   * Merges `faults` into the faults in force and applies them; resolves once a `down` change has
   * taken effect (port closed, or listening again).
   * @throws {Error} on invalid settings (message names the field), or if the port cannot be re-bound.
   */
  setFaults(faults: EpjFaultsInput): Promise<EpjFaults>;
  /** Turns every fault off (and brings the server back up). */
  resetFaults(): Promise<EpjFaults>;
  /** The faults in force. */
  faults(): EpjFaults;
  /** Counters since start or the last reset. */
  stats(): EpjStats;
  /** Deletes all data and zeroes the counters, then stores the `preload` resources again. Faults stay. */
  reset(): Promise<void>;
  /** Stops both listeners and destroys open sockets. Idempotent. */
  close(): Promise<void>;
}

const OptionsSchema = z
  .object({
    port: z.number().int().min(0).max(65_535).default(0),
    host: z.string().min(1).default('127.0.0.1'),
    adminPort: z.number().int().min(0).max(65_535).optional(),
    seed: z.number().int().optional(),
    // 16 MiB holds a Bundle of thousands of Observations; the bound keeps a runaway client from
    // exhausting memory of the test process.
    maxBodyBytes: z.number().int().min(1024).max(1024 * 1024 * 1024).default(16 * 1024 * 1024),
  })
  .strict();

/**
 * Starts an EPJ stand-in: a validating FHIR R4 server on `@medplum/fhir-router`.
 * The first start in a process loads and indexes the R4 definitions (about a second).
 * @throws {Error} on invalid options, a port that cannot be bound, or a refused preload resource.
 */
export async function startEpj(options: EpjOptions = {}): Promise<EpjServer> {
  const started = performance.now();
  let parsed: z.infer<typeof OptionsSchema>;
  let faults: EpjFaults;
  try {
    parsed = OptionsSchema.parse({
      port: options.port,
      host: options.host,
      adminPort: options.adminPort,
      seed: options.seed,
      maxBodyBytes: options.maxBodyBytes,
    });
    faults = parseFaults(options.faults ?? {});
  } catch (err) {
    throw new Error(`Invalid EPJ options: ${err instanceof z.ZodError ? describeZodError(err) : String(err)}`);
  }
  const instance = new EpjInstance(parsed, faults, options.preload ?? [], toLogger(options.log), started);
  await instance.start();
  return instance;
}

function toLogger(log: Logger | boolean | undefined): Logger {
  if (log === true) {
    return pino({ name: 'epj', level: 'info' });
  }
  if (log === false || log === undefined) {
    return pino({ enabled: false });
  }
  return log.child({ component: 'epj' });
}

class EpjInstance implements EpjServer {
  readonly host: string;
  private readonly log: Logger;
  private readonly main: Server;
  private readonly admin: Server | undefined;
  private readonly statsCounter = new StatsCounter();
  private readonly repository: EpjRepository;
  private readonly service: FhirService;
  private readonly random: () => number;
  private readonly maxBodyBytes: number;
  private readonly preload: readonly Resource[];
  private readonly startedAt: number;
  private readonly requestedAdminPort: number | undefined;
  private readonly definitionsLoadMs: number;
  private current: EpjFaults;
  private boundPort: number;
  private boundAdminPort = 0;
  private listening = false;
  private closed = false;
  private startup = 0;
  private downTimer: NodeJS.Timeout | undefined;
  /** Serializes down/up transitions so quick toggles cannot interleave close and listen. */
  private transitions: Promise<void> = Promise.resolve();
  /** Pending latency waits, released on close so no timer outlives the server. */
  private readonly waits = new Set<() => void>();

  constructor(
    options: z.infer<typeof OptionsSchema>,
    faults: EpjFaults,
    preload: readonly Resource[],
    log: Logger,
    startedAt: number,
  ) {
    this.host = options.host;
    this.boundPort = options.port;
    this.requestedAdminPort = options.adminPort;
    this.maxBodyBytes = options.maxBodyBytes;
    this.current = faults;
    this.preload = preload;
    this.log = log;
    this.startedAt = startedAt;
    const validator = loadValidator();
    this.definitionsLoadMs = validator.info.loadMs;
    // Two independent streams: fault decisions must not shift when a run creates one more resource.
    this.random = options.seed === undefined ? Math.random : seededRandom(options.seed);
    const idRandom = options.seed === undefined ? undefined : seededRandom(options.seed ^ 0x5bd1e995);
    this.repository = new EpjRepository(idRandom ? { generateId: () => seededUuid(idRandom) } : {});
    this.service = new FhirService({
      validator,
      repository: this.repository,
      stats: this.statsCounter,
      baseUrl: () => this.url,
      faults: () => this.current,
      log,
    });
    this.main = createServer((req, res) => void this.onRequest(req, res, false));
    this.admin =
      options.adminPort === undefined ? undefined : createServer((req, res) => void this.onRequest(req, res, true));
  }

  get port(): number {
    return this.boundPort;
  }

  get url(): string {
    return `http://${urlHost(this.host)}:${this.boundPort}/fhir`;
  }

  get adminUrl(): string {
    const port = this.admin ? this.boundAdminPort : this.boundPort;
    return `http://${urlHost(this.host)}:${port}/admin`;
  }

  get startupMs(): number {
    return this.startup;
  }

  async start(): Promise<void> {
    await this.loadPreload();
    this.statsCounter.reset();
    await listen(this.main, this.boundPort, this.host);
    this.boundPort = (this.main.address() as AddressInfo).port;
    this.listening = true;
    if (this.admin) {
      await listen(this.admin, this.requestedAdminPort ?? 0, this.host);
      this.boundAdminPort = (this.admin.address() as AddressInfo).port;
    }
    this.startup = performance.now() - this.startedAt;
    this.log.info(
      { url: this.url, adminUrl: this.adminUrl, startupMs: Math.round(this.startup), definitionsLoadMs: Math.round(this.definitionsLoadMs) },
      'EPJ stand-in listening',
    );
    // Started "down": the port was bound first so that it is known and stable.
    this.scheduleDownTimer();
    await this.reconcile();
  }

  faults(): EpjFaults {
    return this.current;
  }

  async setFaults(faults: EpjFaultsInput): Promise<EpjFaults> {
    this.current = this.parseOrThrow(faults, this.current);
    this.scheduleDownTimer();
    await this.reconcile();
    return this.current;
  }

  async resetFaults(): Promise<EpjFaults> {
    this.current = NO_FAULTS;
    this.scheduleDownTimer();
    await this.reconcile();
    return this.current;
  }

  stats(): EpjStats {
    return this.statsCounter.snapshot({
      definitionsLoadMs: this.definitionsLoadMs,
      startupMs: this.startup,
      stored: this.repository.countByType(),
    });
  }

  async reset(): Promise<void> {
    this.repository.clear();
    await this.loadPreload();
    this.statsCounter.reset();
  }

  async close(): Promise<void> {
    if (this.closed) {
      return;
    }
    this.closed = true;
    clearTimeout(this.downTimer);
    for (const release of this.waits) {
      release();
    }
    await this.transitions;
    await Promise.all([shutdown(this.main), this.admin ? shutdown(this.admin) : Promise.resolve()]);
    this.listening = false;
  }

  // ---------------------------------------------------------------------------------------------

  private parseOrThrow(input: unknown, base: EpjFaults | undefined): EpjFaults {
    try {
      return parseFaults(input, base);
    } catch (err) {
      throw new Error(`Invalid EPJ faults: ${err instanceof z.ZodError ? describeZodError(err) : String(err)}`);
    }
  }

  /** Brings the listening state in line with `down`; transitions run one after another. */
  private reconcile(): Promise<void> {
    const next = this.transitions.then(async () => {
      if (this.closed) {
        return;
      }
      if (this.current.down && this.listening) {
        this.listening = false;
        this.statsCounter.outages += 1;
        await shutdown(this.main);
        this.log.warn({ port: this.boundPort }, 'EPJ stand-in DOWN (fault): port closed, sockets destroyed');
      } else if (!this.current.down && !this.listening) {
        // Same port: the gateway's configured URL must work again after the outage.
        await listen(this.main, this.boundPort, this.host);
        this.listening = true;
        this.log.warn({ port: this.boundPort }, 'EPJ stand-in UP again');
      }
    });
    this.transitions = next.catch(() => undefined);
    return next;
  }

  private scheduleDownTimer(): void {
    clearTimeout(this.downTimer);
    this.downTimer = undefined;
    const { down, downForMs } = this.current;
    if (down && downForMs !== undefined) {
      this.downTimer = setTimeout(() => {
        this.current = { ...this.current, down: false, downForMs: undefined };
        this.reconcile().catch((err: unknown) =>
          this.log.error({ err: (err as Error).message }, 'EPJ stand-in could not come back up'),
        );
      }, downForMs);
    }
  }

  private async loadPreload(): Promise<void> {
    for (const resource of this.preload) {
      const hasId = typeof resource.id === 'string' && resource.id.length > 0;
      const r = await this.service.handle({
        method: hasId ? 'PUT' : 'POST',
        path: hasId ? `/${resource.resourceType}/${resource.id}` : `/${resource.resourceType}`,
        query: '',
        headers: {},
        body: resource,
      });
      if (r.status >= 300) {
        const issues = r.body?.resourceType === 'OperationOutcome' ? r.body.issue ?? [] : [];
        throw new Error(
          `EPJ preload: ${resource.resourceType} refused (${r.status}): ${issues.map((i) => `${i.expression?.[0] ?? ''} ${i.diagnostics ?? ''}`).join('; ')}`,
        );
      }
    }
  }

  private async onRequest(req: IncomingMessage, res: ServerResponse, adminListener: boolean): Promise<void> {
    const started = performance.now();
    const url = new URL(req.url ?? '/', 'http://stand-in.invalid');
    const path = url.pathname;
    try {
      if (path === '/admin' || path.startsWith('/admin/')) {
        await this.onAdmin(req, res, path, adminListener);
        this.log.debug({ method: req.method, path, status: res.statusCode }, 'admin request');
        return;
      }
      if (adminListener || !(path === '/fhir' || path.startsWith('/fhir/'))) {
        send(res, 404, { 'content-type': 'application/fhir+json' }, errorOutcome('not-found', 'Not found (FHIR base is /fhir)'));
        return;
      }
      const fault = await this.onFhir(req, res, path.slice('/fhir'.length), url.search.slice(1), url.searchParams.get('_pretty') === 'true');
      this.log.info(
        {
          method: req.method,
          path: redactCpr(path),
          status: fault === 'drop' ? undefined : res.statusCode,
          ms: Math.round(performance.now() - started),
          ...(fault ? { fault } : {}),
        },
        'fhir request',
      );
    } catch (err) {
      this.log.error({ method: req.method, path: redactCpr(path), err: redactCpr(String((err as Error)?.message)) }, 'request failed');
      send(res, 500, { 'content-type': 'application/fhir+json' }, errorOutcome('exception', 'Internal error in the EPJ stand-in'));
    }
  }

  /** Serves one FHIR request; returns the fault applied, if any. */
  private async onFhir(
    req: IncomingMessage,
    res: ServerResponse,
    path: string,
    query: string,
    pretty: boolean,
  ): Promise<string | undefined> {
    const stats = this.statsCounter;
    stats.requests += 1;
    const body = await readBody(req, this.maxBodyBytes);
    const faults = this.current;
    const reply = async (r: FhirHttpResponse, extraHeaders: Record<string, string> = {}): Promise<void> => {
      await this.delay(faults.latencyMs);
      stats.response(r.status);
      send(res, r.status, { ...r.headers, ...extraHeaders }, r.body, pretty);
    };
    if (body.kind === 'too-large') {
      await reply(fhirError(413, 'too-costly', `Request body exceeds ${this.maxBodyBytes} bytes`), { connection: 'close' });
      res.on('finish', () => req.destroy());
      return undefined;
    }
    if (faults.throttle !== false) {
      stats.throttled += 1;
      // RFC 9110 §10.2.3: Retry-After in delay-seconds.
      await reply(fhirError(429, 'throttled', 'Too many requests (EPJ stand-in throttle fault)'), {
        'retry-after': String(faults.throttle),
      });
      return 'throttle';
    }
    if (faults.errorRate > 0 && this.random() < faults.errorRate) {
      stats.injectedErrors += 1;
      const status = faults.errorStatus ?? (this.random() < 0.5 ? 500 : 503);
      await reply(
        status === 503
          ? fhirError(503, 'transient', 'Service unavailable (EPJ stand-in error fault)')
          : fhirError(500, 'exception', 'Internal server error (EPJ stand-in error fault)'),
      );
      return `error-${status}`;
    }
    const accept = req.headers.accept;
    if (accept && !/json|\*\/\*/i.test(accept)) {
      await reply(fhirError(406, 'not-supported', 'Only FHIR JSON is served (Accept)'));
      return undefined;
    }
    const parsed = parseBody(body.bytes, req.headers['content-type']);
    if ('error' in parsed) {
      await reply(parsed.error);
      return undefined;
    }
    const result = await this.service.handle({
      method: (req.method ?? 'GET').toUpperCase(),
      path,
      query,
      headers: req.headers,
      body: parsed.value,
    });
    if (faults.dropRate > 0 && this.random() < faults.dropRate) {
      await this.delay(faults.latencyMs);
      stats.dropped += 1;
      // The request has been processed; the client never learns the outcome.
      req.socket.destroy();
      return 'drop';
    }
    await reply(result);
    return faults.latencyMs > 0 ? 'latency' : undefined;
  }

  private async onAdmin(req: IncomingMessage, res: ServerResponse, path: string, adminListener: boolean): Promise<void> {
    const method = (req.method ?? 'GET').toUpperCase();
    const json = { 'content-type': 'application/json; charset=utf-8' };
    const body = await readBody(req, 64 * 1024);
    let input: unknown;
    try {
      input = body.kind === 'ok' && body.bytes.length > 0 ? JSON.parse(body.bytes.toString('utf8')) : undefined;
    } catch {
      send(res, 400, json, { error: 'Body is not valid JSON' });
      return;
    }
    if (path === '/admin/faults' || path === '/admin/faults/reset') {
      let next: EpjFaults;
      if (path === '/admin/faults/reset' ? method === 'POST' : method === 'DELETE') {
        next = NO_FAULTS;
      } else if (path === '/admin/faults' && method === 'GET') {
        send(res, 200, json, this.current);
        return;
      } else if (path === '/admin/faults' && (method === 'PUT' || method === 'POST')) {
        try {
          next = this.parseOrThrow(input, method === 'POST' ? this.current : undefined);
        } catch (err) {
          send(res, 400, json, { error: (err as Error).message });
          return;
        }
      } else {
        send(res, 405, json, { error: `${method} not allowed on ${path}` });
        return;
      }
      const goingDown = next.down && !this.current.down;
      this.current = next;
      this.scheduleDownTimer();
      if (goingDown && !adminListener) {
        // The answer travels over the port that is about to close: answer first, then go down.
        res.on('finish', () => void this.reconcile().catch(() => undefined));
        send(res, 200, json, this.current);
        return;
      }
      try {
        await this.reconcile();
      } catch (err) {
        send(res, 500, json, { error: `Could not apply faults: ${(err as Error).message}` });
        return;
      }
      send(res, 200, json, this.current);
      return;
    }
    if (path === '/admin/stats' && method === 'GET') {
      send(res, 200, json, this.stats());
      return;
    }
    if (path === '/admin/reset' && method === 'POST') {
      await this.reset();
      send(res, 200, json, this.stats());
      return;
    }
    send(res, 404, json, {
      error: 'Unknown admin endpoint',
      endpoints: ['GET|PUT|POST|DELETE /admin/faults', 'POST /admin/faults/reset', 'GET /admin/stats', 'POST /admin/reset'],
    });
  }

  /** Waits `ms` (no-op for 0); released early when the server closes. */
  private delay(ms: number): Promise<void> {
    if (ms <= 0) {
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const release = (): void => {
        clearTimeout(timer);
        this.waits.delete(release);
        resolve();
      };
      const timer = setTimeout(release, ms);
      this.waits.add(release);
    });
  }
}

type BodyResult = { kind: 'ok'; bytes: Buffer } | { kind: 'too-large' };

/** Reads a request body, refusing (without buffering further) past `limit` bytes. */
function readBody(req: IncomingMessage, limit: number): Promise<BodyResult> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    req.on('data', (chunk: Buffer) => {
      if (done) {
        return;
      }
      size += chunk.length;
      if (size > limit) {
        done = true;
        chunks.length = 0;
        resolve({ kind: 'too-large' });
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => {
      if (!done) {
        done = true;
        resolve({ kind: 'ok', bytes: Buffer.concat(chunks) });
      }
    });
    // A client that vanishes mid-body (or an outage that destroys the socket) ends the read
    // with what we have; the answer then goes nowhere, which is fine.
    const abandon = (): void => {
      if (!done) {
        done = true;
        resolve({ kind: 'ok', bytes: Buffer.concat(chunks) });
      }
    };
    req.on('error', abandon);
    req.on('close', abandon);
  });
}

/** JSON (`application/fhir+json`, `application/json`) or a form (`_search`); anything else 415. */
function parseBody(bytes: Buffer, contentType: string | undefined): { value: unknown } | { error: FhirHttpResponse } {
  if (bytes.length === 0) {
    return { value: undefined };
  }
  const type = (contentType ?? '').split(';')[0]?.trim().toLowerCase() ?? '';
  if (type === 'application/x-www-form-urlencoded') {
    const params = new URLSearchParams(bytes.toString('utf8'));
    const record: Record<string, string[]> = {};
    for (const [k, v] of params) {
      (record[k] ??= []).push(v);
    }
    return { value: record };
  }
  if (type !== '' && !type.includes('json')) {
    return { error: fhirError(415, 'not-supported', 'Content-Type must be application/fhir+json') };
  }
  try {
    return { value: JSON.parse(bytes.toString('utf8')) as unknown };
  } catch {
    // Never echo the body: it may hold patient data.
    return { error: fhirError(400, 'structure', 'Body is not valid JSON') };
  }
}

function fhirError(status: number, code: Parameters<typeof errorOutcome>[0], diagnostics: string): FhirHttpResponse {
  return { status, headers: { 'content-type': 'application/fhir+json; charset=utf-8' }, body: errorOutcome(code, diagnostics) };
}

function send(res: ServerResponse, status: number, headers: Record<string, string>, body: unknown, pretty = false): void {
  if (res.headersSent || res.destroyed) {
    return;
  }
  const text = body === undefined ? '' : JSON.stringify(body, undefined, pretty ? 2 : undefined);
  res.writeHead(status, { ...headers, 'content-length': String(Buffer.byteLength(text)) });
  res.end(text);
}

function listen(server: Server, port: number, host: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void => {
      server.off('listening', onListening);
      reject(err);
    };
    const onListening = (): void => {
      server.off('error', onError);
      resolve();
    };
    server.once('error', onError);
    server.once('listening', onListening);
    server.listen(port, host);
  });
}

/** Stops listening and destroys every open socket, idle or busy, as a crashed server would. */
function shutdown(server: Server): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) {
      server.closeAllConnections();
      resolve();
      return;
    }
    server.close(() => resolve());
    server.closeAllConnections();
  });
}

function urlHost(host: string): string {
  if (host === '0.0.0.0' || host === '::') {
    return '127.0.0.1';
  }
  return host.includes(':') ? `[${host}]` : host;
}
