/**
 * Retroactive correction of the chart (issue 4, item 6): a device's binding for a past interval
 * was wrong, the store's readings of that interval now name the right patient (or none), and
 * what the outbox charted or is about to chart for the wrong patient must follow.
 *
 * `record()` only writes a job (one row, one transaction), so a crash or an EPJ outage loses
 * nothing; `run()` applies pending jobs from the charting loop. Per `create` entry of the device
 * with its reading time in [from, to), comparing the patient it carries with the store's:
 *
 * - not sent yet (`queued`, `held`, `skipped` for want of a patient): re-attributed in place;
 * - `confirmed` (in the EPJ): a `void` entry is added, which sets the EPJ's Observation to
 *   `entered-in-error`; once the void is confirmed, a re-issue (a `create` with the next
 *   revision, so a new identifier) is queued for the patient the store names then, if any;
 * - `open` (interval running) or `sending` (outcome unknown yet): the job waits and looks again
 *   at the next pass;
 * - `rejected`: left as it is (a dead letter is not in the chart).
 *
 * One value per interval and patient: when the corrected patient has an entry of its own for the
 * interval already (readings after the binding change went there), an unsent entry is skipped
 * (DUPLICATE) and a void re-issues nothing. Last, readings no entry took because they had no
 * patient are charted now (`backfill.ts`).
 *
 * Every step is idempotent (a void per entry at most: unique index; a re-issue per void at most:
 * unique series; a backfill per series and interval at most), so a job run again after a crash
 * changes nothing twice.
 */
import type Database from 'better-sqlite3';
import { scrubCpr } from '../../log.js';
import type { PatientId } from '../../model/measurement.js';
import type { AttributionChange } from '../../registry/types.js';
import { entryKey, fillEntries } from './backfill.js';
import type { ChartingPolicy } from './charting.js';
import { FhirErrorCode } from './errors.js';
import { itemIdentifier, type ChartReading } from './observation.js';
import {
  deviceSeriesRange,
  OUTBOX_CURSOR,
  OutboxAction,
  OutboxState,
  type ClaimedEntry,
  type EntryResult,
  type Outbox,
  type OutboxStore,
  type Payload,
  type VoidTarget,
} from './outbox.js';

export interface CorrectionOptions {
  readonly identifierNamespace: string;
  /** `charting.unbound`: what becomes of a queued entry that lost its patient. */
  readonly unbound: 'store' | 'hold';
  /** `unbound: hold`: how long it waits for a binding, ms. */
  readonly holdMs: number;
  /** The charting policy: which readings no entry took are chartable now (backfill). */
  readonly policy: ChartingPolicy;
  /**
   * How far back the outbox remembers what it charted (the shorter of its keep times), ms.
   * Older readings are not backfilled: an entry pruned since could have charted them.
   */
  readonly keepMs: number;
}

/** A void claimed for sending: the Observation to set to `entered-in-error`. */
export interface VoidEntry extends ClaimedEntry {
  readonly target: VoidTarget;
}

/** What one pass did for one job (no patient data: device, interval, counts). */
export interface CorrectionReport {
  readonly job: number;
  readonly device: string;
  readonly from: number;
  readonly to: number;
  readonly reason: string;
  /** Voids added in this pass (Observations in the EPJ to set to entered-in-error). */
  readonly voids: number;
  /** Entries not sent yet that now carry the corrected patient. */
  readonly reattributed: number;
  /** Entries not sent yet whose interval the corrected patient has an entry for already: skipped. */
  readonly merged: number;
  /** Entries not sent yet that lost their patient (held, or skipped with `unbound: store`). */
  readonly unbound: number;
  /** New entries for readings no entry had taken (they had no patient before). */
  readonly charted: number;
  /** Entries still open or in flight: the job looks again at the next pass. */
  readonly waiting: number;
  readonly done: boolean;
}

/** Correction counts for the outbox status. */
export interface CorrectionCounts {
  /** Jobs not finished (waiting for open or in-flight entries, or not run yet). */
  readonly pending: number;
  /** Voids waiting for the EPJ (queued + sending). */
  readonly voidsPending: number;
  /** Observations set to entered-in-error (or found gone) since start. */
  readonly voided: number;
  /** Re-issues queued for the corrected patient since start. */
  readonly reissued: number;
}

