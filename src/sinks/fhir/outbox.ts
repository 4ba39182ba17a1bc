/**
 * The outbox: the durable queue in front of the EPJ. Its tables live in the store's SQLite file
 * (same connection), so "read from the store, put into the outbox, move the cursor" is one
 * transaction: a crash anywhere leaves either all of it or none of it, and nothing is charted
 * twice or skipped. No I/O besides SQLite; the HTTP side is `forwarder.ts`, the loop `index.ts`.
 *
 * One row per chart entry = one series (device channel, metric, patient) and one interval.
 * Nothing leaves the outbox until the EPJ accepted it (`confirmed`) or refused it for good
 * (`rejected`, with the EPJ's OperationOutcome).
 */
import type Database from 'better-sqlite3';
import type { PatientId } from '../../model/measurement.js';
import type { Observation } from '../../model/observation.js';
import type { ObservationQuery, StoredObservation } from '../../store/store.js';
import { scrubCpr } from '../../log.js';
import type { ChartingPolicy } from './charting.js';
import { FhirErrorCode } from './errors.js';
import { chartRole, itemIdentifier, type ChartItem, type ChartReading } from './observation.js';

/**
 * Delivery states of a chart entry. Transitions:
 *
 * ```
 *   open ──interval closed──▶ queued ──claimed──▶ sending ──201/200──▶ confirmed
 *     │                        ▲   ▲                 │
 *     └─no patient─▶ held ─────┘   └──retryable──────┤
 *                     │                              └──refused (4xx)──▶ rejected
 *                     └─no binding in time─▶ skipped            queued ──too old──▶ rejected
 * ```
 */
export const OutboxState = {
  /**
   * The entry's interval is still running: it holds the reading that represents the interval
   * so far and may be replaced by a newer (latest) or more central (median) one. Not sent.
   */
  OPEN: 'open',
  /**
   * The interval is over but the reading has no patient (`charting.unbound: hold`): waiting up
   * to `holdMinutes` for a device→patient binding at the reading's time.
   */
  HELD: 'held',
  /** Ready to send, or waiting for its next attempt (`next_attempt`) after a retryable failure. */
  QUEUED: 'queued',
  /**
   * Claimed by a request in flight. After a crash the outcome is unknown: on start every
   * `sending` entry goes back to `queued` and is sent again, which is safe only because every
   * write is a conditional create on the entry's deterministic identifier.
   */
  SENDING: 'sending',
  /** The EPJ answered 201 (created) or 200 (conditional create matched: it already had it). */
  CONFIRMED: 'confirmed',
  /**
   * A dead letter: refused for good by the EPJ (4xx other than 408/429, OperationOutcome
   * kept), refused by our own pre-check, or undeliverable past `outbox.maxAgeHours`.
   */
  REJECTED: 'rejected',
  /** Not charted on purpose: no patient bound in time, or a duplicate of another entry. */
  SKIPPED: 'skipped',
} as const;
export type OutboxState = (typeof OutboxState)[keyof typeof OutboxState];

/**
 * What an entry does in the EPJ: `create` charts an Observation (conditional create); `void`
 * sets an Observation charted earlier to `entered-in-error` (a binding correction).
 */
export const OutboxAction = { CREATE: 'create', VOID: 'void' } as const;
export type OutboxAction = (typeof OutboxAction)[keyof typeof OutboxAction];

/** The feeder's cursor name in the store's `cursors` table. */
export const OUTBOX_CURSOR = 'fhir-outbox';

/** What the outbox needs of the store (SqliteStore satisfies it). */
export interface OutboxStore {
  database(): Database.Database;
  observationsAfter(afterId: number, limit: number): StoredObservation[];
  cursor(name: string): number;
  setCursor(name: string, position: number): void;
  /** Runs outbox writes (passes, settles) when they need not wait for the store's write lock. */
  exclusive<T>(fn: () => T): Promise<T>;
  pseudonym(patient: PatientId): string;
  /** Readings by store id (their current patient, after a binding correction). */
  observationsById(ids: readonly number[]): StoredObservation[];
  /** A device's readings in a time window (backfill after a binding correction). */
  queryObservations(q: ObservationQuery): StoredObservation[];
}

/** Device→patient bindings at a time; the registry provides them (later issue). */
export interface BindingLookup {
  /** The patient bound to the device (or its bed) at `time`, or null. Must not throw. */
  patientAt(deviceId: string, location: string | null, time: number): PatientId | null;
}

/** No bindings known: with `unbound: hold`, held readings are skipped after `holdMinutes`. */
export const NO_BINDINGS: BindingLookup = { patientAt: () => null };

export interface OutboxOptions {
  readonly identifierNamespace: string;
  /** Interval end + this is when an interval may close (device-time slack), ms. */
  readonly closeDelayMs: number;
  /** `unbound: hold`: how long a reading without a patient waits for a binding, ms. */
  readonly holdMs: number;
  /** Observations read from the store per feed step. */
  readonly feedBatch: number;
  /** Queued + sending entries at which feeding pauses (backpressure into the store). */
  readonly maxRows: number;
}

/** An entry claimed for sending. */
export interface ClaimedEntry {
  readonly id: number;
  readonly identifier: string;
  readonly item: ChartItem;
  /** Attempts including this one. */
  readonly attempts: number;
  /** When the entry became ready to send (epoch ms). */
  readonly closed: number;
  /** 0, or n for the n-th re-issue after a correction (its identifier differs). */
  readonly revision: number;
}

