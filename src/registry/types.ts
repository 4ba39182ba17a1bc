/**
 * The device registry's vocabulary: devices, bindings (device → bed or patient over time), bed
 * occupancy (bed → patient over time, from ADT or the API), ADT events, attribution and audit.
 *
 * Time intervals are half-open `[from, to)` in epoch ms; `to: null` means "still open". A
 * reading at time t belongs to the interval with `from <= t < to`: a transfer at 10:00 puts a
 * reading stamped 10:00:00.000 in the new bed.
 *
 * Who a reading belongs to (attribution at the reading's time t):
 * 1. the device's binding at t: either a bed (then the patient is the bed's occupant at t) or a
 *    patient directly (a pump scanned to a patient); a device has at most one binding at any t;
 * 2. no binding at t: nobody (the PID a message carries is used only when the device is not
 *    bound, see `src/pipeline/attribute.ts`).
 */
import type { PatientId } from '../model/measurement.js';

export const DEVICE_KINDS = ['monitor', 'pump', 'ventilator', 'anesthesia', 'vital-signs', 'lab', 'other'] as const;
export type DeviceKind = (typeof DEVICE_KINDS)[number];

export const DeviceStatus = {
  /** Registered and approved: its readings are attributed and charted. */
  ACTIVE: 'active',
  /** Sent data without being registered (recorded by the gateway): stored, not charted, until approved. */
  UNREGISTERED: 'unregistered',
  /** Taken out of service: its drivers stop; anything it still sends is stored, not charted. */
  RETIRED: 'retired',
} as const;
export type DeviceStatus = (typeof DeviceStatus)[keyof typeof DeviceStatus];

/** How the gateway reaches the device. Serial settings are those of a `serial.devices` entry, without `deviceId`. */
export type DeviceTransport =
  | { readonly type: 'serial'; readonly settings: Readonly<Record<string, unknown>> }
  /** A PCD-01 sender: the MSH-3 namespace id of the gateway or monitor that sends for it, if pinned. */
  | { readonly type: 'mllp'; readonly sender: string | null }
  | { readonly type: 'mqtt'; readonly clientId: string; readonly username: string | null; readonly passwordHash: string | null };

export interface DeviceRecord {
  /** The id readings carry: EUI-64 (16 hex digits) for PCD-01 senders, the registered id for serial/MQTT devices. */
  readonly id: string;
  readonly kind: DeviceKind;
  readonly vendor: string | null;
  readonly model: string | null;
  readonly serialNumber: string | null;
  /** EUI-64 as 16 upper-case hex digits, when known; readings carrying it are this device's. */
  readonly eui64: string | null;
  readonly transport: DeviceTransport | null;
  /** Bed key (`ward/room/bed`) of the device's current binding, null when unbound or bound to a patient. */
  readonly location: string | null;
  readonly status: DeviceStatus;
  /** A bound device silent for longer than this raises a `silent` event. */
  readonly expectedIntervalSeconds: number;
  /** Epoch ms. */
  readonly created: number;
  readonly updated: number;
}

/** A bed key: `ward/room/bed` (the form PCD-01 PV1-3 `ward^room^bed` is stored in). */
export type BedKey = string;

/** Device → bed, or device → patient, over `[from, to)`. Never overlapping for one device. */
export interface Binding {
  readonly id: number;
  readonly device: string;
  /** Exactly one of `bed` and `patient` is set. */
  readonly bed: BedKey | null;
  /** Personal data: never log it; the API shows a pseudonym. */
  readonly patient: PatientId | null;
  readonly from: number;
  readonly to: number | null;
  /** Who made it (`token:<name>`, `adt:<sender>`, `gateway`, `config`). */
  readonly actor: string;
  readonly created: number;
  readonly reason: string | null;
}

/** Bed → patient over `[from, to)`, from ADT or set by hand. Never overlapping for one bed. */
export interface Occupancy {
  readonly id: number;
  readonly bed: BedKey;
  /** Personal data. */
  readonly patient: PatientId;
  readonly from: number;
  readonly to: number | null;
  readonly source: 'adt' | 'api';
  readonly actor: string;
  readonly created: number;
  /** PV1-19 visit number, when the ADT message carried one. */
  readonly visit: string | null;
}

export const ADT_EVENTS = ['A01', 'A02', 'A03', 'A04', 'A08', 'A11', 'A12', 'A13'] as const;
export type AdtEventType = (typeof ADT_EVENTS)[number];

/** One decoded ADT message (src/codec/adt.ts), ready for `Bindings.applyAdt`. */
export interface AdtEvent {
  readonly type: AdtEventType;
  /** PID-3 (CPR when present). Personal data. */
  readonly patient: PatientId;
  /** PV1-3 as a bed key, null when absent. */
  readonly bed: BedKey | null;
  /** PV1-6 prior location as a bed key (A02, A12), null when absent. */
  readonly priorBed: BedKey | null;
  /** When it happened: EVN-6, else PV1-44/45 where they apply, else EVN-2, else MSH-7 (epoch ms). */
  readonly time: number;
  readonly visit: string | null;
  /** MSH-3 sending application, for the actor (`adt:<sender>`). */
  readonly sender: string;
  readonly controlId: string;
}

/** Who a reading of `device` at a time belongs to, and how long the same answer holds. */
export interface Attribution {
  /** The registry record, or null for a device the registry has never seen. */
  readonly device: DeviceRecord | null;
  readonly bed: BedKey | null;
  readonly patient: PatientId | null;
  /** The answer is the same for every time in `[validFrom, validTo)` (callers cache on it). */
  readonly validFrom: number;
  readonly validTo: number;
}

