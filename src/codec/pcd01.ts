/**
 * IHE PCD-01 "Communicate PCD Data" (ORU^R01) → Measurements, still in the device's vocabulary.
 * ORU^R40 (PCD-04 alarms) and ORU^R42 (PCD-10 infusion events) share the structure and are read
 * the same way. MSH-21 (profile) is informative only.
 *
 * The decoder never throws on bad input. A message it cannot understand at all gets `fatal`
 * (answer AE/AR with it); a row it cannot read becomes a rejected row with its problem while
 * the other rows stay good; oddities that do not lose data are warnings (`severity: 'W'`).
 * Problem messages name segments, fields and OBX-3 codes, never patient data or OBX-5 values.
 *
 * Hot path (bench/codec.bench.ts, results in bench/RESULTS.md): a monitor repeats its rows with
 * only OBX-1, the value and the time changing, so each OBX is first compared, eight bytes at a
 * time, with a cached row template (everything but OBX-1/5/14/18, with what it means: monitors
 * of one model, which differ in the OBX-18 device id only, share them); only a new row is
 * scanned field by field (four bytes at a time) and read. Numbers are parsed from the
 * bytes, OBX-14 is parsed once per distinct value in a message, strings come from caches, and
 * each row costs one Measurement object. The caches are keyed by exact bytes plus the message's
 * delimiters, bounded (about 2 MiB) and never change a result (tests decode with them cold and
 * warm).
 *
 * Spec: IHE PCD TF-2 (Rev. 9) §3.1 and Appendix B (OBX-3/4/6/18 in PCD messages), HL7 v2.6
 * chapter 7 (OBX), IEEE 11073-10101 (MDC codes), IEEE 11073-20601 §F.8 (FLOAT special values).
 */
import { Buffer } from 'node:buffer';
import { ErrorCode } from '../errors.js';
import { Quality, measurement, type Measurement, type PatientId } from '../model/measurement.js';
import {
  Hl7ErrorCondition,
  Hl7Message,
  Hl7Segment,
  ByteKeys,
  bytesEqual,
  viewOf,
  hl7Problem,
  parseNumber,
  type AckTarget,
  type Hl7ParseOptions,
  type Hl7Problem,
} from './hl7.js';
import {
  fixedOffset,
  hl7TimeHasOffset,
  parseHl7TimeBytes,
  zoneOffsets,
  type Hl7Time,
  type Hl7TimeOut,
  type TimeZoneRule,
  type ZoneOffsets,
} from './hl7-time.js';
import { readLocation, readPatient } from './hl7-patient.js';

/** Options for `decodePcd01`. */
export interface Pcd01Options {
  /** Zone for times sent without an offset: IANA name or `ZoneOffsets`. Default `Europe/Copenhagen`. */
  readonly timezone?: string | ZoneOffsets;
  /** Character set assumed when MSH-18 is empty (see `Hl7ParseOptions.defaultCharset`). */
  readonly defaultCharset?: string;
  /**
   * HL7 v2.6 2.A.22: a time without an offset is in "the local time zone of the sender". When
   * true (default) and MSH-7 carries an offset, the other times of the message without one take
   * MSH-7's offset; otherwise, and when false, they are read in `timezone`.
   */
  readonly senderOffset?: boolean;
}

/**
 * The MSH of a PCD-01 message. Also an `AckTarget`: pass it to `buildAck` (it holds copies, so
 * the frame buffer may be reused before the ACK is built).
 */
export interface Pcd01Header extends AckTarget {
  /** MSH-3 as text (`ACME_Gateway^080019FFFE3ED02D^EUI-64`); with MSH-4, the sender's identity. */
  readonly sendingApplication: string;
  /** MSH-4 as text. */
  readonly sendingFacility: string;
  /** PCD-01: the EUI-64 in MSH-3 (HD-2 with HD-3 `EUI-64`), upper case; `null` if none. */
  readonly eui64: string | null;
  /** MSH-7, `null` when empty or not a valid DTM (then there is a warning). */
  readonly messageTime: Hl7Time | null;
  /** MSH-9.1 (`ORU`). */
  readonly messageCode: string;
  /** MSH-9.3 (`ORU_R01`), `''` when not sent. */
  readonly messageStructure: string;
  /** MSH-10, decoded (a capture that wrapped it is joined). */
  readonly controlId: string;
  /** MSH-11.1: `P` production, `D` debugging, `T` training (Measurements get `DEMO`). */
  readonly processingId: string;
  /** MSH-12.1 (`2.6`). */
  readonly version: string;
  /** MSH-18 as sent (`8859/1`, `UNICODE UTF-8`); `''` when empty. */
  readonly charset: string;
  /** MSH-21.1 of the first repetition (`IHE_PCD_001`), informative only. */
  readonly profile: string;
  /** Device id for rows without OBX-18 or a containing device row: the EUI-64, else MSH-3.1, else MSH-4.1. */
  readonly defaultDevice: string;
}

/** An OBX row that could not become a Measurement. */
export interface RejectedRow {
  /** Which OBX of the message (1-based occurrence, the `n` in `OBX[n]`). */
  readonly obx: number;
  /** The segment's bytes as received (a copy; personal data possible: keep, never log). */
  readonly raw: Buffer;
  readonly problem: Hl7Problem;
}

/** What `decodePcd01` found. */
export interface Pcd01Result {
  /** The MSH, `null` when there is no usable MSH (then `fatal` is set). */
  readonly header: Pcd01Header | null;
  /** One per OBX row that carries a value, in message order. */
  readonly measurements: Measurement[];
  /** Per-row errors (also in `rejectedRows`) and warnings; `fatal` is not repeated here. */
  readonly problems: Hl7Problem[];
  readonly rejectedRows: RejectedRow[];
  /** Why the message as a whole cannot be used (no MSH, not an ORU, no OBX …), else `null`. */
  readonly fatal: Hl7Problem | null;
}

// PCD-01 message types (MSH-9.1^9.2): PCD-01, PCD-04 (alarms), PCD-10 (infusion events).
const SUPPORTED_TRIGGERS = new Set(['R01', 'R40', 'R42']);

// IEEE 11073-20601 §F.8: special values of the 24-bit-mantissa FLOAT, as sent in OBX-5.
const SPECIAL_VALUES: ReadonlyMap<number, string> = new Map([
  [8388607, 'NaN'],
  [8388608, 'NRes'],
  [8388606, '+INF'],
  [8388610, '-INF'],
  [8388609, 'reserved'],
]);
const SPECIAL_MIN = 8388606;
const SPECIAL_MAX = 8388610;

const enum ValueType {
  Empty,
  NM,
  SN,
  NA,
  Text,
}

// Device rows (MDS/VMD/CHAN) per message that can lend their OBX-18 to contained metrics. More
// are ignored: bounds the per-row prefix search.
const MAX_DEVICES = 256;

// Interpretations of row bytes, cached by those bytes: direct-mapped, 2048 entries of up to 128
// bytes each (256 KiB per cache); longer keys are simply not cached.
const CACHE_BITS = 11;
const CACHE_KEY_BYTES = 128;

// ---------------------------------------------------------------------------------------------
// Caches and scratch

/**
 * A direct-mapped cache from the exact bytes of a range (printable ASCII without the escape
 * character only, so the charset cannot matter) plus the message's delimiters to a value
 * derived from them. A miss costs the derivation and one key string. With `hashAll`, the slot
 * comes from every byte of the range instead of its ends (for keys that differ in the middle).
 */
class RangeCache<T> {
  private readonly keys: ByteKeys;
  private readonly values: (T | undefined)[];
  private slot = 0;

  constructor(
    bits: number = CACHE_BITS,
    private readonly hashAll = false,
  ) {
    this.keys = new ByteKeys(bits, CACHE_KEY_BYTES);
    this.values = new Array<T | undefined>(1 << bits).fill(undefined);
  }

  get(bytes: Uint8Array, view: DataView, s: number, e: number, sig: number): T | undefined {
    const slot = this.hashAll ? this.keys.wholeSlotOf(bytes, s, e, sig) : this.keys.slotOf(bytes, s, e, sig);
    this.slot = slot;
    return this.keys.matches(slot, bytes, view, bytes.byteOffset, s, e, sig) ? this.values[slot] : undefined;
  }

  /** Stores `value` for the range last passed to `get`, when its bytes are cacheable. */
  set(bytes: Uint8Array, s: number, e: number, sig: number, esc: number, value: T): void {
    if (!printable(bytes, s, e, esc)) return;
    if (this.keys.store(this.slot, bytes, s, e, sig)) this.values[this.slot] = value;
  }

  clear(): void {
    this.keys.clear();
    this.values.fill(undefined);
  }
}

/** What OBX-2..OBX-4 of a row say (cached by the bytes from OBX-2 to the end of OBX-4). */
interface RowHead {
  readonly valueType: ValueType;
  readonly code: string;
  readonly refid: string;
  readonly system: string;
  readonly containment: string;
  /** Offset of the trimmed OBX-4 from the start of OBX-2, and its length. */
  readonly pathOffset: number;
  readonly pathLength: number;
  /** Length of OBX-4 without trailing `.0` levels (the device-tree key of MDS/VMD/CHAN rows). */
  readonly deviceKeyLength: number;
  /** OBX-4 names an MDS/VMD/CHAN (`x.0.0.0`, `x.y.0.0`, `x.y.z.0`, or a single `x`). */
  readonly devicePath: boolean;
}

