/**
 * The mdi-gateway MQTT payload format (our design: no healthcare standard defines one, see
 * research/device-formats.md §10), and its decoder: topic + bytes → Measurements and dead
 * letters. Pure: no sockets, no timers, no logging; the embedded broker, the external-broker
 * client, the simulator, the bench and the tests all use it.
 *
 * Topic: `mdi/v1/devices/<deviceId>/readings`. Body (UTF-8 JSON, `readings.schema.json`):
 *
 *   {"ts": "2026-11-21T10:00:00.000+01:00" | 1795258800000,
 *    "id"?: "42",                       // optional message id: a redelivery is a no-op
 *    "readings": [{"code": "150456" | 150456 | "MDC_PULS_OXIM_SAT_O2" | "masimo:SPO2",
 *                  "value": 97 | "text" | null, "unit": "%", "ts"?: …, "status"?: "questionable" | [...]}]}
 *
 * What is refused, and how much: a body that is not JSON, not an object of that shape, larger
 * than `maxPayloadBytes`, or with a bad top-level `ts` becomes one dead letter for the whole
 * message. A bad reading inside a good envelope becomes a dead letter for that reading
 * (location `readings[3]`); the other readings go on. The device is told nothing (PUBACK is
 * sent either way once the dead letter is durable: a device that learns why it was refused
 * could probe the validator, and a refused message that is not acknowledged would only be
 * redelivered forever).
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { zoneOffsets, type TimeZoneRule } from '../../src/codec/hl7-time.js';
import { ErrorCode } from '../../src/errors.js';
import { loadVendorCodes, type VendorCodes } from '../../src/mappings.js';
import type { DeadLetterInput } from '../../src/model/dead-letter.js';
import { measurement, Quality, type Measurement } from '../../src/model/measurement.js';
import { MAPPINGS_DIR } from '../../src/paths.js';

/** Topic prefix of everything the gateway defines: versioned, so a v2 can live beside it. */
export const TOPIC_ROOT = 'mdi/v1';

/** A device id as it may appear in a topic level: no `/`, `+`, `#`, no spaces, bounded. */
export const DEVICE_ID_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/;

/** `mdi/v1/devices/<deviceId>/readings`. */
export function readingsTopic(deviceId: string): string {
  return `${TOPIC_ROOT}/devices/${deviceId}/readings`;
}

/** `mdi/v1/devices/<deviceId>/commands`: the only topic a device may subscribe to. */
export function commandsTopic(deviceId: string): string {
  return `${TOPIC_ROOT}/devices/${deviceId}/commands`;
}

/** The device id of a readings topic, or null when the topic is not one. */
export function deviceIdOfReadingsTopic(topic: string): string | null {
  const prefix = `${TOPIC_ROOT}/devices/`;
  const suffix = '/readings';
  if (!topic.startsWith(prefix) || !topic.endsWith(suffix)) return null;
  const id = topic.slice(prefix.length, topic.length - suffix.length);
  return DEVICE_ID_PATTERN.test(id) ? id : null;
}

/** `status` tokens and the quality flag each sets. */
export const STATUS_FLAGS = {
  invalid: Quality.INVALID,
  questionable: Quality.QUESTIONABLE,
  demo: Quality.DEMO,
  test: Quality.DEMO,
  abnormal: Quality.ABNORMAL,
  preliminary: Quality.NOT_FINAL,
  early: Quality.EARLY,
} as const;
export type ReadingStatus = keyof typeof STATUS_FLAGS;

/** Earliest accepted reading time: 2000-01-01T00:00:00Z. Earlier is a device clock never set, or epoch seconds sent as ms. */
export const MIN_TIME_MS = Date.UTC(2000, 0, 1);
/** Latest accepted reading time: 2100-01-01T00:00:00Z (clock drift is the pipeline's business; this catches garbage). */
export const MAX_TIME_MS = Date.UTC(2100, 0, 1);

// ISO-8601 with a mandatory offset: a time without one is ambiguous across the autumn DST
// overlap, and a device that publishes over a network can always say which zone it means.
const ISO_TIME = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:?\d{2})$/;

const Time = z.union([
  z.number().int(),
  z.string().max(40).regex(ISO_TIME, 'must be ISO-8601 with seconds and a UTC offset (2026-11-21T10:00:00+01:00) or epoch milliseconds'),
]);

