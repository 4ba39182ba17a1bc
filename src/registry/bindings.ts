/**
 * Bindings (device → bed or patient over time) and bed occupancy (bed → patient over time, from
 * ADT or set by hand), in the store's SQLite file, mirrored in memory for `attribution()`.
 *
 * Memory: per device and per bed an array of intervals sorted by `from` (never overlapping), and
 * per patient the stays sorted by `from`. Every change runs in one SQLite transaction with its
 * audit rows and updates the arrays as it goes; if the transaction fails, the arrays are
 * reloaded from the database, so memory never shows what was not committed.
 *
 * ADT messages are recorded when applied (`adt_applied`: sender, MSH-10 and content), so a
 * resent message is ignored however late it comes. Stays removed by a cancel (A11/A12) or
 * replaced by ADT are kept as tombstones (`cancelled` set): a cancel that is sent again (by
 * another interface engine) is recognised by them, and they stay in the legal record.
 *
 * Changes that reach back before "now" are announced as `AttributionChange`s after the commit,
 * so stored readings are re-attributed (src/pipeline/reattribute.ts).
 */
import { createHash } from 'node:crypto';
import type Database from 'better-sqlite3';
import { ErrorCode, GatewayError } from '../errors.js';
import type { PatientId } from '../model/measurement.js';
import type { AuditLog } from './audit.js';
import type { AdtEvent, Attribution, AttributionChange, BedKey, Binding, BindingsApi, DeviceRecord, Occupancy } from './types.js';

const SCHEMA = `
-- Device → bed XOR patient over [from_ms, to_ms); to_ms NULL = open. Never overlapping per device.
CREATE TABLE IF NOT EXISTS device_bindings (
  id INTEGER PRIMARY KEY,
  device TEXT NOT NULL,
  bed TEXT,
  patient_system TEXT,
  patient_value TEXT,
  from_ms INTEGER NOT NULL,
  to_ms INTEGER,
  actor TEXT NOT NULL,
  created INTEGER NOT NULL,
  reason TEXT
);
CREATE INDEX IF NOT EXISTS device_bindings_device ON device_bindings (device, from_ms);
-- Bed → patient over [from_ms, to_ms). Active rows (cancelled NULL) never overlap per bed.
-- cancelled: when an ADT cancel (or a replacement) removed the stay; kept as a tombstone.
CREATE TABLE IF NOT EXISTS bed_occupancies (
  id INTEGER PRIMARY KEY,
  bed TEXT NOT NULL,
  patient_system TEXT NOT NULL,
  patient_value TEXT NOT NULL,
  from_ms INTEGER NOT NULL,
  to_ms INTEGER,
  source TEXT NOT NULL,
  actor TEXT NOT NULL,
  created INTEGER NOT NULL,
  visit TEXT,
  cancelled INTEGER,
  -- The stay whose ADT admit or transfer ended this one (the bed changed hands): a cancel of
  -- that admit or transfer gives this stay back.
  ended_by INTEGER
);
CREATE INDEX IF NOT EXISTS bed_occupancies_bed ON bed_occupancies (bed, from_ms);
-- ADT messages applied (a hash of MSH-3, MSH-10 and the event): a resent message, however
-- late, is recognised and ignored. A new message with the same content (a transfer re-entered
-- after its cancel, with the same time) is applied: it has its own MSH-10.
CREATE TABLE IF NOT EXISTS adt_applied (
  event TEXT PRIMARY KEY,
  at INTEGER NOT NULL
) WITHOUT ROWID;
`;

interface BindingRow {
  id: number;
  device: string;
  bed: string | null;
  patient_system: string | null;
  patient_value: string | null;
  from_ms: number;
  to_ms: number | null;
  actor: string;
  created: number;
  reason: string | null;
}

interface OccupancyRow {
  id: number;
  bed: string;
  patient_system: string;
  patient_value: string;
  from_ms: number;
  to_ms: number | null;
  source: 'adt' | 'api';
  actor: string;
  created: number;
  visit: string | null;
  cancelled: number | null;
  ended_by: number | null;
}

/** The devices registry as far as bindings need it (a lazy wrapper breaks the construction cycle). */
export interface DeviceLookup {
  get(idOrEui64: string): DeviceRecord | null;
}

export interface BindingsOptions {
  /** Epoch ms now (tests move it). Default `Date.now`. */
  readonly clock?: () => number;
}

/**
 * Open-ended changes are announced up to now plus this margin, not to infinity: listeners keep
 * `to` in SQL and print it as a date, and a reading stamped later than this is beyond any clock
 * drift the gateway accepts (registry.clockDriftLimitSeconds is at most one day).
 */
const OPEN_CHANGE_MARGIN_MS = 86_400_000;

const UNKNOWN_DEVICE: Attribution = Object.freeze({ device: null, bed: null, patient: null, validFrom: -Infinity, validTo: Infinity });

type Affected = { readonly kind: 'device' | 'bed'; readonly key: string; readonly from: number; readonly to: number };

function patientKey(p: PatientId): string {
  return `${p.system}|${p.value}`;
}

