import type Database from 'better-sqlite3';
import type { CommitResult, CommitUnit } from './store.js';

/**
 * A group of CommitUnits as it crosses from the event loop to the store's writer thread, and
 * the code on the writer's side that applies it in one transaction.
 *
 * The units travel as one flat array of primitives, and the strings that repeat (device,
 * metric, unit, patient, …) once each in a table the array points into: structured clone
 * copies an object's keys with every object and allocates every string again on the other
 * side (bench/store.bench.ts measures both ways; figures in bench/RESULTS.md). What a reading
 * is of (its series: code, unit, names, containment) goes once per group in `series`, as the
 * store keeps it once (the `series` table). The layout (`→` marks an index into `strings`, -1
 * for null; `⇒` an index into `series`):
 *
 *   values, per unit:  received, →source, →sender, controlId, digest, observations n, dead letters m
 *     n times:         time, tz, →device, ⇒series, value, →text, flags, →patient system, →patient value, →location
 *     m times:         code, reason, location, controlId, raw (Uint8Array)
 *   series, per series: code, →system, →vendor code, →metric, →unit, →LOINC, →containment
 */
export interface EncodedGroup {
  readonly values: unknown[];
  readonly strings: string[];
  readonly series: (number | null)[];
}

/** Per unit of a group, in order: [stored, deadLetters, duplicate 0|1, previouslyStored]. */
export type EncodedResults = number[];

/** Values per observation in an EncodedGroup; the writer adds message_id and received. */
const OBSERVATION_VALUES = 10;
/** Which of an observation's values are string-table indexes (bit k: value k): device, text, patient, location. */
const INTERNED = 0b11_1010_0100;
/** Position of the series in an observation's values. */
const SERIES = 3;
/** Values per series in `EncodedGroup.series`. */
const SERIES_VALUES = 7;
/** Series ids the writer remembers by key; past this it starts over (a sender inventing codes). */
const MAX_REMEMBERED_SERIES = 100_000;
/** Columns of an observations INSERT row. */
const COLUMNS = OBSERVATION_VALUES + 2;
/** Rows per INSERT statement: 16-row statements insert 1.7× faster than one-row ones (bench/RESULTS.md). */
const ROWS_PER_INSERT = 16;

/** `units` in the EncodedGroup layout. */
export function encodeGroup(units: readonly CommitUnit[]): EncodedGroup {
  const values: unknown[] = [];
  const strings: string[] = [];
  const series: (number | null)[] = [];
  const ids = new Map<string, number>();
  // The group's series by metric (string id), each a short list of series indexes: one Map
  // lookup by a small integer and a few comparisons per reading, no key string built.
  const seriesByMetric = new Map<number, number[]>();
  const id = (text: string | null): number => {
    if (text === null) return -1;
    let k = ids.get(text);
    if (k === undefined) {
      k = strings.push(text) - 1;
      ids.set(text, k);
    }
    return k;
  };
  for (const u of units) {
    const m = u.message;
    values.push(u.received, id(u.source), id(m === null ? null : m.sender), m === null ? null : m.controlId, m === null ? null : m.digest);
    values.push(u.observations.length, u.deadLetters.length);
    for (const o of u.observations) {
      const system = id(o.system);
      const vendorCode = id(o.vendorCode);
      const metric = id(o.metric);
      const unit = id(o.unit);
      const loinc = id(o.loinc);
      const containment = id(o.containment);
      let candidates = seriesByMetric.get(metric);
      if (candidates === undefined) seriesByMetric.set(metric, (candidates = []));
      let s = -1;
      for (const c of candidates) {
        const at = c * SERIES_VALUES;
        if (
          series[at] === o.code &&
          series[at + 1] === system &&
          series[at + 2] === vendorCode &&
          series[at + 4] === unit &&
          series[at + 5] === loinc &&
          series[at + 6] === containment
        ) {
          s = c;
          break;
        }
      }
      if (s < 0) {
        s = series.push(o.code, system, vendorCode, metric, unit, loinc, containment) / SERIES_VALUES - 1;
        candidates.push(s);
      }
      values.push(
        o.time,
        o.tzOffset,
        id(o.deviceId),
        s,
        // SQLite has no NaN: "no numeric value" is NULL.
        Number.isNaN(o.value) ? null : o.value,
        id(o.text),
        o.flags,
        id(o.patient === null ? null : o.patient.system),
        id(o.patient === null ? null : o.patient.value),
        id(o.location),
      );
    }
    for (const d of u.deadLetters) values.push(d.code, d.reason, d.location, d.controlId, d.raw);
  }
  return { values, strings, series };
}