/** What OBX-6..OBX-13 of a row say (cached by those bytes). */
interface RowTail {
  readonly unit: string;
  /** Quality flags from OBX-8 and OBX-11. */
  readonly flags: number;
}

/** Where the parts of the OBX row being decoded are, and what its cached parts mean. */
interface RowParts {
  head: RowHead | null;
  /** Start of OBX-2 (containment offsets in `head` are relative to it). */
  hs: number;
  /** OBX-5 (first repetition and beyond), `[vs, ve)`. */
  vs: number;
  ve: number;
  unit: string;
  /** Quality flags from OBX-8 and OBX-11. */
  tailFlags: number;
  /** OBX-14, `[ts, te)`; empty when absent. */
  ts: number;
  te: number;
  /** OBX-14 has the same bytes as the last time parsed in this message. */
  timeSame: boolean;
  /** OBX-18 (first repetition and beyond), `[ds, de)`; empty when absent. */
  ds: number;
  de: number;
  /** From OBX-18 (EI-1, else EI-3), `''` when empty; null when not known yet (see `deviceOf`). */
  deviceId: string | null;
}

const rowParts: RowParts = { head: null, hs: 0, vs: 0, ve: 0, unit: '', tailFlags: 0, ts: 0, te: 0, timeSame: false, ds: 0, de: 0, deviceId: '' };

/**
 * What a row template stands for: everything in an OBX except OBX-1, OBX-5, OBX-14 and OBX-18.
 * OBX-18 names the device: a ward of monitors of one model sends the same rows with only the
 * EUI-64 differing, and they share one template per row. The template keeps the OBX-18 of the
 * row it was made from, which is usually the one that comes again.
 */
interface RowTemplate {
  readonly head: RowHead;
  readonly unit: string;
  readonly tailFlags: number;
  /** The row has an OBX-14 field (the template's bytes are split around it). */
  readonly hasTime: boolean;
  /** The row has an OBX-18 field (the bytes after OBX-14 are split around it). */
  readonly hasDevice: boolean;
  /** The device id read from the template's own OBX-18 bytes. */
  readonly deviceId: string;
}

/**
 * Which entry of a set-associative cache to replace: the least recently used one of its set
 * (never used or cleared entries first). A row whose tail changed (an OBX-8 flag that comes and
 * goes) thus gets a way of its own, and both variants stay. Uses are counted in a double: exact
 * far beyond any uptime.
 */
class LruWays {
  private readonly lastUse: Float64Array;
  private uses = 0;

  constructor(
    entries: number,
    private readonly ways: number,
  ) {
    this.lastUse = new Float64Array(entries);
  }

  /** Marks entry `k` as just used. */
  touch(k: number): void {
    this.lastUse[k] = ++this.uses;
  }

  /** The least recently used entry of `set` (entries `set × ways` to `set × ways + ways - 1`). */
  victim(set: number): number {
    const first = set * this.ways;
    let oldest = first;
    for (let k = first + 1; k < first + this.ways; k++) if (this.lastUse[k]! < this.lastUse[oldest]!) oldest = k;
    return oldest;
  }

  clear(): void {
    this.lastUse.fill(0);
  }
}

// Templates: 256 sets of 8 ways, up to 256 bytes each (512 KiB). A set is chosen by the first
// TEMPLATE_PROBE bytes of OBX-2.. (value type, start of the code), so one metric's rows from
// differently configured senders (other containment, unit, status) share a set: eight ways keep
// them from evicting each other.
const TEMPLATE_SET_BITS = 8;
const TEMPLATE_WAYS = 8;
const TEMPLATE_WIDTH = 256;
const TEMPLATE_PROBE = 12;

/**
 * Row templates: the bytes of an OBX from OBX-2 up to OBX-5 ("head"), from the end of OBX-5 up
 * to OBX-14 ("tail"), from the end of OBX-14 up to OBX-18 ("mid"), OBX-18 ("device") and from
 * the end of OBX-18 to the end of the segment ("rest"), with what they mean. A monitor repeats
 * its rows with only the value and the time changing, so a hit replaces the field scan, three
 * cache lookups and the search for the line end by a few comparisons, eight bytes at a time. A
 * row that differs in OBX-18 only still matches, with its device id left to the caller.
 */
class TemplateCache {
  private readonly slab = new Uint8Array((TEMPLATE_WAYS << TEMPLATE_SET_BITS) * TEMPLATE_WIDTH);
  private readonly slabView = viewOf(this.slab);
  private readonly headLength = new Int32Array(TEMPLATE_WAYS << TEMPLATE_SET_BITS).fill(-1);
  private readonly tailLength = new Int32Array(TEMPLATE_WAYS << TEMPLATE_SET_BITS);
  private readonly midLength = new Int32Array(TEMPLATE_WAYS << TEMPLATE_SET_BITS);
  private readonly deviceLength = new Int32Array(TEMPLATE_WAYS << TEMPLATE_SET_BITS);
  private readonly restLength = new Int32Array(TEMPLATE_WAYS << TEMPLATE_SET_BITS);
  private readonly sigs = new Int32Array(TEMPLATE_WAYS << TEMPLATE_SET_BITS);
  private readonly values: (RowTemplate | undefined)[] = new Array<RowTemplate | undefined>(TEMPLATE_WAYS << TEMPLATE_SET_BITS).fill(undefined);
  private readonly lru = new LruWays(TEMPLATE_WAYS << TEMPLATE_SET_BITS, TEMPLATE_WAYS);
  // Per entry: the entry of the row that came next last time (-1: unknown).
  private readonly following = new Int32Array(TEMPLATE_WAYS << TEMPLATE_SET_BITS).fill(-1);
  /** The entry of the last successful `match`, or of the last `store` (-1: none). */
  hit = -1;

  /**
   * Looks up the row whose OBX-2 starts at `hs`. On a hit fills `row`, sets `hit` to the entry
   * and returns where the row ends by the template; -1 on a miss. `hint` is an entry to try
   * first (the one that followed the previous row last time; rows come in the same order
   * message after message), -1 for none. `bound` limits the comparison: the segment end when it
   * is known, else the message end (the caller then checks the row really ends there). The
   * parts not compared (OBX-5, OBX-14, OBX-18) are scanned up to a separator or a line break, so
   * a hit never spans a CR or LF.
   */
  match(
    bytes: Uint8Array,
    view: DataView,
    at: number,
    hs: number,
    bound: number,
    sig: number,
    fs: number,
    timeStart: number,
    timeLength: number,
    row: RowParts,
    hint: number,
  ): number {
    if (hint >= 0) {
      const end = this.tryEntry(hint, bytes, view, at, hs, bound, sig, fs, timeStart, timeLength, row);
      if (end >= 0) {
        this.use(hint);
        return end;
      }
    }
    const set = this.setOf(view, at + hs, sig);
    for (let w = 0; w < TEMPLATE_WAYS; w++) {
      const k = set * TEMPLATE_WAYS + w;
      if (k === hint) continue;
      const end = this.tryEntry(k, bytes, view, at, hs, bound, sig, fs, timeStart, timeLength, row);
      if (end >= 0) {
        this.use(k);
        return end;
      }
    }
    this.hit = -1;
    return -1;
  }

  /** The entry of the row that followed entry `k` last time, or -1. */
  nextOf(k: number): number {
    return this.following[k]!;
  }

  /** Remembers that entry `next` followed entry `k`. */
  setNext(k: number, next: number): void {
    this.following[k] = next;
  }

  private tryEntry(
    k: number,
    bytes: Uint8Array,
    view: DataView,
    at: number,
    hs: number,
    bound: number,
    sig: number,
    fs: number,
    timeStart: number,
    timeLength: number,
    row: RowParts,
  ): number {
    const lh = this.headLength[k]!;
    if (lh < 0 || this.sigs[k] !== sig || hs + lh > bound) return -1;
    const base = k * TEMPLATE_WIDTH;
    if (!this.equal(base, view, at, hs, lh)) return -1;
    const vs = hs + lh;
    const ve = fieldEnd(bytes, vs, bound, fs);
    const lt = this.tailLength[k]!;
    if (ve + lt > bound || !this.equal(base + lh, view, at, ve, lt)) return -1;
    const t = this.values[k]!;
    let ts = ve + lt;
    let te = ts;
    let rowEnd = ts;
    let timeSame = false;
    if (t.hasTime) {
      // Usually the same time as the previous row: try its bytes before scanning.
      te = ts + timeLength;
      timeSame =
        timeStart >= 0 &&
        te <= bound &&
        (te === bound || bytes[te] === fs || bytes[te] === 0x0d || bytes[te] === 0x0a) &&
        sameBytes(bytes, view, at, timeStart, ts, timeLength, timeLength);
      if (!timeSame) te = fieldEnd(bytes, ts, bound, fs);
      const lm = this.midLength[k]!;
      if (te + lm > bound || !this.equal(base + lh + lt, view, at, te, lm)) return -1;
      rowEnd = te + lm;
    } else {
      // No OBX-14: the time range is empty (at the row end).
      ts = te = rowEnd;
    }
    if (t.hasDevice) {
      rowEnd = this.matchDevice(k, base + lh + lt + this.midLength[k]!, bytes, view, at, rowEnd, bound, fs, t, row);
      if (rowEnd < 0) return -1;
    } else {
      row.ds = row.de = rowEnd;
      row.deviceId = '';
    }
    row.head = t.head;
    row.hs = hs;
    row.vs = vs;
    row.ve = ve;
    row.unit = t.unit;
    row.tailFlags = t.tailFlags;
    row.ts = ts;
    row.te = te;
    row.timeSame = timeSame;
    return rowEnd;
  }

