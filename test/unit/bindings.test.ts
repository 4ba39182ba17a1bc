import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ErrorCode, GatewayError } from '../../src/errors.js';
import { CPR_SYSTEM, type PatientId } from '../../src/model/measurement.js';
import { AuditLog } from '../../src/registry/audit.js';
import { Bindings } from '../../src/registry/bindings.js';
import type { AdtEvent, AdtEventType, AttributionChange, DeviceRecord } from '../../src/registry/types.js';

const H = 3_600_000;
const T0 = Date.UTC(2026, 10, 21, 8, 0, 0);

const P1: PatientId = { system: CPR_SYSTEM, value: '0101001001' };
const P2: PatientId = { system: CPR_SYSTEM, value: '0101001002' };
const P3: PatientId = { system: CPR_SYSTEM, value: '0101001003' };

function device(id: string, eui64: string | null = null): DeviceRecord {
  return {
    id,
    kind: 'monitor',
    vendor: null,
    model: null,
    serialNumber: null,
    eui64,
    transport: null,
    location: null,
    status: 'active',
    expectedIntervalSeconds: 120,
    created: 0,
    updated: 0,
  };
}

const DEVICES = new Map<string, DeviceRecord>([
  ['mon-1', device('mon-1', '0011223344556677')],
  ['mon-2', device('mon-2')],
  ['pump-1', device('pump-1')],
]);
const lookup = {
  get(idOrEui: string): DeviceRecord | null {
    const direct = DEVICES.get(idOrEui);
    if (direct) return direct;
    for (const d of DEVICES.values()) if (d.eui64 !== null && d.eui64 === idOrEui.toUpperCase()) return d;
    return null;
  },
};

let dir: string;
let db: Database.Database;
let audit: AuditLog;
let now: number;
let bindings: Bindings;
let changes: AttributionChange[];

function open(): Bindings {
  const b = new Bindings(db, audit, lookup, { clock: () => now });
  b.onAttributionChange((c) => changes.push(c));
  return b;
}

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'mdi-bindings-'));
  db = new Database(join(dir, 'registry.db'));
  audit = new AuditLog(db);
  now = T0 + 100 * H;
  changes = [];
  bindings = open();
});
afterEach(() => {
  db.close();
  rmSync(dir, { recursive: true, force: true });
});

function adt(type: AdtEventType, patient: PatientId, time: number, bed: string | null = null, priorBed: string | null = null): AdtEvent {
  return { type, patient, bed, priorBed, time, visit: null, sender: 'EPJ', controlId: `${type}-${time}` };
}

/** The patient (CPR value) a reading of `dev` at `t` lands on. */
function who(dev: string, t: number): string | null {
  return bindings.attribution(dev, t).patient?.value ?? null;
}

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    if (err instanceof GatewayError) return err.code;
    throw err;
  }
  return 'no error';
}

describe('attribution', () => {
  it('answers nobody for an unknown device and an unbound one, with an unbounded window', () => {
    expect(bindings.attribution('nope', T0)).toEqual({ device: null, bed: null, patient: null, validFrom: -Infinity, validTo: Infinity });
    const a = bindings.attribution('mon-1', T0);
    expect(a.device?.id).toBe('mon-1');
    expect([a.bed, a.patient, a.validFrom, a.validTo]).toEqual([null, null, -Infinity, Infinity]);
  });

  it('resolves bed → occupant with a validity window that is the intersection, and reuses the answer', () => {
    bindings.bind({ device: 'mon-1', bed: 'ICU/1/1', from: T0 }, 'token:anna');
    bindings.applyAdt(adt('A01', P1, T0 + H, 'ICU/1/1'));
    bindings.applyAdt(adt('A03', P1, T0 + 5 * H));
    const a = bindings.attribution('0011223344556677', T0 + 2 * H);
    expect(a).toMatchObject({ bed: 'ICU/1/1', patient: P1, validFrom: T0 + H, validTo: T0 + 5 * H });
    // Same window: the very same object (no allocation on the hot path).
    expect(bindings.attribution('0011223344556677', T0 + 3 * H)).toBe(a);
    // Before the admit: the bed, nobody in it, valid from the binding start to the admit.
    expect(bindings.attribution('mon-1', T0 + H - 1)).toMatchObject({ bed: 'ICU/1/1', patient: null, validFrom: T0, validTo: T0 + H });
    expect(bindings.attribution('mon-1', T0 - 1)).toMatchObject({ bed: null, patient: null, validFrom: -Infinity, validTo: T0 });
  });

  it('a device bound to a patient directly attributes to that patient', () => {
    bindings.bind({ device: 'pump-1', patient: P3, from: T0, to: T0 + H }, 'token:anna');
    expect(bindings.attribution('pump-1', T0)).toMatchObject({ bed: null, patient: P3, validFrom: T0, validTo: T0 + H });
    expect(who('pump-1', T0 + H)).toBeNull();
  });
});

