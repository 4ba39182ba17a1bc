/**
 * The device registry: which devices exist, how the gateway reaches them and whether their
 * readings are charted. Kept in the store's SQLite file (table `devices`) and mirrored in memory:
 * `get()` runs for every reading and never touches SQL.
 *
 * A device's bed is not stored here: bindings (src/registry/bindings.ts) own it, and
 * `setLocationSource` lets them tell `DeviceRecord.location`. `DeviceInput.location` is ignored by
 * this class; the API turns it into a binding.
 */
import type Database from 'better-sqlite3';
import { z } from 'zod';
import { SerialDeviceConfig } from '../config/schema.js';
import { ErrorCode, GatewayError } from '../errors.js';
import type { AuditLog } from './audit.js';
import {
  DEVICE_KINDS,
  DeviceStatus,
  type DeviceEvent,
  type DeviceInput,
  type DeviceKind,
  type DeviceRecord,
  type DeviceRegistryApi,
  type DeviceTransport,
} from './types.js';

const SCHEMA = `
-- Registered devices (and devices that sent data unregistered). Bed bindings live in their own table.
CREATE TABLE IF NOT EXISTS devices (
  id TEXT PRIMARY KEY,
  kind TEXT NOT NULL,
  vendor TEXT,
  model TEXT,
  serial_number TEXT,
  eui64 TEXT UNIQUE,
  transport TEXT,
  status TEXT NOT NULL,
  expected_interval_seconds INTEGER NOT NULL,
  created INTEGER NOT NULL,
  updated INTEGER NOT NULL
);
`;

interface DeviceRow {
  id: string;
  kind: DeviceKind;
  vendor: string | null;
  model: string | null;
  serial_number: string | null;
  eui64: string | null;
  transport: string | null;
  status: DeviceStatus;
  expected_interval_seconds: number;
  created: number;
  updated: number;
}

const DEVICE_ID = /^[A-Za-z0-9._:/-]{1,128}$/;
/** An id a device sent (noteUnregistered): anything printable. */
const SEEN_ID = /^[^\p{Cc}\s]{1,128}$/u;
const EUI64_INPUT = /^[0-9A-Fa-f]{2}(?:[-:]?[0-9A-Fa-f]{2}){7}$/;

/** EUI-64 as 16 upper-case hex digits, or null when `text` is not one (any spelling accepted). */
export function normalizeEui64(text: string): string | null {
  if (!EUI64_INPUT.test(text)) return null;
  return text.replace(/[-:]/g, '').toUpperCase();
}

const optionalText = (max: number) => z.string().trim().min(1).max(max).nullable().optional();
const locationPart = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[^/]+$/, 'must not contain /');

export const LocationSchema = z.strictObject({ ward: locationPart, room: locationPart.optional(), bed: locationPart.optional() });

/** The bed key of a location: `ward/room/bed`, missing parts left out. */
export function bedKeyOf(location: { readonly ward: string; readonly room?: string; readonly bed?: string }): string {
  return [location.ward, location.room, location.bed].filter((p): p is string => p !== undefined).join('/');
}

const TransportSchema = z.discriminatedUnion('type', [
  z.strictObject({ type: z.literal('serial'), settings: z.record(z.string(), z.unknown()) }),
  z.strictObject({ type: z.literal('mllp'), sender: z.string().min(1).max(227).nullable().default(null) }),
  z.strictObject({
    type: z.literal('mqtt'),
    clientId: z.string().min(1).max(128),
    username: z.string().min(1).max(128).nullable().default(null),
    passwordHash: z
      .string()
      .regex(/^scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$/, 'must be a scrypt$… hash from `mdi mqtt-hash-password`, never a plain password')
      .nullable()
      .default(null),
  }),
]);

const deviceFields = {
  kind: z.enum(DEVICE_KINDS),
  vendor: optionalText(128),
  model: optionalText(128),
  serialNumber: optionalText(128),
  eui64: z
    .string()
    .refine((t) => normalizeEui64(t) !== null, 'must be 16 hex digits (hyphens or colons allowed)')
    .nullable()
    .optional(),
  transport: TransportSchema.nullable().optional(),
  location: LocationSchema.nullable().optional(),
  expectedIntervalSeconds: z.number().int().min(1).max(86_400).optional(),
};

/** A new device, as the API and the CLI send it. */
export const DeviceInputSchema = z
  .strictObject({
    id: z.string().regex(DEVICE_ID, 'use 1–128 letters, digits and . _ : / -'),
    ...deviceFields,
  })
  .superRefine((input, ctx) => {
    if (input.transport?.type === 'serial') serialIssues(input.id, input.transport.settings, ctx);
  });