const StatusToken = z.enum(Object.keys(STATUS_FLAGS) as [ReadingStatus, ...ReadingStatus[]]);

/** One reading (zod). Unknown keys are refused: a typo (`"vlaue"`) must not pass as "no value". */
export const MqttReading = z.strictObject({
  /** Numeric MDC code (`150456` or `"150456"`), MDC reference id (`MDC_PULS_OXIM_SAT_O2`), or `<vendor>:<code>`. */
  code: z.union([z.number().int().positive().max(0xffffffff), z.string().min(1).max(128)]),
  /** A number, a text (enumerations), or null for "no value" (sensor off): stored flagged INVALID. */
  value: z.union([z.number(), z.string().max(1024), z.null()]),
  /** UCUM (`%`, `/min`, `mm[Hg]`) or an MDC unit refid (`MDC_DIM_PERCENT`); `""` for none. */
  unit: z.string().max(64),
  /** This reading's own time, when it differs from the message's. */
  ts: Time.optional(),
  status: z.union([StatusToken, z.array(StatusToken).max(8)]).optional(),
});
export type MqttReading = z.infer<typeof MqttReading>;

/** Most readings in one message: a whole monitor's numerics are ~50; bounds the work per message. */
export const MAX_READINGS_PER_MESSAGE = 1000;

/** The message envelope (zod); readings are checked one by one so one bad row refuses only itself. */
export const MqttEnvelope = z.strictObject({
  ts: Time,
  /** Message id from the device (sequence number, UUID): with it a redelivered message is stored once. */
  id: z.string().min(1).max(64).regex(/^[\x21-\x7e]+$/, 'printable ASCII without spaces').optional(),
  readings: z.array(z.unknown()).min(1).max(MAX_READINGS_PER_MESSAGE),
});

/** Payload bound (bytes) by default: 1000 readings at ~100 bytes each, with room. */
export const DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024;
/** The head of a refused payload kept in its dead letter (the driver contract bounds it to 16 KiB). */
export const DEAD_LETTER_HEAD_BYTES = 8 * 1024;

/** Finds a vendor code table by vendor name (`masimo`), or null when there is none. */
export type VendorLookup = (vendor: string) => VendorCodes | null;

/**
 * Vendor tables from `mappings/vendors/<vendor>.csv`, loaded on first use and kept. Only names
 * that exist as files are loaded, so a device cannot make the gateway read arbitrary paths
 * (the name pattern is also checked by `loadVendorCodes`) or grow the cache without bound.
 */
export function vendorTables(dir: string = MAPPINGS_DIR): VendorLookup {
  const cache = new Map<string, VendorCodes | null>();
  return (vendor) => {
    const hit = cache.get(vendor);
    if (hit !== undefined) return hit;
    if (!/^[a-z0-9-]{1,40}$/.test(vendor)) return null;
    const file = join(dir, 'vendors', `${vendor}.csv`);
    const table = existsSync(file) ? loadVendorCodes(vendor, dir) : null;
    // Misses are cached too, but only up to a bound: names are device input.
    if (table !== null || cache.size < 256) cache.set(vendor, table);
    return table;
  };
}

/** What one MQTT message became. */
export interface DecodedMessage {
  readonly measurements: Measurement[];
  readonly rejects: DeadLetterInput[];
  /** The device's message id (`id`), for duplicate detection; null without one. */
  readonly messageId: string | null;
}

/** Decoder settings. */
export interface DecodeOptions {
  /** Zone for the UTC offset recorded with epoch-ms times (ISO times carry their own). */
  readonly zone: TimeZoneRule;
  readonly vendors: VendorLookup;
  readonly maxPayloadBytes: number;
}

/** Decoder settings for a zone name, with the shipped vendor tables. */
export function decodeOptions(timezone: string, maxPayloadBytes: number = DEFAULT_MAX_PAYLOAD_BYTES): DecodeOptions {
  return { zone: zoneOffsets(timezone), vendors: vendorTables(), maxPayloadBytes };
}

/**
 * Decodes one message published by `deviceId` (taken from the topic; a payload never names
 * its own device, so a device cannot speak for another by writing a different id in the body).
 * Never throws on input.
 */