describe('ADT sequences: readings before, at and after each boundary', () => {
  beforeEach(() => {
    bindings.bind({ device: 'mon-1', bed: 'ICU/1/1', from: T0 }, 'token:anna');
    bindings.bind({ device: 'mon-2', bed: 'ICU/1/2', from: T0 }, 'token:anna');
  });

  it('admit, transfer, discharge', () => {
    bindings.applyAdt(adt('A01', P1, T0 + H, 'ICU/1/1'));
    bindings.applyAdt(adt('A02', P1, T0 + 3 * H, 'ICU/1/2', 'ICU/1/1'));
    bindings.applyAdt(adt('A03', P1, T0 + 6 * H));
    expect(who('mon-1', T0 + H - 1)).toBeNull();
    expect(who('mon-1', T0 + H)).toBe(P1.value);
    expect(who('mon-1', T0 + 3 * H - 1)).toBe(P1.value);
    expect(who('mon-1', T0 + 3 * H)).toBeNull();
    expect(who('mon-2', T0 + 3 * H - 1)).toBeNull();
    expect(who('mon-2', T0 + 3 * H)).toBe(P1.value);
    expect(who('mon-2', T0 + 6 * H - 1)).toBe(P1.value);
    expect(who('mon-2', T0 + 6 * H)).toBeNull();
  });

  it('a new admit into an occupied bed ends the previous occupant there; admitting a patient elsewhere ends their own stay', () => {
    bindings.applyAdt(adt('A01', P1, T0 + H, 'ICU/1/1'));
    bindings.applyAdt(adt('A01', P2, T0 + 2 * H, 'ICU/1/1'));
    expect(who('mon-1', T0 + 2 * H - 1)).toBe(P1.value);
    expect(who('mon-1', T0 + 2 * H)).toBe(P2.value);
    bindings.applyAdt(adt('A04', P2, T0 + 4 * H, 'ICU/1/2'));
    expect(who('mon-1', T0 + 4 * H - 1)).toBe(P2.value);
    expect(who('mon-1', T0 + 4 * H)).toBeNull();
    expect(who('mon-2', T0 + 4 * H)).toBe(P2.value);
    expect(bindings.occupancies({ at: T0 + 5 * H })).toHaveLength(1);
  });

  it('A08 with another bed moves the patient; with the same bed changes nothing', () => {
    bindings.applyAdt(adt('A01', P1, T0 + H, 'ICU/1/1'));
    expect(bindings.applyAdt(adt('A08', P1, T0 + 2 * H, 'ICU/1/1')).changed).toBe(false);
    expect(bindings.applyAdt(adt('A08', P1, T0 + 3 * H, 'ICU/1/2')).changed).toBe(true);
    expect(who('mon-1', T0 + 3 * H - 1)).toBe(P1.value);
    expect(who('mon-2', T0 + 3 * H)).toBe(P1.value);
    expect(who('mon-1', T0 + 3 * H)).toBeNull();
  });

  it('A11 deletes the admit; without an admit it is not applicable', () => {
    bindings.applyAdt(adt('A01', P1, T0 + H, 'ICU/1/1'));
    expect(bindings.applyAdt(adt('A11', P1, T0 + 2 * H, 'ICU/1/1')).changed).toBe(true);
    expect(who('mon-1', T0 + H)).toBeNull();
    expect(bindings.occupancies({ bed: 'ICU/1/1' })).toEqual([]);
    expect(code(() => bindings.applyAdt(adt('A11', P2, T0 + 2 * H, 'ICU/1/1')))).toBe(ErrorCode.ADT_NOT_APPLICABLE);
    // A replayed admit that was cancelled stays cancelled.
    expect(bindings.applyAdt(adt('A01', P1, T0 + H, 'ICU/1/1')).changed).toBe(false);
    expect(who('mon-1', T0 + H)).toBeNull();
  });

  it('A11 of an admit into an occupied bed gives the bed back to the patient it displaced', () => {
    bindings.applyAdt(adt('A01', P1, T0 + H, 'ICU/1/1'));
    // P2 is admitted into P1's bed by mistake: ADT ends P1's stay there …
    bindings.applyAdt(adt('A01', P2, T0 + 3 * H, 'ICU/1/1'));
    expect(who('mon-1', T0 + 4 * H)).toBe(P2.value);
    changes = [];
    // … and the cancel gives it back, from the mistaken admit on.
    expect(bindings.applyAdt(adt('A11', P2, T0 + 5 * H, 'ICU/1/1')).note).toContain('the stay it ended is back');
    expect(who('mon-1', T0 + 3 * H - 1)).toBe(P1.value);
    expect(who('mon-1', T0 + 3 * H)).toBe(P1.value);
    expect(who('mon-1', T0 + 50 * H)).toBe(P1.value);
    // The readings of the mistaken interval are re-attributed.
    expect(changes).toContainEqual(expect.objectContaining({ device: 'mon-1', from: T0 + 3 * H }));
    // Survives a reload from the database.
    bindings = open();
    expect(who('mon-1', T0 + 4 * H)).toBe(P1.value);
  });

  it('a displaced stay ended since by its own ADT is not given back', () => {
    bindings.applyAdt(adt('A01', P1, T0 + H, 'ICU/1/1'));
    bindings.applyAdt(adt('A01', P2, T0 + 3 * H, 'ICU/1/1'));
    // P1 was really moved to another bed earlier (the message comes late): the displaced stay
    // now ends there, and the stay in the new bed is not cut where the old bed changed hands.
    bindings.applyAdt(adt('A02', P1, T0 + 2 * H, 'ICU/1/2', 'ICU/1/1'));
    expect(who('mon-2', T0 + 4 * H)).toBe(P1.value);
    bindings.applyAdt(adt('A11', P2, T0 + 5 * H, 'ICU/1/1'));
    expect(who('mon-1', T0 + 4 * H)).toBeNull();
    expect(who('mon-2', T0 + 4 * H)).toBe(P1.value);
  });

  it('A12 of a transfer into an occupied bed gives that bed back to its occupant', () => {
    bindings.applyAdt(adt('A01', P1, T0 + H, 'ICU/1/1'));
    bindings.applyAdt(adt('A01', P2, T0 + H, 'ICU/1/2'));
    bindings.applyAdt(adt('A02', P1, T0 + 3 * H, 'ICU/1/2', 'ICU/1/1'));
    expect(who('mon-2', T0 + 4 * H)).toBe(P1.value);
    bindings.applyAdt(adt('A12', P1, T0 + 5 * H, 'ICU/1/2', 'ICU/1/1'));
    expect(who('mon-1', T0 + 4 * H)).toBe(P1.value);
    expect(who('mon-2', T0 + 4 * H)).toBe(P2.value);
    expect(who('mon-2', T0 + 50 * H)).toBe(P2.value);
  });

  it('A12 deletes the transfer stay and reopens the previous one', () => {
    bindings.applyAdt(adt('A01', P1, T0 + H, 'ICU/1/1'));
    bindings.applyAdt(adt('A02', P1, T0 + 3 * H, 'ICU/1/2', 'ICU/1/1'));
    expect(bindings.applyAdt(adt('A12', P1, T0 + 4 * H, 'ICU/1/2', 'ICU/1/1')).changed).toBe(true);
    expect(who('mon-2', T0 + 3 * H)).toBeNull();
    expect(who('mon-1', T0 + 3 * H)).toBe(P1.value);
    expect(who('mon-1', T0 + 50 * H)).toBe(P1.value);
    expect(bindings.applyAdt(adt('A12', P1, T0 + 4 * H, 'ICU/1/2', 'ICU/1/1')).changed).toBe(false);
    expect(who('mon-1', T0 + 50 * H)).toBe(P1.value);
    // The HL7 convention (PV1-3 = the bed returned to, PV1-6 = the erroneous one) works too.
    bindings.applyAdt(adt('A02', P1, T0 + 10 * H, 'ICU/1/2', 'ICU/1/1'));
    expect(bindings.applyAdt(adt('A12', P1, T0 + 11 * H, 'ICU/1/1', 'ICU/1/2')).changed).toBe(true);
    expect(who('mon-1', T0 + 10 * H)).toBe(P1.value);
    expect(who('mon-2', T0 + 10 * H)).toBeNull();
    // No transfer to cancel for a patient with a single stay.
    bindings.applyAdt(adt('A01', P2, T0 + H, 'ICU/2/1'));
    expect(code(() => bindings.applyAdt(adt('A12', P2, T0 + 2 * H, 'ICU/2/1')))).toBe(ErrorCode.ADT_NOT_APPLICABLE);
  });

  it('A13 reopens the discharged stay (until the bed was taken); a replayed A03 does not end it again', () => {
    bindings.applyAdt(adt('A01', P1, T0 + H, 'ICU/1/1'));
    bindings.applyAdt(adt('A03', P1, T0 + 3 * H));
    expect(who('mon-1', T0 + 3 * H)).toBeNull();
    expect(bindings.applyAdt(adt('A13', P1, T0 + 4 * H)).changed).toBe(true);
    expect(who('mon-1', T0 + 3 * H)).toBe(P1.value);
    expect(bindings.applyAdt(adt('A13', P1, T0 + 4 * H)).changed).toBe(false);
    expect(bindings.applyAdt(adt('A03', P1, T0 + 3 * H)).changed).toBe(false);
    expect(who('mon-1', T0 + 3 * H)).toBe(P1.value);
    // Bed taken after a discharge: the reopened stay ends where the next one begins.
    bindings.applyAdt(adt('A01', P2, T0 + H, 'ICU/1/2'));
    bindings.applyAdt(adt('A03', P2, T0 + 2 * H));
    bindings.applyAdt(adt('A01', P3, T0 + 5 * H, 'ICU/1/2'));
    bindings.applyAdt(adt('A13', P2, T0 + 6 * H));
    expect(who('mon-2', T0 + 5 * H - 1)).toBe(P2.value);
    expect(who('mon-2', T0 + 5 * H)).toBe(P3.value);
    expect(code(() => bindings.applyAdt(adt('A13', { system: CPR_SYSTEM, value: '0101009999' }, T0)))).toBe(ErrorCode.ADT_NOT_APPLICABLE);
  });

  it('a cancelled admit or discharge re-entered with the same time (a new message) is applied again', () => {
    bindings.applyAdt(adt('A01', P1, T0 + H, 'ICU/1/1'));
    bindings.applyAdt(adt('A11', P1, T0 + 2 * H, 'ICU/1/1'));
    expect(bindings.applyAdt({ ...adt('A01', P1, T0 + H, 'ICU/1/1'), controlId: 'RE-ENTERED-1' }).changed).toBe(true);
    expect(who('mon-1', T0 + H)).toBe(P1.value);
    bindings.applyAdt(adt('A03', P1, T0 + 3 * H));
    bindings.applyAdt(adt('A13', P1, T0 + 4 * H));
    expect(who('mon-1', T0 + 3 * H)).toBe(P1.value);
    expect(bindings.applyAdt({ ...adt('A03', P1, T0 + 3 * H), controlId: 'RE-ENTERED-2' }).changed).toBe(true);
    expect(who('mon-1', T0 + 3 * H)).toBeNull();
  });

  it('a late transfer inserted between earlier messages splits the stay', () => {
    bindings.applyAdt(adt('A01', P1, T0 + H, 'ICU/1/1'));
    bindings.applyAdt(adt('A03', P1, T0 + 6 * H));
    bindings.applyAdt(adt('A02', P1, T0 + 3 * H, 'ICU/1/2'));
    expect(who('mon-1', T0 + 3 * H - 1)).toBe(P1.value);
    expect(who('mon-2', T0 + 3 * H)).toBe(P1.value);
    expect(who('mon-2', T0 + 6 * H - 1)).toBe(P1.value);
    expect(who('mon-2', T0 + 6 * H)).toBeNull();
  });

  it('replaying a whole sequence changes nothing and writes no audit rows', () => {
    const seq = [
      adt('A01', P1, T0 + H, 'ICU/1/1'),
      adt('A01', P2, T0 + H, 'ICU/1/2'),
      adt('A02', P1, T0 + 2 * H, 'ICU/2/1', 'ICU/1/1'),
      adt('A03', P2, T0 + 3 * H),
      adt('A11', P1, T0 + 4 * H, 'ICU/2/1'),
    ];
    for (const e of seq) bindings.applyAdt(e);
    const before = JSON.stringify(bindings.occupancies({}));
    const auditRows = audit.query({ limit: 10_000 }).length;
    for (const e of seq) expect(bindings.applyAdt(e).changed, e.type).toBe(false);
    expect(JSON.stringify(bindings.occupancies({}))).toBe(before);
    expect(audit.query({ limit: 10_000 })).toHaveLength(auditRows);
  });

  it('an event sent again by a second interface engine (not the same message) is still harmless right after the original', () => {
    // Each event is re-sent at once under another sender: the per-event checks (same stay,
    // tombstones, cancelled discharges) must recognise it without the message identity.
    const seq = [
      adt('A01', P1, T0 + H, 'ICU/1/1'),
      adt('A02', P1, T0 + 2 * H, 'ICU/2/1', 'ICU/1/1'),
      adt('A12', P1, T0 + 3 * H, 'ICU/2/1', 'ICU/1/1'),
      adt('A03', P1, T0 + 4 * H),
      adt('A13', P1, T0 + 5 * H),
      adt('A01', P2, T0 + 6 * H, 'ICU/1/2'),
      adt('A11', P2, T0 + 7 * H, 'ICU/1/2'),
    ];
    for (const e of seq) {
      expect(bindings.applyAdt(e).changed, e.type).toBe(true);
      const state = JSON.stringify(bindings.occupancies({}));
      expect(bindings.applyAdt({ ...e, sender: 'EPJ-BACKUP' }).changed, `${e.type} again`).toBe(false);
      expect(JSON.stringify(bindings.occupancies({}))).toBe(state);
    }
    expect(who('mon-1', T0 + 50 * H)).toBe(P1.value);
    expect(who('mon-2', T0 + 6 * H)).toBeNull();
  });

  it('audits every ADT change with actor adt:<sender>; notes carry no personal data', () => {
    const r = bindings.applyAdt(adt('A01', P1, T0 + H, 'ICU/1/1'));
    expect(r.note).not.toContain(P1.value);
    const rows = audit.query({ entity: 'occupancy', limit: 10 });
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ actor: 'adt:EPJ', action: 'occupancy.adt.A01', before: null });
  });
});