/** The outcome of one send attempt for one entry. */
export type EntryResult =
  | { readonly id: number; readonly kind: 'confirmed'; readonly fhirId: string | null; readonly status: number }
  | {
      readonly id: number;
      readonly kind: 'retry';
      readonly nextAttempt: number;
      readonly code: string;
      readonly message: string;
      readonly status?: number;
    }
  | {
      readonly id: number;
      readonly kind: 'rejected';
      readonly code: string;
      readonly message: string;
      readonly status?: number;
      /** The EPJ's OperationOutcome, when it sent one. */
      readonly outcome?: unknown;
    };

/** Counts of entries by state. */
export type OutboxCounts = Record<OutboxState, number>;

/** One entry as the API shows it: no patient data (device, metric and time only). */
export interface OutboxEntryView {
  readonly entry: number;
  readonly state: OutboxState;
  /** `create` (chart an Observation) or `void` (set one to entered-in-error after a correction). */
  readonly action: OutboxAction;
  /** 0, or n for the n-th re-issue of a reading after a correction. */
  readonly revision: number;
  /** A void: the entry whose Observation it voids. A re-issue: the void it follows. */
  readonly ref: number | null;
  /** The Observation identifier (a void: the identifier of the Observation it voids). */
  readonly identifier: string | null;
  readonly device: string;
  readonly metric: string;
  /** Reading time of the representing reading (epoch ms). */
  readonly readingTime: number;
  /** Store ids of the readings charted by this entry. */
  readonly observations: readonly number[];
  readonly attempts: number;
  readonly nextAttempt: number | null;
  readonly fhirId: string | null;
  readonly httpStatus: number | null;
  readonly errorCode: string | null;
  readonly error: string | null;
  /** The EPJ's OperationOutcome of a rejection (CPR-shaped numbers masked). */
  readonly outcome: unknown;
  readonly updated: number;
}

/** Delivery state of one stored reading. */
export type DeliveryState =
  | { readonly observation: number; readonly state: 'unknown' }
  | { readonly observation: number; readonly state: 'not-charted'; readonly reason: string }
  | { readonly observation: number; readonly state: 'pending'; readonly reason: string }
  | {
      readonly observation: number;
      readonly state: OutboxState | 'superseded';
      /** For `superseded`: another reading represents the interval; this is its entry. */
      readonly entry: OutboxEntryView;
    }
  | {
      readonly observation: number;
      /** Charted, then withdrawn by a binding correction and not (yet) re-issued. */
      readonly state: 'voided';
      /** The void entry (its state says whether the EPJ has it as entered-in-error yet). */
      readonly entry: OutboxEntryView;
    };

/**
 * The series keys of a device's entries start with `<device>|` (charting.ts): this range over the
 * UNIQUE (series, bucket) index finds them. `}` is the character after `|`; a device whose id
 * extends this one past a `|` is in the range too, so callers check the payload's device.
 */
export function deviceSeriesRange(device: string): [string, string] {
  return [`${device}|`, `${device}}`];
}

const SCHEMA = `
-- One row per chart entry (series × interval). UNIQUE(series, bucket) is what makes feeding
-- idempotent: a reading read twice lands in the same entry.
CREATE TABLE IF NOT EXISTS fhir_outbox (
  id INTEGER PRIMARY KEY,
  series TEXT NOT NULL,
  bucket INTEGER NOT NULL,
  bucket_end INTEGER NOT NULL,
  choice TEXT NOT NULL,
  state TEXT NOT NULL,
  reading_time INTEGER NOT NULL,
  last_received INTEGER NOT NULL,
  close_at INTEGER NOT NULL,
  payload TEXT NOT NULL,
  identifier TEXT,
  created INTEGER NOT NULL,
  closed INTEGER,
  hold_until INTEGER,
  next_attempt INTEGER NOT NULL DEFAULT 0,
  attempts INTEGER NOT NULL DEFAULT 0,
  updated INTEGER NOT NULL,
  fhir_id TEXT,
  http_status INTEGER,
  error_code TEXT,
  error TEXT,
  outcome TEXT,
  action TEXT NOT NULL DEFAULT 'create',
  revision INTEGER NOT NULL DEFAULT 0,
  ref INTEGER,
  UNIQUE (series, bucket)
);
-- The sender's and the closer's read path: entries of one state in outbox (= reading) order.
CREATE INDEX IF NOT EXISTS fhir_outbox_state ON fhir_outbox (state, id);
-- One identifier, one entry: never two in-flight copies of the same conditional create
-- (research note §4.2: conditional create is not atomic on every server).
CREATE UNIQUE INDEX IF NOT EXISTS fhir_outbox_identifier ON fhir_outbox (identifier) WHERE identifier IS NOT NULL;
-- Readings of an open median interval; deleted when the interval closes.
CREATE TABLE IF NOT EXISTS fhir_outbox_samples (
  entry INTEGER NOT NULL,
  obs INTEGER NOT NULL,
  time INTEGER NOT NULL,
  rank REAL NOT NULL,
  reading TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS fhir_outbox_samples_entry ON fhir_outbox_samples (entry);
-- Device resources created in an EPJ ("a Device per device id, created once"), per endpoint.
CREATE TABLE IF NOT EXISTS fhir_devices (
  endpoint TEXT NOT NULL,
  device TEXT NOT NULL,
  fhir_id TEXT NOT NULL,
  created INTEGER NOT NULL,
  PRIMARY KEY (endpoint, device)
);
`;

interface EntryRow {
  id: number;
  series: string;
  bucket: number;
  choice: string;
  state: OutboxState;
  reading_time: number;
  last_received: number;
  payload: string;
  identifier: string | null;
  created: number;
  closed: number | null;
  hold_until: number | null;
  next_attempt: number;
  attempts: number;
  updated: number;
  fhir_id: string | null;
  http_status: number | null;
  error_code: string | null;
  error: string | null;
  outcome: string | null;
  action: OutboxAction;
  revision: number;
  ref: number | null;
}