const SCHEMA = `
-- One row per AttributionChange: the durable promise that the chart will follow the store.
CREATE TABLE IF NOT EXISTS fhir_corrections (
  id INTEGER PRIMARY KEY,
  device TEXT NOT NULL,
  from_time INTEGER NOT NULL,
  to_time INTEGER NOT NULL,
  reason TEXT NOT NULL,
  state TEXT NOT NULL,
  created INTEGER NOT NULL,
  updated INTEGER NOT NULL,
  voids INTEGER NOT NULL DEFAULT 0,
  reattributed INTEGER NOT NULL DEFAULT 0,
  unbound INTEGER NOT NULL DEFAULT 0,
  charted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS fhir_corrections_state ON fhir_corrections (state, id);
`;

const JOB_PENDING = 'pending';
const JOB_DONE = 'done';

/** Jobs applied per pass: each is one transaction over the device's entries in its interval. */
const JOBS_PER_PASS = 20;
/** Stored readings looked at per job for backfill (a day of one monitor at 1/s is ~1M: bounded). */
const FILL_READINGS = 200_000;

interface JobRow {
  id: number;
  device: string;
  from_time: number;
  to_time: number;
  reason: string;
}

interface EntryRow {
  id: number;
  series: string;
  bucket: number;
  bucket_end: number;
  choice: string;
  state: OutboxState;
  reading_time: number;
  last_received: number;
  payload: string;
  identifier: string | null;
  fhir_id: string | null;
  error_code: string | null;
  revision: number;
  ref: number | null;
}

function samePatient(a: PatientId | null, b: PatientId | null): boolean {
  if (a === null || b === null) return a === b;
  return a.system === b.system && a.value === b.value;
}

/** The readings with the patient the store names now (readings the store no longer has keep theirs). */
function withPatients(readings: readonly ChartReading[], current: ReadonlyMap<number, PatientId | null>): ChartReading[] {
  return readings.map((r) => {
    const patient = current.has(r.id) ? current.get(r.id)! : r.observation.patient;
    return samePatient(patient, r.observation.patient) ? r : { id: r.id, observation: { ...r.observation, patient } };
  });
}

/** Correction jobs and voids in the outbox DB. Synchronous SQLite work, one thread. */
export class Corrections {
  private readonly db: Database.Database;
  private readonly s;
  private voided = 0;
  private reissued = 0;