describe('manual bindings', () => {
  it('refuses overlaps and to <= from; an open binding from a later time moves the device', () => {
    bindings.bind({ device: 'mon-1', bed: 'ICU/1/1', from: T0, to: T0 + 2 * H }, 'token:anna');
    expect(code(() => bindings.bind({ device: 'mon-1', bed: 'ICU/1/2', from: T0 + H, to: T0 + 3 * H }, 'token:anna'))).toBe(ErrorCode.BINDING_OVERLAP);
    expect(code(() => bindings.bind({ device: 'mon-1', bed: 'ICU/1/2', from: T0 + H }, 'token:anna'))).toBe(ErrorCode.BINDING_OVERLAP);
    expect(code(() => bindings.bind({ device: 'mon-1', bed: 'ICU/1/2', from: T0 + 5 * H, to: T0 + 5 * H }, 'token:anna'))).toBe(ErrorCode.REGISTRY_INVALID);
    expect(code(() => bindings.bind({ device: 'mon-1', from: T0 + 5 * H }, 'token:anna'))).toBe(ErrorCode.REGISTRY_INVALID);
    expect(code(() => bindings.bind({ device: 'ghost', bed: 'ICU/1/1' }, 'token:anna'))).toBe(ErrorCode.REGISTRY_NOT_FOUND);
    // Adjacent is not overlapping (half-open).
    bindings.bind({ device: 'mon-1', bed: 'ICU/1/2', from: T0 + 2 * H }, 'token:anna');
    // Moving the device: the open binding ends where the new one starts.
    bindings.bind({ device: 'mon-1', bed: 'ICU/1/3', from: T0 + 4 * H }, 'token:anna');
    expect(bindings.attribution('mon-1', T0 + 4 * H - 1).bed).toBe('ICU/1/2');
    expect(bindings.attribution('mon-1', T0 + 4 * H).bed).toBe('ICU/1/3');
    expect(bindings.locationOf('mon-1')).toBe('ICU/1/3');
    // Not before the open binding's start.
    expect(code(() => bindings.bind({ device: 'mon-1', bed: 'ICU/1/4', from: T0 + 3 * H }, 'token:anna'))).toBe(ErrorCode.BINDING_OVERLAP);
    const ends = audit.query({ entity: 'binding', limit: 100 }).filter((r) => r.action === 'binding.end');
    expect(JSON.stringify(ends[0]!.after)).toContain('device moved');
  });

  it('occupy refuses overlap; vacate ends the open occupancy', () => {
    bindings.bind({ device: 'mon-1', bed: 'W/1/1', from: T0 }, 'token:anna');
    bindings.occupy({ bed: 'W/1/1', patient: P1, from: T0 + H }, 'token:anna');
    expect(code(() => bindings.occupy({ bed: 'W/1/1', patient: P2, from: T0 + 2 * H }, 'token:anna'))).toBe(ErrorCode.BINDING_OVERLAP);
    bindings.vacate('W/1/1', T0 + 3 * H, 'token:anna');
    expect(who('mon-1', T0 + 3 * H - 1)).toBe(P1.value);
    expect(who('mon-1', T0 + 3 * H)).toBeNull();
  });

  it('correct() cuts bindings at the edges and replaces the middle', () => {
    bindings.bind({ device: 'mon-1', bed: 'ICU/1/1', from: T0, to: T0 + 4 * H }, 'token:anna');
    bindings.bind({ device: 'mon-1', bed: 'ICU/1/2', from: T0 + 4 * H }, 'token:anna');
    changes = [];
    bindings.correct({ device: 'mon-1', from: T0 + 2 * H, to: T0 + 6 * H, bed: 'ICU/9/9', reason: 'wrong bed' }, 'token:bo');
    expect(bindings.attribution('mon-1', T0 + 2 * H - 1).bed).toBe('ICU/1/1');
    expect(bindings.attribution('mon-1', T0 + 2 * H).bed).toBe('ICU/9/9');
    expect(bindings.attribution('mon-1', T0 + 6 * H - 1).bed).toBe('ICU/9/9');
    expect(bindings.attribution('mon-1', T0 + 6 * H).bed).toBe('ICU/1/2');
    expect(changes).toEqual([{ device: 'mon-1', from: T0 + 2 * H, to: T0 + 6 * H, reason: 'binding corrected by token:bo' }]);
    // A correction inside one binding splits it; "nothing" leaves a hole.
    bindings.correct({ device: 'mon-1', from: T0 + 7 * H, to: T0 + 8 * H, reason: 'monitor was off the patient' }, 'token:bo');
    expect(bindings.attribution('mon-1', T0 + 7 * H - 1).bed).toBe('ICU/1/2');
    expect(bindings.attribution('mon-1', T0 + 7 * H)).toMatchObject({ bed: null, validFrom: T0 + 7 * H, validTo: T0 + 8 * H });
    expect(bindings.attribution('mon-1', T0 + 8 * H).bed).toBe('ICU/1/2');
    const row = audit.query({ entity: 'binding', limit: 1 })[0]!;
    expect(row.action).toBe('binding.correct');
    expect(row.before).toHaveLength(1);
  });
});