  // OBX-18 starting at ds and the rest of the row, against entry k's (its bytes at slab offset
  // dp): fills row.ds, row.de and row.deviceId (null for another device than the template's)
  // and returns where the row ends, or -1.
  private matchDevice(
    k: number,
    dp: number,
    bytes: Uint8Array,
    view: DataView,
    at: number,
    ds: number,
    bound: number,
    fs: number,
    t: RowTemplate,
    row: RowParts,
  ): number {
    // Usually the device of the template's own row: try its bytes before scanning.
    const ld = this.deviceLength[k]!;
    let de = ds + ld;
    if (de <= bound && (de === bound || bytes[de] === fs || bytes[de] === 0x0d || bytes[de] === 0x0a) && this.equal(dp, view, at, ds, ld)) {
      row.deviceId = t.deviceId;
    } else {
      de = fieldEnd(bytes, ds, bound, fs);
      row.deviceId = null;
    }
    const lr = this.restLength[k]!;
    if (de + lr > bound || !this.equal(dp + ld, view, at, de, lr)) return -1;
    row.ds = ds;
    row.de = de;
    return de + lr;
  }

  /**
   * Caches the row read by the slow path, its parts located in `row` and ending at `e0` (only
   * printable ASCII without the escape byte).
   */
  store(bytes: Uint8Array, view: DataView, at: number, row: RowParts, e0: number, sig: number, esc: number, value: RowTemplate): void {
    const { hs, vs, ve, te, ds, de } = row;
    const lh = vs - hs;
    const lt = (value.hasTime ? row.ts : e0) - ve;
    const lm = value.hasTime ? (value.hasDevice ? ds : e0) - te : 0;
    const ld = value.hasDevice ? de - ds : 0;
    const lr = value.hasDevice ? e0 - de : 0;
    this.hit = -1;
    if (lh < TEMPLATE_PROBE || lh + lt + lm + ld + lr > TEMPLATE_WIDTH) return;
    const parts = printable(bytes, hs, vs, esc) && printable(bytes, ve, ve + lt, esc) && printable(bytes, te, te + lm, esc);
    if (!parts || !printable(bytes, ds, ds + ld + lr, esc)) return;
    const set = this.setOf(view, at + hs, sig);
    const k = this.lru.victim(set);
    const base = k * TEMPLATE_WIDTH;
    this.slab.set(bytes.subarray(hs, vs), base);
    this.slab.set(bytes.subarray(ve, ve + lt), base + lh);
    this.slab.set(bytes.subarray(te, te + lm), base + lh + lt);
    this.slab.set(bytes.subarray(ds, ds + ld + lr), base + lh + lt + lm);
    this.headLength[k] = lh;
    this.tailLength[k] = lt;
    this.midLength[k] = lm;
    this.deviceLength[k] = ld;
    this.restLength[k] = lr;
    this.sigs[k] = sig;
    this.values[k] = value;
    this.following[k] = -1;
    this.use(k);
  }

  private use(k: number): void {
    this.hit = k;
    this.lru.touch(k);
  }

  clear(): void {
    this.headLength.fill(-1);
    this.values.fill(undefined);
    this.following.fill(-1);
    this.lru.clear();
  }

  // slab[base, base + n) equals bytes[s, s + n) (`view` reads bytes[i] at at + i).
  private equal(base: number, view: DataView, at: number, s: number, n: number): boolean {
    return slabEquals(this.slabView, base, view, at + s, n);
  }

  // The set of the row whose OBX-2 starts at hs: a hash of its first TEMPLATE_PROBE (12) bytes.
  private setOf(view: DataView, o: number, sig: number): number {
    let h = Math.imul(view.getInt32(o, true) ^ sig, 0x9e3779b1);
    h = Math.imul(h ^ view.getInt32(o + 4, true), 0x85ebca6b);
    h = Math.imul(h ^ view.getInt32(o + 8, true), 0xc2b2ae35);
    return (h ^ (h >>> 16)) & ((1 << TEMPLATE_SET_BITS) - 1);
  }
}

// slab[base, base + n) equals the message bytes at view offset o, eight bytes at a time; the
// last word overlaps the one before instead of a byte loop. Comparing the words as float64 is
// exact here: slab bytes (templates) are printable ASCII (0x20–0x7e), so a slab word is never
// NaN (exponent bits all ones needs a 0x7f/0xff byte) nor ±0, and two doubles that are neither
// are === only when their bits are equal.
function slabEquals(slab: DataView, base: number, view: DataView, o: number, n: number): boolean {
  if (n >= 8) {
    const lastWord = n - 8;
    for (let i = 0; i < lastWord; i += 8) if (slab.getFloat64(base + i, true) !== view.getFloat64(o + i, true)) return false;
    return slab.getFloat64(base + lastWord, true) === view.getFloat64(o + lastWord, true);
  }
  if (n >= 4) {
    return slab.getInt32(base, true) === view.getInt32(o, true) && slab.getInt32(base + n - 4, true) === view.getInt32(o + n - 4, true);
  }
  for (let i = 0; i < n; i++) if (slab.getUint8(base + i) !== view.getUint8(o + i)) return false;
  return true;
}

function printable(bytes: Uint8Array, s: number, e: number, esc: number): boolean {
  for (let i = s; i < e; i++) {
    const c = bytes[i]!;
    if (c < 0x20 || c > 0x7e || c === esc) return false;
  }
  return true;
}

// Where the field starting at p ends: at the next separator or line break, else at `bound`.
function fieldEnd(bytes: Uint8Array, p: number, bound: number, fs: number): number {
  while (p < bound) {
    const c = bytes[p];
    if (c === fs || c === 0x0d || c === 0x0a) break;
    p++;
  }
  return p;
}

const templates = new TemplateCache();
const headCache = new RangeCache<RowHead>();
// PV1-3 (ward/room/bed: not personal data) → location.
const locationCache = new RangeCache<{ readonly location: string | null }>(10);
const tailCache = new RangeCache<RowTail>();
// OBX-18 → device id. EUI-64s of one vendor differ in the middle only.
const deviceCache = new RangeCache<string>(CACHE_BITS, true);
// The last OBX-18 read, in any message (its bytes, cacheable like deviceCache's), and its id.
const lastDevice = new ByteKeys(0, CACHE_KEY_BYTES);
let lastDeviceId = '';

// Per-call scratch (the decoder is synchronous and never re-entered).
const rowSegment = new Hl7Segment();
const timeOut: Hl7TimeOut = { ms: 0, tzOffset: 0 };
const devStarts: number[] = [];
const devEnds: number[] = [];
const devIds: string[] = [];
// OBX field offsets: fieldStart[n] is where OBX-n starts; fields past OBX-18 are not needed.
const LAST_FIELD = 18;
const fieldStart = new Int32Array(LAST_FIELD + 2);

/** MSH-3/MSH-4 as the header and the device fallback use them (cached by the bytes of MSH-3..4). */
interface SenderPart {
  readonly rawSendingApplication: string;
  readonly rawSendingFacility: string;
  readonly sendingApplication: string;
  readonly sendingFacility: string;
  readonly eui64: string | null;
  /** Device id for rows without OBX-18: the EUI-64, else MSH-3.1, else MSH-4.1. */
  readonly defaultDevice: string;
}

/** MSH-11 to the end of MSH (cached by those bytes; MSH-18 is inside, so the charset is too). */
interface TrailerPart {
  readonly rawProcessingId: string;
  readonly rawVersion: string;
  readonly rawCharset: string;
  readonly processingId: string;
  readonly version: string;
  readonly profile: string;
  /** MSH-18 as `Hl7Message.charsetName` reads it. */
  readonly charsetName: string;
}

/** MSH-9 (cached by its bytes). */
interface TypePart {
  readonly messageCode: string;
  readonly trigger: string;
  readonly messageStructure: string;
}

/** What the constant part of an MSH (all but MSH-7 and MSH-10) means. */
interface HeaderParts {
  readonly sender: SenderPart;
  readonly type: TypePart;
  readonly trailer: TrailerPart;
}

// Header templates: 128 sets of 8 ways, up to 512 bytes each (512 KiB). A set is chosen by all
// of MSH-3, which in PCD-01 names the sending device by its EUI-64: a ward of monitors has as
// many headers as monitors, alike up to the EUI-64.
const HEADER_SET_BITS = 7;
const HEADER_WAYS = 8;
const HEADER_WIDTH = 512;

/**
 * MSH templates: the bytes from MSH-3 to MSH-7, from MSH-7 to MSH-10 and from MSH-10 to the end
 * of MSH, with what they mean. Consecutive messages of a sender differ in MSH-7 and MSH-10 only.
 */
class HeaderTemplates {
  private readonly slab = new Uint8Array((HEADER_WAYS << HEADER_SET_BITS) * HEADER_WIDTH);
  private readonly slabView = viewOf(this.slab);
  // Per entry: lengths of the three parts (-1: empty entry).
  private readonly lengths = new Int32Array(3 * (HEADER_WAYS << HEADER_SET_BITS)).fill(-1);
  private readonly sigs = new Int32Array(HEADER_WAYS << HEADER_SET_BITS);
  private readonly values: (HeaderParts | undefined)[] = new Array<HeaderParts | undefined>(HEADER_WAYS << HEADER_SET_BITS).fill(undefined);
  private readonly lru = new LruWays(HEADER_WAYS << HEADER_SET_BITS, HEADER_WAYS);

