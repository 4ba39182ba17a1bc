/**
 * The InfluxDB feeder: keeps every stored reading as a point in an InfluxDB 1.x database for the
 * long term (dashboards, trends, a region's shared series store).
 *
 * How: it tails the SQLite store (the commit point) from its own cursor `influx`, like the FHIR
 * outbox and the MQTT republisher, so ingest never waits for InfluxDB. One step reads at most
 * `batchSize` readings after the cursor, writes them as one request, and moves the cursor only
 * after influxd acknowledged the write (204). InfluxDB down, slow or refusing auth → the cursor
 * stays, the step is retried with exponential backoff and jitter (`Backoff`, src/reconnect.ts),
 * and the backlog is written with the readings' own times once it is back: nothing is lost.
 *
 * Replays are harmless: a point is identified by measurement, tag set and time, so writing the
 * same reading again (a crash between the acknowledged write and the cursor move) overwrites it
 * with the same values instead of adding a second point.
 *
 * What a point holds (`toInfluxPoint`), and what it never holds: measurement `vitals`; tags
 * `device`, `metric` (MDC reference id), `unit` (UCUM), `location` (the bed/ward the message
 * named, when it named one); fields `value` (float), `flags` (quality bit set, integer), `code`
 * (numeric MDC code, when there is one); time = the reading's time, precision ms. No patient
 * identity — no CPR, no name, no pseudonym — neither in tags nor in fields: the series is
 * about a device at a place; who lay there is in the gateway's bindings and the EPJ.
 */
import type { IPoint, IWriteOptions } from 'influx';
import type { Logger } from '../../log.js';
import type { Observation } from '../../model/observation.js';
import { Backoff, sleep } from '../../reconnect.js';
import type { StoredObservation } from '../../store/store.js';

/** The feeder's cursor name in the store's `cursors` table. */
export const INFLUX_CURSOR = 'influx';
/** The measurement every reading is written to. */
export const INFLUX_MEASUREMENT = 'vitals';
/** Tag keys of a point (the `influx` schema refuses any other). */
export const INFLUX_TAGS = ['device', 'metric', 'unit', 'location'] as const;

/** Longest tag value written: device ids, refids and locations are far shorter; a runaway value must not bloat the index. */
const MAX_TAG_CHARS = 256;

/** What the feeder reads from the store. */
export interface InfluxFeedStore {
  observationsAfter(afterId: number, limit: number): StoredObservation[];
  cursor(name: string): number;
  setCursor(name: string, position: number): void;
  /** Runs a write (the cursor move) when it need not wait for the store's write lock. */
  exclusive<T>(fn: () => T): Promise<T>;
  /** The id of the newest stored reading (0 when none): the cursor's lag is this minus the cursor. */
  lastObservationId(): number;
}

/** What the feeder needs of an InfluxDB 1.x client: the `influx` package's `InfluxDB`, or a test double. */
export interface InfluxClient {
  writePoints(points: IPoint[], options?: IWriteOptions): Promise<void>;
  createDatabase(name: string): Promise<void>;
}

/** Settings of a feeder (from `store.influx`). */
export interface InfluxFeederOptions {
  /** For the status only (no credentials in it). */
  readonly url: string;
  readonly database: string;
  readonly retentionPolicy?: string;
  /** Run `CREATE DATABASE` before the first write (and again when influxd says it is missing). */
  readonly createDatabase: boolean;
  readonly batchSize: number;
  readonly pollIntervalMs: number;
  readonly retry: { readonly initialDelayMs: number; readonly maxDelayMs: number };
  /** Clock (epoch ms) for the status times; tests pass a fake one. */
  readonly clock?: () => number;
}