function end(to: number | null): number {
  return to === null ? Infinity : to;
}

/** Index of the last interval with `from <= t`, -1 when none (binary search). */
function lastStartingAtOrBefore(list: readonly { readonly from: number }[], t: number): number {
  let lo = 0;
  let hi = list.length - 1;
  let found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (list[mid]!.from <= t) {
      found = mid;
      lo = mid + 1;
    } else {
      hi = mid - 1;
    }
  }
  return found;
}

function insertSorted<T extends { readonly from: number; readonly id: number }>(list: T[], item: T): void {
  let i = list.length;
  while (i > 0 && (list[i - 1]!.from > item.from || (list[i - 1]!.from === item.from && list[i - 1]!.id > item.id))) i--;
  list.splice(i, 0, item);
}

function removeById<T extends { readonly id: number }>(list: T[] | undefined, id: number): void {
  if (list === undefined) return;
  const i = list.findIndex((x) => x.id === id);
  if (i >= 0) list.splice(i, 1);
}

function invalid(message: string): GatewayError {
  return new GatewayError(ErrorCode.REGISTRY_INVALID, message);
}

function checkTime(value: number, name: string): void {
  if (!Number.isSafeInteger(value)) throw invalid(`${name} must be a time in epoch milliseconds`);
}

/** `[from, to)` checked: whole epoch ms, `to` (when not open) after `from`. */
function interval(from: number, to: number | null): { from: number; to: number | null } {
  checkTime(from, 'from');
  if (to !== null) {
    checkTime(to, 'to');
    if (to <= from) throw invalid('to must be after from');
  }
  return { from, to };
}

function checkPatient(p: PatientId): void {
  if (typeof p?.system !== 'string' || typeof p.value !== 'string' || p.value.trim() === '') throw invalid('patient needs a system and a value');
}

function checkBed(bed: string): void {
  if (typeof bed !== 'string' || bed.trim() === '' || bed.length > 200) throw invalid('bed must be a bed key ward/room/bed');
}

export class Bindings implements BindingsApi {
  private readonly clock: () => number;
  private readonly byDevice = new Map<string, Binding[]>();
  private readonly byBed = new Map<BedKey, Occupancy[]>();
  private readonly byPatient = new Map<string, Occupancy[]>();
  /** Tombstones per patient (cancelled or replaced stays). */
  private readonly tombstones = new Map<string, Occupancy[]>();
  /** Stay id → the id of the stay that took its bed from it (ADT admit or transfer into an occupied bed). */
  private readonly endedBy = new Map<number, number>();
  /** Last answer per reading device id: reused while the time stays in its window. */
  private readonly cache = new Map<string, Attribution>();
  private readonly listeners: ((change: AttributionChange) => void)[] = [];
  private readonly sql;
  /** Filled while a change runs (see `change`). */
  private affected: Affected[] = [];
  private dirty = false;
  private now = 0;

  constructor(
    private readonly db: Database.Database,
    private readonly audit: AuditLog,
    private readonly devices: DeviceLookup,
    options: BindingsOptions = {},
  ) {
    this.clock = options.clock ?? Date.now;
    db.exec(SCHEMA);
    // A store made before `ended_by` existed gets the column (no displaced stays recorded in it).
    const columns = db.prepare("SELECT name FROM pragma_table_info('bed_occupancies')").pluck().all() as string[];
    if (!columns.includes('ended_by')) db.exec('ALTER TABLE bed_occupancies ADD COLUMN ended_by INTEGER');
    this.sql = {
      allBindings: db.prepare('SELECT * FROM device_bindings ORDER BY from_ms, id'),
      allOccupancies: db.prepare('SELECT * FROM bed_occupancies ORDER BY from_ms, id'),
      insertBinding: db.prepare(
        'INSERT INTO device_bindings (device, bed, patient_system, patient_value, from_ms, to_ms, actor, created, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
      ),
      updateBinding: db.prepare('UPDATE device_bindings SET from_ms = ?, to_ms = ? WHERE id = ?'),
      deleteBinding: db.prepare('DELETE FROM device_bindings WHERE id = ?'),
      insertOccupancy: db.prepare(
        'INSERT INTO bed_occupancies (bed, patient_system, patient_value, from_ms, to_ms, source, actor, created, visit) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
      ),
      updateOccupancy: db.prepare('UPDATE bed_occupancies SET from_ms = ?, to_ms = ? WHERE id = ?'),
      cancelOccupancy: db.prepare('UPDATE bed_occupancies SET cancelled = ? WHERE id = ?'),
      setEndedBy: db.prepare('UPDATE bed_occupancies SET ended_by = ? WHERE id = ?'),
      adtApplied: db.prepare('SELECT 1 FROM adt_applied WHERE event = ?').pluck(),
      insertAdtApplied: db.prepare('INSERT OR IGNORE INTO adt_applied (event, at) VALUES (?, ?)'),
    };
    this.load();
  }

  // -------------------------------------------------------------------------------------------
  // Reading (hot path)