  /**
   * The parts of the MSH whose MSH-3 starts at `a0` and that ends at `end`, when a template
   * matches; `ranges` then holds MSH-7 and MSH-10 as [start7, end7, start10, end10].
   */
  match(bytes: Uint8Array, view: DataView, at: number, a0: number, end: number, sig: number, fs: number, ranges: Int32Array): HeaderParts | undefined {
    const first = this.setOf(bytes, a0, end, sig, fs) * HEADER_WAYS;
    for (let k = first; k < first + HEADER_WAYS; k++) {
      if (this.matches(k, bytes, view, at, a0, end, sig, fs, ranges)) {
        this.lru.touch(k);
        return this.values[k];
      }
    }
    return undefined;
  }

  /** Caches the MSH read by the slow path (only printable ASCII without the escape byte). */
  store(bytes: Uint8Array, a0: number, ranges: Int32Array, end: number, sig: number, fs: number, esc: number, value: HeaderParts): void {
    const s7 = ranges[0]!;
    const e7 = ranges[1]!;
    const s10 = ranges[2]!;
    const e10 = ranges[3]!;
    const la = s7 - a0;
    const lb = s10 - e7;
    const lc = end - e10;
    if (la + lb + lc > HEADER_WIDTH) return;
    if (!printable(bytes, a0, s7, esc) || !printable(bytes, e7, s10, esc) || !printable(bytes, e10, end, esc)) return;
    const k = this.lru.victim(this.setOf(bytes, a0, end, sig, fs));
    const base = k * HEADER_WIDTH;
    this.slab.set(bytes.subarray(a0, s7), base);
    this.slab.set(bytes.subarray(e7, s10), base + la);
    this.slab.set(bytes.subarray(e10, end), base + la + lb);
    this.lengths[3 * k] = la;
    this.lengths[3 * k + 1] = lb;
    this.lengths[3 * k + 2] = lc;
    this.sigs[k] = sig;
    this.values[k] = value;
    this.lru.touch(k);
  }

  clear(): void {
    this.lengths.fill(-1);
    this.values.fill(undefined);
    this.lru.clear();
  }

  // Entry k holds the MSH at a0..end (all but MSH-7 and MSH-10, whose ranges go to `ranges`).
  private matches(k: number, bytes: Uint8Array, view: DataView, at: number, a0: number, end: number, sig: number, fs: number, ranges: Int32Array): boolean {
    const la = this.lengths[3 * k]!;
    if (la < 0 || this.sigs[k] !== sig || a0 + la > end) return false;
    const base = k * HEADER_WIDTH;
    if (!this.equal(base, view, at + a0, la)) return false;
    const s7 = a0 + la;
    let e7 = s7;
    while (e7 < end && bytes[e7] !== fs) e7++;
    const lb = this.lengths[3 * k + 1]!;
    if (e7 + lb > end || !this.equal(base + la, view, at + e7, lb)) return false;
    const s10 = e7 + lb;
    let e10 = s10;
    while (e10 < end && bytes[e10] !== fs) e10++;
    const lc = this.lengths[3 * k + 2]!;
    if (e10 + lc !== end || !this.equal(base + la + lb, view, at + e10, lc)) return false;
    ranges[0] = s7;
    ranges[1] = e7;
    ranges[2] = s10;
    ranges[3] = e10;
    return true;
  }

  // The set of the MSH whose MSH-3 starts at a0: a hash of every byte of MSH-3.
  private setOf(bytes: Uint8Array, a0: number, end: number, sig: number, fs: number): number {
    let h = Math.imul(sig, 0x9e3779b1);
    for (let i = a0; i < end && bytes[i] !== fs; i++) h = Math.imul(h ^ bytes[i]!, 0x01000193);
    return (h ^ (h >>> 16)) & ((1 << HEADER_SET_BITS) - 1);
  }

  // slab[base, base + n) equals the message bytes at view offset o.
  private equal(base: number, view: DataView, o: number, n: number): boolean {
    return slabEquals(this.slabView, base, view, o, n);
  }
}

const headerTemplates = new HeaderTemplates();
// MSH-7 and MSH-10 of the header just read: [start7, end7, start10, end10].
const mshRanges = new Int32Array(4);
// MSH-7.1 of the header just read: [start, end).
const mshTime = new Int32Array(2);

// ---------------------------------------------------------------------------------------------
// Decoding

/**
 * Drops the decoder's caches (row templates and the interpretations of repeated field bytes).
 * Decoding is correct without them, only slower until they refill. For tests; the caches are
 * bounded (about 2 MiB of slabs, allocated once) and need no clearing in production.
 */
export function clearPcd01Caches(): void {
  templates.clear();
  headCache.clear();
  tailCache.clear();
  deviceCache.clear();
  lastDevice.clear();
  locationCache.clear();
  headerTemplates.clear();
}

function resolveZone(tz: string | ZoneOffsets | undefined): ZoneOffsets {
  if (tz === undefined) return zoneOffsets();
  return typeof tz === 'string' ? zoneOffsets(tz) : tz;
}

/**
 * Decodes one PCD-01 (or PCD-04/PCD-10) message from its bytes. See `decodePcd01Message`.
 * Never throws: an unreadable message comes back with `fatal`.
 */
export function decodePcd01(bytes: Uint8Array, options?: Pcd01Options): Pcd01Result {
  const parseOptions: Hl7ParseOptions | undefined =
    options?.defaultCharset === undefined ? undefined : { defaultCharset: options.defaultCharset };
  return decodePcd01Message(Hl7Message.parse(bytes, 0, bytes.length, parseOptions), options);
}

/**
 * Decodes a message already read with `Hl7Message.parse`.
 *
 * Per OBX row: OBX-3 `code^refid^system` (code kept as sent, refid carried for the pipeline's
 * cross-check), OBX-4 containment, OBX-5 by OBX-2 (NM → number; SN with only a number → number;
 * NA and text types → `text`), OBX-6 unit (UCUM when given, else the MDC refid, else the text),
 * OBX-8/OBX-11 → quality flags, time OBX-14 → OBR-7 → MSH-7, device OBX-18 → containing
 * MDS/VMD/CHAN row's OBX-18 → MSH-3 EUI-64 → MSH-3 → MSH-4. Rows without a value (device
 * description rows) are neither Measurements nor problems. PID-3 gives the patient (CPR when
 * marked as such), PV1-3 the location.
 */
export function decodePcd01Message(msg: Hl7Message, options?: Pcd01Options): Pcd01Result {
  if (msg.fatal !== null) {
    return { header: null, measurements: [], problems: msg.warnings.slice(), rejectedRows: [], fatal: msg.fatal };
  }
  const problems: Hl7Problem[] = [];
  const configured = resolveZone(options?.timezone);
  const msh = msg.header!;
  const header = readHeader(msg, msh, configured, problems);
  const fatal = checkType(header);
  if (fatal !== null) return done(msg, header, [], problems, [], fatal);
  // HL7 v2.6 2.A.22: times without an offset are the sender's local time; MSH-7's offset, when
  // stated, is the best evidence of it.
  const zone: TimeZoneRule =
    options?.senderOffset !== false && header.messageTime !== null && hl7TimeHasOffset(msg.bytes, mshTime[0]!, mshTime[1]!)
      ? fixedOffset(header.messageTime.tzOffset)
      : configured;

  const d = new MessageDecoder(msg, header, zone, problems);
  const bytes = msg.bytes;
  const fs = msg.fs;
  // Segments are indexed as the loop reaches them; an OBX that matches a row template is indexed
  // where the template says it ends, without searching for its line end.
  for (let i = 1; ; i++) {
    let s0: number;
    if (i < msg.indexedSegmentCount) {
      s0 = msg.segmentStart(i);
    } else {
      s0 = msg.nextSegmentStart;
      if (s0 < 0) break;
      if (bytes[s0] === 0x4f && bytes[s0 + 1] === 0x42 && bytes[s0 + 2] === 0x58 && bytes[s0 + 3] === fs && d.predictObx(i, s0)) continue;
      if (!msg.indexNextSegment()) break;
      s0 = msg.segmentStart(i);
    }
    const b0 = bytes[s0];
    const b1 = bytes[s0 + 1];
    const b2 = bytes[s0 + 2];
    if (b0 === 0x4f && b1 === 0x42 && b2 === 0x58) d.obx(i, s0, msg.segmentEnd(i));
    else if (b0 === 0x4f && b1 === 0x42 && b2 === 0x52) d.obr(i);
    else if (b0 === 0x50 && b1 === 0x49 && b2 === 0x44) d.pid(i);
    else if (b0 === 0x50 && b1 === 0x56 && b2 === 0x31) d.pv1(i);
  }
  d.finish();
  if (d.obxCount === 0) {
    return done(
      msg,
      header,
      d.measurements,
      problems,
      d.rejectedRows,
      hl7Problem(ErrorCode.HL7_MISSING_SEGMENT, Hl7ErrorCondition.SEGMENT_SEQUENCE_ERROR, 'OBX', 'the message has no OBX segment: no observations to store'),
    );
  }
  return done(msg, header, d.measurements, problems, d.rejectedRows, null);
}

/** The state of decoding one message: the current patient, location, OBR time and device tree. */
class MessageDecoder {
  readonly measurements: Measurement[] = [];
  readonly rejectedRows: RejectedRow[] = [];
  obxCount = 0;