describe('AttributionChange', () => {
  it('is emitted for past-reaching changes only, per bound device, clipped to the binding', () => {
    bindings.bind({ device: 'mon-1', bed: 'ICU/1/1', from: T0, to: T0 + 10 * H }, 'token:anna');
    bindings.bind({ device: 'mon-2', bed: 'ICU/1/1', from: T0 + 5 * H, to: T0 + 20 * H }, 'token:anna');
    changes = [];
    // A late admit at T0+8h, discharged at T0+12h: both monitors saw it.
    bindings.applyAdt(adt('A01', P1, T0 + 8 * H, 'ICU/1/1'));
    bindings.applyAdt(adt('A03', P1, T0 + 12 * H));
    expect(changes).toEqual([
      { device: 'mon-1', from: T0 + 8 * H, to: T0 + 10 * H, reason: 'ADT A01' },
      { device: 'mon-2', from: T0 + 8 * H, to: T0 + 20 * H, reason: 'ADT A01' },
      { device: 'mon-2', from: T0 + 12 * H, to: T0 + 20 * H, reason: 'ADT A03' },
    ]);
    changes = [];
    // Now or later: nothing stored can be affected.
    bindings.applyAdt(adt('A01', P2, now, 'ICU/1/1'));
    bindings.bind({ device: 'pump-1', bed: 'ICU/1/1', from: now + H }, 'token:anna');
    expect(changes).toEqual([]);
    // A binding that starts in the past reaches back; its open end is bounded (finite).
    bindings.bind({ device: 'mon-1', bed: 'ICU/1/3', from: now - H }, 'token:anna');
    expect(changes).toHaveLength(1);
    expect(changes[0]!.from).toBe(now - H);
    expect(Number.isFinite(changes[0]!.to)).toBe(true);
    expect(changes[0]!.to).toBeGreaterThan(now);
  });

  it('nothing is emitted when a change is refused', () => {
    bindings.bind({ device: 'mon-1', bed: 'ICU/1/1', from: T0, to: T0 + H }, 'token:anna');
    changes = [];
    expect(code(() => bindings.bind({ device: 'mon-1', bed: 'ICU/1/2', from: T0, to: T0 + H }, 'token:anna'))).toBe(ErrorCode.BINDING_OVERLAP);
    expect(changes).toEqual([]);
  });
});