/** The results of `units` from what the writer answered. */
export function decodeResults(results: EncodedResults, count: number): CommitResult[] {
  const out: CommitResult[] = new Array<CommitResult>(count);
  for (let i = 0; i < count; i++) {
    const at = i * 4;
    out[i] = { stored: results[at]!, deadLetters: results[at + 1]!, duplicate: results[at + 2] === 1, previouslyStored: results[at + 3]! };
  }
  return out;
}

function insertObservationsSql(rows: number): string {
  const row = `(${new Array(COLUMNS).fill('?').join(', ')})`;
  return `INSERT INTO observations (time, tz, device, series, value, text, flags, patient_system, patient_value, location,
    message_id, received) VALUES ${new Array(rows).fill(row).join(', ')}`;
}

/**
 * The writer's side: prepared statements on its own connection, and `apply`, which commits a
 * whole EncodedGroup in one transaction (all of it or, when it throws, none of it).
 */
export class GroupApplier {
  private readonly insertMessage;
  private readonly committedMessage;
  private readonly insertObservation;
  private readonly insertObservations;
  private readonly insertDeadLetter;
  private readonly insertSeries;
  private readonly seriesByKey;
  /** The store's series ids by `series.key`, as this writer has seen or made them. */
  private readonly seriesIds = new Map<string, number>();
  /** Parameter arrays reused for every insert (one writer, one thread). */
  private readonly rowParams: unknown[] = new Array(COLUMNS * ROWS_PER_INSERT);
  private readonly oneRowParams: unknown[] = new Array(COLUMNS);
  readonly apply: (group: EncodedGroup) => EncodedResults;

  constructor(db: Database.Database) {
    this.insertMessage = db.prepare('INSERT INTO messages (received, source, sender, control_id, digest, observations) VALUES (?, ?, ?, ?, ?, ?)');
    // A resend has the same first reading: its (device, time) leads to the message rows to compare.
    this.committedMessage = db
      .prepare(
        `SELECT observations FROM messages WHERE id IN (SELECT message_id FROM observations WHERE device = ? AND time = ?)
         AND sender = ? AND control_id = ? AND digest = ? LIMIT 1`,
      )
      .pluck();
    this.insertObservation = db.prepare(insertObservationsSql(1));
    this.insertObservations = db.prepare(insertObservationsSql(ROWS_PER_INSERT));
    this.insertDeadLetter = db.prepare(
      'INSERT INTO dead_letters (received, source, code, reason, location, control_id, raw) VALUES (?, ?, ?, ?, ?, ?, ?)',
    );
    this.insertSeries = db.prepare(
      'INSERT OR IGNORE INTO series (key, code, system, vendor_code, metric, unit, loinc, containment) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
    );
    this.seriesByKey = db.prepare('SELECT id FROM series WHERE key = ?').pluck();
    const inTransaction = db.transaction((group: EncodedGroup) => {
      const series = this.resolveSeries(group);
      const results: EncodedResults = [];
      let at = 0;
      while (at < group.values.length) at = this.applyUnit(group, series, at, results);
      return results;
    });
    this.apply = (group) => {
      try {
        return inTransaction(group);
      } catch (err) {
        // Series made in the rolled-back transaction do not exist: forget every id not re-read.
        this.seriesIds.clear();
        throw err;
      }
    };
  }