/** An open entry as cached while its interval runs. */
interface OpenEntry {
  readonly id: number;
  readonly choice: string;
  payload: Payload;
  readingTime: number;
  lastReceived: number;
  closeAt: number;
}

/**
 * Bound of the open-entry caches: about one open entry per active series (device channel ×
 * patient); 100 000 covers a region-sized instance. Beyond it the caches start over.
 */
const OPEN_CACHE_MAX = 100_000;

function entryKey(series: string, bucket: number): string {
  return `${series}\u0000${bucket}`;
}

/**
 * Payload JSON: the chart item (readings carry their store id). Holds patient data: never log it.
 * A void's payload also names the Observation it voids.
 */
export interface Payload {
  readonly kind: ChartItem['kind'];
  readonly readings: ChartReading[];
  readonly target?: VoidTarget;
}

/** The Observation a void entry sets to `entered-in-error`. */
export interface VoidTarget {
  /** `Observation/<id>` when the EPJ told us (Location of the create), else null: found by identifier. */
  readonly fhirId: string | null;
  /** Identifier value of the voided Observation (system: `fhir.identifierSystem`). */
  readonly identifier: string;
}

/**
 * Columns added for corrections (`corrections.ts`) to an outbox made by an older version:
 * `action` (create | void), `revision` (0, or n for the n-th re-issue after a correction),
 * `ref` (a void: the entry it voids; a re-issue: the void it follows). Then their index.
 */
function migrate(db: Database.Database): void {
  const columns = new Set((db.prepare('PRAGMA table_info(fhir_outbox)').all() as { name: string }[]).map((c) => c.name));
  if (!columns.has('action')) db.exec(`ALTER TABLE fhir_outbox ADD COLUMN action TEXT NOT NULL DEFAULT '${OutboxAction.CREATE}'`);
  if (!columns.has('revision')) db.exec('ALTER TABLE fhir_outbox ADD COLUMN revision INTEGER NOT NULL DEFAULT 0');
  if (!columns.has('ref')) db.exec('ALTER TABLE fhir_outbox ADD COLUMN ref INTEGER');
  // One void per voided entry: recording a void twice (a job run again after a crash) is a no-op.
  db.exec(`CREATE UNIQUE INDEX IF NOT EXISTS fhir_outbox_void ON fhir_outbox (ref) WHERE action = '${OutboxAction.VOID}'`);
}

/** Entries looked at per housekeeping statement: bounds the time one `maintain()` can take. */
const MAINTAIN_SLICE = 10_000;

/**
 * Store reads per `feed()` call. One: a read of `feedBatch` readings is a few ms of synchronous
 * work; the loop calls again at once while there is a backlog, so other work (MLLP ACKs, the
 * API) gets the event loop between reads.
 */
const MAX_FEED_STEPS = 1;

/**
 * When the feeder is not caught up, readings received up to this long before the last one read
 * may still be unread: `received` is stamped at arrival, commits can land a little out of that
 * order across connections. Closing waits for this margin.
 */
const RECEIVED_ORDER_SLACK_MS = 1000;

/** The durable outbox. All methods are synchronous SQLite work; call them from one thread. */
export class Outbox {
  private readonly db: Database.Database;
  private readonly s;
  private readonly pendingStates = `('${OutboxState.QUEUED}', '${OutboxState.SENDING}')`;
  /** Queued + sending, kept in memory (every transition is made here); re-counted now and then. */
  private pending = 0;
  /** Received-time watermark: every reading received before it has been read. */
  private watermark = 0;
  private caughtUp = false;
  private lateReadings = 0;
  private confirmed = 0;
  /**
   * Open entries by series and bucket, so the readings of a running interval neither look the
   * row up nor rewrite it more than once per feed step. The database stays the truth: an entry
   * leaves the cache when it closes, and the cache is dropped when a feed transaction fails.
   */
  private readonly openEntries = new Map<string, OpenEntry>();
  /** Highest bucket this process created an entry for, per series. */
  private readonly seriesTop = new Map<string, number>();
  /** Recently closed entries → the time of the reading they charted (repeats skip the lookup). */
  private readonly closedEntries = new Map<string, number>();
  private repeats = 0;

