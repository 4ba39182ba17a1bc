import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { ErrorCode, GatewayError } from '../errors.js';
import type { DeadLetter } from '../model/dead-letter.js';
import type { PatientId } from '../model/measurement.js';
import type { Observation } from '../model/observation.js';
import { pseudonym } from '../pseudonym.js';
import { decodeResults, encodeGroup } from './commit-group.js';
import type {
  CommitResult,
  CommitUnit,
  DeadLetterQuery,
  ObservationQuery,
  StoredObservation,
  Store,
} from './store.js';
import { StoreWriter } from './writer.js';

export interface SqliteStoreOptions {
  /** Database file (a real file: the writer thread opens it on a connection of its own). */
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
-- part of the identity so that a new message reusing an old id is stored, not dropped. A resend
-- is found through its first reading (observations_device_time, then the message row by id):
-- an index of its own keyed by sender would cost every commit one more page per device.
CREATE TABLE IF NOT EXISTS messages (
  id INTEGER PRIMARY KEY,
  received INTEGER NOT NULL,
  source TEXT NOT NULL,
  sender TEXT NOT NULL,
  control_id TEXT NOT NULL,
  digest TEXT NOT NULL,
  observations INTEGER NOT NULL
);
-- What a reading is, apart from its device, value and time: one row per kind of reading (code,
-- unit, containment …), shared by every device that sends it. Readings point here instead of
-- repeating ~70 bytes of text each: under load the store's cost is the pages a commit writes
-- (bench/RESULTS.md). \`key\` is the JSON array of the other columns (NULLs would defeat UNIQUE).
CREATE TABLE IF NOT EXISTS series (
  id INTEGER PRIMARY KEY,
  key TEXT NOT NULL UNIQUE,
  code INTEGER,
  system TEXT NOT NULL,
  vendor_code TEXT NOT NULL,
  metric TEXT NOT NULL,
  unit TEXT NOT NULL,
  loinc TEXT,
  containment TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS observations (
  id INTEGER PRIMARY KEY,
  time INTEGER NOT NULL,
  tz INTEGER NOT NULL,
  device TEXT NOT NULL,
  series INTEGER NOT NULL REFERENCES series (id),
  value REAL,
  text TEXT,
  flags INTEGER NOT NULL,
  patient_system TEXT,
  patient_value TEXT,
  location TEXT,
  message_id INTEGER,
  received INTEGER NOT NULL
);
-- The two read paths: one device's series, and everything in a time window.
CREATE INDEX IF NOT EXISTS observations_device_time ON observations (device, time);
CREATE INDEX IF NOT EXISTS observations_time ON observations (time);
-- Readings as the API, the feeders and the outbox read them: every column of an Observation.
CREATE VIEW IF NOT EXISTS observation_rows AS
  SELECT o.id, o.time, o.tz, o.device, s.code, s.system, s.vendor_code, s.metric, o.value, o.text, s.unit,
    s.loinc, o.flags, s.containment, o.patient_system, o.patient_value, o.location, o.message_id, o.received
  FROM observations o JOIN series s ON s.id = o.series;
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
 * Readings are written by the writer thread (`writer.ts`) on its own connection: the inserts
 * and the fsync are most of the hot path's cost, and on the event loop they would stop every
 * socket while they run. Everything else (queries, cursors, the registry and the outbox, which
 * reach the database through `database()`) uses this thread's connection; WAL lets it read
 * while the writer writes, and SQLite's lock orders the two writers.
 *
 * Group commit: commits that arrive while the writer is busy (or within the same event-loop
 * turn) share one transaction and one fsync, which keeps ACK latency low under load from many
 * connections. Units are applied in arrival order, and each resolves with its own result.
 */
export class SqliteStore implements Store {
  private readonly db: Database.Database;
  private readonly writer: StoreWriter;
  private readonly maxDelayMs: number;
  private readonly maxRows: number;
  private pending: Pending[] = [];
  private pendingRows = 0;
  private flushScheduled = false;
  /** A group is with the writer; the next one waits for its answer. */
  private writing = false;
  /** The promise of the newest unit submitted: settled means all before it are too. */
  private last: Promise<unknown> = Promise.resolve();
  /** Writes on this thread's connection waiting for the writer to let go of the lock. */
  private readonly exclusives: (() => void)[] = [];
  private closed = false;
  private readonly pseudonymKey: Buffer;
  private readonly statements;

  constructor(options: SqliteStoreOptions) {
    if (options.file === ':memory:') {
      throw new GatewayError(ErrorCode.CONFIG_INVALID, 'the store needs a file: its writer thread opens it on a connection of its own');
    }
    mkdirSync(dirname(options.file), { recursive: true });
    this.db = new Database(options.file);
    // WAL: readers (the API) never block the writer; one fsync per commit of the log.
    this.db.pragma('journal_mode = WAL');
    this.db.pragma(`synchronous = ${options.synchronous === 'normal' ? 'NORMAL' : 'FULL'}`);
    // The writer thread and other processes (mdi inspect of a live store, backups) hold the
    // write lock at times: wait for it rather than fail.
    this.db.pragma('busy_timeout = 5000');
    // Checkpoints (copying the log back into the database file, with an fsync) belong to the
    // writer thread, which makes nearly all of the log; here they would stall the event loop.
    this.db.pragma('wal_autocheckpoint = 0');
    upgradeObservationRows(this.db);
    this.db.exec(SCHEMA);
    this.maxDelayMs = options.groupCommitMaxDelayMs ?? 0;
    this.maxRows = options.groupCommitMaxRows ?? 20_000;
    this.pseudonymKey = this.loadPseudonymKey();
    this.writer = new StoreWriter({ file: options.file, synchronous: options.synchronous ?? 'full' });

    const db = this.db;
    this.statements = {
      deadLetterRaw: db.prepare('SELECT raw FROM dead_letters WHERE id = ?').pluck(),
      countObservations: db.prepare('SELECT count(*) FROM observations').pluck(),
      countDeadLetters: db.prepare('SELECT count(*) FROM dead_letters').pluck(),
      observationsAfter: db.prepare('SELECT * FROM observation_rows WHERE id > ? ORDER BY id LIMIT ?'),
      lastObservationId: db.prepare('SELECT max(id) FROM observations').pluck(),
      getCursor: db.prepare('SELECT position FROM cursors WHERE name = ?').pluck(),
      setCursor: db.prepare(
        'INSERT INTO cursors (name, position) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET position = excluded.position',
      ),
    };
  }

  commit(unit: CommitUnit): Promise<CommitResult> {
    if (this.closed) return Promise.reject(new GatewayError(ErrorCode.STORE_CLOSED, 'the store is closed'));
    const committed = new Promise<CommitResult>((resolve, reject) => {
      this.pending.push({ unit, resolve, reject });
      this.pendingRows += rowsOf(unit);
      if (this.writing || this.flushScheduled) return;
      if (this.pendingRows >= this.maxRows) {
        this.flush();
      } else {
        this.flushScheduled = true;
        if (this.maxDelayMs > 0) setTimeout(() => this.flush(), this.maxDelayMs);
        else setImmediate(() => this.flush());
      }
    });
    this.last = committed;
    return committed;
  }

  /**
   * Resolves when every unit submitted before the call is committed or failed. For work that
   * must see the readings already accepted (re-attribution after a binding change).
   */
  settled(): Promise<void> {
    return this.last.then(
      () => undefined,
      () => undefined,
    );
  }

  /**
   * Runs `fn`, a write on this thread's connection (`database()`, cursors), while the writer
   * thread holds no lock: now when it is idle, else as soon as its group is answered and before
   * the next one goes. A periodic write (a feeder's cursor, an outbox pass) then never waits
   * for SQLite's lock with the event loop stopped; it waits here, and the sockets go on.
   */
  exclusive<T>(fn: () => T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const run = () => {
        try {
          resolve(fn());
        } catch (err) {
          reject(err as Error);
        }
      };
      if (this.writing) this.exclusives.push(run);
      else run();
    });
  }

  /** Hands what is pending to the writer as one group, unless a group is with it already. */
  private flush(): void {
    this.flushScheduled = false;
    if (this.writing || this.pending.length === 0) return;
    const group = this.takeGroup();
    this.writing = true;
    this.writer.write(encodeGroup(group.map((p) => p.unit))).then(
      (results) => {
        const decoded = decodeResults(results, group.length);
        for (let i = 0; i < group.length; i++) group[i]!.resolve(decoded[i]!);
      },
      (err: Error) => {
        // Nothing of the group was committed (the transaction rolled back, or the writer
        // died): every caller must answer "not stored" (MLLP AE) so the sender retries.
        const failure = new GatewayError(ErrorCode.STORE_FAILED, `store write failed: ${err.message}`, { cause: err });
        for (const p of group) p.reject(failure);
      },
    ).finally(() => {
      this.writing = false;
      for (const run of this.exclusives.splice(0)) run();
      // What arrived meanwhile is the next group, at once: it has waited long enough.
      this.flush();
    });
  }

  /** The pending units up to `maxRows` rows (at least one unit); the rest stay pending. */
  private takeGroup(): Pending[] {
    if (this.pendingRows < this.maxRows) {
      const group = this.pending;
      this.pending = [];
      this.pendingRows = 0;
      return group;
    }
    let rows = 0;
    let n = 0;
    while (n < this.pending.length && (n === 0 || rows < this.maxRows)) rows += rowsOf(this.pending[n++]!.unit);
    const group = this.pending.splice(0, n);
    this.pendingRows -= rows;
    return group;
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
    const sql = `SELECT * FROM observation_rows ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
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
      const rows = this.db.prepare(`SELECT * FROM observation_rows WHERE id IN (${chunk.map(() => '?').join(',')}) ORDER BY id`).all(...chunk) as ObservationRow[];
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