  constructor(
    private readonly store: OutboxStore,
    private readonly outbox: Outbox,
    private readonly options: CorrectionOptions,
  ) {
    this.db = store.database();
    this.db.exec(SCHEMA);
    const db = this.db;
    this.s = {
      insertJob: db.prepare(
        `INSERT INTO fhir_corrections (device, from_time, to_time, reason, state, created, updated) VALUES (?, ?, ?, ?, '${JOB_PENDING}', ?, ?)`,
      ),
      pendingJobs: db.prepare(`SELECT id, device, from_time, to_time, reason FROM fhir_corrections WHERE state = '${JOB_PENDING}' ORDER BY id LIMIT ?`),
      updateJob: db.prepare(
        'UPDATE fhir_corrections SET state = ?, voids = voids + ?, reattributed = reattributed + ?, unbound = unbound + ?, charted = charted + ?, updated = ? WHERE id = ?',
      ),
      countPendingJobs: db.prepare(`SELECT count(*) FROM fhir_corrections WHERE state = '${JOB_PENDING}'`).pluck(),
      // The device's chart entries (not voids) over the series index, then by reading time.
      entriesOf: db.prepare(
        `SELECT id, series, bucket, bucket_end, choice, state, reading_time, last_received, payload, identifier, fhir_id, error_code, revision, ref
         FROM fhir_outbox WHERE series >= ? AND series < ? AND action = '${OutboxAction.CREATE}' AND reading_time >= ? AND reading_time < ?
         ORDER BY id`,
      ),
      voidOf: db.prepare(`SELECT id FROM fhir_outbox WHERE ref = ? AND action = '${OutboxAction.VOID}'`).pluck(),
      // The corrected patient's own entry for an interval (the feeder's series, or a backfill).
      nativeEntries: db.prepare(
        `SELECT id, state, payload FROM fhir_outbox WHERE series IN (?, ? || '|fill') AND bucket = ? AND action = '${OutboxAction.CREATE}' AND id != ?`,
      ),
      voidStateOf: db.prepare(`SELECT state FROM fhir_outbox WHERE ref = ? AND action = '${OutboxAction.VOID}'`).pluck(),
      // Backfill: the device's chart entries of a range of intervals (any reading time).
      entriesInBuckets: db.prepare(
        `SELECT id, bucket, payload, revision FROM fhir_outbox
         WHERE series >= ? AND series < ? AND action = '${OutboxAction.CREATE}' AND bucket >= ? AND bucket <= ?`,
      ),
      // Backfill: a new chart entry, ready to send. Own series (`|fill`): OR IGNORE makes a job
      // run again after a crash a no-op, and never collides with the feeder's entries.
      insertFill: db.prepare(
        `INSERT OR IGNORE INTO fhir_outbox (series, bucket, bucket_end, choice, state, reading_time, last_received, close_at, payload,
           identifier, created, closed, next_attempt, updated, action, revision, ref)
         VALUES (?, ?, ?, ?, '${OutboxState.QUEUED}', ?, ?, 0, ?, ?, ?, ?, 0, ?, '${OutboxAction.CREATE}', ?, NULL)`,
      ),
      // Re-attributions in place. Each names the state it expects: a stale view changes nothing.
      requeue: db.prepare(
        `UPDATE fhir_outbox SET state = '${OutboxState.QUEUED}', payload = ?, next_attempt = 0, error_code = NULL, error = NULL, closed = ?, updated = ?
         WHERE id = ? AND state = ?`,
      ),
      repatient: db.prepare(`UPDATE fhir_outbox SET payload = ?, updated = ? WHERE id = ? AND state = ?`),
      skipTaken: db.prepare(
        `UPDATE fhir_outbox SET state = '${OutboxState.SKIPPED}', payload = ?, error_code = '${FhirErrorCode.DUPLICATE}',
           error = 'after a binding correction, the patient has another entry for this interval', updated = ? WHERE id = ? AND state = ?`,
      ),
      hold: db.prepare(
        `UPDATE fhir_outbox SET state = '${OutboxState.HELD}', payload = ?, hold_until = ?, updated = ? WHERE id = ? AND state = '${OutboxState.QUEUED}'`,
      ),
      skipUnbound: db.prepare(
        `UPDATE fhir_outbox SET state = '${OutboxState.SKIPPED}', payload = ?, error_code = '${FhirErrorCode.UNBOUND}',
           error = 'no patient bound after a binding correction', updated = ? WHERE id = ? AND state = '${OutboxState.QUEUED}'`,
      ),
      // A void: own series (the voided entry's + `|void`), no identifier of its own (the unique
      // identifier index is for creates); OR IGNORE: one void per voided entry.
      insertVoid: db.prepare(
        `INSERT OR IGNORE INTO fhir_outbox (series, bucket, bucket_end, choice, state, reading_time, last_received, close_at, payload,
           identifier, created, closed, next_attempt, updated, action, revision, ref)
         VALUES (?, ?, ?, ?, '${OutboxState.QUEUED}', ?, ?, 0, ?, NULL, ?, ?, 0, ?, '${OutboxAction.VOID}', ?, ?)`,
      ),
      dueVoids: db.prepare(
        `SELECT id, payload, attempts, closed, revision FROM fhir_outbox
         WHERE state = '${OutboxState.QUEUED}' AND action = '${OutboxAction.VOID}' AND next_attempt <= ? ORDER BY id LIMIT ?`,
      ),
      markSending: db.prepare(
        `UPDATE fhir_outbox SET state = '${OutboxState.SENDING}', attempts = attempts + 1, updated = ? WHERE id = ? AND state = '${OutboxState.QUEUED}'`,
      ),
      voidById: db.prepare(
        `SELECT id, series, bucket, bucket_end, choice, state, reading_time, last_received, payload, identifier, fhir_id, error_code, revision, ref
         FROM fhir_outbox WHERE id = ? AND action = '${OutboxAction.VOID}'`,
      ),
      // A re-issue: a create with the next revision. OR IGNORE: one per void (series), and one
      // per identifier (a revision is charted once).
      insertReissue: db.prepare(
        `INSERT OR IGNORE INTO fhir_outbox (series, bucket, bucket_end, choice, state, reading_time, last_received, close_at, payload,
           identifier, created, closed, next_attempt, updated, action, revision, ref)
         VALUES (?, ?, ?, ?, '${OutboxState.QUEUED}', ?, ?, 0, ?, ?, ?, ?, 0, ?, '${OutboxAction.CREATE}', ?, ?)`,
      ),
      countVoidsPending: db.prepare(
        `SELECT count(*) FROM fhir_outbox WHERE state IN ('${OutboxState.QUEUED}', '${OutboxState.SENDING}') AND action = '${OutboxAction.VOID}'`,
      ).pluck(),
    };
  }