  private readonly bytes: Buffer;
  private readonly view: DataView;
  private readonly at: number;
  private readonly fs: number;
  private readonly cs: number;
  private readonly rs: number;
  private readonly ss: number;
  private readonly esc: number;
  private readonly sig: number;
  private readonly fsWord: number;
  private readonly baseFlags: number;
  private readonly defaultDevice: string;
  private readonly mshTime: Hl7Time | null;
  // MSH-7's bytes: an OBR-7 equal to them needs no second parse.
  private readonly mshTimeStart: number;
  private readonly mshTimeEnd: number;
  private readonly seg = rowSegment;
  private patient: PatientId | null = null;
  private location: string | null = null;
  private groupTime: Hl7Time | null;
  private seenObr = false;
  private devices = 0;
  // One-entry cache of the last OBX-14 field (bytes in this message) and its meaning.
  private lastTimeStart = -1;
  private lastTimeLength = 0;
  private lastTimeMs = 0;
  private lastTimeTz = 0;
  // Template entry of the previous OBX of this message (-1: none), to predict the next one.
  private prevTemplate = -1;

  constructor(
    private readonly msg: Hl7Message,
    header: Pcd01Header,
    private readonly zone: TimeZoneRule,
    private readonly problems: Hl7Problem[],
  ) {
    this.bytes = msg.bytes;
    this.view = msg.view;
    this.at = msg.viewOffset;
    this.fs = msg.fs;
    this.cs = msg.cs;
    this.rs = msg.rs;
    this.ss = msg.ss;
    this.esc = msg.es;
    this.sig = signature(msg);
    this.fsWord = Math.imul(msg.fs, 0x01010101);
    // HL7 v2.6 2.14.9.11 MSH-11 "T" (training): never chart.
    this.baseFlags = header.processingId === 'T' ? Quality.DEMO : 0;
    this.defaultDevice = header.defaultDevice;
    this.mshTime = header.messageTime;
    this.groupTime = header.messageTime;
    this.mshTimeStart = mshTime[0]!;
    this.mshTimeEnd = mshTime[1]!;
    // Senders usually stamp their rows with the message time: MSH-7 is the first entry of the
    // OBX-14 cache, so such a row needs no parse. MSH-7 was read in the configured zone; equal
    // bytes still mean the same instant in `zone`, which differs only by MSH-7's own offset.
    if (header.messageTime !== null && printable(this.bytes, this.mshTimeStart, this.mshTimeEnd, -1)) {
      this.lastTimeStart = this.mshTimeStart;
      this.lastTimeLength = this.mshTimeEnd - this.mshTimeStart;
      this.lastTimeMs = header.messageTime.ms;
      this.lastTimeTz = header.messageTime.tzOffset;
    }
  }

  /** Clears the module-level device scratch (it may hold ids of this message). */
  finish(): void {
    for (let d = 0; d < this.devices; d++) devIds[d] = '';
  }

  /** OBR: OBR-7 (observation date/time) is the time of the OBX rows that follow. */
  obr(i: number): void {
    this.seenObr = true;
    this.groupTime = this.mshTime;
    const seg = this.msg.segment(i, this.seg)!;
    if (seg.locate(7, 1, 1, 1) && seg.leafEnd > seg.leafStart) {
      const s = seg.leafStart;
      const e = seg.leafEnd;
      const n = this.mshTimeEnd - this.mshTimeStart;
      if (this.mshTime !== null && sameBytes(this.bytes, this.view, this.at, this.mshTimeStart, s, n, e - s)) return;
      if (parseTime(this.msg, s, e, seg.wasContinued, this.zone)) {
        this.groupTime = { ms: timeOut.ms, tzOffset: timeOut.tzOffset };
      } else {
        this.problems.push(
          hl7Problem(ErrorCode.HL7_BAD_TIME, Hl7ErrorCondition.DATA_TYPE_ERROR, 'OBR-7', 'OBR-7 is not a valid HL7 date/time; MSH-7 used instead', 'W'),
        );
      }
    }
  }

  /** PID: a new patient group (ORU_R01 PATIENT_RESULT repeats). */
  pid(i: number): void {
    this.patient = readPatient(this.msg, this.msg.segment(i, this.seg)!, this.problems);
    this.location = null;
  }

  pv1(i: number): void {
    const seg = this.msg.segment(i, this.seg)!;
    if (!seg.fieldRange(3)) {
      this.location = null;
      return;
    }
    const s = seg.leafStart;
    const e = seg.leafEnd;
    const cached = locationCache.get(this.bytes, this.view, s, e, this.sig);
    if (cached !== undefined) {
      this.location = cached.location;
      return;
    }
    const location = readLocation(seg);
    locationCache.set(this.bytes, s, e, this.sig, this.esc, { location });
    this.location = location;
  }

  /** OBX segment i, bytes [s0, e0) (already indexed). */
  obx(i: number, s0: number, e0: number): void {
    const row = rowParts;
    if (this.matchTemplate(s0, e0, row) === e0) this.follow(templates.hit);
    else this.scanRow(i, s0, e0, row);
    this.row(i, row);
  }

  /**
   * The OBX starting at s0 that is not indexed yet: when it matches a template and ends where
   * the template says, it is indexed as segment i and decoded without searching its end.
   */
  predictObx(i: number, s0: number): boolean {
    const row = rowParts;
    const end = this.matchTemplate(s0, this.msg.end, row);
    if (end < 0 || !this.msg.tryIndexSegment(s0, end)) return false;
    this.follow(templates.hit);
    this.row(i, row);
    return true;
  }

  /** One OBX row, its parts located in `row` → a Measurement, a rejected row, or nothing. */
  private row(i: number, row: RowParts): void {
    const bytes = this.bytes;
    const obx = ++this.obxCount;
    if (!this.seenObr && obx === 1) {
      this.problems.push(
        hl7Problem(ErrorCode.HL7_BAD_SEGMENT, '100', 'OBX[1]', 'OBX before any OBR (ORU_R01 expects OBR first); MSH-7 used as its time', 'W'),
      );
    }
    const head = row.head!;
    const hs = row.hs;
    const vs = row.vs;
    const ve = row.ve;

    // Rows without a value describe the device tree (MDS/VMD/CHAN): nothing to store, but their
    // OBX-18 names the device of the rows they contain.
    const hasValue = !isNull(bytes, vs, ve);
    const equipment = row.deviceId ?? this.deviceOf(i, row.ds, row.de);
    if (!hasValue || head.devicePath) {
      if (head.pathLength > 0 && this.devices < MAX_DEVICES && equipment !== '') {
        const d = this.devices++;
        devStarts[d] = hs + head.pathOffset;
        devEnds[d] = hs + head.pathOffset + head.deviceKeyLength;
        devIds[d] = equipment;
      }
      if (!hasValue) return;
    }
    const code = head.code;
    const refid = head.refid;
    const system = head.system;
    if (code === '' && refid === '') {
      this.reject(
        i,
        obx,
        hl7Problem(
          ErrorCode.HL7_MISSING_FIELD,
          Hl7ErrorCondition.REQUIRED_FIELD_MISSING,
          `OBX[${obx}]-3`,
          `OBX[${obx}]-3 (observation identifier) is empty; the row carries a value nobody can name`,
        ),
      );
      return;
    }

    // OBX-5 by OBX-2.
    let value = Number.NaN;
    let text: string | null = null;
    const vt = head.valueType;
    if (vt === ValueType.NM || vt === ValueType.Empty) {
      value = parseNumber(bytes, vs, ve);
      // An NM field with components or repetitions: its value is the first one.
      let v1 = ve;
      if (value !== value && vt === ValueType.NM) {
        const cs = this.cs;
        const rs = this.rs;
        const ss = this.ss;
        v1 = vs;
        while (v1 < ve) {
          const c = bytes[v1];
          if (c === cs || c === rs || c === ss) break;
          v1++;
        }
        if (v1 < ve) value = parseNumber(bytes, vs, v1);
      }
      if (value !== value && this.msg.segmentContinued(i)) value = numberOfText(this.msg.text(vs, v1));
      if (value !== value) {
        if (vt === ValueType.NM) {
          this.reject(
            i,
            obx,
            hl7Problem(
              ErrorCode.HL7_BAD_VALUE,
              Hl7ErrorCondition.DATA_TYPE_ERROR,
              `OBX[${obx}]-5`,
              `OBX[${obx}]-5 is not a number although OBX-2 is NM (OBX-3 ${describeCode(code, refid, system)})`,
            ),
          );
          return;
        }
        text = this.valueText(vs, ve);
      }
    } else if (vt === ValueType.SN) {
      // SN: comparator ^ num1 ^ separator/suffix ^ num2; a plain "=n" / "n" is a number.
      const seg = this.msg.segment(i, this.seg)!;
      const comparator = seg.get(5, 1).trim();
      value = comparator === '' || comparator === '=' ? seg.number(5, 2) : Number.NaN;
      if (seg.has(5, 3) || seg.has(5, 4) || value !== value) {
        value = Number.NaN;
        text = repetitionText(this.msg, seg);
      }
    } else {
      // NA arrays, ST/TX/FT, CWE/CE/CNE, DTM …: kept as text.
      text = this.valueText(vs, ve);
    }
    let flags = this.baseFlags | row.tailFlags;
    if (value >= SPECIAL_MIN && value <= SPECIAL_MAX) {
      // IEEE 11073-20601 §F.8: NaN/NRes/±INF sent as numbers are not measurements.
      const special = SPECIAL_VALUES.get(value);
      if (special !== undefined) {
        value = Number.NaN;
        text = special;
        flags |= Quality.INVALID;
      }
    }

    // OBX-14 observation time, else OBR-7, else MSH-7.
    let time = Number.NaN;
    let tzOffset = 0;
    const ts = row.ts;
    const te = row.te;
    if (te > ts) {
      if (row.timeSame || (this.lastTimeStart >= 0 && sameBytes(bytes, this.view, this.at, this.lastTimeStart, ts, this.lastTimeLength, te - ts))) {
        time = this.lastTimeMs;
        tzOffset = this.lastTimeTz;
      } else {
        // TS/DTM: the time is component 1 (v2.5 TS-2 "degree of precision" is ignored).
        let t1 = ts;
        while (t1 < te) {
          const c = bytes[t1];
          if (c === this.cs || c === this.rs) break;
          t1++;
        }
        if (t1 === ts) {
          // An empty first component: no time in this row.
        } else if (parseTime(this.msg, ts, t1, this.msg.segmentContinued(i), this.zone)) {
          time = this.lastTimeMs = timeOut.ms;
          tzOffset = this.lastTimeTz = timeOut.tzOffset;
          // Remembered for the next rows only when printable (what sameBytes relies on).
          const keep = printable(bytes, ts, te, -1);
          this.lastTimeStart = keep ? ts : -1;
          this.lastTimeLength = keep ? te - ts : 0;
        } else {
          this.problems.push(
            hl7Problem(
              ErrorCode.HL7_BAD_TIME,
              Hl7ErrorCondition.DATA_TYPE_ERROR,
              `OBX[${obx}]-14`,
              `OBX[${obx}]-14 is not a valid HL7 date/time; ${this.groupTime === this.mshTime ? 'MSH-7' : 'OBR-7'} used instead`,
              'W',
            ),
          );
        }
      }
    }
    if (time !== time && this.groupTime !== null) {
      time = this.groupTime.ms;
      tzOffset = this.groupTime.tzOffset;
    }
    if (time !== time) {
      this.reject(
        i,
        obx,
        hl7Problem(
          ErrorCode.HL7_BAD_TIME,
          Hl7ErrorCondition.REQUIRED_FIELD_MISSING,
          `OBX[${obx}]-14`,
          `OBX[${obx}] has no usable time (OBX-14, OBR-7 and MSH-7 are empty or invalid)`,
        ),
      );
      return;
    }

    // PCD-01: OBX-18 equipment instance identifier, else the containing device row's, else MSH-3.
    let deviceId = equipment;
    if (deviceId === '' && this.devices > 0 && head.pathLength > 0) {
      deviceId = containingDevice(bytes, hs + head.pathOffset, hs + head.pathOffset + head.pathLength, this.devices);
    }
    if (deviceId === '') deviceId = this.defaultDevice;

    this.measurements.push(
      measurement({
        deviceId,
        code,
        system,
        refid,
        value,
        text,
        unit: row.unit,
        time,
        tzOffset,
        flags,
        containment: head.containment,
        patient: this.patient,
        location: this.location,
      }),
    );
  }