/** A change to a device (`PATCH`, approve): any field but the id. Serial settings are checked against the id by the registry. */
export const DevicePatchSchema = z.strictObject({ ...deviceFields, kind: deviceFields.kind.optional() });

/** Serial settings must be a valid `serial.devices` entry for this device id. */
function serialIssues(id: string, settings: Record<string, unknown>, ctx: z.RefinementCtx): void {
  const parsed = SerialDeviceConfig.safeParse({ ...settings, deviceId: id });
  if (parsed.success) return;
  for (const issue of parsed.error.issues) {
    ctx.addIssue({ code: 'custom', path: ['transport', 'settings', ...issue.path.map((p) => (typeof p === 'symbol' ? String(p) : p))], message: issue.message });
  }
}

function invalid(error: z.ZodError, prefix = ''): GatewayError {
  const text = error.issues.map((i) => `${prefix}${i.path.join('.') || 'device'}: ${i.message}`).join('; ');
  return new GatewayError(ErrorCode.REGISTRY_INVALID, text);
}

function normalizeTransport(t: z.infer<typeof TransportSchema> | DeviceTransport): DeviceTransport {
  switch (t.type) {
    case 'serial': {
      // deviceId belongs to the device record, not to its settings.
      const { deviceId: _drop, ...settings } = t.settings as Record<string, unknown>;
      return { type: 'serial', settings };
    }
    case 'mllp':
      return { type: 'mllp', sender: t.sender ?? null };
    case 'mqtt':
      return { type: 'mqtt', clientId: t.clientId, username: t.username ?? null, passwordHash: t.passwordHash ?? null };
  }
}

export interface DeviceRegistryOptions {
  /** Default of `expectedIntervalSeconds` (config `registry.expectedIntervalSeconds`). */
  readonly defaultExpectedIntervalSeconds: number;
  readonly clock?: () => number;
  /** Told when a change listener throws (the change itself is committed by then). */
  readonly onListenerError?: (err: unknown) => void;
}

type Patch = Partial<Omit<DeviceInput, 'id'>>;

export class DeviceRegistry implements DeviceRegistryApi {
  private readonly byId = new Map<string, DeviceRecord>();
  private readonly byEui = new Map<string, DeviceRecord>();
  private readonly listeners: ((event: DeviceEvent) => void)[] = [];
  private readonly clock: () => number;
  private locationOf: ((deviceId: string) => string | null) | null = null;
  private readonly statements;

  constructor(
    private readonly db: Database.Database,
    private readonly audit: AuditLog,
    private readonly options: DeviceRegistryOptions,
  ) {
    db.exec(SCHEMA);
    this.clock = options.clock ?? Date.now;
    this.statements = {
      insert: db.prepare(
        `INSERT INTO devices (id, kind, vendor, model, serial_number, eui64, transport, status, expected_interval_seconds, created, updated)
         VALUES (@id, @kind, @vendor, @model, @serial_number, @eui64, @transport, @status, @expected_interval_seconds, @created, @updated)`,
      ),
      update: db.prepare(
        `UPDATE devices SET kind = @kind, vendor = @vendor, model = @model, serial_number = @serial_number, eui64 = @eui64,
         transport = @transport, status = @status, expected_interval_seconds = @expected_interval_seconds, updated = @updated WHERE id = @id`,
      ),
    };
    for (const row of db.prepare('SELECT * FROM devices').all() as DeviceRow[]) this.remember(fromRow(row, null));
  }

  /** Where `DeviceRecord.location` comes from: the bindings' current bed of a device. */
  setLocationSource(locationOf: (deviceId: string) => string | null): void {
    this.locationOf = locationOf;
  }

  list(filter: { readonly status?: DeviceStatus; readonly kind?: DeviceKind } = {}): DeviceRecord[] {
    const out: DeviceRecord[] = [];
    for (const id of [...this.byId.keys()].sort()) {
      const d = this.current(this.byId.get(id)!);
      if (filter.status !== undefined && d.status !== filter.status) continue;
      if (filter.kind !== undefined && d.kind !== filter.kind) continue;
      out.push(d);
    }
    return out;
  }

  get(idOrEui64: string): DeviceRecord | null {
    let d = this.byId.get(idOrEui64) ?? this.byEui.get(idOrEui64);
    if (d === undefined && idOrEui64.length >= 16 && idOrEui64.length <= 23) {
      const eui = normalizeEui64(idOrEui64);
      if (eui !== null) d = this.byEui.get(eui) ?? this.byId.get(eui);
    }
    return d === undefined ? null : this.current(d);
  }