  constructor(
    private readonly store: OutboxStore,
    private readonly policy: ChartingPolicy,
    private readonly options: OutboxOptions,
  ) {
    this.db = store.database();
    this.db.exec(SCHEMA);
    migrate(this.db);
    const db = this.db;
    this.s = {
      // Feeding: find the entry of a series and interval (UNIQUE index).
      bySeriesBucket: db.prepare('SELECT id, state, choice, reading_time, last_received, payload FROM fhir_outbox WHERE series = ? AND bucket = ?'),
      // A new interval of a series: `open`, holding its first reading.
      insertEntry: db.prepare(
        `INSERT INTO fhir_outbox (series, bucket, bucket_end, choice, state, reading_time, last_received, close_at, payload, created, updated)
         VALUES (?, ?, ?, ?, '${OutboxState.OPEN}', ?, ?, ?, ?, ?, ?)`,
      ),
      // Only an open entry changes: a closed interval is in the chart (or on its way).
      updateOpen: db.prepare(
        `UPDATE fhir_outbox SET reading_time = ?, last_received = ?, close_at = ?, payload = ?, updated = ?
         WHERE id = ? AND state = '${OutboxState.OPEN}'`,
      ),
      // `median` needs every reading of the interval until it closes; `latest` needs only the
      // candidate in the payload, so samples are written for median intervals only.
      insertSample: db.prepare('INSERT INTO fhir_outbox_samples (entry, obs, time, rank, reading) VALUES (?, ?, ?, ?, ?)'),
      // Time order, then store order: a resend at the same time replaces the earlier copy.
      samplesOf: db.prepare('SELECT obs, time, rank, reading FROM fhir_outbox_samples WHERE entry = ? ORDER BY time, obs'),
      // Samples live only while their interval is open.
      deleteSamples: db.prepare('DELETE FROM fhir_outbox_samples WHERE entry = ?'),
      // Closing: open entries whose interval (plus slack) is behind the watermark. Open entries
      // are about one per active series, so scanning them in id order is cheap.
      dueToClose: db.prepare(
        `SELECT id, series, bucket, choice, payload FROM fhir_outbox WHERE state = '${OutboxState.OPEN}' AND close_at <= ? ORDER BY id LIMIT ?`,
      ),
      // Closing with a patient: the chosen reading, its identifier, ready to send now.
      closeQueued: db.prepare(
        `UPDATE fhir_outbox SET state = '${OutboxState.QUEUED}', identifier = ?, payload = ?, reading_time = ?, closed = ?, next_attempt = 0, updated = ?
         WHERE id = ?`,
      ),
      // Closing without a patient (`unbound: hold`): wait for a binding until hold_until.
      closeHeld: db.prepare(
        `UPDATE fhir_outbox SET state = '${OutboxState.HELD}', identifier = ?, payload = ?, reading_time = ?, closed = ?, hold_until = ?, updated = ?
         WHERE id = ?`,
      ),
      // Held entries, oldest first, bounded per pass (each asks the binding lookup).
      held: db.prepare(`SELECT id, payload, hold_until FROM fhir_outbox WHERE state = '${OutboxState.HELD}' ORDER BY id LIMIT ?`),
      // A binding was found: the payload now names the patient.
      unhold: db.prepare(`UPDATE fhir_outbox SET state = '${OutboxState.QUEUED}', payload = ?, updated = ? WHERE id = ?`),
      // Not charted on purpose (no binding in time, duplicate identifier): kept for the record.
      skip: db.prepare(`UPDATE fhir_outbox SET state = '${OutboxState.SKIPPED}', error_code = ?, error = ?, updated = ? WHERE id = ?`),
      // Sending: the oldest due entries first (original reading order, after any backoff).
      due: db.prepare(
        `SELECT id, identifier, payload, attempts, closed, revision FROM fhir_outbox
         WHERE state = '${OutboxState.QUEUED}' AND action = '${OutboxAction.CREATE}' AND next_attempt <= ? ORDER BY id LIMIT ?`,
      ),
      // The claim: only a queued entry can be taken, so two senders never get the same one.
      markSending: db.prepare(
        `UPDATE fhir_outbox SET state = '${OutboxState.SENDING}', attempts = attempts + 1, updated = ? WHERE id = ? AND state = '${OutboxState.QUEUED}'`,
      ),
      // Outcomes only apply to entries this process claimed (still `sending`): a stale answer
      // after a stop/release cannot overwrite a newer state.
      confirm: db.prepare(
        `UPDATE fhir_outbox SET state = '${OutboxState.CONFIRMED}', fhir_id = ?, http_status = ?, error_code = NULL, error = NULL, updated = ?
         WHERE id = ? AND state = '${OutboxState.SENDING}'`,
      ),
      retry: db.prepare(
        `UPDATE fhir_outbox SET state = '${OutboxState.QUEUED}', next_attempt = ?, error_code = ?, error = ?, http_status = ?, updated = ?
         WHERE id = ? AND state = '${OutboxState.SENDING}'`,
      ),
      reject: db.prepare(
        `UPDATE fhir_outbox SET state = '${OutboxState.REJECTED}', error_code = ?, error = ?, http_status = ?, outcome = ?, updated = ?
         WHERE id = ? AND state = '${OutboxState.SENDING}'`,
      ),
      // After a crash or a stop mid-request the outcome is unknown: send again (conditional create).
      recover: db.prepare(`UPDATE fhir_outbox SET state = '${OutboxState.QUEUED}', next_attempt = 0 WHERE state = '${OutboxState.SENDING}'`),
      // A stop with a request in flight: back to the queue, due at once.
      release: db.prepare(
        `UPDATE fhir_outbox SET state = '${OutboxState.QUEUED}', next_attempt = 0, updated = ? WHERE id = ? AND state = '${OutboxState.SENDING}'`,
      ),
      // Dead-letter what the EPJ has not taken within maxAge, so the gap shows instead of hiding
      // in a retry loop. Only the head of the queue can be that old: look at a bounded slice of
      // it (index order) instead of scanning every queued entry.
      expire: db.prepare(
        `UPDATE fhir_outbox SET state = '${OutboxState.REJECTED}', error_code = '${FhirErrorCode.EXPIRED}',
           error = 'not delivered within outbox.maxAgeHours' || coalesce(': last error ' || error, ''), updated = ?
         WHERE id IN (SELECT id FROM fhir_outbox WHERE state = '${OutboxState.QUEUED}' ORDER BY id LIMIT ${MAINTAIN_SLICE})
           AND closed < ?`,
      ),
      // Bounded deletes from the old end of one state: \`updated\` grows with id closely enough.
      prune: db.prepare(
        `DELETE FROM fhir_outbox WHERE id IN (SELECT id FROM fhir_outbox WHERE state = ? ORDER BY id LIMIT ${MAINTAIN_SLICE}) AND updated < ?`,
      ),
      // What waits for the EPJ; counted at start and by housekeeping, kept in memory in between.
      countPending: db.prepare(`SELECT count(*) FROM fhir_outbox WHERE state IN ${this.pendingStates}`).pluck(),
      // Counted per state over the (state, id) index; confirmed is left out (it can hold a day of
      // entries) and counted in memory since start instead.
      countState: db.prepare('SELECT count(*) FROM fhir_outbox WHERE state = ?').pluck(),
      // Head of the queue: entries are closed in roughly id order, so the lowest id is (nearly) the oldest.
      oldestPending: db.prepare(`SELECT min(closed) FROM (SELECT closed FROM fhir_outbox WHERE state = ? ORDER BY id LIMIT 16)`).pluck(),
      // The API's reads: by id, by series and interval (delivery state of a reading), newest
      // first per state over the (state, id) index, newest first overall over the primary key.
      byId: db.prepare('SELECT * FROM fhir_outbox WHERE id = ?'),
      entryBySeriesBucket: db.prepare('SELECT * FROM fhir_outbox WHERE series = ? AND bucket = ?'),
      list: db.prepare('SELECT * FROM fhir_outbox WHERE state = ? ORDER BY id DESC LIMIT ?'),
      listAll: db.prepare('SELECT * FROM fhir_outbox ORDER BY id DESC LIMIT ?'),
      // Delivery state after a correction: a device's creates charting a reading time, newest first.
      createsAt: db.prepare(
        `SELECT * FROM fhir_outbox WHERE series >= ? AND series < ? AND action = '${OutboxAction.CREATE}' AND reading_time = ? ORDER BY id DESC LIMIT 16`,
      ),
      voidOf: db.prepare(`SELECT * FROM fhir_outbox WHERE ref = ? AND action = '${OutboxAction.VOID}'`),
      // Devices created in an EPJ: looked up before each Bundle, written once per device.
      deviceGet: db.prepare('SELECT fhir_id FROM fhir_devices WHERE endpoint = ? AND device = ?').pluck(),
      devicePut: db.prepare(
        'INSERT INTO fhir_devices (endpoint, device, fhir_id, created) VALUES (?, ?, ?, ?) ON CONFLICT (endpoint, device) DO UPDATE SET fhir_id = excluded.fhir_id',
      ),
      devicesForget: db.prepare('DELETE FROM fhir_devices WHERE endpoint = ?'),
    };
    this.pending = this.s.countPending.get() as number;
  }