  /**
   * Fast path: the row equals a cached template everywhere except OBX-1, OBX-5 and OBX-14 (what
   * changes between two messages of a monitor). Fills `row` and returns where the row ends by
   * the template, or -1. `bound` is the segment end if known, else the message end.
   */
  private matchTemplate(s0: number, bound: number, row: RowParts): number {
    const bytes = this.bytes;
    const fs = this.fs;
    if (s0 + 3 >= bound || bytes[s0 + 3] !== fs) return -1;
    let hs = s0 + 4;
    while (hs < bound) {
      const c = bytes[hs];
      if (c === fs || c === 0x0d || c === 0x0a) break;
      hs++;
    }
    if (hs >= bound || bytes[hs] !== fs) return -1;
    hs++;
    if (bound - hs < TEMPLATE_PROBE) return -1;
    const prev = this.prevTemplate;
    return templates.match(bytes, this.view, this.at, hs, bound, this.sig, fs, this.lastTimeStart, this.lastTimeLength, row, prev >= 0 ? templates.nextOf(prev) : -1);
  }

  // Links the template entry of this row to the previous row's (see TemplateCache.match).
  private follow(entry: number): void {
    const prev = this.prevTemplate;
    if (prev >= 0 && entry >= 0 && templates.nextOf(prev) !== entry) templates.setNext(prev, entry);
    this.prevTemplate = entry;
  }

  /** Slow path: finds the fields of the row (one pass up to OBX-18), reads them, caches a template. */
  private scanRow(i: number, s0: number, e0: number, row: RowParts): void {
    const bytes = this.bytes;
    const fs = this.fs;
    let last = 0;
    if (s0 + 3 < e0 && bytes[s0 + 3] === fs) {
      last = 1;
      fieldStart[1] = s0 + 4;
      let p = s0 + 4;
      const view = this.view;
      const at = this.at;
      const fsWord = this.fsWord;
      // Four bytes at a time (SWAR): the lowest zero byte of word ^ fs is the next separator.
      while (p + 4 <= e0) {
        const x = view.getInt32(at + p, true) ^ fsWord;
        const m = (x - 0x01010101) & ~x & 0x80808080;
        if (m === 0) {
          p += 4;
          continue;
        }
        p += (31 - Math.clz32(m & -m)) >> 3;
        fieldStart[++last] = ++p;
        if (last > LAST_FIELD) break;
      }
      if (last <= LAST_FIELD) {
        for (; p < e0; p++) {
          if (bytes[p] === fs) {
            fieldStart[++last] = p + 1;
            if (last > LAST_FIELD) break;
          }
        }
      }
    }
    // Field n is [fieldStart[n], fieldStart[n + 1] - 1): the last one present ends at e0, absent
    // ones are empty (start e0 + 1, end e0).
    for (let n = last + 1; n <= LAST_FIELD + 1; n++) fieldStart[n] = e0 + 1;

    // OBX-2..OBX-4: value type, observation identifier, containment.
    const hs = last >= 2 ? fieldStart[2]! : e0;
    const he = last >= 4 ? fieldStart[5]! - 1 : last >= 2 ? fieldStart[last + 1]! - 1 : e0;
    let head = headCache.get(bytes, this.view, hs, he, this.sig);
    if (head === undefined) {
      head = readHead(this.msg, this.msg.segment(i, this.seg)!, hs);
      headCache.set(bytes, hs, he, this.sig, this.esc, head);
    }
    row.head = head;
    row.hs = hs;
    row.vs = last >= 5 ? fieldStart[5]! : e0;
    row.ve = last >= 5 ? fieldStart[6]! - 1 : e0;

    // OBX-6..OBX-13: units, abnormal flags (OBX-8), result status (OBX-11).
    row.unit = '';
    row.tailFlags = 0;
    if (last >= 6) {
      const ts = fieldStart[6]!;
      const te = last >= 13 ? fieldStart[14]! - 1 : fieldStart[last + 1]! - 1;
      let tail = tailCache.get(bytes, this.view, ts, te, this.sig);
      if (tail === undefined) {
        tail = readTail(this.msg, this.msg.segment(i, this.seg)!);
        tailCache.set(bytes, ts, te, this.sig, this.esc, tail);
      }
      row.unit = tail.unit;
      row.tailFlags = tail.flags;
    }
    const hasTime = last >= 14;
    row.ts = hasTime ? fieldStart[14]! : e0;
    row.te = hasTime ? fieldStart[15]! - 1 : e0;
    row.timeSame = false;
    const hasDevice = last >= 18;
    row.ds = hasDevice ? fieldStart[18]! : e0;
    row.de = hasDevice ? fieldStart[19]! - 1 : e0;
    row.deviceId = this.deviceOf(i, row.ds, row.de);

    if (last >= 5) {
      const deviceId = row.deviceId;
      templates.store(bytes, this.view, this.at, row, e0, this.sig, this.esc, { head, unit: row.unit, tailFlags: row.tailFlags, hasTime, hasDevice, deviceId });
      this.follow(templates.hit);
    } else {
      this.prevTemplate = -1;
    }
  }

  // The first repetition of OBX-5 ([vs, ve)) as text.
  private valueText(vs: number, ve: number): string {
    const bytes = this.bytes;
    const rs = this.rs;
    let e = vs;
    while (e < ve && bytes[e] !== rs) e++;
    return renderRepetition(this.msg, vs, e);
  }

  // OBX-18 of segment i, bytes [s, e): EI-1, else EI-3, '' when empty. The rows of a message,
  // and the messages of a monitor, name one device: the same bytes as the last OBX-18 give its
  // id at once; otherwise it is cached by the field's bytes.
  private deviceOf(i: number, s: number, e: number): string {
    if (e <= s) return '';
    const bytes = this.bytes;
    if (lastDevice.matches(0, bytes, this.view, this.at, s, e, this.sig)) return lastDeviceId;
    let id = deviceCache.get(bytes, this.view, s, e, this.sig);
    if (id === undefined) {
      id = equipmentId(this.msg.segment(i, this.seg)!);
      deviceCache.set(bytes, s, e, this.sig, this.esc, id);
    }
    if (printable(bytes, s, e, this.esc) && lastDevice.store(0, bytes, s, e, this.sig)) lastDeviceId = id;
    return id;
  }

  private reject(i: number, obx: number, problem: Hl7Problem): void {
    this.problems.push(problem);
    const raw = Buffer.from(this.bytes.subarray(this.msg.segmentStart(i), this.msg.segmentEnd(i)));
    this.rejectedRows.push({ obx, raw, problem });
  }
}