export function decodeReadings(deviceId: string, payload: Uint8Array, options: DecodeOptions): DecodedMessage {
  if (payload.length > options.maxPayloadBytes) {
    return refuseAll(ErrorCode.MQTT_PAYLOAD_TOO_LARGE, `payload of ${payload.length} bytes is larger than ${options.maxPayloadBytes}`, payload);
  }
  let json: unknown;
  try {
    json = JSON.parse(Buffer.from(payload.buffer, payload.byteOffset, payload.length).toString('utf8'));
  } catch (err) {
    return refuseAll(ErrorCode.MQTT_BAD_PAYLOAD, `not JSON: ${(err as Error).message.slice(0, 120)}`, payload);
  }
  const envelope = MqttEnvelope.safeParse(json);
  if (!envelope.success) return refuseAll(ErrorCode.MQTT_BAD_PAYLOAD, describe(envelope.error), payload);
  const messageTime = parseTime(envelope.data.ts, options.zone);
  if (typeof messageTime === 'string') return refuseAll(ErrorCode.MQTT_BAD_TIME, `ts ${messageTime}`, payload);
  const messageId = envelope.data.id ?? null;

  const measurements: Measurement[] = [];
  const rejects: DeadLetterInput[] = [];
  const rows = envelope.data.readings;
  for (let i = 0; i < rows.length; i++) {
    const location = `readings[${i}]`;
    const parsed = MqttReading.safeParse(rows[i]);
    if (!parsed.success) {
      rejects.push(rejectRow(ErrorCode.MQTT_BAD_PAYLOAD, `${location}: ${describe(parsed.error)}`, location, messageId, rows[i]));
      continue;
    }
    const r = parsed.data;
    let time = messageTime;
    if (r.ts !== undefined) {
      const own = parseTime(r.ts, options.zone);
      if (typeof own === 'string') {
        rejects.push(rejectRow(ErrorCode.MQTT_BAD_TIME, `${location}.ts ${own}`, location, messageId, r));
        continue;
      }
      time = own;
    }
    const code = resolveCode(r.code, options.vendors);
    if (typeof code === 'string') {
      rejects.push(rejectRow(ErrorCode.MQTT_UNKNOWN_CODE, `${location}.code ${code}`, location, messageId, r));
      continue;
    }
    if (code === SKIP) continue;
    let flags = 0;
    if (r.status !== undefined) for (const s of typeof r.status === 'string' ? [r.status] : r.status) flags |= STATUS_FLAGS[s];
    let value = NaN;
    let text: string | null = null;
    if (typeof r.value === 'number') value = r.value;
    else if (typeof r.value === 'string') text = r.value;
    else flags |= Quality.INVALID;
    measurements.push(
      measurement({
        deviceId,
        code: code.code,
        system: code.system,
        refid: code.refid,
        value,
        text,
        unit: r.unit !== '' ? r.unit : code.unit,
        time: time.ms,
        tzOffset: time.offset,
        flags,
        containment: '',
        patient: null,
        location: null,
      }),
    );
  }
  return { measurements, rejects, messageId };
}

interface ResolvedCode {
  readonly code: string;
  readonly system: string;
  readonly refid: string;
  /** The unit the vendor table gives, used when the reading's unit is empty. */
  readonly unit: string;
}

const SKIP = Symbol('skip');
const MDC_REFID = /^MDC_[A-Z0-9_]{1,120}$/;
const VENDOR_CODE = /^([a-z0-9-]{1,40}):(.{1,80})$/;

/** The code as the normalizer wants it, SKIP for a vendor code deliberately dropped, or why not (text). */
function resolveCode(code: number | string, vendors: VendorLookup): ResolvedCode | typeof SKIP | string {
  if (typeof code === 'number') return { code: String(code), system: 'MDC', refid: '', unit: '' };
  if (/^\d{1,10}$/.test(code)) {
    const n = Number(code);
    if (n <= 0 || n > 0xffffffff) return 'is not a context-free MDC code';
    return { code: String(n), system: 'MDC', refid: '', unit: '' };
  }
  if (MDC_REFID.test(code)) return { code: '', system: 'MDC', refid: code, unit: '' };
  const vendor = VENDOR_CODE.exec(code);
  if (vendor === null) return 'is neither an MDC code (150456, MDC_PULS_OXIM_SAT_O2) nor <vendor>:<code>';
  const table = vendors(vendor[1]!);
  if (table === null) return `names vendor "${vendor[1]}", which has no table in mappings/vendors`;
  const row = table.byCode.get(vendor[2]!);
  // A code the table does not know is kept under the vendor's own system (the normalizer keeps
  // unknown codes too): losing a reading is worse than storing one nobody has mapped yet.
  if (row === undefined) return { code: vendor[2]!, system: vendor[1]!.toUpperCase(), refid: '', unit: '' };
  // Identity rows describe the device and `ignore` rows are reserved fields: not readings.
  if (row.kind === 'identity' || row.kind === 'ignore') return SKIP;
  if (row.mdc === null) return { code: row.code, system: vendor[1]!.toUpperCase(), refid: '', unit: row.unit };
  return { code: String(row.mdc.cf), system: 'MDC', refid: row.mdc.refid, unit: row.unit };
}