  /** Puts every `sending` entry back to `queued` (outcome unknown after a crash). Call once at start. */
  recover(): number {
    const changed = this.s.recover.run().changes;
    this.pending = this.s.countPending.get() as number;
    return changed;
  }

  /** Re-counts queued + sending (after another module changed entries: corrections). */
  recount(): void {
    this.pending = this.s.countPending.get() as number;
  }

  /** Queued + sending entries. */
  depth(): number {
    return this.pending;
  }

  /** Readings that arrived after their interval had already closed (stored, not charted). */
  lateReadingCount(): number {
    return this.lateReadings;
  }

  /** Repeats of an already charted reading (same series, same time), e.g. the last NIBP in every message. */
  repeatCount(): number {
    return this.repeats;
  }

  /**
   * Moves new readings from the store into the outbox: up to a few `feedBatch` reads, each one
   * transaction with the cursor move. Pauses while `maxRows` entries wait for the EPJ.
   * @returns how many readings were read and whether the outbox has caught up with the store.
   */
  feed(now: number): { read: number; caughtUp: boolean; full: boolean } {
    let read = 0;
    for (let step = 0; step < MAX_FEED_STEPS; step++) {
      if (this.pending >= this.options.maxRows) {
        this.caughtUp = false;
        return { read, caughtUp: false, full: true };
      }
      const n = this.feedStep(now);
      read += n;
      if (this.caughtUp) break;
    }
    return { read, caughtUp: this.caughtUp, full: false };
  }

  private feedStep(now: number): number {
    let count = 0;
    const dirty = new Set<OpenEntry>();
    try {
      this.db.transaction(() => {
        const cursor = this.store.cursor(OUTBOX_CURSOR);
        const batch = this.store.observationsAfter(cursor, this.options.feedBatch);
        count = batch.length;
        let lastReceived = this.watermark;
        for (const stored of batch) {
          this.admit(stored, now, dirty);
          lastReceived = Math.max(lastReceived, stored.received);
        }
        // One write per touched entry per step, however many readings it took.
        for (const e of dirty) {
          this.s.updateOpen.run(e.readingTime, e.lastReceived, e.closeAt, JSON.stringify(e.payload), now, e.id);
        }
        if (batch.length > 0) this.store.setCursor(OUTBOX_CURSOR, batch[batch.length - 1]!.id);
        this.caughtUp = batch.length < this.options.feedBatch;
        this.watermark = this.caughtUp ? now : Math.max(this.watermark, lastReceived - RECEIVED_ORDER_SLACK_MS);
      })();
    } catch (err) {
      // Rolled back: the caches may hold changes the database does not. Start them afresh.
      this.openEntries.clear();
      this.seriesTop.clear();
      this.closedEntries.clear();
      throw err;
    }
    return count;
  }