  /**
   * Records that the store's readings of `change.device` in [from, to) were re-attributed.
   * Durable when it returns; the work runs in the charting loop. Never throws for odd input:
   * it is called inside the re-attribution's own transaction, which must not fail over it.
   * Open ends (±Infinity) are clamped; an empty interval records nothing.
   * @returns the job id, or null when there is nothing to correct.
   */
  record(change: AttributionChange, now: number): number | null {
    const from = Number.isNaN(change.from) ? Number.MIN_SAFE_INTEGER : Math.max(change.from, Number.MIN_SAFE_INTEGER);
    const to = Number.isNaN(change.to) ? Number.MAX_SAFE_INTEGER : Math.min(change.to, Number.MAX_SAFE_INTEGER);
    if (change.device === '' || to <= from) return null;
    // The reason is free text from an operator; it is logged, so mask anything CPR-shaped.
    const info = this.s.insertJob.run(change.device, from, to, scrubCpr(change.reason).slice(0, 200), now, now);
    return Number(info.lastInsertRowid);
  }

  /**
   * Applies pending jobs, each in one transaction, and returns what each did. A job that fails
   * (rolled back, tried again next pass) does not hold up the others: its error goes to
   * `onError`, or is thrown after the other jobs ran when there is no `onError`.
   */
  run(now: number, limit = JOBS_PER_PASS, onError?: (job: number, err: unknown) => void): CorrectionReport[] {
    const jobs = this.s.pendingJobs.all(limit) as JobRow[];
    const reports: CorrectionReport[] = [];
    let failed: unknown = null;
    for (const job of jobs) {
      try {
        reports.push(this.db.transaction(() => this.apply(job, now))());
      } catch (err) {
        if (onError === undefined) failed ??= err;
        else onError(job.id, err);
      }
    }
    if (jobs.length > 0) this.outbox.recount();
    if (failed !== null) throw failed;
    return reports;
  }

  private apply(job: JobRow, now: number): CorrectionReport {
    const [lo, hi] = deviceSeriesRange(job.device);
    const rows = (this.s.entriesOf.all(lo, hi, job.from_time, job.to_time) as EntryRow[])
      .map((row) => ({ row, payload: JSON.parse(row.payload) as Payload }))
      // The range also matches devices whose id extends this one past a `|`.
      .filter((e) => e.payload.readings[0]?.observation.deviceId === job.device);
    const current = this.currentPatients(rows.flatMap((e) => e.payload.readings.map((r) => r.id)));
    let voids = 0;
    let reattributed = 0;
    let unbound = 0;
    let waiting = 0;
    let merged = 0;
    for (const { row, payload } of rows) {
      const readings = withPatients(payload.readings, current);
      if (readings.every((r, i) => r === payload.readings[i])) continue; // patient unchanged
      const patient = readings[0]!.observation.patient;
      const text = JSON.stringify({ kind: payload.kind, readings } satisfies Payload);
      switch (row.state) {
        case OutboxState.OPEN:
        case OutboxState.SENDING:
          // Open: its readings (and median samples) are still changing, re-attributed when it
          // closes. Sending: the outcome decides between voiding and re-attributing.
          waiting++;
          break;
        case OutboxState.QUEUED:
          if (patient !== null && this.intervalTaken(readings, row.bucket, row.id)) {
            merged += this.s.skipTaken.run(text, now, row.id, OutboxState.QUEUED).changes;
          } else if (patient !== null) {
            reattributed += this.s.repatient.run(text, now, row.id, OutboxState.QUEUED).changes;
          } else if (this.options.unbound === 'hold') {
            unbound += this.s.hold.run(text, now + this.options.holdMs, now, row.id).changes;
          } else {
            unbound += this.s.skipUnbound.run(text, now, row.id).changes;
          }
          break;
        case OutboxState.HELD:
          if (patient !== null && this.intervalTaken(readings, row.bucket, row.id)) {
            merged += this.s.skipTaken.run(text, now, row.id, OutboxState.HELD).changes;
          } else if (patient !== null) {
            reattributed += this.s.requeue.run(text, now, now, row.id, OutboxState.HELD).changes;
          } else {
            this.s.repatient.run(text, now, row.id, OutboxState.HELD);
          }
          break;
        case OutboxState.SKIPPED:
          // Only what was skipped for want of a patient; duplicates and unchartables stay skipped.
          if (row.error_code === FhirErrorCode.UNBOUND && patient !== null && row.identifier !== null && !this.intervalTaken(readings, row.bucket, row.id)) {
            reattributed += this.s.requeue.run(text, now, now, row.id, OutboxState.SKIPPED).changes;
          }
          break;
        case OutboxState.CONFIRMED: {
          if (this.s.voidOf.get(row.id) !== undefined || row.identifier === null) break; // voided already
          const target: VoidTarget = { fhirId: row.fhir_id, identifier: row.identifier };
          // The void carries the readings as charted (the wrong patient): what the EPJ holds.
          const voidPayload: Payload = { kind: payload.kind, readings: payload.readings, target };
          voids += this.s.insertVoid.run(
            `${row.series}|void`,
            row.bucket,
            row.bucket_end,
            row.choice,
            row.reading_time,
            row.last_received,
            JSON.stringify(voidPayload),
            now,
            now,
            now,
            row.revision,
            row.id,
          ).changes;
          break;
        }
        case OutboxState.REJECTED:
          break;
        default:
          row.state satisfies never;
      }
    }
    const done = waiting === 0;
    // Last, once nothing is in flight: what the entries above now chart is known.
    const charted = done ? this.backfill(job, now) : 0;
    this.s.updateJob.run(done ? JOB_DONE : JOB_PENDING, voids, reattributed, unbound, charted, now, job.id);
    return { job: job.id, device: job.device, from: job.from_time, to: job.to_time, reason: job.reason, voids, reattributed, merged, unbound, charted, waiting, done };
  }