  /** Commits what was submitted, then closes the writer thread and the connection. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.flush();
    await this.settled();
    await this.writer.close();
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

/**
 * Stores made before the `series` table kept every reading's code, unit and names in its own
 * row. They are rewritten once, in one transaction, at the first start of this version (ids
 * kept, so feeder cursors and outbox references stay valid).
 */
function upgradeObservationRows(db: Database.Database): void {
  const columns = db.prepare("SELECT name FROM pragma_table_info('observations')").pluck().all() as string[];
  if (!columns.includes('vendor_code')) return;
  db.transaction(() => {
    // The messages table loses its UNIQUE index (a resend is found through its readings).
    db.exec(`ALTER TABLE messages RENAME TO messages_v1;`);
    db.exec(`ALTER TABLE observations RENAME TO observations_v1;
      DROP INDEX IF EXISTS observations_device_time;
      DROP INDEX IF EXISTS observations_time;`);
    db.exec(SCHEMA);
    db.exec(`INSERT OR IGNORE INTO series (key, code, system, vendor_code, metric, unit, loinc, containment)
        SELECT json_array(code, system, vendor_code, metric, unit, loinc, containment), code, system, vendor_code, metric, unit, loinc, containment
        FROM observations_v1;
      INSERT INTO observations (id, time, tz, device, series, value, text, flags, patient_system, patient_value, location, message_id, received)
        SELECT v.id, v.time, v.tz, v.device, s.id, v.value, v.text, v.flags, v.patient_system, v.patient_value, v.location, v.message_id, v.received
        FROM observations_v1 v JOIN series s ON s.key = json_array(v.code, v.system, v.vendor_code, v.metric, v.unit, v.loinc, v.containment);
      DROP TABLE observations_v1;
      INSERT INTO messages SELECT * FROM messages_v1;
      DROP TABLE messages_v1;`);
  })();
}

function rowsOf(unit: CommitUnit): number {
  return unit.observations.length + unit.deadLetters.length + 1;
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