  /** One reading into its entry (inside the feed transaction); changed open entries go to `dirty`. */
  private admit(stored: StoredObservation, now: number, dirty: Set<OpenEntry>): void {
    const o = stored.observation;
    const d = this.policy.decide(o);
    if (!d.chart) return;
    const reading: ChartReading = { id: stored.id, observation: o };
    const intervalZero = d.bucketEnd === d.bucketStart;
    const closeAt = (received: number) => (intervalZero ? received : d.bucketEnd + this.options.closeDelayMs);
    const key = entryKey(d.series, d.bucketStart);
    let entry = this.openEntries.get(key);
    if (entry === undefined) {
      const closedTime = this.closedEntries.get(key);
      if (closedTime !== undefined) {
        this.notAdmitted(closedTime, o.time);
        return;
      }
      // A bucket above the highest one this process created for the series cannot have a row
      // yet: skip the lookup (the common case: the series' next interval).
      const top = this.seriesTop.get(d.series);
      const row =
        top !== undefined && d.bucketStart > top
          ? undefined
          : (this.s.bySeriesBucket.get(d.series, d.bucketStart) as
              | Pick<EntryRow, 'id' | 'state' | 'choice' | 'reading_time' | 'last_received' | 'payload'>
              | undefined);
      if (row === undefined) {
        const payload: Payload = { kind: d.kind, readings: [reading] };
        const info = this.s.insertEntry.run(
          d.series,
          d.bucketStart,
          d.bucketEnd,
          d.value,
          o.time,
          stored.received,
          closeAt(stored.received),
          JSON.stringify(payload),
          now,
          now,
        );
        const id = Number(info.lastInsertRowid);
        this.remember(key, d.series, d.bucketStart, {
          id,
          choice: d.value,
          payload,
          readingTime: o.time,
          lastReceived: stored.received,
          closeAt: closeAt(stored.received),
        });
        if (d.value === 'median' && !intervalZero) this.sample(id, stored, d.rank);
        return;
      }
      if (row.state !== OutboxState.OPEN) {
        this.rememberClosed(key, row.reading_time);
        this.notAdmitted(row.reading_time, o.time);
        return;
      }
      entry = {
        id: row.id,
        choice: row.choice,
        payload: JSON.parse(row.payload) as Payload,
        readingTime: row.reading_time,
        lastReceived: row.last_received,
        closeAt: closeAt(row.last_received),
      };
      this.remember(key, d.series, d.bucketStart, entry);
    }
    if (entry.choice === 'median' && !intervalZero) this.sample(entry.id, stored, d.rank);
    const merged = mergeLatest(entry.payload, reading, entry.readingTime);
    entry.payload = merged.payload;
    entry.readingTime = merged.time;
    entry.lastReceived = Math.max(entry.lastReceived, stored.received);
    entry.closeAt = closeAt(entry.lastReceived);
    dirty.add(entry);
  }

  /**
   * A reading for an interval that is already charted (or on its way) stays in the store only.
   * Monitors repeat their last NIBP measurement, with its own time, in every periodic message:
   * such a repeat of the charted reading is expected and not counted; anything else is late.
   */
  private notAdmitted(chartedTime: number, time: number): void {
    if (time === chartedTime) this.repeats++;
    else this.lateReadings++;
  }

  private rememberClosed(key: string, readingTime: number): void {
    if (this.closedEntries.size >= OPEN_CACHE_MAX) this.closedEntries.clear();
    this.closedEntries.set(key, readingTime);
  }

  /** Caches an open entry (bounded: past the bound the cache starts over and rows are looked up). */
  private remember(key: string, series: string, bucket: number, entry: OpenEntry): void {
    if (this.openEntries.size >= OPEN_CACHE_MAX) this.openEntries.clear();
    if (this.seriesTop.size >= OPEN_CACHE_MAX) this.seriesTop.clear();
    this.openEntries.set(key, entry);
    const top = this.seriesTop.get(series);
    if (top === undefined || bucket > top) this.seriesTop.set(series, bucket);
  }

  private sample(entry: number, stored: StoredObservation, rank: number): void {
    this.s.insertSample.run(entry, stored.id, stored.observation.time, rank, JSON.stringify(stored.observation));
  }

  /**
   * Closes the intervals that are over: each entry gets its representing reading and its
   * identifier and becomes `queued` (or `held` without a patient). Then held entries look for a
   * binding, and give up after `holdMinutes`.
   * @returns entries queued and skipped in this pass.
   */
  close(now: number, bindings: BindingLookup, limit = 5000): { queued: number; held: number; skipped: number } {
    let queued = 0;
    let held = 0;
    let skipped = 0;
    const watermark = this.caughtUp ? now : this.watermark;
    this.db.transaction(() => {
      const rows = this.s.dueToClose.all(watermark, limit) as Pick<EntryRow, 'id' | 'series' | 'bucket' | 'choice' | 'payload'>[];
      for (const row of rows) {
        const key = entryKey(row.series, row.bucket);
        this.openEntries.delete(key);
        let payload = JSON.parse(row.payload) as Payload;
        if (row.choice === 'median') payload = this.median(row.id, payload);
        this.rememberClosed(key, payload.readings[0]!.observation.time);
        this.s.deleteSamples.run(row.id);
        const item: ChartItem = payload;
        const identifier = itemIdentifier(item, this.options.identifierNamespace);
        const head = payload.readings[0]!.observation;
        const text = JSON.stringify(payload);
        if (identifier === null) {
          this.s.skip.run(FhirErrorCode.UNCHARTABLE, `${head.metric}: no MDC code to key the entry on`, now, row.id);
          skipped++;
          continue;
        }
        try {
          if (head.patient === null) {
            this.s.closeHeld.run(identifier, text, head.time, now, now + this.options.holdMs, now, row.id);
            held++;
          } else {
            this.s.closeQueued.run(identifier, text, head.time, now, now, row.id);
            queued++;
          }
        } catch (err) {
          if ((err as { code?: string }).code !== 'SQLITE_CONSTRAINT_UNIQUE') throw err;
          // The same reading is already an entry (an interval setting changed between runs):
          // one copy is enough, and two in flight could duplicate on a non-atomic server.
          this.s.skip.run(FhirErrorCode.DUPLICATE, 'another entry carries the same identifier', now, row.id);
          skipped++;
        }
      }
      for (const row of this.s.held.all(limit) as Pick<EntryRow, 'id' | 'payload' | 'hold_until'>[]) {
        const payload = JSON.parse(row.payload) as Payload;
        const head = payload.readings[0]!.observation;
        const patient = bindings.patientAt(head.deviceId, head.location, head.time);
        if (patient !== null) {
          const bound: Payload = {
            kind: payload.kind,
            readings: payload.readings.map((r) => ({ id: r.id, observation: { ...r.observation, patient } })),
          };
          this.s.unhold.run(JSON.stringify(bound), now, row.id);
          queued++;
        } else if ((row.hold_until ?? 0) <= now) {
          this.s.skip.run(FhirErrorCode.UNBOUND, 'no patient bound to the device within charting.holdMinutes', now, row.id);
          skipped++;
        }
      }
    })();
    this.pending += queued;
    return { queued, held, skipped };
  }