  /**
   * Charts readings of the job's interval that no entry took and that the policy charts now:
   * one entry per series and interval not covered by an entry that charts (is not voided) for
   * the same patient. Only readings the feeder has read (newer ones are fed as usual) and
   * within the outbox's memory (`keepMs`). A reading charted before under an identifier (then
   * voided) gets the next revision, so its conditional create cannot match the voided resource.
   */
  private backfill(job: JobRow, now: number): number {
    const from = Math.max(job.from_time, now - this.options.keepMs);
    if (from >= job.to_time) return 0;
    const fed = this.store.cursor(OUTBOX_CURSOR);
    const stored = this.store
      .queryObservations({ device: job.device, since: from, until: job.to_time, limit: FILL_READINGS, order: 'asc' })
      .filter((o) => o.id <= fed && o.observation.patient !== null);
    if (stored.length === 0) return 0;
    const buckets = stored.map((o) => this.options.policy.decide(o.observation)).flatMap((d) => (d.chart ? [d.bucketStart] : []));
    if (buckets.length === 0) return 0;
    const [lo, hi] = deviceSeriesRange(job.device);
    const first = buckets.reduce((a, b) => Math.min(a, b));
    const last = buckets.reduce((a, b) => Math.max(a, b));
    const rows = (this.s.entriesInBuckets.all(lo, hi, first, last) as Pick<EntryRow, 'id' | 'bucket' | 'payload' | 'revision'>[])
      .map((row) => ({ row, payload: JSON.parse(row.payload) as Payload }))
      .filter((e) => e.payload.readings[0]?.observation.deviceId === job.device);
    const covered = new Set<string>();
    /** Readings an entry took (in any state) and did not give up by a confirmed void. */
    const taken = new Set<number>();
    /** Highest revision per first-charting identifier: a re-charting takes the next one. */
    const revisions = new Map<string, number>();
    for (const { row, payload } of rows) {
      const base = itemIdentifier(payload, this.options.identifierNamespace, 0);
      if (base !== null) revisions.set(base, Math.max(revisions.get(base) ?? -1, row.revision));
      const voidState = this.s.voidStateOf.get(row.id) as OutboxState | undefined;
      // A void not confirmed yet re-issues by itself when it is; a refused one leaves the
      // Observation in the EPJ: either way the reading is not free to chart again.
      if (voidState !== OutboxState.CONFIRMED) for (const r of payload.readings) taken.add(r.id);
      const head = payload.readings[0]?.observation;
      if (head === undefined || voidState !== undefined) continue; // a voided entry charts nothing
      const d = this.options.policy.decide(head);
      if (d.chart) covered.add(entryKey(d.series, row.bucket));
    }
    let charted = 0;
    const free = stored.filter((o) => !taken.has(o.id));
    for (const fill of fillEntries(free, this.options.policy, covered)) {
      const base = itemIdentifier(fill.item, this.options.identifierNamespace, 0);
      if (base === null) continue;
      const revision = (revisions.get(base) ?? -1) + 1;
      const identifier = itemIdentifier(fill.item, this.options.identifierNamespace, revision)!;
      const head = fill.item.readings[0]!.observation;
      charted += this.s.insertFill.run(
        `${fill.series}|fill`,
        fill.bucket,
        fill.bucketEnd,
        fill.choice,
        head.time,
        now,
        JSON.stringify({ kind: fill.item.kind, readings: [...fill.item.readings] } satisfies Payload),
        identifier,
        now,
        now,
        now,
        revision,
      ).changes;
    }
    return charted;
  }