  attribution(deviceId: string, time: number): Attribution {
    const device = this.devices.get(deviceId);
    if (device === null) return UNKNOWN_DEVICE;
    const cached = this.cache.get(deviceId);
    if (cached !== undefined && cached.device === device && time >= cached.validFrom && time < cached.validTo) return cached;
    const answer = this.compute(device, time);
    this.cache.set(deviceId, answer);
    return answer;
  }

  /** Bed of the device's binding at this moment (null when unbound or bound to a patient). Called by every devices.get. */
  locationOf(deviceId: string): string | null {
    const list = this.byDevice.get(deviceId);
    if (list === undefined || list.length === 0) return null;
    const now = this.clock();
    const i = lastStartingAtOrBefore(list, now);
    if (i < 0) return null;
    const b = list[i]!;
    return now < end(b.to) ? b.bed : null;
  }

  onAttributionChange(listener: (change: AttributionChange) => void): void {
    this.listeners.push(listener);
  }

  private compute(device: DeviceRecord, t: number): Attribution {
    let validFrom = -Infinity;
    let validTo = Infinity;
    const list = this.byDevice.get(device.id);
    if (list === undefined || list.length === 0) return { device, bed: null, patient: null, validFrom, validTo };
    const i = lastStartingAtOrBefore(list, t);
    const b = i >= 0 ? list[i]! : null;
    if (b === null || t >= end(b.to)) {
      // Unbound at t: the gap between the binding before and the one after.
      if (b !== null) validFrom = end(b.to);
      if (i + 1 < list.length) validTo = list[i + 1]!.from;
      return { device, bed: null, patient: null, validFrom, validTo };
    }
    validFrom = b.from;
    validTo = end(b.to);
    if (b.patient !== null) return { device, bed: null, patient: b.patient, validFrom, validTo };
    const bed = b.bed!;
    const occs = this.byBed.get(bed);
    let patient: PatientId | null = null;
    if (occs !== undefined && occs.length > 0) {
      const j = lastStartingAtOrBefore(occs, t);
      const o = j >= 0 ? occs[j]! : null;
      if (o !== null && t < end(o.to)) {
        patient = o.patient;
        validFrom = Math.max(validFrom, o.from);
        validTo = Math.min(validTo, end(o.to));
      } else {
        if (o !== null) validFrom = Math.max(validFrom, end(o.to));
        if (j + 1 < occs.length) validTo = Math.min(validTo, occs[j + 1]!.from);
      }
    }
    return { device, bed, patient, validFrom, validTo };
  }

  // -------------------------------------------------------------------------------------------
  // Bindings

  bind(
    input: { readonly device: string; readonly bed?: BedKey; readonly patient?: PatientId; readonly from?: number; readonly to?: number | null; readonly reason?: string },
    actor: string,
  ): Binding {
    const device = this.requireDevice(input.device);
    const target = this.target(input.bed, input.patient, true)!;
    return this.change(`binding added by ${actor}`, () => {
      const { from, to } = interval(input.from ?? this.now, input.to ?? null);
      const list = this.byDevice.get(device.id) ?? [];
      const overlapping = list.filter((b) => b.from < end(to) && end(b.to) > from);
      const open = list.length > 0 && list[list.length - 1]!.to === null ? list[list.length - 1]! : null;
      if (overlapping.length > 0) {
        // Moving a device: an open binding from a time at/after the open one's start ends it there.
        const moves = to === null && open !== null && overlapping.length === 1 && overlapping[0] === open && from >= open.from;
        if (!moves) {
          throw new GatewayError(ErrorCode.BINDING_OVERLAP, `device ${device.id} already has a binding in that interval (binding ${overlapping[0]!.id})`);
        }
        if (from === open.from) {
          this.deleteBinding(open);
          this.audit.record({ at: this.now, actor, action: 'binding.end', entity: 'binding', entityId: String(open.id), before: open, after: null });
        } else {
          const ended = this.updateBinding(open, open.from, from);
          this.audit.record({ at: this.now, actor, action: 'binding.end', entity: 'binding', entityId: String(open.id), before: open, after: { ...ended, note: 'ended: device moved' } });
        }
      }
      const created = this.insertBinding({
        device: device.id,
        bed: target.bed,
        patient: target.patient,
        from,
        to,
        actor,
        created: this.now,
        reason: input.reason ?? null,
      });
      this.audit.record({ at: this.now, actor, action: 'binding.add', entity: 'binding', entityId: String(created.id), before: null, after: created });
      return created;
    });
  }

  unbind(deviceId: string, at: number | undefined, actor: string): Binding | null {
    const device = this.requireDevice(deviceId);
    return this.change(`binding ended by ${actor}`, () => {
      const list = this.byDevice.get(device.id) ?? [];
      const open = list.length > 0 && list[list.length - 1]!.to === null ? list[list.length - 1]! : null;
      if (open === null) return null;
      const when = at ?? this.now;
      checkTime(when, 'at');
      if (when <= open.from) throw invalid('the binding starts at or after that time; use a correction to remove it');
      const ended = this.updateBinding(open, open.from, when);
      this.audit.record({ at: this.now, actor, action: 'binding.end', entity: 'binding', entityId: String(open.id), before: open, after: ended });
      return ended;
    });
  }