describe('persistence', () => {
  it('a reload from the database gives the same attributions', () => {
    bindings.bind({ device: 'mon-1', bed: 'ICU/1/1', from: T0 }, 'token:anna');
    bindings.bind({ device: 'pump-1', patient: P3, from: T0 + H, to: T0 + 9 * H }, 'token:anna');
    bindings.applyAdt(adt('A01', P1, T0 + H, 'ICU/1/1'));
    bindings.applyAdt(adt('A02', P1, T0 + 3 * H, 'ICU/1/2'));
    bindings.applyAdt(adt('A01', P2, T0 + 4 * H, 'ICU/1/1'));
    bindings.applyAdt(adt('A11', P2, T0 + 5 * H, 'ICU/1/1'));
    const times = Array.from({ length: 40 }, (_, i) => T0 - H + i * (H / 4));
    const answers = (b: Bindings) => times.flatMap((t) => ['mon-1', 'pump-1'].map((d) => b.attribution(d, t)).map((a) => [a.bed, a.patient?.value ?? null, a.validFrom, a.validTo]));
    const before = answers(bindings);
    const reloaded = open();
    expect(answers(reloaded)).toEqual(before);
    // The record of applied messages survives too: the cancelled admit's message is not re-applied after a restart.
    expect(reloaded.applyAdt(adt('A01', P2, T0 + 4 * H, 'ICU/1/1')).changed).toBe(false);
  });
});
