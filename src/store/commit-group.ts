import type Database from 'better-sqlite3';
import type { CommitResult, CommitUnit } from './store.js';

/**
 * A group of CommitUnits as it crosses from the event loop to the store's writer thread, and
 * the code on the writer's side that applies it in one transaction.
 *
 * The units travel as one flat array of primitives, and the strings that repeat (device,
 * metric, unit, patient, …) once each in a table the array points into: structured clone
 * copies an object's keys with every object and allocates every string again on the other
 * side (bench/store.bench.ts measures both ways; figures in bench/RESULTS.md).
 * The layout of `values` (`→` marks an index into `strings`, -1 for null):
 *
 *   per unit:     received, →source, →sender, controlId, digest, observations n, dead letters m
 *   n times:      OBSERVATION_VALUES values, in the column order of the INSERT
 *   m times:      code, reason, location, controlId, raw (Uint8Array)
 */
export interface EncodedGroup {
  readonly values: unknown[];
  readonly strings: string[];
}

/** Per unit of a group, in order: [stored, deadLetters, duplicate 0|1, previouslyStored]. */
export type EncodedResults = number[];

/** Values per observation in an EncodedGroup; the writer adds message_id and received. */
const OBSERVATION_VALUES = 16;
/**
 * Which of an observation's values are string-table indexes (bit k: value k): device, system,
 * vendor code, metric, text, unit, LOINC, containment, patient system and value, location.
 */
const INTERNED = 0b1111_0111_0111_0100;
/** Columns of an observations INSERT row. */
const COLUMNS = OBSERVATION_VALUES + 2;
/** Rows per INSERT statement: 16-row statements insert 1.7× faster than one-row ones (bench/RESULTS.md). */
const ROWS_PER_INSERT = 16;

/** `units` in the EncodedGroup layout. */
export function encodeGroup(units: readonly CommitUnit[]): EncodedGroup {
  const values: unknown[] = [];
  const strings: string[] = [];
  const ids = new Map<string, number>();
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
      values.push(
        o.time,
        o.tzOffset,
        id(o.deviceId),
        o.code,
        id(o.system),
        id(o.vendorCode),
        id(o.metric),
        // SQLite has no NaN: "no numeric value" is NULL.
        Number.isNaN(o.value) ? null : o.value,
        id(o.text),
        id(o.unit),
        id(o.loinc),
        o.flags,
        id(o.containment),
        id(o.patient === null ? null : o.patient.system),
        id(o.patient === null ? null : o.patient.value),
        id(o.location),
      );
    }
    for (const d of u.deadLetters) values.push(d.code, d.reason, d.location, d.controlId, d.raw);
  }
  return { values, strings };
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
  return `INSERT INTO observations (time, tz, device, code, system, vendor_code, metric, value, text, unit, loinc,
    flags, containment, patient_system, patient_value, location, message_id, received)
    VALUES ${new Array(rows).fill(row).join(', ')}`;
}

/**
 * The writer's side: prepared statements on its own connection, and `apply`, which commits a
 * whole EncodedGroup in one transaction (all of it or, when it throws, none of it).
 */
export class GroupApplier {
  private readonly insertMessage;
  private readonly messageByControlId;
  private readonly insertObservation;
  private readonly insertObservations;
  private readonly insertDeadLetter;
  /** Parameter arrays reused for every insert (one writer, one thread). */
  private readonly rowParams: unknown[] = new Array(COLUMNS * ROWS_PER_INSERT);
  private readonly oneRowParams: unknown[] = new Array(COLUMNS);
  readonly apply: (group: EncodedGroup) => EncodedResults;

  constructor(db: Database.Database) {
    this.insertMessage = db.prepare(
      'INSERT OR IGNORE INTO messages (received, source, sender, control_id, digest, observations) VALUES (?, ?, ?, ?, ?, ?)',
    );
    this.messageByControlId = db.prepare('SELECT observations FROM messages WHERE sender = ? AND control_id = ? AND digest = ?').pluck();
    this.insertObservation = db.prepare(insertObservationsSql(1));
    this.insertObservations = db.prepare(insertObservationsSql(ROWS_PER_INSERT));
    this.insertDeadLetter = db.prepare(
      'INSERT INTO dead_letters (received, source, code, reason, location, control_id, raw) VALUES (?, ?, ?, ?, ?, ?, ?)',
    );
    this.apply = db.transaction((group: EncodedGroup) => {
      const results: EncodedResults = [];
      let at = 0;
      while (at < group.values.length) at = this.applyUnit(group, at, results);
      return results;
    });
  }

  /** Applies the unit encoded at `at`; appends its result; returns where the next unit starts. */
  private applyUnit({ values: g, strings }: EncodedGroup, at: number, results: EncodedResults): number {
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
      const info = this.insertMessage.run(received, source, sender, controlId, digest, n);
      if (info.changes === 0) {
        // A retransmit of a committed message: the same answer, nothing stored twice.
        const previous = this.messageByControlId.get(sender, controlId, digest) as number | undefined;
        results.push(0, 0, 1, previous ?? 0);
        return next;
      }
      messageId = info.lastInsertRowid;
    }
    let i = 0;
    const params = this.rowParams;
    for (; i + ROWS_PER_INSERT <= n; i += ROWS_PER_INSERT) {
      for (let r = 0; r < ROWS_PER_INSERT; r++) {
        fillRow(params, r * COLUMNS, g, strings, rows + (i + r) * OBSERVATION_VALUES, messageId, received);
      }
      this.insertObservations.run(params);
    }
    const one = this.oneRowParams;
    for (; i < n; i++) {
      fillRow(one, 0, g, strings, rows + i * OBSERVATION_VALUES, messageId, received);
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
  from: number,
  messageId: number | bigint | null,
  received: number,
): void {
  for (let k = 0; k < OBSERVATION_VALUES; k++) {
    const v = g[from + k];
    params[at + k] = (INTERNED >> k) & 1 ? ((v as number) < 0 ? null : strings[v as number]) : v;
  }
  params[at + OBSERVATION_VALUES] = messageId;
  params[at + OBSERVATION_VALUES + 1] = received;
}