/** Epoch ms and UTC offset (minutes) of a payload time, or why it is refused (text). */
function parseTime(ts: number | string, zone: TimeZoneRule): { ms: number; offset: number } | string {
  let ms: number;
  let offset: number;
  if (typeof ts === 'number') {
    ms = ts;
    if (ms > 0 && ms < MIN_TIME_MS && ms * 1000 >= MIN_TIME_MS && ms * 1000 < MAX_TIME_MS) {
      return `${ts} is before 2000; epoch milliseconds are expected (this looks like seconds)`;
    }
    if (ms < MIN_TIME_MS || ms >= MAX_TIME_MS) return `${ts} is outside 2000–2099`;
    offset = zone.offsetAt(ms);
  } else {
    const m = ISO_TIME.exec(ts);
    if (m === null) return 'is not ISO-8601 with a UTC offset';
    const [, y, mo, d, h, mi, s, frac, tz] = m as unknown as [string, string, string, string, string, string, string | undefined, string | undefined, string];
    const month = Number(mo);
    const day = Number(d);
    const hour = Number(h);
    const minute = Number(mi);
    const second = s === undefined ? 0 : Number(s);
    // Date.UTC silently rolls 2026-02-30 into March: check the fields ourselves.
    if (month < 1 || month > 12 || day < 1 || day > daysIn(Number(y), month) || hour > 23 || minute > 59 || second > 59) {
      return `${ts} is not a calendar date and time`;
    }
    if (tz === 'Z') offset = 0;
    else {
      const digits = tz.replace(':', '');
      const oh = Number(digits.slice(1, 3));
      const om = Number(digits.slice(3, 5));
      if (oh > 14 || om > 59) return `${ts} has an impossible UTC offset`;
      offset = (tz[0] === '-' ? -1 : 1) * (oh * 60 + om);
    }
    const millis = frac === undefined ? 0 : Number(frac.slice(0, 3).padEnd(3, '0'));
    ms = Date.UTC(Number(y), month - 1, day, hour, minute, second, millis) - offset * 60_000;
    if (ms < MIN_TIME_MS || ms >= MAX_TIME_MS) return `${ts} is outside 2000–2099`;
  }
  return { ms, offset };
}

function daysIn(year: number, month: number): number {
  return new Date(Date.UTC(year, month, 0)).getUTCDate();
}

/** First few zod issues as `path: message`; zod leaves the input value out (no personal data). */
function describe(error: z.ZodError): string {
  return error.issues
    .slice(0, 3)
    .map((i) => `${i.path.length > 0 ? i.path.join('.') : '(body)'}: ${i.message}`)
    .join('; ')
    .slice(0, 500);
}

function head(payload: Uint8Array): Uint8Array {
  return payload.length <= DEAD_LETTER_HEAD_BYTES ? payload : payload.subarray(0, DEAD_LETTER_HEAD_BYTES);
}

function refuseAll(code: ErrorCode, reason: string, payload: Uint8Array): DecodedMessage {
  return { measurements: [], rejects: [{ code, reason, location: '', controlId: null, raw: head(payload) }], messageId: null };
}

function rejectRow(code: ErrorCode, reason: string, location: string, messageId: string | null, row: unknown): DeadLetterInput {
  let raw: Uint8Array;
  try {
    raw = Buffer.from(JSON.stringify(row) ?? 'undefined', 'utf8');
  } catch {
    raw = Buffer.from('(unserializable)', 'utf8');
  }
  return { code, reason, location, controlId: messageId, raw: head(raw) };
}
