import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import type { MessageIdentity } from '../driver.js';
import { ErrorCode, GatewayError } from '../errors.js';
import type { DeadLetter, DeadLetterInput } from '../model/dead-letter.js';
import type { PatientId } from '../model/measurement.js';
import type { Observation } from '../model/observation.js';
import { pseudonym } from '../pseudonym.js';
import type {
  CommitResult,
  CommitUnit,
  DeadLetterQuery,
  ObservationQuery,
  StoredObservation,
  Store,
} from './store.js';

export interface SqliteStoreOptions {
  /** Database file; `:memory:` for throwaway stores in unit tests. */
  readonly file: string;
  /** `full`: an ACKed message survives power loss. `normal`: survives a process crash only. */
  readonly synchronous?: 'full' | 'normal';
  /**
   * 0: a group commit takes everything that arrived in the current event-loop turn (no added
   * latency; under load the fsync itself lets the next group grow). >0: wait up to this long.
   */
  readonly groupCommitMaxDelayMs?: number;
  /** Flush a group at once when it holds this many rows. */
  readonly groupCommitMaxRows?: number;
}

interface Pending {
  readonly unit: CommitUnit;
  readonly resolve: (result: CommitResult) => void;
  readonly reject: (err: Error) => void;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
-- One row per accepted message: the durable record that makes a resend (same sender, same
-- MSH-10, same bytes) get the same answer without storing its readings twice. The digest is
-- part of the key so that a new message reusing an old id is stored, not dropped.
CREATE TABLE IF NOT EXISTS messages (
  id INTEGER PRIMARY KEY,
  received INTEGER NOT NULL,
  source TEXT NOT NULL,
  sender TEXT NOT NULL,
  control_id TEXT NOT NULL,
  digest TEXT NOT NULL,
  observations INTEGER NOT NULL,
  UNIQUE (sender, control_id, digest)
);
CREATE TABLE IF NOT EXISTS observations (
  id INTEGER PRIMARY KEY,
  time INTEGER NOT NULL,
  tz INTEGER NOT NULL,
  device TEXT NOT NULL,
  code INTEGER,
  system TEXT NOT NULL,
  vendor_code TEXT NOT NULL,
  metric TEXT NOT NULL,
  value REAL,
  text TEXT,
  unit TEXT NOT NULL,
  loinc TEXT,
  flags INTEGER NOT NULL,
  containment TEXT NOT NULL,
  patient_system TEXT,
  patient_value TEXT,
  location TEXT,
  message_id INTEGER,
  received INTEGER NOT NULL
);
-- The two read paths: one device's series, and everything in a time window.
CREATE INDEX IF NOT EXISTS observations_device_time ON observations (device, time);
CREATE INDEX IF NOT EXISTS observations_time ON observations (time);
-- Each downstream feeder (FHIR outbox, InfluxDB) reads observations in id order from its own
-- cursor, so it catches up after any outage without the ingest path waiting for it.
CREATE TABLE IF NOT EXISTS cursors (name TEXT PRIMARY KEY, position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
  id INTEGER PRIMARY KEY,
  received INTEGER NOT NULL,
  source TEXT NOT NULL,
  code TEXT NOT NULL,
  reason TEXT NOT NULL,
  location TEXT NOT NULL,
  control_id TEXT,
  raw BLOB NOT NULL
);
`;

/**
 * The embedded store and the gateway's commit point. `commit()` resolves only after the
 * readings are in a committed SQLite transaction (WAL, fsync per group when synchronous=full),
 * so a driver that ACKs after it resolves never ACKs a reading a crash could lose.
 *
 * Group commit: commits that arrive close together share one transaction and one fsync, which
 * keeps ACK latency low under load from many connections. Units are applied in arrival order,
 * and each resolves with its own result.
 */
export class SqliteStore implements Store {
  private readonly db: Database.Database;
  private readonly maxDelayMs: number;
  private readonly maxRows: number;
  private pending: Pending[] = [];
  private pendingRows = 0;
  private flushScheduled = false;
  private closed = false;
  private readonly pseudonymKey: Buffer;
  private readonly statements;
  private readonly applyGroup: (group: Pending[]) => CommitResult[];
  /** Parameter arrays reused for every insert (the store runs on one thread). */
  private readonly rowParams: unknown[] = new Array(COLUMNS * ROWS_PER_INSERT);
  private readonly oneRowParams: unknown[] = new Array(COLUMNS);

  constructor(options: SqliteStoreOptions) {
    if (options.file !== ':memory:') mkdirSync(dirname(options.file), { recursive: true });
    this.db = new Database(options.file);
    // WAL: readers (the API) never block the writer; one fsync per commit of the log.
    this.db.pragma('journal_mode = WAL');
    this.db.pragma(`synchronous = ${options.synchronous === 'normal' ? 'NORMAL' : 'FULL'}`);
    // A concurrent reader process (mdi inspect of a live store, backups) must not fail writes.
    this.db.pragma('busy_timeout = 5000');
    this.db.exec(SCHEMA);
    this.maxDelayMs = options.groupCommitMaxDelayMs ?? 0;
    this.maxRows = options.groupCommitMaxRows ?? 20_000;
    this.pseudonymKey = this.loadPseudonymKey();

    const db = this.db;
    this.statements = {
      insertMessage: db.prepare(
        'INSERT OR IGNORE INTO messages (received, source, sender, control_id, digest, observations) VALUES (?, ?, ?, ?, ?, ?)',
      ),
      insertObservation: db.prepare(insertObservationsSql(1)),
      insertObservations: db.prepare(insertObservationsSql(ROWS_PER_INSERT)),
      insertDeadLetter: db.prepare(
        'INSERT INTO dead_letters (received, source, code, reason, location, control_id, raw) VALUES (?, ?, ?, ?, ?, ?, ?)',
      ),
      deadLetterRaw: db.prepare('SELECT raw FROM dead_letters WHERE id = ?').pluck(),
      countObservations: db.prepare('SELECT count(*) FROM observations').pluck(),
      countDeadLetters: db.prepare('SELECT count(*) FROM dead_letters').pluck(),
      observationsAfter: db.prepare('SELECT * FROM observations WHERE id > ? ORDER BY id LIMIT ?'),
      lastObservationId: db.prepare('SELECT max(id) FROM observations').pluck(),
      getCursor: db.prepare('SELECT position FROM cursors WHERE name = ?').pluck(),
      setCursor: db.prepare(
        'INSERT INTO cursors (name, position) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET position = excluded.position',
      ),
      messageByControlId: db.prepare(
        'SELECT observations FROM messages WHERE sender = ? AND control_id = ? AND digest = ?',
      ),
    };
    this.applyGroup = this.db.transaction((group: Pending[]) => group.map((p) => this.applyUnit(p.unit)));
  }

  commit(unit: CommitUnit): Promise<CommitResult> {
    if (this.closed) return Promise.reject(new GatewayError(ErrorCode.STORE_CLOSED, 'the store is closed'));
    return new Promise<CommitResult>((resolve, reject) => {
      this.pending.push({ unit, resolve, reject });
      this.pendingRows += unit.observations.length + unit.deadLetters.length + 1;
      if (this.pendingRows >= this.maxRows) {
        this.flush();
      } else if (!this.flushScheduled) {
        this.flushScheduled = true;
        if (this.maxDelayMs > 0) setTimeout(() => this.flush(), this.maxDelayMs);
        else setImmediate(() => this.flush());
      }
    });
  }

  /** Commits everything pending now, in one transaction. */
  flush(): void {
    this.flushScheduled = false;
    const group = this.pending;
    if (group.length === 0) return;
    this.pending = [];
    this.pendingRows = 0;
    let results: CommitResult[];
    try {
      results = this.applyGroup(group);
    } catch (err) {
      // Nothing of the group was committed (the transaction rolled back): every caller must
      // answer "not stored" (MLLP AE) so the sender keeps the message and retries.
      const failure = new GatewayError(ErrorCode.STORE_FAILED, `store write failed: ${(err as Error).message}`, {
        cause: err,
      });
      for (const p of group) p.reject(failure);
      return;
    }
    for (let i = 0; i < group.length; i++) group[i]!.resolve(results[i]!);
  }

  private applyUnit(unit: CommitUnit): CommitResult {
    const s = this.statements;
    const received = unit.received;
    let messageId: number | bigint | null = null;
    if (unit.message !== null) {
      const info = s.insertMessage.run(
        received,
        unit.source,
        unit.message.sender,
        unit.message.controlId,
        unit.message.digest,
        unit.observations.length,
      );
      if (info.changes === 0) {
        const previous = s.messageByControlId.get(unit.message.sender, unit.message.controlId, unit.message.digest) as
          | { observations: number }
          | undefined;
        return { stored: 0, deadLetters: 0, duplicate: true, previouslyStored: previous?.observations ?? 0 };
      }
      messageId = info.lastInsertRowid;
    }
    // Rows go in ROWS_PER_INSERT at a time: one statement step per 16 rows instead of per row
    // roughly halves the insert cost (bench/e2e.bench.ts; the store is the hot path's largest part).
    const observations = unit.observations;
    const params = this.rowParams;
    let i = 0;
    for (; i + ROWS_PER_INSERT <= observations.length; i += ROWS_PER_INSERT) {
      for (let r = 0; r < ROWS_PER_INSERT; r++) fillRow(params, r * COLUMNS, observations[i + r]!, messageId, received);
      s.insertObservations.run(params);
    }
    const one = this.oneRowParams;
    for (; i < observations.length; i++) {
      fillRow(one, 0, observations[i]!, messageId, received);
      s.insertObservation.run(one);
    }
    for (const d of unit.deadLetters) {
      s.insertDeadLetter.run(received, unit.source, d.code, d.reason, d.location, d.controlId, Buffer.from(d.raw));
    }
    return { stored: unit.observations.length, deadLetters: unit.deadLetters.length, duplicate: false, previouslyStored: 0 };
  }

  queryObservations(q: ObservationQuery): StoredObservation[] {
    const where: string[] = [];
    const params: (string | number)[] = [];
    if (q.device !== undefined) {
      where.push('device = ?');
      params.push(q.device);
    }
    if (q.metric !== undefined) {
      if (/^\d+$/.test(q.metric)) {
        where.push('code = ?');
        params.push(Number(q.metric));
      } else {
        where.push('metric = ?');
        params.push(q.metric);
      }
    }
    if (q.since !== undefined) {
      where.push('time >= ?');
      params.push(q.since);
    }
    if (q.until !== undefined) {
      where.push('time < ?');
      params.push(q.until);
    }
    const order = q.order === 'asc' ? 'ASC' : 'DESC';
    const sql = `SELECT * FROM observations ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
      ORDER BY time ${order}, id ${order} LIMIT ?`;
    params.push(q.limit);
    const rows = this.db.prepare(sql).all(...params) as ObservationRow[];
    return rows.map(toStoredObservation);
  }

  listDeadLetters(q: DeadLetterQuery): DeadLetter[] {
    const where: string[] = [];
    const params: (string | number)[] = [];
    if (q.since !== undefined) {
      where.push('received >= ?');
      params.push(q.since);
    }
    if (q.code !== undefined) {
      where.push('code = ?');
      params.push(q.code);
    }
    params.push(q.limit);
    const rows = this.db
      .prepare(
        `SELECT id, received, source, code, reason, location, control_id, length(raw) AS size FROM dead_letters
         ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id DESC LIMIT ?`,
      )
      .all(...params) as DeadLetterRow[];
    return rows.map((r) => ({
      id: r.id,
      received: r.received,
      source: r.source,
      code: r.code,
      reason: r.reason,
      location: r.location,
      controlId: r.control_id,
      size: r.size,
    }));
  }

  /** Observations with id > `afterId`, in id (commit) order: a feeder's next batch. */
  observationsAfter(afterId: number, limit: number): StoredObservation[] {
    return (this.statements.observationsAfter.all(afterId, limit) as ObservationRow[]).map(toStoredObservation);
  }

  /**
   * Observations by store id, in id order; ids not (or no longer) stored are left out. The FHIR
   * outbox reads its readings' current patient with it when a binding was corrected.
   */
  observationsById(ids: readonly number[]): StoredObservation[] {
    const out: StoredObservation[] = [];
    // Bounded IN lists (SQLite allows 32766 parameters; a few hundred per statement is plenty).
    for (let i = 0; i < ids.length; i += 500) {
      const chunk = ids.slice(i, i + 500);
      const rows = this.db.prepare(`SELECT * FROM observations WHERE id IN (${chunk.map(() => '?').join(',')}) ORDER BY id`).all(...chunk) as ObservationRow[];
      for (const r of rows) out.push(toStoredObservation(r));
    }
    return out;
  }

  /**
   * The id of the newest stored observation, 0 when there is none: a feeder's lag (rows behind)
   * is this minus its cursor, because ids are assigned in commit order without gaps.
   */
  lastObservationId(): number {
    return (this.statements.lastObservationId.get() as number | null) ?? 0;
  }

  /** A feeder's position (the last observation id it has finished with); 0 when new. */
  cursor(name: string): number {
    return (this.statements.getCursor.get(name) as number | undefined) ?? 0;
  }

  /** Moves a feeder's cursor; durable once this returns (its own small transaction). */
  setCursor(name: string, position: number): void {
    this.statements.setCursor.run(name, position);
  }

  /**
   * The underlying database, for parts that keep their own tables next to the readings (the
   * FHIR outbox) so their state commits in the same file. Not for writing observations.
   */
  database(): Database.Database {
    return this.db;
  }

  /**
   * Re-attributes stored readings: those of `devices` (reading device ids) with a time in
   * `[from, to)` get the patient and location `resolve` gives for their time now. Flags stay:
   * a PATIENT_MISMATCH reading's message named someone else, and that is still true (the PID
   * is not kept apart, so it cannot be compared with the new patient). At most `limit`
   * readings per call, starting after store id `afterId`, in one transaction; call again with
   * the returned `lastId` until `done`.
   */
  reattribute(
    devices: readonly string[],
    from: number,
    to: number,
    /** `location: undefined` keeps the reading's location (a reading that is bound to no bed keeps what it carried). */
    resolve: (time: number) => { readonly patient: PatientId | null; readonly location: string | null | undefined },
    afterId: number,
    limit: number,
  ): { changed: number; changedDevices: string[]; lastId: number; done: boolean } {
    if (devices.length === 0) return { changed: 0, changedDevices: [], lastId: afterId, done: true };
    const select = this.db.prepare(
      `SELECT id, device, time, patient_system, patient_value, location FROM observations
       WHERE device IN (${devices.map(() => '?').join(', ')}) AND time >= ? AND time < ? AND id > ? ORDER BY id LIMIT ?`,
    );
    const update = this.db.prepare('UPDATE observations SET patient_system = ?, patient_value = ?, location = ? WHERE id = ?');
    let changed = 0;
    let lastId = afterId;
    const changedDevices = new Set<string>();
    let rows: Pick<ObservationRow, 'id' | 'device' | 'time' | 'patient_system' | 'patient_value' | 'location'>[] = [];
    this.db.transaction(() => {
      rows = select.all(...devices, from, to, afterId, limit) as typeof rows;
      for (const r of rows) {
        lastId = r.id;
        const now = resolve(r.time);
        const system = now.patient?.system ?? null;
        const value = now.patient?.value ?? null;
        const location = now.location === undefined ? r.location : now.location;
        if (system === r.patient_system && value === r.patient_value && location === r.location) continue;
        const patientChanged = system !== r.patient_system || value !== r.patient_value;
        update.run(system, value, location, r.id);
        if (patientChanged) {
          changed++;
          changedDevices.add(r.device);
        }
      }
    })();
    return { changed, changedDevices: [...changedDevices], lastId, done: rows.length < limit };
  }

  deadLetterRaw(id: number): Buffer | null {
    return (this.statements.deadLetterRaw.get(id) as Buffer | undefined) ?? null;
  }

  counts(): { observations: number; deadLetters: number } {
    return {
      observations: this.statements.countObservations.get() as number,
      deadLetters: this.statements.countDeadLetters.get() as number,
    };
  }

  /** Whether a message (sender, MSH-10, digest) was committed, and with how many readings. */
  messageCommitted(message: MessageIdentity): { observations: number } | null {
    return (
      (this.statements.messageByControlId.get(message.sender, message.controlId, message.digest) as
        | { observations: number }
        | undefined) ?? null
    );
  }

  /** The patient's pseudonym under this store's key (kept in the store, made at first start). */
  pseudonym(patient: PatientId): string {
    return pseudonym(this.pseudonymKey, patient);
  }

  /**
   * Deletes readings older than `before` (epoch ms) and dedupe records of the same age. The
   * newest row is never deleted, whatever its time: SQLite gives a new row max(id) + 1, so
   * deleting the row with the highest id (a device whose clock is years behind) would hand its id
   * to the next reading, and every feeder whose cursor already passed that id (InfluxDB, outbox,
   * republish) would skip the new reading. It goes with the next prune once a newer row exists.
   */
  prune(before: number): { observations: number; messages: number } {
    const observations = this.db
      .prepare('DELETE FROM observations WHERE time < ? AND id < (SELECT max(id) FROM observations)')
      .run(before).changes;
    const messages = this.db.prepare('DELETE FROM messages WHERE received < ?').run(before).changes;
    return { observations, messages };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    this.db.close();
  }

  private loadPseudonymKey(): Buffer {
    const row = this.db.prepare("SELECT value FROM meta WHERE key = 'pseudonym-key'").pluck().get() as Buffer | undefined;
    if (row) return row;
    const key = randomBytes(32);
    this.db.prepare("INSERT INTO meta (key, value) VALUES ('pseudonym-key', ?)").run(key);
    return key;
  }
}

const COLUMNS = 18;
const ROWS_PER_INSERT = 16;

function insertObservationsSql(rows: number): string {
  const row = `(${new Array(COLUMNS).fill('?').join(', ')})`;
  return `INSERT INTO observations (time, tz, device, code, system, vendor_code, metric, value, text, unit, loinc,
    flags, containment, patient_system, patient_value, location, message_id, received)
    VALUES ${new Array(rows).fill(row).join(', ')}`;
}

/** Writes one observation's COLUMNS values at `at`, in the column order of the INSERT. */
function fillRow(params: unknown[], at: number, o: Observation, messageId: number | bigint | null, received: number): void {
  params[at] = o.time;
  params[at + 1] = o.tzOffset;
  params[at + 2] = o.deviceId;
  params[at + 3] = o.code;
  params[at + 4] = o.system;
  params[at + 5] = o.vendorCode;
  params[at + 6] = o.metric;
  // SQLite has no NaN: "no numeric value" is NULL.
  params[at + 7] = Number.isNaN(o.value) ? null : o.value;
  params[at + 8] = o.text;
  params[at + 9] = o.unit;
  params[at + 10] = o.loinc;
  params[at + 11] = o.flags;
  params[at + 12] = o.containment;
  params[at + 13] = o.patient === null ? null : o.patient.system;
  params[at + 14] = o.patient === null ? null : o.patient.value;
  params[at + 15] = o.location;
  params[at + 16] = messageId;
  params[at + 17] = received;
}

interface ObservationRow {
  id: number;
  time: number;
  tz: number;
  device: string;
  code: number | null;
  system: string;
  vendor_code: string;
  metric: string;
  value: number | null;
  text: string | null;
  unit: string;
  loinc: string | null;
  flags: number;
  containment: string;
  patient_system: string | null;
  patient_value: string | null;
  location: string | null;
  message_id: number | null;
  received: number;
}

interface DeadLetterRow {
  id: number;
  received: number;
  source: string;
  code: string;
  reason: string;
  location: string;
  control_id: string | null;
  size: number;
}

function toStoredObservation(r: ObservationRow): StoredObservation {
  const observation: Observation = {
    time: r.time,
    tzOffset: r.tz,
    deviceId: r.device,
    code: r.code,
    system: r.system,
    vendorCode: r.vendor_code,
    metric: r.metric,
    value: r.value ?? Number.NaN,
    text: r.text,
    unit: r.unit,
    loinc: r.loinc,
    flags: r.flags,
    containment: r.containment,
    patient: r.patient_system !== null && r.patient_value !== null ? { system: r.patient_system, value: r.patient_value } : null,
    location: r.location,
  };
  return { id: r.id, received: r.received, observation };
}