  correct(
    input: { readonly device: string; readonly from: number; readonly to: number; readonly bed?: BedKey; readonly patient?: PatientId; readonly reason: string },
    actor: string,
  ): Binding | null {
    const device = this.requireDevice(input.device);
    const target = this.target(input.bed, input.patient, false);
    const from = input.from;
    const to = interval(input.from, input.to).to!;
    return this.change(`binding corrected by ${actor}`, () => {
      const list = this.byDevice.get(device.id) ?? [];
      const before = list.filter((b) => b.from < to && end(b.to) > from);
      const after: Binding[] = [];
      for (const b of before) {
        const startsBefore = b.from < from;
        const endsAfter = end(b.to) > to;
        if (startsBefore && endsAfter) {
          // The correction lies inside: keep both ends as two bindings.
          after.push(this.updateBinding(b, b.from, from));
          after.push(this.insertBinding({ ...b, from: to, to: b.to, created: this.now }));
        } else if (startsBefore) {
          after.push(this.updateBinding(b, b.from, from));
        } else if (endsAfter) {
          after.push(this.updateBinding(b, to, b.to));
        } else {
          this.deleteBinding(b);
        }
      }
      let created: Binding | null = null;
      if (target !== null) {
        created = this.insertBinding({ device: device.id, bed: target.bed, patient: target.patient, from, to, actor, created: this.now, reason: input.reason });
        after.push(created);
      }
      // Even a correction that changed nothing is announced: the caller asked to re-check [from, to).
      this.affected.push({ kind: 'device', key: device.id, from, to });
      this.audit.record({
        at: this.now,
        actor,
        action: 'binding.correct',
        entity: 'binding',
        entityId: device.id,
        before,
        after: { from, to, reason: input.reason, bindings: after },
      });
      return created;
    });
  }

  bindings(filter: { readonly device?: string; readonly bed?: BedKey; readonly at?: number; readonly limit?: number }): Binding[] {
    let all: Binding[];
    if (filter.device !== undefined) {
      const id = this.devices.get(filter.device)?.id ?? filter.device;
      all = [...(this.byDevice.get(id) ?? [])];
    } else {
      all = [...this.byDevice.values()].flat();
    }
    const at = filter.at;
    const out = all.filter((b) => (filter.bed === undefined || b.bed === filter.bed) && (at === undefined || (b.from <= at && at < end(b.to))));
    out.sort((a, b) => b.from - a.from || b.id - a.id);
    return out.slice(0, filter.limit ?? 1000);
  }

  // -------------------------------------------------------------------------------------------
  // Occupancy by hand

  occupy(input: { readonly bed: BedKey; readonly patient: PatientId; readonly from?: number; readonly to?: number | null }, actor: string): Occupancy {
    checkBed(input.bed);
    checkPatient(input.patient);
    return this.change(`bed occupancy set by ${actor}`, () => {
      const { from, to } = interval(input.from ?? this.now, input.to ?? null);
      const clash = (this.byBed.get(input.bed) ?? []).find((o) => o.from < end(to) && end(o.to) > from);
      if (clash !== undefined) throw new GatewayError(ErrorCode.BINDING_OVERLAP, `bed ${input.bed} is occupied in that interval (occupancy ${clash.id})`);
      return this.insertOccupancy({ bed: input.bed, patient: input.patient, from, to, source: 'api', actor, created: this.now, visit: null }, 'occupancy.add');
    });
  }

  vacate(bed: BedKey, at: number | undefined, actor: string): Occupancy | null {
    checkBed(bed);
    return this.change(`bed vacated by ${actor}`, () => {
      const list = this.byBed.get(bed) ?? [];
      const open = list.length > 0 && list[list.length - 1]!.to === null ? list[list.length - 1]! : null;
      if (open === null) return null;
      const when = at ?? this.now;
      checkTime(when, 'at');
      if (when <= open.from) throw invalid('the occupancy starts at or after that time');
      return this.updateOccupancy(open, open.from, when, 'occupancy.end', actor);
    });
  }

  occupancies(filter: { readonly bed?: BedKey; readonly at?: number; readonly limit?: number }): Occupancy[] {
    const all = filter.bed !== undefined ? [...(this.byBed.get(filter.bed) ?? [])] : [...this.byBed.values()].flat();
    const at = filter.at;
    const out = all.filter((o) => at === undefined || (o.from <= at && at < end(o.to)));
    out.sort((a, b) => b.from - a.from || b.id - a.id);
    return out.slice(0, filter.limit ?? 1000);
  }

  // -------------------------------------------------------------------------------------------
  // ADT

  applyAdt(event: AdtEvent): { readonly changed: boolean; readonly note: string } {
    checkPatient(event.patient);
    checkTime(event.time, 'time');
    const actor = `adt:${event.sender || 'unknown'}`;
    const identity = adtIdentity(event);
    return this.change(`ADT ${event.type}`, () => {
      // A replay (a resend after a reconnect, a feed replayed from a backup) is recognised as a
      // whole; the per-event checks below make an event whose effect is already there harmless.
      if (this.sql.adtApplied.get(identity) !== undefined) return { changed: false, note: `${event.type}: already applied` };
      const result = this.applyAdtEvent(event, actor);
      this.sql.insertAdtApplied.run(identity, this.now);
      return result;
    });
  }