  /** The lower-median reading of an interval (a real reading, never an average). */
  private median(entry: number, fallback: Payload): Payload {
    const samples = this.s.samplesOf.all(entry) as { obs: number; time: number; rank: number; reading: string }[];
    if (samples.length === 0) return fallback;
    // Group by reading time: the parts of one BP measurement are one candidate.
    const byTime = new Map<number, { obs: number; rank: number; reading: string; part: string }[]>();
    for (const s of samples) {
      const o = JSON.parse(s.reading) as Observation;
      const role = chartRole(o);
      const part = role.kind === 'bp' ? role.part : 'value';
      const list = byTime.get(s.time) ?? [];
      // A re-sent reading (same part, same time) replaces the earlier one, as in `latest`.
      const at = list.findIndex((x) => x.part === part);
      if (at >= 0) list.splice(at, 1);
      list.push({ obs: s.obs, rank: s.rank, reading: s.reading, part });
      byTime.set(s.time, list);
    }
    // Rank a BP measurement by its systolic value (else whichever part it has).
    const candidates = [...byTime.values()].map((parts) => ({
      parts,
      rank: (parts.find((p) => p.part === 'sys') ?? parts.find((p) => p.part === 'value') ?? parts[0]!).rank,
    }));
    candidates.sort((a, b) => a.rank - b.rank);
    const chosen = candidates[(candidates.length - 1) >> 1]!;
    return {
      kind: fallback.kind,
      readings: chosen.parts.map((p) => ({ id: p.obs, observation: JSON.parse(p.reading) as Observation })),
    };
  }

  /**
   * Claims up to `limit` due entries for sending (`queued` → `sending`), oldest first.
   * An entry is never claimed twice: the state change is the lock.
   */
  claim(limit: number, now: number): ClaimedEntry[] {
    const out: ClaimedEntry[] = [];
    this.db.transaction(() => {
      const rows = this.s.due.all(now, limit) as Pick<EntryRow, 'id' | 'identifier' | 'payload' | 'attempts' | 'closed' | 'revision'>[];
      for (const row of rows) {
        if (this.s.markSending.run(now, row.id).changes === 0) continue;
        const payload = JSON.parse(row.payload) as Payload;
        out.push({
          id: row.id,
          identifier: row.identifier ?? '',
          item: payload,
          attempts: row.attempts + 1,
          closed: row.closed ?? now,
          revision: row.revision,
        });
      }
    })();
    return out;
  }

  /** Records the outcomes of one send, in one transaction. */
  settle(results: readonly EntryResult[], now: number): void {
    let done = 0;
    this.db.transaction(() => {
      for (const r of results) {
        switch (r.kind) {
          case 'confirmed': {
            const changed = this.s.confirm.run(r.fhirId, r.status, now, r.id).changes;
            done += changed;
            this.confirmed += changed;
            break;
          }
          case 'retry':
            this.s.retry.run(r.nextAttempt, r.code, scrubCpr(r.message), r.status ?? null, now, r.id);
            break;
          case 'rejected':
            done += this.s.reject.run(
              r.code,
              scrubCpr(r.message),
              r.status ?? null,
              r.outcome === undefined ? null : scrubCpr(JSON.stringify(r.outcome)),
              now,
              r.id,
            ).changes;
            break;
          default:
            r satisfies never;
        }
      }
    })();
    this.pending -= done;
  }

  /** Puts claimed entries back without counting a failure (stop with requests in flight). */
  release(ids: readonly number[], now: number): void {
    this.db.transaction(() => {
      for (const id of ids) this.s.release.run(now, id);
    })();
  }

  /**
   * Housekeeping: dead-letters entries older than `maxAgeMs` in the queue, deletes confirmed
   * and dead entries past their keep time, and re-counts the queue.
   */
  maintain(now: number, limits: { maxAgeMs: number; keepConfirmedMs: number; keepRejectedMs: number }): { expired: number } {
    const expired = this.s.expire.run(now, now - limits.maxAgeMs).changes;
    this.s.prune.run(OutboxState.CONFIRMED, now - limits.keepConfirmedMs);
    this.s.prune.run(OutboxState.REJECTED, now - limits.keepRejectedMs);
    this.s.prune.run(OutboxState.SKIPPED, now - limits.keepRejectedMs);
    this.pending = this.s.countPending.get() as number;
    return { expired };
  }

  /** Entries by state, except `confirmed` (see {@link Outbox.confirmedSinceStart}). */
  counts(): Omit<OutboxCounts, 'confirmed'> {
    const n = (state: OutboxState) => this.s.countState.get(state) as number;
    return {
      open: n(OutboxState.OPEN),
      held: n(OutboxState.HELD),
      queued: n(OutboxState.QUEUED),
      sending: n(OutboxState.SENDING),
      rejected: n(OutboxState.REJECTED),
      skipped: n(OutboxState.SKIPPED),
    };
  }

  /** Entries confirmed by the EPJ since this outbox was constructed. */
  confirmedSinceStart(): number {
    return this.confirmed;
  }

  /** When the oldest entry still waiting for the EPJ became ready to send, or null. */
  oldestPending(): number | null {
    const a = this.s.oldestPending.get(OutboxState.QUEUED) as number | null;
    const b = this.s.oldestPending.get(OutboxState.SENDING) as number | null;
    if (a === null) return b;
    if (b === null) return a;
    return Math.min(a, b);
  }