function readHead(msg: Hl7Message, seg: Hl7Segment, headStart: number): RowHead {
  const bytes = msg.bytes;
  const valueType = seg.fieldRange(2) ? valueTypeOf(bytes, seg.leafStart, seg.leafEnd) : ValueType.Empty;
  const code = seg.get(3, 1).trim();
  const refid = seg.get(3, 2).trim();
  const system = seg.get(3, 3).trim();
  let pathOffset = 0;
  let pathLength = 0;
  let containment = '';
  if (seg.locate(4, 1, 1, 1)) {
    let s = seg.leafStart;
    let e = seg.leafEnd;
    while (s < e && bytes[s] === 0x20) s++;
    while (e > s && bytes[e - 1] === 0x20) e--;
    pathOffset = s - headStart;
    pathLength = e - s;
    containment = msg.text(s, e);
  }
  const s = headStart + pathOffset;
  let deviceKey = s + pathLength;
  while (deviceKey - s >= 2 && bytes[deviceKey - 1] === 0x30 && bytes[deviceKey - 2] === 0x2e) deviceKey -= 2;
  return {
    valueType,
    code,
    refid,
    system,
    containment,
    pathOffset,
    pathLength,
    deviceKeyLength: deviceKey - s,
    devicePath: pathLength > 0 && isDevicePath(bytes, s, s + pathLength),
  };
}

function readTail(msg: Hl7Message, seg: Hl7Segment): RowTail {
  const bytes = msg.bytes;
  let flags = 0;
  if (seg.fieldRange(8) && seg.leafEnd > seg.leafStart) flags |= abnormalFlags(bytes, seg.leafStart, seg.leafEnd, msg.rs);
  if (seg.fieldRange(11) && seg.leafEnd > seg.leafStart) flags |= statusFlags(bytes, seg.leafStart, seg.leafEnd);
  return { unit: seg.locate(6, 0, 0, 1) && seg.leafEnd > seg.leafStart ? unitOf(seg) : '', flags };
}

// bytes[a, a + n) equals bytes[b, b + m) (two ranges of one message). `a` must hold printable
// ASCII (a parsed HL7 time, a remembered OBX-18): then its 8-byte words are never NaN nor ±0 as
// float64, and === on the words is exact (see TemplateCache.equal).
function sameBytes(bytes: Uint8Array, view: DataView, at: number, a: number, b: number, n: number, m: number): boolean {
  if (n !== m) return false;
  if (n >= 8) {
    const lastWord = n - 8;
    for (let i = 0; i < lastWord; i += 8) if (view.getFloat64(at + a + i, true) !== view.getFloat64(at + b + i, true)) return false;
    return view.getFloat64(at + a + lastWord, true) === view.getFloat64(at + b + lastWord, true);
  }
  for (let i = 0; i < n; i++) if (bytes[a + i] !== bytes[b + i]) return false;
  return true;
}

function parseTime(msg: Hl7Message, s: number, e: number, continued: boolean, zone: TimeZoneRule): boolean {
  if (parseHl7TimeBytes(msg.bytes, s, e, zone, timeOut)) return true;
  if (!continued) return false;
  // A wrapped segment may have a line break inside the time: parse the joined text.
  const joined = Buffer.from(msg.text(s, e), 'latin1');
  return parseHl7TimeBytes(joined, 0, joined.length, zone, timeOut);
}

function numberOfText(text: string): number {
  const b = Buffer.from(text, 'latin1');
  return parseNumber(b, 0, b.length);
}

function done(
  msg: Hl7Message,
  header: Pcd01Header,
  measurements: Measurement[],
  problems: Hl7Problem[],
  rejectedRows: RejectedRow[],
  fatal: Hl7Problem | null,
): Pcd01Result {
  for (const w of msg.warnings) problems.push(w);
  return { header, measurements, problems, rejectedRows, fatal };
}