/** What `/api/status` shows of the feeder. No patient data. */
export interface InfluxFeederStatus {
  readonly url: string;
  readonly database: string;
  readonly retentionPolicy: string | null;
  /** null until the first attempt; false after a network failure or timeout; true once influxd answered. */
  readonly reachable: boolean | null;
  /** The last store id written (or skipped); the feeder resumes after it. */
  readonly cursor: number;
  /** Stored readings not yet in InfluxDB (rows behind the newest). */
  readonly lag: number;
  /** Points influxd acknowledged since start. */
  readonly pointsWritten: number;
  /** Readings with no numeric value (text rows, invalid values): stored only, never a point. */
  readonly skippedNoValue: number;
  /** Points influxd refused for good (type conflict, older than the retention policy): logged, then passed. */
  readonly refusedPoints: number;
  /** Readings the local retention removed before they reached InfluxDB (`store.sqlite.retentionDays` shorter than an outage). */
  readonly missedByRetention: number;
  readonly consecutiveFailures: number;
  /** Last acknowledged write (ISO 8601). */
  readonly lastWrite: string | null;
  readonly lastError: { readonly at: string; readonly message: string } | null;
}

/** A tag value as it can stand in line protocol: no control characters or backslashes, bounded. */
export function tagValue(text: string): string {
  // Line protocol escapes `,`, `=` and spaces (the `influx` package does), but a newline ends
  // the line and a trailing backslash escapes the separator: neither belongs in an id.
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\u0000-\u001f\u007f\\]/g, '_').slice(0, MAX_TAG_CHARS);
}

/**
 * The point for one reading, or null when the reading has no numeric value (NaN: a text row or
 * an invalid number; ±Infinity): InfluxDB has no NaN, and a point with only flags would put a
 * hole that looks like data into every graph. Such readings stay in the SQLite store, counted
 * `skippedNoValue`. The patient is never part of a point.
 */
export function toInfluxPoint(o: Observation): IPoint | null {
  if (!Number.isFinite(o.value)) return null;
  const tags: Record<string, string> = {};
  const device = tagValue(o.deviceId);
  if (device !== '') tags.device = device;
  const metric = tagValue(o.metric);
  if (metric !== '') tags.metric = metric;
  // Unit as a tag: UCUM codes are few, so it costs the index little, and a device that changes
  // unit (Cel → [degF]) starts another series instead of mixing values under one.
  const unit = tagValue(o.unit);
  if (unit !== '') tags.unit = unit;
  if (o.location !== null) {
    const location = tagValue(o.location);
    if (location !== '') tags.location = location;
  }
  const fields: Record<string, number> = { value: o.value, flags: o.flags };
  if (o.code !== null) fields.code = o.code;
  // A string: the `influx` package drops a falsy timestamp (0) and would let influxd stamp it.
  return { measurement: INFLUX_MEASUREMENT, tags, fields, timestamp: String(Math.trunc(o.time)) };
}

/** How the feeder treats a failed request (see `classifyInfluxError`). */
export type InfluxFailure =
  /** influxd stored what it could of the request and refused the rest for good (HTTP 400 "partial write"). */
  | { readonly kind: 'partial'; readonly dropped: number; readonly message: string }
  /** influxd refused the whole request for its content (other 400, 413): split it to find the bad point. */
  | { readonly kind: 'refused'; readonly message: string }
  /** The database does not exist (404). */
  | { readonly kind: 'no-database'; readonly message: string }
  /** Try the same request again later: network, timeout, 5xx, 401/403 (a configuration that an operator fixes). */
  | { readonly kind: 'retry'; readonly answered: boolean; readonly message: string };

/** Classifies an error of the `influx` package (RequestError carries `res.statusCode`). */
export function classifyInfluxError(err: unknown): InfluxFailure {
  const e = err as { message?: unknown; res?: { statusCode?: unknown }; code?: unknown };
  const message = typeof e?.message === 'string' && e.message !== '' ? e.message : String(err);
  const status = typeof e?.res?.statusCode === 'number' ? e.res.statusCode : null;
  if (status === null) {
    // ServiceNotAvailableError: a 5xx (influxd answered) or a timeout; anything else is the network.
    const answered = err instanceof Error && err.constructor.name === 'ServiceNotAvailableError' && !/timed out/i.test(message);
    return { kind: 'retry', answered, message };
  }
  if (status === 404 && /database not found/i.test(message)) return { kind: 'no-database', message };
  if (status === 400 && /partial write/i.test(message)) {
    const dropped = /dropped=(\d+)/.exec(message);
    return { kind: 'partial', dropped: dropped ? Number(dropped[1]) : 0, message };
  }
  if (status === 400 || status === 413) return { kind: 'refused', message };
  return { kind: 'retry', answered: true, message };
}