  private currentPatients(ids: readonly number[]): Map<number, PatientId | null> {
    const out = new Map<number, PatientId | null>();
    for (const stored of this.store.observationsById(ids)) out.set(stored.id, stored.observation.patient);
    return out;
  }

  /** Claims due voids (`queued` → `sending`), oldest first. */
  claimVoids(limit: number, now: number): VoidEntry[] {
    const out: VoidEntry[] = [];
    this.db.transaction(() => {
      const rows = this.s.dueVoids.all(now, limit) as { id: number; payload: string; attempts: number; closed: number | null; revision: number }[];
      for (const row of rows) {
        if (this.s.markSending.run(now, row.id).changes === 0) continue;
        const payload = JSON.parse(row.payload) as Payload;
        out.push({
          id: row.id,
          identifier: payload.target?.identifier ?? '',
          item: { kind: payload.kind, readings: payload.readings },
          attempts: row.attempts + 1,
          closed: row.closed ?? now,
          revision: row.revision,
          target: payload.target ?? { fhirId: null, identifier: '' },
        });
      }
    })();
    return out;
  }

  /**
   * Records the outcomes of voids. A confirmed void queues its re-issue in the same
   * transaction: never a re-issue before its void, and never a void whose re-issue a crash lost.
   */
  settleVoids(results: readonly EntryResult[], now: number): void {
    let voided = 0;
    let reissued = 0;
    this.db.transaction(() => {
      this.outbox.settle(results, now);
      for (const r of results) {
        if (r.kind !== 'confirmed') continue;
        voided++;
        reissued += this.reissue(r.id, now);
      }
    })();
    this.voided += voided;
    this.reissued += reissued;
    this.outbox.recount();
  }

  /** Queues the re-issue of a confirmed void for the patient the store names now (none: none). */
  private reissue(voidId: number, now: number): number {
    const row = this.s.voidById.get(voidId) as EntryRow | undefined;
    if (row === undefined || row.state !== OutboxState.CONFIRMED) return 0;
    const payload = JSON.parse(row.payload) as Payload;
    const readings = withPatients(payload.readings, this.currentPatients(payload.readings.map((r) => r.id)));
    if (readings[0]?.observation.patient == null) return 0; // corrected to "no patient": voided only
    if (this.intervalTaken(readings, row.bucket, row.ref ?? 0)) return 0; // the patient has its value for the interval
    const item = { kind: payload.kind, readings } satisfies Payload;
    const revision = row.revision + 1;
    const identifier = itemIdentifier(item, this.options.identifierNamespace, revision);
    if (identifier === null) return 0;
    return this.s.insertReissue.run(
      `${row.series}|reissue`,
      row.bucket,
      row.bucket_end,
      row.choice,
      row.reading_time,
      row.last_received,
      JSON.stringify(item),
      identifier,
      now,
      now,
      now,
      revision,
      voidId,
    ).changes;
  }

  /**
   * Whether the patient `readings` now belong to has an entry of its own for this interval
   * (readings of the interval after the correction went there): a second one would chart two
   * values for one interval. An entry that is voided, refused or skipped does not count, nor
   * one a later correction gave to somebody else.
   */
  private intervalTaken(readings: readonly ChartReading[], bucket: number, self: number): boolean {
    const d = this.options.policy.decide(readings[0]!.observation);
    if (!d.chart) return false;
    const rows = this.s.nativeEntries.all(d.series, d.series, bucket, self) as { id: number; state: OutboxState; payload: string }[];
    return rows.some((r) => {
      if (r.state === OutboxState.REJECTED || r.state === OutboxState.SKIPPED || this.s.voidOf.get(r.id) !== undefined) return false;
      const head = (JSON.parse(r.payload) as Payload).readings[0]?.observation;
      if (head === undefined) return false;
      const other = this.options.policy.decide(head);
      return other.chart && other.series === d.series;
    });
  }

  counts(): CorrectionCounts {
    return {
      pending: this.s.countPendingJobs.get() as number,
      voidsPending: this.s.countVoidsPending.get() as number,
      voided: this.voided,
      reissued: this.reissued,
    };
  }
}