  private applyAdtEvent(event: AdtEvent, actor: string): { changed: boolean; note: string } {
    {
      switch (event.type) {
        case 'A01':
        case 'A04':
        case 'A02': {
          if (event.bed === null) throw notApplicable(`${event.type} without a bed (PV1-3)`);
          return this.placeStay(event, event.bed, event.time, actor);
        }
        case 'A08': {
          if (event.bed === null) return { changed: false, note: 'A08 without a bed: nothing to change' };
          const open = (this.byPatient.get(patientKey(event.patient)) ?? []).find((s) => s.to === null);
          if (open === undefined) return { changed: false, note: 'A08: the patient has no open stay; nothing to change' };
          if (open.bed === event.bed) return { changed: false, note: 'A08: same bed; nothing to change' };
          // A late update older than the stay's start relocates the whole stay.
          return this.placeStay(event, event.bed, Math.max(event.time, open.from), actor);
        }
        case 'A03':
          return this.discharge(event, actor);
        case 'A11':
          return this.cancelAdmit(event, actor);
        case 'A12':
          return this.cancelTransfer(event, actor);
        case 'A13':
          return this.cancelDischarge(event, actor);
      }
    }
  }

  /**
   * The patient is in `bed` from `t` (admit, transfer, move). It ends the patient's stay that
   * covers `t` and the bed's previous occupant's stay at `t`; the new stay lasts until the
   * patient's covering stay would have ended, else the patient's next stay, and never beyond
   * the bed's next occupant.
   */
  private placeStay(event: AdtEvent, bed: BedKey, t: number, actor: string): { changed: boolean; note: string } {
    const pk = patientKey(event.patient);
    const stays = this.byPatient.get(pk) ?? [];
    if (stays.some((s) => s.bed === bed && s.from === t)) return { changed: false, note: `${event.type}: already applied` };
    const action = `occupancy.adt.${event.type}`;
    const covering = stays.find((s) => s.from <= t && t < end(s.to));
    let to: number | null;
    if (covering !== undefined) {
      if (covering.bed === bed) return { changed: false, note: `${event.type}: the patient is already in ${bed}` };
      if (this.endedBy.has(covering.id)) {
        // That stay ended because another patient was put in its bed, not by this patient's own
        // ADT: the move (a late transfer) holds until the patient's next stay, not until then.
        this.endedBy.delete(covering.id);
        this.sql.setEndedBy.run(null, covering.id);
        const next = stays.find((s) => s.from > t && s.id !== covering.id);
        to = next === undefined ? null : next.from;
      } else {
        to = covering.to;
      }
      if (covering.from === t) this.cancelOccupancy(covering, action, actor);
      else this.updateOccupancy(covering, covering.from, t, action, actor);
    } else {
      const next = stays.find((s) => s.from > t);
      to = next === undefined ? null : next.from;
    }
    // ADT is the source of truth: whoever lay in the bed at t left it then.
    const occupant = (this.byBed.get(bed) ?? []).find((o) => o.from <= t && t < end(o.to));
    let note = `${event.type}: in ${bed}`;
    let displaced: Occupancy | null = null;
    if (occupant !== undefined) {
      if (occupant.from === t) this.cancelOccupancy(occupant, action, actor);
      else displaced = this.updateOccupancy(occupant, occupant.from, t, action, actor);
      note += '; the previous occupant\'s stay ended';
    }
    const nextInBed = (this.byBed.get(bed) ?? []).find((o) => o.from > t);
    if (nextInBed !== undefined && nextInBed.from < end(to)) to = nextInBed.from;
    const stay = this.insertOccupancy({ bed, patient: event.patient, from: t, to, source: 'adt', actor, created: this.now, visit: event.visit }, action);
    if (displaced !== null) {
      this.sql.setEndedBy.run(stay.id, displaced.id);
      this.endedBy.set(displaced.id, stay.id);
    }
    return { changed: true, note };
  }

  private discharge(event: AdtEvent, actor: string): { changed: boolean; note: string } {
    const pk = patientKey(event.patient);
    const t = event.time;
    const stays = this.byPatient.get(pk) ?? [];
    const covering = stays.find((s) => s.from <= t && t < end(s.to));
    if (covering === undefined) {
      const note = stays.some((s) => s.to === t) ? 'A03: already applied' : 'A03: the patient has no stay at that time; nothing to end';
      return { changed: false, note };
    }
    if (covering.from === t) this.cancelOccupancy(covering, 'occupancy.adt.A03', actor);
    else this.updateOccupancy(covering, covering.from, t, 'occupancy.adt.A03', actor);
    return { changed: true, note: `A03: stay in ${covering.bed} ended` };
  }