/** Tails the store and writes every reading with a numeric value to InfluxDB. */
export class InfluxFeeder {
  private readonly clock: () => number;
  private readonly backoff: Backoff;
  private readonly writeOptions: IWriteOptions;
  private abort = new AbortController();
  private loop: Promise<void> | null = null;
  private stopped = true;
  private needsDatabase: boolean;
  private reachable: boolean | null = null;
  private lastWrite: number | null = null;
  private lastError: { at: number; message: string } | null = null;
  private readonly counters = { pointsWritten: 0, skippedNoValue: 0, refusedPoints: 0, missedByRetention: 0 };

  constructor(
    private readonly options: InfluxFeederOptions,
    private readonly client: InfluxClient,
    private readonly store: InfluxFeedStore,
    private readonly log: Logger,
  ) {
    this.clock = options.clock ?? Date.now;
    this.backoff = new Backoff({ initialDelayMs: options.retry.initialDelayMs, maxDelayMs: options.retry.maxDelayMs, factor: 2, jitter: 0.2 });
    this.needsDatabase = options.createDatabase;
    this.writeOptions = {
      database: options.database,
      precision: 'ms',
      ...(options.retentionPolicy !== undefined ? { retentionPolicy: options.retentionPolicy } : {}),
    };
  }

  /** Starts the loop; returns at once (an unreachable InfluxDB is retried, never fails the start). Idempotent. */
  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.abort = new AbortController();
    this.loop = this.run();
  }

  /**
   * Stops the loop. A write in flight is waited for (it ends within `store.influx.timeoutMs`);
   * if it was acknowledged the cursor moves, else the batch is written again after the next
   * start. Call before the store closes. Idempotent.
   */
  async stop(): Promise<void> {
    this.stopped = true;
    this.abort.abort();
    await this.loop;
    this.loop = null;
  }

  status(): InfluxFeederStatus {
    const cursor = this.store.cursor(INFLUX_CURSOR);
    const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());
    return {
      url: this.options.url,
      database: this.options.database,
      retentionPolicy: this.options.retentionPolicy ?? null,
      reachable: this.reachable,
      cursor,
      lag: Math.max(0, this.store.lastObservationId() - cursor),
      ...this.counters,
      consecutiveFailures: this.backoff.attempts,
      lastWrite: iso(this.lastWrite),
      lastError: this.lastError === null ? null : { at: iso(this.lastError.at)!, message: this.lastError.message },
    };
  }

  /** Runs steps until stopped: at once while there is a backlog, every `pollIntervalMs` when caught up. */
  private async run(): Promise<void> {
    const signal = this.abort.signal;
    while (!this.stopped) {
      let outcome: 'wrote' | 'idle' | 'failed';
      try {
        outcome = await this.step();
      } catch (err) {
        // Only the store can throw here (a closed or failing database): wait and try again.
        this.recordError(`store read failed: ${(err as Error).message}`);
        outcome = 'failed';
      }
      if (this.stopped) break;
      if (outcome === 'idle') await sleep(this.options.pollIntervalMs, signal);
      else if (outcome === 'failed') await sleep(this.backoff.next(), signal);
      // A backlog: go on at once, but let the event loop (ingest, API) run between batches.
      else await new Promise<void>((resolve) => setImmediate(resolve));
    }
  }

  /** One batch: read after the cursor, write, move the cursor once influxd acknowledged. */
  private async step(): Promise<'wrote' | 'idle' | 'failed'> {
    if (this.needsDatabase) {
      try {
        await this.client.createDatabase(this.options.database);
        this.reachable = true;
      } catch (err) {
        const failure = classifyInfluxError(err);
        if (failure.kind === 'retry' && !failure.answered) return this.failed(failure, 'create database');
        // Answered but refused (no admin rights, say): the database may well exist; the writes decide.
        this.reachable = true;
        this.log.warn({ database: this.options.database, err: failure.message }, 'influx: CREATE DATABASE refused; writing anyway');
      }
      this.needsDatabase = false;
    }

    const cursor = this.store.cursor(INFLUX_CURSOR);
    const rows = this.store.observationsAfter(cursor, this.options.batchSize);
    if (rows.length === 0) return 'idle';
    // Ids are contiguous (SQLite rowids); a hole after the cursor is rows the local retention deleted unseen.
    const missed = cursor > 0 ? rows[0]!.id - cursor - 1 : 0;
    const points: IPoint[] = [];
    let skipped = 0;
    for (const row of rows) {
      const point = toInfluxPoint(row.observation);
      if (point === null) skipped++;
      else points.push(point);
    }

    let refused = 0;
    if (points.length > 0) {
      try {
        refused = await this.write(points);
      } catch (err) {
        const failure = classifyInfluxError(err);
        if (failure.kind === 'no-database' && this.options.createDatabase) this.needsDatabase = true;
        return this.failed(failure, 'write');
      }
      this.reachable = true;
      this.lastWrite = this.clock();
    }

    const last = rows[rows.length - 1]!.id;
    await this.store.exclusive(() => this.store.setCursor(INFLUX_CURSOR, last));
    this.counters.pointsWritten += points.length - refused;
    this.counters.refusedPoints += refused;
    this.counters.skippedNoValue += skipped;
    if (missed > 0) {
      this.counters.missedByRetention += missed;
      this.log.warn({ missed, cursor }, 'influx: readings were removed by the local retention before InfluxDB had them (store.sqlite.retentionDays is shorter than the outage)');
    }
    if (this.backoff.attempts > 0) this.log.info({ failures: this.backoff.attempts, cursor: last }, 'influx: writing again');
    this.backoff.reset();
    return 'wrote';
  }

  /**
   * Writes points; resolves with how many influxd refused for good. A request refused for its
   * content (400 that is not a partial write, 413) is split in halves until the bad point is
   * alone, so one poison point never blocks the series behind it; the good points of a split
   * are written again, which is harmless (same series and time overwrite). Rejects with
   * anything worth retrying (the caller keeps the cursor).
   */
  private async write(points: IPoint[]): Promise<number> {
    try {
      await this.client.writePoints(points, this.writeOptions);
      return 0;
    } catch (err) {
      const failure = classifyInfluxError(err);
      if (failure.kind === 'partial') {
        // influxd wrote every point it could; the rest (type conflict, older than the
        // retention policy) would be refused again on every retry.
        this.log.warn({ points: points.length, dropped: failure.dropped, err: failure.message }, 'influx: points refused for good');
        this.recordError(failure.message);
        return Math.min(points.length, failure.dropped);
      }
      if (failure.kind !== 'refused') throw err;
      if (points.length === 1) {
        this.log.warn({ point: { tags: points[0]!.tags, timestamp: points[0]!.timestamp }, err: failure.message }, 'influx: point refused for good');
        this.recordError(failure.message);
        return 1;
      }
      const half = Math.ceil(points.length / 2);
      return (await this.write(points.slice(0, half))) + (await this.write(points.slice(half)));
    }
  }

  private failed(failure: InfluxFailure, what: string): 'failed' {
    this.reachable = failure.kind === 'retry' ? failure.answered : true;
    this.recordError(`${what}: ${failure.message}`);
    // One line per failure is bounded by the backoff (at most one per `retry.maxDelayMs` once it has grown).
    this.log.warn({ err: failure.message, failures: this.backoff.attempts + 1 }, `influx: ${what} failed; retrying with backoff, nothing is lost`);
    return 'failed';
  }

  private recordError(message: string): void {
    // Bounded: influxd echoes parts of the request in its errors.
    this.lastError = { at: this.clock(), message: message.slice(0, 500) };
  }
}