  add(input: DeviceInput, actor: string): DeviceRecord {
    const parsed = DeviceInputSchema.safeParse(input);
    if (!parsed.success) throw invalid(parsed.error);
    const v = parsed.data;
    if (this.get(v.id) !== null) throw new GatewayError(ErrorCode.REGISTRY_CONFLICT, `device ${v.id} is already registered`);
    const eui64 = v.eui64 ? normalizeEui64(v.eui64) : null;
    this.checkEuiFree(eui64, v.id);
    const now = this.clock();
    const record: DeviceRecord = {
      id: v.id,
      kind: v.kind,
      vendor: v.vendor ?? null,
      model: v.model ?? null,
      serialNumber: v.serialNumber ?? null,
      eui64,
      transport: v.transport ? normalizeTransport(v.transport) : null,
      location: null,
      status: DeviceStatus.ACTIVE,
      expectedIntervalSeconds: v.expectedIntervalSeconds ?? this.options.defaultExpectedIntervalSeconds,
      created: now,
      updated: now,
    };
    this.db.transaction(() => {
      this.statements.insert.run(toRow(record));
      this.audit.record({ at: now, actor, action: 'device.add', entity: 'device', entityId: record.id, before: null, after: auditView(record) });
    })();
    return this.commit('added', record, null);
  }

  update(id: string, patch: Patch, actor: string): DeviceRecord {
    const before = this.require(id);
    return this.change(before, patch, before.status, 'device.update', 'updated', actor);
  }

  approve(id: string, patch: Patch, actor: string): DeviceRecord {
    const before = this.require(id);
    if (before.status === DeviceStatus.ACTIVE) throw new GatewayError(ErrorCode.REGISTRY_CONFLICT, `device ${before.id} is already active`);
    return this.change(before, patch, DeviceStatus.ACTIVE, 'device.approve', 'approved', actor);
  }

  retire(id: string, actor: string, reason?: string): DeviceRecord {
    const before = this.require(id);
    if (before.status === DeviceStatus.RETIRED) throw new GatewayError(ErrorCode.REGISTRY_CONFLICT, `device ${before.id} is already retired`);
    return this.change(before, {}, DeviceStatus.RETIRED, 'device.retire', 'retired', actor, reason);
  }

  noteUnregistered(deviceId: string, source: string, at: number): DeviceRecord {
    const known = this.get(deviceId);
    if (known !== null) return known;
    // Whatever a device calls itself is recorded (an engineer then sees it to approve it), as
    // long as it is a printable name of a sane length.
    if (!SEEN_ID.test(deviceId)) throw new GatewayError(ErrorCode.REGISTRY_INVALID, 'unregistered device id is empty, longer than 128 characters or has control characters');
    const eui64 = normalizeEui64(deviceId);
    // Its id may be another device's EUI-64 in a different spelling: that device is known.
    if (eui64 !== null && this.byEui.has(eui64)) return this.current(this.byEui.get(eui64)!);
    const now = this.clock();
    const record: DeviceRecord = {
      id: deviceId,
      kind: 'other',
      vendor: null,
      model: null,
      serialNumber: null,
      eui64: eui64 !== null && !this.byId.has(eui64) ? eui64 : null,
      transport: null,
      location: null,
      status: DeviceStatus.UNREGISTERED,
      expectedIntervalSeconds: this.options.defaultExpectedIntervalSeconds,
      created: now,
      updated: now,
    };
    this.db.transaction(() => {
      this.statements.insert.run(toRow(record));
      this.audit.record({
        at: now,
        actor: 'gateway',
        action: 'device.unregistered',
        entity: 'device',
        entityId: record.id,
        before: null,
        after: { ...auditView(record), source, firstSeen: at },
      });
    })();
    return this.commit('added', record, null);
  }

  onChange(listener: (event: DeviceEvent) => void): void {
    this.listeners.push(listener);
  }