  /** The store's id of each series of the group, added to the `series` table when new. */
  private resolveSeries({ series, strings }: EncodedGroup): number[] {
    const ids: number[] = [];
    const text = (k: number | null | undefined): string | null => (k === null || k === undefined || k < 0 ? null : strings[k]!);
    for (let at = 0; at < series.length; at += SERIES_VALUES) {
      // The column order of the table, and of json_array() in the upgrade of older stores.
      const row = [series[at] ?? null, text(series[at + 1]), text(series[at + 2]), text(series[at + 3]), text(series[at + 4]), text(series[at + 5]), text(series[at + 6])];
      const key = JSON.stringify(row);
      let id = this.seriesIds.get(key);
      if (id === undefined) {
        this.insertSeries.run(key, ...row);
        id = this.seriesByKey.get(key) as number;
        if (this.seriesIds.size >= MAX_REMEMBERED_SERIES) this.seriesIds.clear();
        this.seriesIds.set(key, id);
      }
      ids.push(id);
    }
    return ids;
  }

  /** Applies the unit encoded at `at`; appends its result; returns where the next unit starts. */
  private applyUnit({ values: g, strings }: EncodedGroup, series: readonly number[], at: number, results: EncodedResults): number {
    const received = g[at] as number;
    const source = strings[g[at + 1] as number]!;
    const sender = (g[at + 2] as number) < 0 ? null : strings[g[at + 2] as number]!;
    const controlId = g[at + 3] as string;
    const digest = g[at + 4] as string;
    const n = g[at + 5] as number;
    const m = g[at + 6] as number;
    const rows = at + 7;
    const next = rows + n * OBSERVATION_VALUES + m * 5;
    let messageId: number | bigint | null = null;
    if (sender !== null) {
      // A retransmit of a committed message: the same answer, nothing stored twice. (One without
      // readings cannot be recognised; its dead letters are kept again, which loses nothing.)
      const previous =
        n === 0 ? undefined : (this.committedMessage.get(strings[g[rows + 2] as number], g[rows], sender, controlId, digest) as number | undefined);
      if (previous !== undefined) {
        results.push(0, 0, 1, previous);
        return next;
      }
      messageId = this.insertMessage.run(received, source, sender, controlId, digest, n).lastInsertRowid;
    }
    let i = 0;
    const params = this.rowParams;
    for (; i + ROWS_PER_INSERT <= n; i += ROWS_PER_INSERT) {
      for (let r = 0; r < ROWS_PER_INSERT; r++) {
        fillRow(params, r * COLUMNS, g, strings, series, rows + (i + r) * OBSERVATION_VALUES, messageId, received);
      }
      this.insertObservations.run(params);
    }
    const one = this.oneRowParams;
    for (; i < n; i++) {
      fillRow(one, 0, g, strings, series, rows + i * OBSERVATION_VALUES, messageId, received);
      this.insertObservation.run(one);
    }
    for (let d = rows + n * OBSERVATION_VALUES; d < next; d += 5) {
      const raw = g[d + 4] as Uint8Array;
      // better-sqlite3 binds Buffers as BLOBs; structured clone delivered a plain Uint8Array.
      this.insertDeadLetter.run(received, source, g[d], g[d + 1], g[d + 2], g[d + 3], Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength));
    }
    results.push(n, m, 0, 0);
    return next;
  }
}

function fillRow(
  params: unknown[],
  at: number,
  g: readonly unknown[],
  strings: readonly string[],
  series: readonly number[],
  from: number,
  messageId: number | bigint | null,
  received: number,
): void {
  for (let k = 0; k < OBSERVATION_VALUES; k++) {
    const v = g[from + k];
    params[at + k] = k === SERIES ? series[v as number] : (INTERNED >> k) & 1 ? ((v as number) < 0 ? null : strings[v as number]) : v;
  }
  params[at + OBSERVATION_VALUES] = messageId;
  params[at + OBSERVATION_VALUES + 1] = received;
}