  private cancelAdmit(event: AdtEvent, actor: string): { changed: boolean; note: string } {
    const pk = patientKey(event.patient);
    const inBed = (s: Occupancy) => event.bed === null || s.bed === event.bed;
    const stays = (this.byPatient.get(pk) ?? []).filter(inBed);
    const cancelled = (this.tombstones.get(pk) ?? []).filter(inBed);
    const latest = stays.length > 0 ? stays[stays.length - 1]! : null;
    // A replay: the stay it cancelled is a tombstone newer than anything still there.
    if (cancelled.some((c) => latest === null || c.from > latest.from)) return { changed: false, note: 'A11: already applied' };
    if (latest === null) throw notApplicable('A11: no stay of the patient in that bed to cancel');
    this.cancelOccupancy(latest, 'occupancy.adt.A11', actor);
    const restored = this.restoreDisplaced(latest, 'occupancy.adt.A11', actor);
    return { changed: true, note: `A11: stay in ${latest.bed} cancelled${restored ? '; the stay it ended is back' : ''}` };
  }

  private cancelTransfer(event: AdtEvent, actor: string): { changed: boolean; note: string } {
    const pk = patientKey(event.patient);
    const stays = this.byPatient.get(pk) ?? [];
    if (stays.length === 0) throw notApplicable('A12: the patient has no stay');
    const latest = stays[stays.length - 1]!;
    // Without any location in the message every bed counts as named.
    const named = (bed: string) => (event.bed === null && event.priorBed === null) || bed === event.bed || bed === event.priorBed;
    // A replay: the transfer stay it cancelled is a tombstone newer than the stay the patient is back in.
    if ((this.tombstones.get(pk) ?? []).some((c) => c.from > latest.from && named(c.bed))) return { changed: false, note: 'A12: already applied' };
    // HL7 puts the erroneous location in PV1-3 or PV1-6 depending on the sender: accept either.
    if (event.bed !== null && !named(latest.bed)) throw notApplicable('A12: the patient\'s latest stay is not in the bed the message names');
    const previous = stays.filter((s) => s.id !== latest.id && s.to === latest.from);
    const prior = previous.find((s) => s.bed === event.priorBed) ?? previous.find((s) => named(s.bed)) ?? previous[0];
    if (prior === undefined) throw notApplicable('A12: no stay before the transfer to return to');
    this.cancelOccupancy(latest, 'occupancy.adt.A12', actor);
    this.restoreDisplaced(latest, 'occupancy.adt.A12', actor);
    // Back in the prior bed until the cancelled stay would have ended, unless the bed is taken.
    let to = latest.to;
    const nextInBed = (this.byBed.get(prior.bed) ?? []).find((o) => o.from > prior.from);
    if (nextInBed !== undefined && nextInBed.from < end(to)) to = nextInBed.from;
    if (to !== prior.to) this.updateOccupancy(prior, prior.from, to, 'occupancy.adt.A12', actor);
    return { changed: true, note: `A12: stay in ${latest.bed} cancelled; back in ${prior.bed}` };
  }

  /**
   * A cancelled admit or transfer had taken its bed from another patient (ADT ended that stay
   * when it came in): that stay runs on again, up to where the cancelled one would have ended,
   * the bed's next stay, or the patient's own next stay. Only while it still ends exactly where
   * the cancelled stay began: a stay ended or moved since by ADT of its own is left alone.
   * @returns whether a stay was given back.
   */
  private restoreDisplaced(cancelled: Occupancy, action: string, actor: string): boolean {
    let restored = false;
    for (const [id, by] of [...this.endedBy]) {
      if (by !== cancelled.id) continue;
      this.endedBy.delete(id);
      this.sql.setEndedBy.run(null, id);
      const stay = (this.byBed.get(cancelled.bed) ?? []).find((o) => o.id === id);
      if (stay === undefined || stay.to !== cancelled.from) continue;
      let to = cancelled.to;
      const nextInBed = (this.byBed.get(stay.bed) ?? []).find((o) => o.from > stay.from && o.id !== stay.id);
      if (nextInBed !== undefined && nextInBed.from < end(to)) to = nextInBed.from;
      const ownNext = (this.byPatient.get(patientKey(stay.patient)) ?? []).find((o) => o.from > stay.from && o.id !== stay.id);
      if (ownNext !== undefined && ownNext.from < end(to)) to = ownNext.from;
      this.updateOccupancy(stay, stay.from, to, action, actor);
      restored = true;
    }
    return restored;
  }

  private cancelDischarge(event: AdtEvent, actor: string): { changed: boolean; note: string } {
    const pk = patientKey(event.patient);
    const stays = this.byPatient.get(pk) ?? [];
    if (stays.some((s) => s.to === null)) return { changed: false, note: 'A13: the patient has an open stay; nothing to reopen' };
    let last: Occupancy | null = null;
    for (const s of stays) if (last === null || s.to! > last.to!) last = s;
    if (last === null) throw notApplicable('A13: the patient has no ended stay to reopen');
    const nextInBed = (this.byBed.get(last.bed) ?? []).find((o) => o.from > last.from && o.id !== last.id);
    const to = nextInBed === undefined ? null : nextInBed.from;
    if (to === last.to) return { changed: false, note: `A13: ${last.bed} was taken at the discharge; stay not extended` };
    this.updateOccupancy(last, last.from, to, 'occupancy.adt.A13', actor);
    return { changed: true, note: `A13: stay in ${last.bed} reopened` };
  }