function checkType(header: Pcd01Header): Hl7Problem | null {
  if (header.messageCode === '') {
    return hl7Problem(ErrorCode.HL7_MISSING_FIELD, Hl7ErrorCondition.REQUIRED_FIELD_MISSING, 'MSH-9', 'MSH-9 (message type) is empty');
  }
  if (header.messageCode !== 'ORU') {
    return hl7Problem(
      ErrorCode.HL7_UNSUPPORTED_MESSAGE,
      Hl7ErrorCondition.UNSUPPORTED_MESSAGE_TYPE,
      'MSH-9',
      `message type ${header.messageCode}^${header.trigger} is not accepted here (expected ORU^R01, ORU^R40 or ORU^R42)`,
    );
  }
  if (!SUPPORTED_TRIGGERS.has(header.trigger)) {
    return hl7Problem(
      ErrorCode.HL7_UNSUPPORTED_MESSAGE,
      Hl7ErrorCondition.UNSUPPORTED_EVENT_CODE,
      'MSH-9',
      `trigger event ORU^${header.trigger} is not accepted here (expected R01, R40 or R42)`,
    );
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// MSH

// Signature of a message's delimiters for the caches: what bytes mean depends on them.
function signature(msg: Hl7Message): number {
  return (msg.cs & 0xff) | ((msg.rs & 0xff) << 8) | ((msg.es & 0xff) << 16) | ((msg.ss & 0xff) << 24);
}

/**
 * Reads the MSH. What is constant between two messages of a sender (all but MSH-7 and MSH-10)
 * comes from a header template when the bytes match one; otherwise from the fields. Leaves the
 * range of MSH-7.1 in `mshTime` for the caller.
 */
function readHeader(msg: Hl7Message, msh: Hl7Segment, zone: TimeZoneRule, problems: Hl7Problem[]): Pcd01Header {
  const bytes = msg.bytes;
  const sig = signature(msg);
  const fs = msg.fs;
  const start = msh.byteStart;
  const end = msh.byteEnd;
  // MSH-3 starts after "MSH", MSH-1 and MSH-2 (the encoding characters).
  let a0 = start + 4;
  while (a0 < end && bytes[a0] !== fs) a0++;
  a0++;
  let parts = headerTemplates.match(bytes, msg.view, msg.viewOffset, a0, end, sig, fs, mshRanges);
  if (parts !== undefined) {
    // MSH-18 lies inside the matched bytes: no need to find it again.
    msg.adoptCharsetName(parts.trailer.charsetName);
  } else {
    parts = {
      sender: readSender(msg, msh),
      type: { messageCode: msh.get(9, 1).trim(), trigger: msh.get(9, 2).trim(), messageStructure: msh.get(9, 3).trim() },
      trailer: readTrailer(msg, msh),
    };
    const has7 = msh.fieldRange(7);
    mshRanges[0] = has7 ? msh.leafStart : end;
    mshRanges[1] = has7 ? msh.leafEnd : end;
    const has10 = msh.fieldRange(10);
    mshRanges[2] = has10 ? msh.leafStart : end;
    mshRanges[3] = has10 ? msh.leafEnd : end;
    if (has7 && has10 && msh.fieldRange(3) && msh.leafStart === a0) {
      headerTemplates.store(bytes, a0, mshRanges, end, sig, fs, msg.es, parts);
    }
  }
  const { sender, type, trailer } = parts;

  // MSH-7 (TS: the time is component 1).
  const cs = msg.cs;
  const t7 = mshRanges[0]!;
  let t7e = t7;
  while (t7e < mshRanges[1]! && bytes[t7e] !== cs) t7e++;
  mshTime[0] = t7;
  mshTime[1] = t7e;
  let messageTime: Hl7Time | null = null;
  if (t7e > t7) {
    if (parseTime(msg, t7, t7e, msh.wasContinued, zone)) {
      messageTime = { ms: timeOut.ms, tzOffset: timeOut.tzOffset };
    } else {
      problems.push(hl7Problem(ErrorCode.HL7_BAD_TIME, Hl7ErrorCondition.DATA_TYPE_ERROR, 'MSH-7', 'MSH-7 is not a valid HL7 date/time', 'W'));
    }
  } else {
    problems.push(hl7Problem(ErrorCode.HL7_MISSING_FIELD, Hl7ErrorCondition.REQUIRED_FIELD_MISSING, 'MSH-7', 'MSH-7 (message time) is empty', 'W'));
  }
  // MSH-10: unique per message, not worth a slot in the string cache; rarely holds escapes, and
  // then the decoded id is the raw one.
  const rawControlId = msg.rawText(mshRanges[2]!, mshRanges[3]!, false);
  const controlId = (msg.es >= 0 && rawControlId.includes(String.fromCharCode(msg.es)) ? msh.get(10) : rawControlId).trim();
  if (controlId === '') {
    problems.push(
      hl7Problem(ErrorCode.HL7_MISSING_FIELD, Hl7ErrorCondition.REQUIRED_FIELD_MISSING, 'MSH-10', 'MSH-10 (message control id) is empty; the ACK cannot name the message', 'W'),
    );
  }

  return {
    delimiters: msg.delimiters,
    encoding: msg.encoding,
    rawSendingApplication: sender.rawSendingApplication,
    rawSendingFacility: sender.rawSendingFacility,
    trigger: type.trigger,
    rawControlId,
    rawProcessingId: trailer.rawProcessingId,
    rawVersion: trailer.rawVersion,
    rawCharset: trailer.rawCharset,
    sendingApplication: sender.sendingApplication,
    sendingFacility: sender.sendingFacility,
    eui64: sender.eui64,
    messageTime,
    messageCode: type.messageCode,
    messageStructure: type.messageStructure,
    controlId,
    processingId: trailer.processingId,
    version: trailer.version,
    charset: msg.charsetName,
    profile: trailer.profile,
    defaultDevice: sender.defaultDevice,
  };
}

function readSender(msg: Hl7Message, msh: Hl7Segment): SenderPart {
  const eui64 = eui64Of(msh.get(3, 1), msh.get(3, 2), msh.get(3, 3));
  return {
    rawSendingApplication: msh.raw(3),
    rawSendingFacility: msh.raw(4),
    sendingApplication: fieldText(msg, msh, 3),
    sendingFacility: fieldText(msg, msh, 4),
    eui64,
    defaultDevice: eui64 ?? (firstComponent(msh, 3) || firstComponent(msh, 4)),
  };
}

function readTrailer(msg: Hl7Message, msh: Hl7Segment): TrailerPart {
  return {
    rawProcessingId: msh.raw(11),
    rawVersion: msh.raw(12),
    rawCharset: msh.raw(18),
    processingId: msh.get(11, 1).trim(),
    version: msh.get(12, 1).trim(),
    profile: msh.get(21, 1).trim(),
    charsetName: msg.charsetName,
  };
}

const HEX16 = /^[0-9A-Fa-f]{16}$/;
const EUI64_TYPE = /^EUI-?64$/i;

/** The EUI-64 in an HD (`ns^EUI^EUI-64`, or the malformed `EUI^EUI-64` some senders use). */
function eui64Of(namespace: string, universalId: string, type: string): string | null {
  const ns = namespace.trim();
  const uid = universalId.trim();
  if (EUI64_TYPE.test(type.trim()) && HEX16.test(uid)) return uid.toUpperCase();
  if (EUI64_TYPE.test(uid) && HEX16.test(ns)) return ns.toUpperCase();
  return null;
}

function firstComponent(seg: Hl7Segment, field: number): string {
  return seg.get(field, 1).trim();
}

// ---------------------------------------------------------------------------------------------
// Field helpers

/** A field's first repetition as text: components joined by `^`, subcomponents by `&`, trailing empties dropped. */
function fieldText(msg: Hl7Message, seg: Hl7Segment, field: number): string {
  return seg.locate(field, 0, 0, 1) ? renderRepetition(msg, seg.leafStart, seg.leafEnd) : '';
}

function repetitionText(msg: Hl7Message, seg: Hl7Segment): string {
  seg.locate(5, 0, 0, 1);
  return renderRepetition(msg, seg.leafStart, seg.leafEnd);
}

// Decodes a repetition leaf by leaf and writes it with the standard separators, so a value
// looks the same whatever delimiters the sender chose.
function renderRepetition(msg: Hl7Message, s: number, e: number): string {
  const bytes = msg.bytes;
  const cs = msg.cs;
  const ss = msg.ss;
  let simple = true;
  for (let i = s; i < e; i++) {
    const c = bytes[i];
    if (c === cs || c === ss) {
      simple = false;
      break;
    }
  }
  if (simple) return msg.text(s, e);
  let out = '';
  let leafStart = s;
  for (let i = s; i <= e; i++) {
    const c = i < e ? bytes[i] : -2;
    if (c === cs || c === ss || i === e) {
      out += msg.text(leafStart, i);
      if (i < e) out += c === cs ? '^' : '&';
      leafStart = i + 1;
    }
  }
  let end = out.length;
  while (end > 0 && (out[end - 1] === '^' || out[end - 1] === '&')) end--;
  return end === out.length ? out : out.slice(0, end);
}

function isNull(bytes: Uint8Array, s: number, e: number): boolean {
  // Empty, only spaces, or HL7's explicit null `""`.
  while (s < e && bytes[s] === 0x20) s++;
  while (e > s && bytes[e - 1] === 0x20) e--;
  return s === e || (e - s === 2 && bytes[s] === 0x22 && bytes[s + 1] === 0x22);
}

/** A containment path of a device row: `x.0.0.0`, `x.y.0.0`, `x.y.z.0` (or a single `x`). */
function isDevicePath(bytes: Uint8Array, s: number, e: number): boolean {
  if (e - s < 2) return e > s && bytes[s] !== 0x30;
  return bytes[e - 1] === 0x30 && bytes[e - 2] === 0x2e;
}

function valueTypeOf(bytes: Uint8Array, s: number, e: number): ValueType {
  while (s < e && bytes[s] === 0x20) s++;
  while (e > s && bytes[e - 1] === 0x20) e--;
  const n = e - s;
  if (n === 0) return ValueType.Empty;
  if (n === 2) {
    const a = bytes[s];
    const b = bytes[s + 1];
    if (a === 0x4e && b === 0x4d) return ValueType.NM;
    if (a === 0x53 && b === 0x4e) return ValueType.SN;
    if (a === 0x4e && b === 0x41) return ValueType.NA;
  }
  return ValueType.Text;
}

/** OBX-6: the UCUM code when the sender gives one, else the MDC unit refid (or code), else the text. */
function unitOf(seg: Hl7Segment): string {
  const c1 = seg.get(6, 1).trim();
  const c2 = seg.get(6, 2).trim();
  const c3 = seg.get(6, 3).trim().toUpperCase();
  const c4 = seg.get(6, 4).trim();
  const c5 = seg.get(6, 5).trim();
  const c6 = seg.get(6, 6).trim().toUpperCase();
  if (c3 === 'UCUM' && c1 !== '') return c1;
  if (c6 === 'UCUM' && c4 !== '') return c4;
  if (c3 === 'MDC') return c2 !== '' ? c2 : c1;
  if (c6 === 'MDC') return c5 !== '' ? c5 : c4;
  return c1 !== '' ? c1 : c2;
}

/** OBX-8 abnormal flags (HL7 table 0078 and IHE PCD measurement status), repeatable. */
function abnormalFlags(bytes: Uint8Array, s: number, e: number, rs: number): number {
  let flags = 0;
  let start = s;
  for (let i = s; i <= e; i++) {
    if (i < e && bytes[i] !== rs) continue;
    let a = start;
    let b = i;
    while (a < b && bytes[a] === 0x20) a++;
    while (b > a && bytes[b - 1] === 0x20) b--;
    flags |= abnormalFlag(bytes, a, b);
    start = i + 1;
  }
  return flags;
}

function abnormalFlag(bytes: Uint8Array, s: number, e: number): number {
  switch (e - s) {
    case 1: {
      const c = bytes[s];
      // L low, H high, A abnormal, < below / > above the absolute limits.
      return c === 0x4c || c === 0x48 || c === 0x41 || c === 0x3c || c === 0x3e ? Quality.ABNORMAL : 0;
    }
    case 2: {
      const c = bytes[s];
      const d = bytes[s + 1];
      // LL, HH critical; AA very abnormal; LU/HU significant change.
      if ((c === 0x4c && d === 0x4c) || (c === 0x48 && d === 0x48) || (c === 0x41 && d === 0x41)) return Quality.ABNORMAL;
      if ((c === 0x4c || c === 0x48) && d === 0x55) return Quality.ABNORMAL;
      return 0;
    }
    case 3:
      return bytesEqual(bytes, s, e, 'INV') ? Quality.INVALID : 0;
    case 4:
      if (bytesEqual(bytes, s, e, 'DEMO') || bytesEqual(bytes, s, e, 'TEST')) return Quality.DEMO;
      if (bytesEqual(bytes, s, e, 'QUES')) return Quality.QUESTIONABLE;
      return 0;
    case 5:
      return bytesEqual(bytes, s, e, 'EARLY') ? Quality.EARLY : 0;
    default:
      return 0;
  }
}

/**
 * OBX-11 result status (HL7 table 0085). R/F/U are final; P, C, S, I, A, O are not; D, W, N
 * mean the value must not be used. X ("cannot be obtained") only reaches here for rows that do
 * carry a value — Philips sends X on every metric row — so it is read as final.
 */
function statusFlags(bytes: Uint8Array, s: number, e: number): number {
  while (s < e && bytes[s] === 0x20) s++;
  while (e > s && bytes[e - 1] === 0x20) e--;
  if (e - s !== 1) return e === s ? 0 : Quality.NOT_FINAL;
  switch (bytes[s]) {
    case 0x52: // R
    case 0x46: // F
    case 0x55: // U
    case 0x58: // X
      return 0;
    case 0x44: // D deleted
    case 0x57: // W wrong
    case 0x4e: // N not asked
      return Quality.INVALID;
    default:
      return Quality.NOT_FINAL;
  }
}

/** OBX-18 EI of the first repetition: EI-1 entity id, else EI-3 universal id. */
function equipmentId(seg: Hl7Segment): string {
  const id = seg.get(18, 1).trim();
  return id !== '' ? id : seg.get(18, 3).trim();
}

// The OBX-18 of the nearest registered device row whose (normalised) path is a prefix of
// bytes[s, e) at a '.' boundary.
function containingDevice(bytes: Uint8Array, s: number, e: number, devices: number): string {
  let best = -1;
  let bestLen = -1;
  const n = e - s;
  for (let d = 0; d < devices; d++) {
    const ds = devStarts[d]!;
    const len = devEnds[d]! - ds;
    if (len > n || len <= bestLen) continue;
    if (len < n && bytes[s + len] !== 0x2e) continue;
    let k = 0;
    while (k < len && bytes[ds + k] === bytes[s + k]) k++;
    if (k === len) {
      best = d;
      bestLen = len;
    }
  }
  return best < 0 ? '' : devIds[best]!;
}

function describeCode(code: string, refid: string, system: string): string {
  return [code, refid, system].join('^').replace(/\^+$/, '');
}