  /** Entries, newest first, optionally of one state. */
  list(state: OutboxState | undefined, limit: number): OutboxEntryView[] {
    const rows = (state === undefined ? this.s.listAll.all(limit) : this.s.list.all(state, limit)) as EntryRow[];
    return rows.map(view);
  }

  /** One entry by its outbox id. */
  entry(id: number): OutboxEntryView | null {
    const row = this.s.byId.get(id) as EntryRow | undefined;
    return row === undefined ? null : view(row);
  }

  /**
   * What became of one stored reading: not charted (and why), waiting to be read, the state of
   * its chart entry, or `superseded` by the reading that represents its interval.
   */
  deliveryState(observationId: number): DeliveryState {
    const [stored] = this.store.observationsAfter(observationId - 1, 1);
    if (stored === undefined || stored.id !== observationId) return { observation: observationId, state: 'unknown' };
    // First the entry that charts this very reading: after a binding correction the series
    // lookup below cannot find it (the series names the patient, which the correction changed).
    const charting = this.entryCharting(stored.id, stored.observation);
    if (charting !== null) return charting;
    const d = this.policy.decide(stored.observation);
    if (!d.chart) return { observation: observationId, state: 'not-charted', reason: d.reason };
    const row = this.s.entryBySeriesBucket.get(d.series, d.bucketStart) as EntryRow | undefined;
    if (row === undefined) {
      if (observationId > this.store.cursor(OUTBOX_CURSOR)) {
        return { observation: observationId, state: 'pending', reason: 'not yet read by the outbox' };
      }
      return { observation: observationId, state: 'not-charted', reason: 'its chart entry was pruned or the policy changed' };
    }
    const entry = view(row);
    if (row.state !== OutboxState.OPEN && !entry.observations.includes(observationId)) {
      return { observation: observationId, state: 'superseded', entry };
    }
    return { observation: observationId, state: row.state, entry };
  }

  /**
   * The newest entry whose payload holds this reading (a re-issue after a correction is newer
   * than the entry it replaces), as the reading's delivery state; `voided` when that entry was
   * voided and not re-issued. Null when no entry holds it (superseded, pending, not charted).
   */
  private entryCharting(observationId: number, o: Observation): DeliveryState | null {
    const [lo, hi] = deviceSeriesRange(o.deviceId);
    const rows = (this.s.createsAt.all(lo, hi, o.time) as EntryRow[]).filter((r) => {
      const p = JSON.parse(r.payload) as Payload;
      return p.readings.some((x) => x.id === observationId) && p.readings[0]?.observation.deviceId === o.deviceId;
    });
    const newest = rows[0];
    if (newest === undefined) return null;
    const voidRow = this.s.voidOf.get(newest.id) as EntryRow | undefined;
    if (voidRow !== undefined) return { observation: observationId, state: 'voided', entry: view(voidRow) };
    return { observation: observationId, state: newest.state, entry: view(newest) };
  }

  /** The EPJ's id of the Device created for `device` at `endpoint`, if any. */
  knownDevice(endpoint: string, device: string): string | null {
    return (this.s.deviceGet.get(endpoint, device) as string | undefined) ?? null;
  }

  rememberDevice(endpoint: string, device: string, fhirId: string, now: number): void {
    this.s.devicePut.run(endpoint, device, fhirId, now);
  }

  /** Forgets every Device of an endpoint (an EPJ stand-in that keeps its data in memory only). */
  forgetDevices(endpoint: string): void {
    this.s.devicesForget.run(endpoint);
  }
}

/**
 * `latest` merge of a reading into an interval's candidate. A newer reading replaces the
 * candidate; one with the same time replaces the same part (a resend) or adds a BP part; an
 * older one changes nothing.
 */
function mergeLatest(payload: Payload, reading: ChartReading, currentTime: number): { payload: Payload; time: number; changed: boolean } {
  const t = reading.observation.time;
  if (t > currentTime) return { payload: { kind: payload.kind, readings: [reading] }, time: t, changed: true };
  if (t < currentTime) return { payload, time: currentTime, changed: false };
  if (payload.kind === 'single') return { payload: { kind: payload.kind, readings: [reading] }, time: t, changed: true };
  const role = chartRole(reading.observation);
  const part = role.kind === 'bp' ? role.part : null;
  const readings = payload.readings.filter((r) => {
    const other = chartRole(r.observation);
    return !(other.kind === 'bp' && other.part === part);
  });
  readings.push(reading);
  return { payload: { kind: payload.kind, readings }, time: t, changed: true };
}

function view(row: EntryRow): OutboxEntryView {
  const payload = JSON.parse(row.payload) as Payload;
  const head = payload.readings[0]?.observation;
  return {
    entry: row.id,
    state: row.state,
    action: row.action,
    revision: row.revision,
    ref: row.ref,
    identifier: row.action === OutboxAction.VOID ? (payload.target?.identifier ?? null) : row.identifier,
    device: head?.deviceId ?? '',
    metric: head === undefined ? '' : payload.kind === 'bp' ? bpName(head) : head.metric,
    readingTime: row.reading_time,
    observations: payload.readings.map((r) => r.id),
    attempts: row.attempts,
    nextAttempt: row.state === OutboxState.QUEUED && row.next_attempt > 0 ? row.next_attempt : null,
    fhirId: row.fhir_id,
    httpStatus: row.http_status,
    errorCode: row.error_code,
    error: row.error,
    outcome: row.outcome === null ? null : (JSON.parse(row.outcome) as unknown),
    updated: row.updated,
  };
}

function bpName(o: Observation): string {
  const role = chartRole(o);
  return role.kind === 'bp' ? role.panelRefid : o.metric;
}