  // -------------------------------------------------------------------------------------------
  // Changes: SQL, audit and memory together

  /**
   * Runs `fn` in one transaction at one "now"; announces the affected intervals after the
   * commit. On failure the memory arrays are reloaded from the (rolled back) database.
   */
  private change<T>(reason: string, fn: () => T): T {
    this.now = this.clock();
    this.affected = [];
    this.dirty = false;
    let result: T;
    try {
      result = this.db.transaction(fn)();
    } catch (err) {
      if (this.dirty) this.load();
      this.affected = [];
      throw err;
    } finally {
      if (this.dirty) this.cache.clear();
    }
    const affected = this.affected;
    this.affected = [];
    if (affected.length > 0) this.announce(affected, reason, this.now);
    return result;
  }

  private insertBinding(b: Omit<Binding, 'id'>): Binding {
    const info = this.sql.insertBinding.run(b.device, b.bed, b.patient?.system ?? null, b.patient?.value ?? null, b.from, b.to, b.actor, b.created, b.reason);
    const created: Binding = { id: Number(info.lastInsertRowid), device: b.device, bed: b.bed, patient: b.patient, from: b.from, to: b.to, actor: b.actor, created: b.created, reason: b.reason };
    this.dirty = true;
    let list = this.byDevice.get(created.device);
    if (list === undefined) this.byDevice.set(created.device, (list = []));
    insertSorted(list, created);
    this.touch('device', created.device, created.from, end(created.to));
    return created;
  }

  private updateBinding(old: Binding, from: number, to: number | null): Binding {
    this.sql.updateBinding.run(from, to, old.id);
    const updated: Binding = { ...old, from, to };
    this.dirty = true;
    const list = this.byDevice.get(old.device)!;
    removeById(list, old.id);
    insertSorted(list, updated);
    if (from !== old.from) this.touch('device', old.device, Math.min(from, old.from), Math.max(from, old.from));
    if (to !== old.to) this.touch('device', old.device, Math.min(end(to), end(old.to)), Math.max(end(to), end(old.to)));
    return updated;
  }

  private deleteBinding(old: Binding): void {
    this.sql.deleteBinding.run(old.id);
    this.dirty = true;
    removeById(this.byDevice.get(old.device), old.id);
    this.touch('device', old.device, old.from, end(old.to));
  }

  private insertOccupancy(o: Omit<Occupancy, 'id'>, action: string): Occupancy {
    const info = this.sql.insertOccupancy.run(o.bed, o.patient.system, o.patient.value, o.from, o.to, o.source, o.actor, o.created, o.visit);
    const created: Occupancy = { id: Number(info.lastInsertRowid), bed: o.bed, patient: o.patient, from: o.from, to: o.to, source: o.source, actor: o.actor, created: o.created, visit: o.visit };
    this.dirty = true;
    this.indexOccupancy(created);
    this.touch('bed', created.bed, created.from, end(created.to));
    this.audit.record({ at: this.now, actor: o.actor, action, entity: 'occupancy', entityId: String(created.id), before: null, after: created });
    return created;
  }

  private updateOccupancy(old: Occupancy, from: number, to: number | null, action: string, actor: string): Occupancy {
    this.sql.updateOccupancy.run(from, to, old.id);
    const updated: Occupancy = { ...old, from, to };
    this.dirty = true;
    this.unindexOccupancy(old);
    this.indexOccupancy(updated);
    if (from !== old.from) this.touch('bed', old.bed, Math.min(from, old.from), Math.max(from, old.from));
    if (to !== old.to) this.touch('bed', old.bed, Math.min(end(to), end(old.to)), Math.max(end(to), end(old.to)));
    this.audit.record({ at: this.now, actor, action, entity: 'occupancy', entityId: String(old.id), before: old, after: updated });
    return updated;
  }

  private cancelOccupancy(old: Occupancy, action: string, actor: string): void {
    this.sql.cancelOccupancy.run(this.now, old.id);
    this.dirty = true;
    this.unindexOccupancy(old);
    this.addTombstone(old);
    this.touch('bed', old.bed, old.from, end(old.to));
    this.audit.record({ at: this.now, actor, action, entity: 'occupancy', entityId: String(old.id), before: old, after: null });
  }

  private indexOccupancy(o: Occupancy): void {
    let bed = this.byBed.get(o.bed);
    if (bed === undefined) this.byBed.set(o.bed, (bed = []));
    insertSorted(bed, o);
    const pk = patientKey(o.patient);
    let stays = this.byPatient.get(pk);
    if (stays === undefined) this.byPatient.set(pk, (stays = []));
    insertSorted(stays, o);
  }

  private unindexOccupancy(o: Occupancy): void {
    removeById(this.byBed.get(o.bed), o.id);
    removeById(this.byPatient.get(patientKey(o.patient)), o.id);
  }