/**
 * The attribution of `device` changed for readings in `[from, to)` that may already be stored
 * (a late ADT message, a cancel, a correction). Listeners re-attribute stored readings and
 * correct what was charted.
 */
export interface AttributionChange {
  readonly device: string;
  readonly from: number;
  /** Exclusive; an open-ended change is announced up to now + 1 day (no reading is stamped later). */
  readonly to: number;
  /** Why, without personal data: `ADT A11`, `binding corrected by token:anna`. */
  readonly reason: string;
}

export type AuditEntity = 'device' | 'binding' | 'occupancy' | 'token';

export interface AuditEntry {
  readonly id: number;
  readonly at: number;
  readonly actor: string;
  /** `device.add`, `device.update`, `device.retire`, `device.approve`, `binding.add`, `binding.end`, `binding.correct`, `occupancy.adt`, … */
  readonly action: string;
  readonly entity: AuditEntity;
  readonly entityId: string;
  /** The record before and after (null when created / deleted). Patient ids are kept: the audit is the legal record. */
  readonly before: unknown;
  readonly after: unknown;
}

export interface AuditQuery {
  readonly entity?: AuditEntity;
  readonly entityId?: string;
  readonly actor?: string;
  readonly since?: number;
  readonly limit: number;
}

/** Input of a new device (validated by the zod schema in `devices.ts`). */
export interface DeviceInput {
  readonly id: string;
  readonly kind: DeviceKind;
  readonly vendor?: string | null;
  readonly model?: string | null;
  readonly serialNumber?: string | null;
  /** 16 hex digits, with or without hyphens; stored upper-case without them. */
  readonly eui64?: string | null;
  readonly transport?: DeviceTransport | null;
  /** Binds the device to this bed from now (or from `since`). */
  readonly location?: { readonly ward: string; readonly room?: string; readonly bed?: string } | null;
  readonly expectedIntervalSeconds?: number;
}

/** What `DeviceRegistry` tells its listeners (the gateway starts and stops drivers on it). */
export type DeviceEvent =
  | { readonly type: 'added' | 'updated' | 'approved' | 'retired'; readonly device: DeviceRecord; readonly before: DeviceRecord | null };

/**
 * Devices (src/registry/devices.ts). Every change is one transaction with its audit row.
 * Errors are `GatewayError`s: REGISTRY_NOT_FOUND (404), REGISTRY_CONFLICT (409: id or EUI-64
 * taken), REGISTRY_INVALID (400).
 */
export interface DeviceRegistryApi {
  list(filter?: { readonly status?: DeviceStatus; readonly kind?: DeviceKind }): DeviceRecord[];
  /** By id, or by EUI-64 (any spelling). Fast: served from memory (hot path). */
  get(idOrEui64: string): DeviceRecord | null;
  add(input: DeviceInput, actor: string): DeviceRecord;
  update(id: string, patch: Partial<Omit<DeviceInput, 'id'>>, actor: string): DeviceRecord;
  /** Unregistered → active (optionally completing the record). */
  approve(id: string, patch: Partial<Omit<DeviceInput, 'id'>>, actor: string): DeviceRecord;
  retire(id: string, actor: string, reason?: string): DeviceRecord;
  /** Records a device that sent data without being registered (actor `gateway`); idempotent. */
  noteUnregistered(deviceId: string, source: string, at: number): DeviceRecord;
  onChange(listener: (event: DeviceEvent) => void): void;
}

/**
 * Bindings and bed occupancy (src/registry/bindings.ts). Every change is one transaction with
 * its audit row. Overlaps are refused with BINDING_OVERLAP (409), except where ADT says a bed
 * changed hands (ADT is the source of truth for occupancy: the earlier stay is ended).
 */
export interface BindingsApi {
  /** Device → bed or patient from `from` (default now) to `to` (default open). */
  bind(
    input: { readonly device: string; readonly bed?: BedKey; readonly patient?: PatientId; readonly from?: number; readonly to?: number | null; readonly reason?: string },
    actor: string,
  ): Binding;
  /** Ends the device's open binding at `at` (default now); null when it had none. */
  unbind(device: string, at: number | undefined, actor: string): Binding | null;
  /**
   * Rewrites the device's bindings over `[from, to)` (past time allowed): existing bindings are
   * cut at the edges and replaced by one binding to `bed`/`patient`, or by none. Emits an
   * AttributionChange for `[from, to)`.
   */
  correct(
    input: { readonly device: string; readonly from: number; readonly to: number; readonly bed?: BedKey; readonly patient?: PatientId; readonly reason: string },
    actor: string,
  ): Binding | null;
  bindings(filter: { readonly device?: string; readonly bed?: BedKey; readonly at?: number; readonly limit?: number }): Binding[];
  /** A bed → patient by hand (refuses overlap). */
  occupy(input: { readonly bed: BedKey; readonly patient: PatientId; readonly from?: number; readonly to?: number | null }, actor: string): Occupancy;
  /** Ends the bed's open occupancy at `at` (default now). */
  vacate(bed: BedKey, at: number | undefined, actor: string): Occupancy | null;
  occupancies(filter: { readonly bed?: BedKey; readonly at?: number; readonly limit?: number }): Occupancy[];
  /**
   * Applies one ADT event; durable when it returns (the MLLP ACK follows). Throws
   * ADT_NOT_APPLICABLE (answered AE) when it cannot be applied.
   */
  applyAdt(event: AdtEvent): { readonly changed: boolean; readonly note: string };
  /** Who a reading of `device` at `time` belongs to. Hot path: from memory, no SQL. */
  attribution(deviceId: string, time: number): Attribution;
  onAttributionChange(listener: (change: AttributionChange) => void): void;
}