  private change(
    before: DeviceRecord,
    patch: Patch,
    status: DeviceStatus,
    action: string,
    event: DeviceEvent['type'],
    actor: string,
    reason?: string,
  ): DeviceRecord {
    const parsed = DevicePatchSchema.safeParse(patch);
    if (!parsed.success) throw invalid(parsed.error);
    const p = parsed.data;
    if (p.transport?.type === 'serial') {
      const r = SerialDeviceConfig.safeParse({ ...p.transport.settings, deviceId: before.id });
      if (!r.success) throw invalid(r.error, 'transport.settings.');
    }
    const eui64 = p.eui64 === undefined ? before.eui64 : p.eui64 === null ? null : normalizeEui64(p.eui64);
    if (eui64 !== before.eui64) this.checkEuiFree(eui64, before.id);
    const now = this.clock();
    const after: DeviceRecord = {
      ...before,
      kind: p.kind ?? before.kind,
      vendor: p.vendor === undefined ? before.vendor : p.vendor,
      model: p.model === undefined ? before.model : p.model,
      serialNumber: p.serialNumber === undefined ? before.serialNumber : p.serialNumber,
      eui64,
      transport: p.transport === undefined ? before.transport : p.transport === null ? null : normalizeTransport(p.transport),
      status,
      expectedIntervalSeconds: p.expectedIntervalSeconds ?? before.expectedIntervalSeconds,
      updated: now,
    };
    // A PATCH that changes nothing (a config sync, a retried request) leaves no audit row.
    if (action === 'device.update' && sameDevice(before, after)) return before;
    this.db.transaction(() => {
      this.statements.update.run(toRow(after));
      this.audit.record({
        at: now,
        actor,
        action,
        entity: 'device',
        entityId: before.id,
        before: auditView(before),
        after: reason === undefined ? auditView(after) : { ...auditView(after), reason },
      });
    })();
    return this.commit(event, after, before);
  }

  /** After the transaction committed: memory, then listeners (a throwing listener does not undo the change). */
  private commit(type: DeviceEvent['type'], record: DeviceRecord, before: DeviceRecord | null): DeviceRecord {
    if (before?.eui64 && before.eui64 !== record.eui64) this.byEui.delete(before.eui64);
    this.remember(record);
    const current = this.current(record);
    for (const listener of this.listeners) {
      try {
        listener({ type, device: current, before });
      } catch (err) {
        this.options.onListenerError?.(err);
      }
    }
    return current;
  }

  private remember(record: DeviceRecord): void {
    this.byId.set(record.id, record);
    if (record.eui64 !== null) this.byEui.set(record.eui64, record);
  }

  /**
   * The record with its current bed. The cached object is replaced only when the bed changed,
   * so the hot path allocates nothing while bindings stay as they are.
   */
  private current(record: DeviceRecord): DeviceRecord {
    if (this.locationOf === null) return record;
    const location = this.locationOf(record.id);
    if (location === record.location) return record;
    const fresh = { ...record, location };
    this.remember(fresh);
    return fresh;
  }

  private require(idOrEui64: string): DeviceRecord {
    const d = this.get(idOrEui64);
    if (d === null) throw new GatewayError(ErrorCode.REGISTRY_NOT_FOUND, `no device ${idOrEui64}`);
    return d;
  }

  private checkEuiFree(eui64: string | null, ownId: string): void {
    if (eui64 === null) return;
    const holder = this.byEui.get(eui64) ?? this.byId.get(eui64);
    if (holder !== undefined && holder.id !== ownId) {
      const hint = holder.status === DeviceStatus.UNREGISTERED ? ` (unregistered: approve device ${holder.id} instead)` : '';
      throw new GatewayError(ErrorCode.REGISTRY_CONFLICT, `EUI-64 ${eui64} is already device ${holder.id}${hint}`);
    }
  }
}

function sameDevice(a: DeviceRecord, b: DeviceRecord): boolean {
  return JSON.stringify({ ...auditView(a), updated: 0 }) === JSON.stringify({ ...auditView(b), updated: 0 });
}

/** What the audit keeps of a device: everything but the bed (bindings audit that themselves). */
function auditView(d: DeviceRecord): Omit<DeviceRecord, 'location'> {
  const { location: _bed, ...rest } = d;
  return rest;
}

function toRow(d: DeviceRecord): DeviceRow {
  return {
    id: d.id,
    kind: d.kind,
    vendor: d.vendor,
    model: d.model,
    serial_number: d.serialNumber,
    eui64: d.eui64,
    transport: d.transport === null ? null : JSON.stringify(d.transport),
    status: d.status,
    expected_interval_seconds: d.expectedIntervalSeconds,
    created: d.created,
    updated: d.updated,
  };
}

function fromRow(r: DeviceRow, location: string | null): DeviceRecord {
  return {
    id: r.id,
    kind: r.kind,
    vendor: r.vendor,
    model: r.model,
    serialNumber: r.serial_number,
    eui64: r.eui64,
    transport: r.transport === null ? null : (JSON.parse(r.transport) as DeviceTransport),
    location,
    status: r.status,
    expectedIntervalSeconds: r.expected_interval_seconds,
    created: r.created,
    updated: r.updated,
  };
}