  private addTombstone(o: Occupancy): void {
    const pk = patientKey(o.patient);
    let list = this.tombstones.get(pk);
    if (list === undefined) this.tombstones.set(pk, (list = []));
    insertSorted(list, o);
  }

  private touch(kind: 'device' | 'bed', key: string, from: number, to: number): void {
    if (to > from) this.affected.push({ kind, key, from, to });
  }

  /**
   * One AttributionChange per device and merged interval, for what reaches back before `now`
   * (a change from now on cannot touch a stored reading). A bed's change reaches every device
   * bound to the bed in that interval, clipped to the binding.
   */
  private announce(affected: readonly Affected[], reason: string, now: number): void {
    if (this.listeners.length === 0) return;
    const horizon = now + OPEN_CHANGE_MARGIN_MS;
    const perDevice = new Map<string, [number, number][]>();
    const add = (device: string, from: number, to: number) => {
      if (from >= now || to <= from) return;
      let list = perDevice.get(device);
      if (list === undefined) perDevice.set(device, (list = []));
      list.push([from, Math.min(to, Math.max(horizon, from + 1))]);
    };
    for (const a of affected) {
      if (a.from >= now) continue;
      if (a.kind === 'device') {
        add(a.key, a.from, a.to);
        continue;
      }
      for (const [device, list] of this.byDevice) {
        for (const b of list) {
          if (b.bed === a.key && b.from < a.to && end(b.to) > a.from) add(device, Math.max(a.from, b.from), Math.min(a.to, end(b.to)));
        }
      }
    }
    const changes: AttributionChange[] = [];
    for (const [device, intervals] of perDevice) {
      intervals.sort((x, y) => x[0] - y[0]);
      let [from, to] = intervals[0]!;
      for (let i = 1; i < intervals.length; i++) {
        const [f, t] = intervals[i]!;
        if (f <= to) to = Math.max(to, t);
        else {
          changes.push({ device, from, to, reason });
          [from, to] = [f, t];
        }
      }
      changes.push({ device, from, to, reason });
    }
    for (const change of changes) {
      for (const listener of this.listeners) {
        try {
          listener(change);
        } catch {
          // A listener's failure must not undo a committed change (nor the ADT ACK); the
          // re-attribution queue logs its own failures.
        }
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // Loading and validation

  private load(): void {
    this.byDevice.clear();
    this.byBed.clear();
    this.byPatient.clear();
    this.tombstones.clear();
    this.endedBy.clear();
    this.cache.clear();
    for (const r of this.sql.allBindings.all() as BindingRow[]) {
      const b: Binding = {
        id: r.id,
        device: r.device,
        bed: r.bed,
        patient: r.patient_value === null ? null : { system: r.patient_system ?? '', value: r.patient_value },
        from: r.from_ms,
        to: r.to_ms,
        actor: r.actor,
        created: r.created,
        reason: r.reason,
      };
      let list = this.byDevice.get(b.device);
      if (list === undefined) this.byDevice.set(b.device, (list = []));
      list.push(b);
    }
    for (const r of this.sql.allOccupancies.all() as OccupancyRow[]) {
      const o: Occupancy = {
        id: r.id,
        bed: r.bed,
        patient: { system: r.patient_system, value: r.patient_value },
        from: r.from_ms,
        to: r.to_ms,
        source: r.source,
        actor: r.actor,
        created: r.created,
        visit: r.visit,
      };
      if (r.cancelled === null) this.indexOccupancy(o);
      else this.addTombstone(o);
      if (r.ended_by !== null) this.endedBy.set(r.id, r.ended_by);
    }
  }

  private requireDevice(idOrEui64: string): DeviceRecord {
    const device = this.devices.get(idOrEui64);
    if (device === null) throw new GatewayError(ErrorCode.REGISTRY_NOT_FOUND, `no device ${idOrEui64}`);
    return device;
  }

  /** Exactly one of bed and patient (or neither, when `required` is false). */
  private target(bed: BedKey | undefined, patient: PatientId | undefined, required: boolean): { bed: BedKey | null; patient: PatientId | null } | null {
    if (bed !== undefined && patient !== undefined) throw invalid('bind to a bed or to a patient, not both');
    if (bed !== undefined) {
      checkBed(bed);
      return { bed, patient: null };
    }
    if (patient !== undefined) {
      checkPatient(patient);
      return { bed: null, patient: { system: patient.system, value: patient.value } };
    }
    if (required) throw invalid('a binding needs a bed or a patient');
    return null;
  }
}

/** What makes two ADT messages the same message: sender, MSH-10 and what it says. */
function adtIdentity(e: AdtEvent): string {
  const text = JSON.stringify([e.sender, e.controlId, e.type, e.patient.system, e.patient.value, e.bed, e.priorBed, e.time]);
  return createHash('sha256').update(text).digest('base64url');
}

function notApplicable(message: string): GatewayError {
  return new GatewayError(ErrorCode.ADT_NOT_APPLICABLE, message);
}
