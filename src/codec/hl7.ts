/**
 * A lazy, offset-based HL7 v2 (ER7) reader, the original-mode ACK builder and a splitter for
 * exported message files.
 *
 * The reader never splits a message into a tree. `Hl7Message.parse` finds the delimiters and the
 * segment boundaries (a native `indexOf` per line); a segment finds its field offsets on demand,
 * up to the highest field asked for, four bytes at a time; components, repetitions and
 * subcomponents are located inside one field; only the leaves that are read are decoded to
 * strings. Pure ASCII leaves without escapes take a fast path (and short ones are interned: a
 * device that repeats the same codes and units allocates no new strings for them); everything
 * else goes through escape decoding and the message's character set. Measured in
 * bench/codec.bench.ts (results in bench/RESULTS.md).
 *
 * Nothing here throws on bad input: `parse` reports an unusable message in `fatal`, odd but
 * readable input in `warnings`, and accessors return `''`/`NaN` for what is not there.
 *
 * Spec: HL7 v2.6 chapter 2 (2.5 message construction rules, 2.7 escape sequences, 2.9 ACK),
 * table 0357 (error condition codes), table 0211 (character sets), MLLP (0x0B … 0x1C 0x0D).
 */
import { Buffer, isUtf8 } from 'node:buffer';
import { randomBytes } from 'node:crypto';
import { ErrorCode, type Problem } from '../errors.js';
import { formatHl7Time, zoneOffsets, type ZoneOffsets } from './hl7-time.js';

// ---------------------------------------------------------------------------------------------
// Problems, ACK codes and table 0357

/** ERR-4 severity (HL7 table 0516): E error, W warning. */
export type Hl7Severity = 'E' | 'W';

/** A `Problem` with the ERR-4 severity it gets in an ACK. */
export interface Hl7Problem extends Problem {
  readonly severity: Hl7Severity;
}

/** HL7 table 0357 "Message error condition codes" (ERR-3), the ones the gateway uses. */
export const Hl7ErrorCondition = {
  SEGMENT_SEQUENCE_ERROR: '100',
  REQUIRED_FIELD_MISSING: '101',
  DATA_TYPE_ERROR: '102',
  TABLE_VALUE_NOT_FOUND: '103',
  UNSUPPORTED_MESSAGE_TYPE: '200',
  UNSUPPORTED_EVENT_CODE: '201',
  UNSUPPORTED_PROCESSING_ID: '202',
  UNSUPPORTED_VERSION_ID: '203',
  APPLICATION_INTERNAL_ERROR: '207',
} as const;
export type Hl7ErrorCondition = (typeof Hl7ErrorCondition)[keyof typeof Hl7ErrorCondition];

const CONDITION_TEXT: Readonly<Record<string, string>> = {
  '0': 'Message accepted',
  '100': 'Segment sequence error',
  '101': 'Required field missing',
  '102': 'Data type error',
  '103': 'Table value not found',
  '104': 'Value too long',
  '200': 'Unsupported message type',
  '201': 'Unsupported event code',
  '202': 'Unsupported processing id',
  '203': 'Unsupported version id',
  '204': 'Unknown key identifier',
  '205': 'Duplicate key identifier',
  '206': 'Application record locked',
  '207': 'Application internal error',
};

/** Builds an `Hl7Problem`. `message` must name places and codes, never patient data. */
export function hl7Problem(
  code: ErrorCode,
  hl7Code: string,
  location: string,
  message: string,
  severity: Hl7Severity = 'E',
): Hl7Problem {
  return { code, message, location, hl7Code, severity };
}

/** MSA-1 in original mode (HL7 v2.6 2.9.2, table 0008). */
export const AckCode = {
  /** Application Accept: stored. */
  AA: 'AA',
  /** Application Error: content errors (see the ERR segments); do not resend unchanged. */
  AE: 'AE',
  /** Application Reject: unreadable header, unsupported type/version/processing id. */
  AR: 'AR',
} as const;
export type AckCode = (typeof AckCode)[keyof typeof AckCode];

// ---------------------------------------------------------------------------------------------
// Bytes

const CR = 0x0d;
const LF = 0x0a;
const VT = 0x0b; // MLLP start block
const FS = 0x1c; // MLLP end block
const SPACE = 0x20;
const TAB = 0x09;

interface FastBuffer extends Buffer {
  latin1Slice(start: number, end: number): string;
  utf8Slice(start: number, end: number): string;
}

const HAS_FAST_SLICE = typeof (Buffer.prototype as Partial<FastBuffer>).latin1Slice === 'function';

function latin1(b: Buffer, s: number, e: number): string {
  return HAS_FAST_SLICE ? (b as FastBuffer).latin1Slice(s, e) : b.toString('latin1', s, e);
}

function utf8(b: Buffer, s: number, e: number): string {
  return HAS_FAST_SLICE ? (b as FastBuffer).utf8Slice(s, e) : b.toString('utf8', s, e);
}

function toBuffer(input: Uint8Array): Buffer {
  return Buffer.isBuffer(input) ? input : Buffer.from(input.buffer, input.byteOffset, input.byteLength);
}

const ALNUM = new Uint8Array(256);
for (let c = 0x30; c <= 0x39; c++) ALNUM[c] = 1;
for (let c = 0x41; c <= 0x5a; c++) ALNUM[c] = 1;
for (let c = 0x61; c <= 0x7a; c++) ALNUM[c] = 1;

function isAlnum(c: number): boolean {
  return ALNUM[c] === 1;
}

/** True when `bytes[s, e)` equals the Latin-1 code units of `str`. */
export function bytesEqual(bytes: Uint8Array, s: number, e: number, str: string): boolean {
  const n = e - s;
  if (str.length !== n) return false;
  for (let i = 0; i < n; i++) if (str.charCodeAt(i) !== bytes[s + i]) return false;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Byte-keyed caches

/** A `DataView` over exactly `bytes` (for 4-byte-at-a-time comparisons). */
export function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

// Node hands out many small Buffers from one pooled ArrayBuffer: one DataView over the whole
// ArrayBuffer serves them all (index with `byteOffset + i`). Keeps at most one buffer alive.
let lastBuffer: ArrayBufferLike | null = null;
let lastView: DataView | null = null;

function wholeView(bytes: Uint8Array): DataView {
  if (bytes.buffer !== lastBuffer || lastView === null) {
    lastBuffer = bytes.buffer;
    lastView = new DataView(bytes.buffer);
  }
  return lastView;
}

/**
 * A direct-mapped table of byte strings: slot `i` holds a key of up to `width` bytes (and a salt,
 * e.g. the delimiters it was read with) in one slab, compared four bytes at a time. The owner
 * keeps the values in a parallel array. Collisions overwrite; memory is `2^bits × width` bytes.
 */
export class ByteKeys {
  private readonly width: number;
  private readonly bits: number;
  private readonly slab: Uint8Array;
  private readonly slabView: DataView;
  private readonly lengths: Int32Array;
  private readonly salts: Int32Array;

  constructor(bits: number, width: number) {
    this.bits = bits;
    this.width = width;
    this.slab = new Uint8Array((1 << bits) * width);
    this.slabView = viewOf(this.slab);
    this.lengths = new Int32Array(1 << bits).fill(-1);
    this.salts = new Int32Array(1 << bits);
  }

  /** The slot for `bytes[s, e)` with `salt` (see `rangeSlot`). */
  slotOf(bytes: Uint8Array, s: number, e: number, salt: number): number {
    return rangeSlot(bytes, s, e, salt, this.bits);
  }

  /** The slot for `bytes[s, e)` with `salt` from every byte (see `wholeRangeSlot`). */
  wholeSlotOf(bytes: Uint8Array, s: number, e: number, salt: number): number {
    return wholeRangeSlot(bytes, s, e, salt, this.bits);
  }

  /**
   * True when slot `slot` holds exactly `bytes[s, e)` with `salt`. `view` reads the same bytes,
   * `bytes[i]` being at `view` offset `viewOffset + i` (see `Hl7Message.view`).
   */
  matches(slot: number, bytes: Uint8Array, view: DataView, viewOffset: number, s: number, e: number, salt: number): boolean {
    const n = e - s;
    if (this.lengths[slot] !== n || this.salts[slot] !== salt) return false;
    const base = slot * this.width;
    if (n >= 4) {
      // Words of four bytes; the last one overlaps the one before instead of a byte loop.
      const slab = this.slabView;
      const at = viewOffset + s;
      const lastWord = n - 4;
      for (let i = 0; i < lastWord; i += 4) if (slab.getInt32(base + i, true) !== view.getInt32(at + i, true)) return false;
      return slab.getInt32(base + lastWord, true) === view.getInt32(at + lastWord, true);
    }
    const raw = this.slab;
    for (let i = 0; i < n; i++) if (raw[base + i] !== bytes[s + i]) return false;
    return true;
  }

  /** Empties every slot. */
  clear(): void {
    this.lengths.fill(-1);
  }

  /** Stores `bytes[s, e)` with `salt` in `slot`; false (slot emptied) when longer than the width. */
  store(slot: number, bytes: Uint8Array, s: number, e: number, salt: number): boolean {
    const n = e - s;
    if (n > this.width) {
      this.lengths[slot] = -1;
      return false;
    }
    this.slab.set(bytes.subarray(s, e), slot * this.width);
    this.lengths[slot] = n;
    this.salts[slot] = salt;
    return true;
  }
}

/**
 * A slot for `bytes[s, e)` from its length and up to its first eight and last four bytes
 * (codes differ early, refids and containment paths late). Collisions only cost a cache miss.
 */
function rangeSlot(bytes: Uint8Array, s: number, e: number, salt: number, bits: number): number {
  const n = e - s;
  let h = Math.imul(n + 1, 0x9e3779b1) ^ salt;
  const head = n < 8 ? n : 8;
  for (let i = 0; i < head; i++) h = Math.imul(h ^ bytes[s + i]!, 0x01000193);
  if (n > 8) {
    const tail = n - 8 < 4 ? n - 8 : 4;
    for (let i = e - tail; i < e; i++) h = Math.imul(h ^ bytes[i]!, 0x01000193);
  }
  return (h ^ (h >>> bits)) & ((1 << bits) - 1);
}

/**
 * A slot for `bytes[s, e)` from all of its bytes, for keys that differ in the middle: the device
 * ids of one vendor (`02A0C0FFFE00012F^^02A0C0FFFE00012F^EUI-64`) share their first eight and
 * last four bytes, and would all get one `rangeSlot`.
 */
function wholeRangeSlot(bytes: Uint8Array, s: number, e: number, salt: number, bits: number): number {
  let h = Math.imul(e - s + 1, 0x9e3779b1) ^ salt;
  for (let i = s; i < e; i++) h = Math.imul(h ^ bytes[i]!, 0x01000193);
  return (h ^ (h >>> bits)) & ((1 << bits) - 1);
}

// Interning: short ASCII leaves, keyed by their bytes and the escape byte of their message (a
// leaf is only clean — needs no unescaping — relative to its own message's escape character).
// Devices repeat the same codes, units and ids in every message, so the steady state creates no
// strings for them. Memory: 2^INTERN_BITS × INTERN_MAX_LEN bytes (512 KiB) plus the strings.
const INTERN_BITS = 13;
const INTERN_MAX_LEN = 64;
const internKeys = new ByteKeys(INTERN_BITS, INTERN_MAX_LEN);
const internStrings: string[] = new Array<string>(1 << INTERN_BITS).fill('');

/**
 * Drops the reader's process-wide caches (interned strings, the shared DataView). Decoding is
 * correct without them; use it in tests, or to release memory after a burst of unusual input.
 */
export function clearHl7Caches(): void {
  internKeys.clear();
  internStrings.fill('');
  lastBuffer = null;
  lastView = null;
}

// ---------------------------------------------------------------------------------------------
// Character sets (MSH-18, HL7 table 0211)

const enum CharsetKind {
  /** No MSH-18 or `ASCII`: 7-bit; high bytes are decoded as UTF-8 if valid, else Latin-1 (reported). */
  Ascii,
  Latin1,
  Utf8,
  /** A single-byte set other than Latin-1 (8859/2…/15, windows-1252), decoded through a table. */
  Table,
}

interface Charset {
  readonly kind: CharsetKind;
  /** Node/WHATWG encoding label of the set. */
  readonly label: string;
  /** Byte → character for `Table` sets. */
  readonly table: readonly string[] | null;
}

// MSH-18 values as most senders spell them, recognised without creating a string.
const COMMON_CHARSET_NAMES = ['UNICODE UTF-8', '8859/1', 'ASCII'];

function charsetText(bytes: Buffer, s: number, e: number): string {
  if (s >= e) return '';
  for (const name of COMMON_CHARSET_NAMES) if (bytesEqual(bytes, s, e, name)) return name;
  return latin1(bytes, s, e).trim();
}

const ASCII_CHARSET: Charset = { kind: CharsetKind.Ascii, label: 'ascii', table: null };
const LATIN1_CHARSET: Charset = { kind: CharsetKind.Latin1, label: 'latin1', table: null };
const UTF8_CHARSET: Charset = { kind: CharsetKind.Utf8, label: 'utf8', table: null };
const tableCharsets = new Map<string, Charset | null>();

function tableCharset(label: string): Charset | null {
  let cs = tableCharsets.get(label);
  if (cs !== undefined) return cs;
  cs = null;
  try {
    const decoder = new TextDecoder(label);
    const table: string[] = [];
    const one = new Uint8Array(1);
    for (let b = 0; b < 256; b++) {
      one[0] = b;
      table.push(decoder.decode(one));
    }
    cs = { kind: CharsetKind.Table, label, table };
  } catch {
    cs = null;
  }
  tableCharsets.set(label, cs);
  return cs;
}

const charsetMemo = new Map<string, Charset | null>();

/**
 * The character set named by an MSH-18 value (first repetition, any case). `null` when the name
 * is not one the reader knows; the caller then decodes as UTF-8 when valid, else Latin-1.
 */
function charsetFor(name: string): Charset | null {
  let cs = charsetMemo.get(name);
  if (cs === undefined) {
    cs = charsetForName(name);
    // MSH-18 spellings are few; bound the memo anyway against a sender inventing new ones.
    if (charsetMemo.size < 64) charsetMemo.set(name, cs);
  }
  return cs;
}

function charsetForName(name: string): Charset | null {
  const n = name.trim().toUpperCase();
  switch (n) {
    case '':
    case 'ASCII':
    case 'US-ASCII':
      return ASCII_CHARSET;
    case '8859/1':
    case 'ISO-8859-1':
    case 'ISO8859-1':
    case 'ISO_8859-1':
    case 'LATIN1':
    case 'LATIN-1':
      return LATIN1_CHARSET;
    case 'UNICODE UTF-8':
    case 'UTF-8':
    case 'UTF8':
    case 'UNICODE':
      return UTF8_CHARSET;
    case 'WINDOWS-1252':
    case 'CP1252':
      return tableCharset('windows-1252');
    default: {
      const m = /^(?:8859\/|ISO-?8859-)(\d{1,2})$/.exec(n);
      return m ? tableCharset(`iso-8859-${m[1]}`) : null;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Decoding scratch (the reader is synchronous; one scratch buffer serves every message)

let scratch = new Uint8Array(256);

function ensureScratch(n: number): Uint8Array {
  if (scratch.length < n) scratch = new Uint8Array(Math.max(n, scratch.length * 2));
  return scratch;
}

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  return -1;
}

// HL7 v2.6 2.7.6: `.sp <n>` asks for n line breaks; bounded so a hostile value cannot blow up.
const MAX_SP_LINES = 16;

// ---------------------------------------------------------------------------------------------
// Delimiters

/** The delimiters of a message (MSH-1 and MSH-2). A character the message does not use is `''`. */
export interface Hl7Delimiters {
  readonly field: string;
  readonly component: string;
  readonly repetition: string;
  readonly escape: string;
  readonly subcomponent: string;
  /** v2.7 truncation character (`#` in `^~\&#`), `''` before v2.7. */
  readonly truncation: string;
}

/** The standard delimiters `|^~\&`. */
export const DEFAULT_DELIMITERS: Hl7Delimiters = {
  field: '|',
  component: '^',
  repetition: '~',
  escape: '\\',
  subcomponent: '&',
  truncation: '',
};

const V27_DELIMITERS: Hl7Delimiters = { ...DEFAULT_DELIMITERS, truncation: '#' };

/** A byte range `[start, end)` in a buffer. */
export interface Hl7Range {
  readonly start: number;
  readonly end: number;
}

/** Options for `Hl7Message.parse`. */
export interface Hl7ParseOptions {
  /**
   * Character set to assume when MSH-18 is empty (HL7 says ASCII). Use it for a device known to
   * send UTF-8 or Latin-1 without saying so; an MSH-18 value still wins.
   */
  readonly defaultCharset?: string;
}

// | ^ ~ \ & and no truncation character.
const STANDARD_BYTES: readonly number[] = [0x7c, 0x5e, 0x7e, 0x5c, 0x26, -1];

const SEG_CONTINUED = 1;
// indexTo(ALL_SEGMENTS) indexes the whole message.
const ALL_SEGMENTS = 0x3fffffff;
const NO_WARNINGS: readonly Hl7Problem[] = Object.freeze([]);

// Bound on how many warnings one message collects (each kind is reported once anyway).
const MAX_WARNINGS = 16;

/**
 * One HL7 v2 message over a byte buffer, read lazily. Build it with `Hl7Message.parse`.
 *
 * Segment boundaries: `\r`, `\n` or `\r\n` (mixed is fine); blank lines are skipped; a line that
 * does not start like a segment (three letters/digits and the field separator) continues the
 * previous segment (a capture that wrapped a long segment), and its line break is removed from
 * the field it falls in. The message ends at the buffer end or at an MLLP end byte (0x1C).
 * Segments are indexed as they are first asked for (each byte is searched once); asking for
 * `segmentCount`, `segments()` or `warnings` indexes the whole message.
 */
export class Hl7Message {
  /** The bytes the message was read from (not copied: do not reuse the buffer while reading). */
  readonly bytes: Buffer;
  /** Offset of `MSH` (or of the first byte that should have been `MSH`). */
  readonly start: number;
  /** Offset just past the last byte of the message. */
  readonly end: number;
  /** Why the message cannot be read at all (no MSH, bad delimiters), else `null`. */
  readonly fatal: Hl7Problem | null;
  private warningList: Hl7Problem[] | null = null;

  /** Field separator byte (MSH-1). The delimiter bytes are for byte-level readers such as pcd01. */
  readonly fs: number;
  /** Component separator byte, -1 when the message does not use one. */
  readonly cs: number;
  /** Repetition separator byte, -1 when unused. */
  readonly rs: number;
  /** Escape byte, -1 when unused. */
  readonly es: number;
  /** Subcomponent separator byte, -1 when unused. */
  readonly ss: number;
  /** Truncation byte (v2.7 `#`), -1 when unused. */
  readonly ts: number;

  // Segment i spans [segs[2i], segs[2i+1]); indexes of segments joined from several lines.
  // Segments are indexed on demand: idxStart is where the next one starts, idxCr/idxLf cache the
  // next CR/LF found (each byte is searched once, however the index grows).
  private readonly segs: number[] = [];
  private idxStart: number;
  private idxCr = -1;
  private idxLf = -1;
  private continuedSegments: Set<number> | null = null;
  // Resolved from MSH-18 on first need (decoding 8-bit text, `encoding`, `charsetName`,
  // `warnings`), or adopted from a caller that already knows MSH-18 (`adoptCharsetName`).
  private charset: Charset | null = null;
  private defaultCharset: string | undefined;
  private dataView: DataView | null = null;
  private declaredCharset = '';
  private headerSegment: Hl7Segment | null = null;

  private constructor(bytes: Buffer, start: number, end: number, fatal: Hl7Problem | null, delimiters: readonly number[] = STANDARD_BYTES) {
    this.bytes = bytes;
    this.start = start;
    this.end = end;
    this.fatal = fatal;
    this.fs = delimiters[0]!;
    this.cs = delimiters[1]!;
    this.rs = delimiters[2]!;
    this.es = delimiters[3]!;
    this.ss = delimiters[4]!;
    this.ts = delimiters[5]!;
    this.idxStart = fatal === null ? start : end;
  }

  /**
   * Reads the message in `input[start, end)`. Leading MLLP/whitespace bytes (0x0B, 0x1C, CR, LF,
   * space, tab, a UTF-8 BOM) are skipped. Never throws: a message without a readable MSH or with
   * unusable delimiters comes back with `fatal` set and no segments.
   */
  static parse(input: Uint8Array, start = 0, end = input.length, options?: Hl7ParseOptions): Hl7Message {
    const bytes = toBuffer(input);
    if (start < 0) start = 0;
    if (end > bytes.length) end = bytes.length;
    let p = start;
    while (p < end) {
      const c = bytes[p]!;
      if (c === VT || c === FS || c === CR || c === LF || c === SPACE || c === TAB) p++;
      else if (c === 0xef && bytes[p + 1] === 0xbb && bytes[p + 2] === 0xbf) p += 3;
      else break;
    }
    // MLLP: the frame ends at the first 0x1C (searched only inside the range: bounded work).
    const fsAt = end === bytes.length ? bytes.indexOf(FS, p) : bytes.subarray(p, end).indexOf(FS);
    if (fsAt >= 0) end = end === bytes.length ? fsAt : p + fsAt;

    if (end - p < 8 || bytes[p] !== 0x4d || bytes[p + 1] !== 0x53 || bytes[p + 2] !== 0x48) {
      const what = end - p <= 0 ? 'the message is empty' : 'the message does not start with an MSH segment';
      return new Hl7Message(bytes, p, end, hl7Problem(ErrorCode.HL7_NO_MSH, '100', 'MSH', `No MSH: ${what}`));
    }
    const fs = bytes[p + 3]!;
    // HL7 v2.6 2.5.4: MSH-1 is the field separator, MSH-2 the 4 (v2.7: 5) encoding characters.
    let q = p + 4;
    let bad = fs === CR || fs === LF || fs === SPACE || isAlnum(fs) || fs < 0x20 || fs > 0x7e;
    while (!bad && q < end) {
      const c = bytes[q]!;
      if (c === fs || c === CR || c === LF) break;
      if (isAlnum(c) || c < 0x21 || c > 0x7e || q - p - 4 === 5) bad = true;
      // Each encoding character must differ from the ones before it.
      for (let k = p + 4; k < q && !bad; k++) if (bytes[k] === c) bad = true;
      q++;
    }
    const count = q - p - 4;
    if (bad || count === 0) {
      return new Hl7Message(
        bytes,
        p,
        end,
        hl7Problem(
          ErrorCode.HL7_BAD_DELIMITERS,
          '102',
          'MSH-2',
          'MSH-1/MSH-2 do not hold a usable field separator and encoding characters',
        ),
      );
    }
    const msg = new Hl7Message(bytes, p, end, null, [
      fs,
      count > 0 ? bytes[p + 4]! : -1,
      count > 1 ? bytes[p + 5]! : -1,
      count > 2 ? bytes[p + 6]! : -1,
      count > 3 ? bytes[p + 7]! : -1,
      count > 4 ? bytes[p + 8]! : -1,
    ]);
    if (count < 4) {
      msg.warn(
        hl7Problem(
          ErrorCode.HL7_BAD_DELIMITERS,
          '102',
          'MSH-2',
          `MSH-2 has ${count} encoding characters, expected 4 (or 5 in v2.7); the missing ones are treated as unused`,
          'W',
        ),
      );
    }
    msg.defaultCharset = options?.defaultCharset;
    return msg;
  }

  // Indexes the segment that starts at idxStart (one line, or several when a capture wrapped
  // it) and moves idxStart to the segment after it. False when the message has no more.
  private indexNext(): boolean {
    const b = this.bytes;
    const end = this.end;
    let segStart = this.idxStart;
    let pos = segStart;
    let flags = 0;
    while (segStart < end) {
      let nextCr = this.idxCr;
      let nextLf = this.idxLf;
      if (nextCr < pos) {
        nextCr = b.indexOf(CR, pos);
        if (nextCr < 0 || nextCr > end) nextCr = end;
        this.idxCr = nextCr;
      }
      if (nextLf < pos) {
        nextLf = b.indexOf(LF, pos);
        if (nextLf < 0 || nextLf > end) nextLf = end;
        this.idxLf = nextLf;
      }
      const lineEnd = nextCr < nextLf ? nextCr : nextLf;
      // Fast path: one CR, then the next segment (HL7 v2.6 2.5.1 as MLLP senders write it).
      if (flags === 0 && lineEnd > segStart && b[lineEnd - 1] !== SPACE && b[lineEnd - 1] !== TAB && this.startsSegmentAfterCr(lineEnd)) {
        const n = this.segs.length;
        this.segs[n] = segStart;
        this.segs[n + 1] = lineEnd;
        this.idxStart = lineEnd + 1;
        return true;
      }
      const w = this.nextLineStart(lineEnd);
      if (w < 0) {
        // HL7 v2.6 2.5.1 forbids line breaks inside a segment; captures wrap anyway.
        flags |= SEG_CONTINUED;
        pos = lineEnd + 1;
        continue;
      }
      let segEnd = lineEnd;
      while (segEnd > segStart && (b[segEnd - 1] === SPACE || b[segEnd - 1] === TAB)) segEnd--;
      this.idxStart = w;
      if (segEnd > segStart) {
        const n = this.segs.length;
        this.segs[n] = segStart;
        this.segs[n + 1] = segEnd;
        if (flags & SEG_CONTINUED) {
          (this.continuedSegments ??= new Set()).add(n / 2);
          if ((this.warningList?.length ?? 0) < MAX_WARNINGS) {
            const name = latin1(b, segStart, Math.min(segStart + 3, segEnd));
            this.warn(
              hl7Problem(
                ErrorCode.HL7_WRAPPED_SEGMENT,
                '100',
                name === 'MSH' ? 'MSH' : `${name}[${this.occurrence(n / 2)}]`,
                `${name} segment is broken over more than one line; the lines were joined`,
                'W',
              ),
            );
          }
        }
        return true;
      }
      flags = 0;
      segStart = w;
      pos = w;
    }
    this.idxStart = end;
    return false;
  }

  // After the line ending at lineEnd: the start of the next segment (blank and whitespace-only
  // lines skipped; `end` when there is none), or -1 when the next line continues this segment.
  private nextLineStart(lineEnd: number): number {
    const b = this.bytes;
    const end = this.end;
    let q = lineEnd;
    let w = q;
    for (;;) {
      while (q < end && (b[q] === CR || b[q] === LF)) q++;
      w = q;
      while (w < end && (b[w] === SPACE || b[w] === TAB)) w++;
      if (w < end && b[w] !== CR && b[w] !== LF) break;
      q = w;
      if (q >= end) return end;
    }
    // A new segment: three letters/digits, then the field separator or the end of the line.
    const fs = this.fs;
    const startsSegment =
      w + 3 <= end &&
      ALNUM[b[w]!] === 1 &&
      ALNUM[b[w + 1]!] === 1 &&
      ALNUM[b[w + 2]!] === 1 &&
      (w + 3 === end || b[w + 3] === fs || b[w + 3] === CR || b[w + 3] === LF);
    return startsSegment ? w : -1;
  }

  // The common line end: one CR, then a segment name and the field separator.
  private startsSegmentAfterCr(lineEnd: number): boolean {
    const b = this.bytes;
    const next = lineEnd + 1;
    return next + 3 < this.end && b[lineEnd] === CR && ALNUM[b[next]!] === 1 && ALNUM[b[next + 1]!] === 1 && ALNUM[b[next + 2]!] === 1 && b[next + 3] === this.fs;
  }

  private indexTo(index: number): void {
    while (this.segs.length <= 2 * index + 1 && this.idxStart < this.end && this.indexNext());
  }

  /** Number of segments indexed so far (segments are found as they are asked for). */
  get indexedSegmentCount(): number {
    return this.segs.length >> 1;
  }

  /**
   * For streaming readers: where the next segment not yet indexed starts, or -1 when every
   * segment is indexed.
   */
  get nextSegmentStart(): number {
    return this.idxStart < this.end ? this.idxStart : -1;
  }

  /** For streaming readers: indexes the next segment; false when there is none. */
  indexNextSegment(): boolean {
    return this.idxStart < this.end && this.indexNext();
  }

  /**
   * For streaming readers that know where a segment ends without searching (a row matched
   * against a template): indexes `[start, end)` as the next segment when `start` is
   * `nextSegmentStart` and `end` is a line end after which a new segment (or the message end)
   * follows. The caller promises that `[start, end)` holds no CR or LF. Returns false, indexing
   * nothing, when the segment does not end there (the caller then uses `indexNextSegment`).
   */
  tryIndexSegment(start: number, end: number): boolean {
    const b = this.bytes;
    if (start !== this.idxStart || end <= start || end > this.end) return false;
    if (end < this.end && b[end] !== CR && b[end] !== LF) return false;
    const last = b[end - 1];
    if (last === SPACE || last === TAB) return false;
    const w = this.startsSegmentAfterCr(end) ? end + 1 : this.nextLineStart(end);
    if (w < 0) return false;
    const n = this.segs.length;
    this.segs[n] = start;
    this.segs[n + 1] = end;
    this.idxStart = w;
    return true;
  }

  private occurrence(index: number): number {
    let n = 0;
    for (let i = 0; i <= index; i++) if (this.isSegment(i, this.segmentName(index))) n++;
    return n;
  }

  private resolvedCharset(): Charset {
    if (this.charset !== null) return this.charset;
    const msh = this.header;
    const declared = msh !== null && msh.locate(18, 0, 0, 1) ? charsetText(this.bytes, msh.leafStart, msh.leafEnd) : '';
    return this.useCharsetName(declared);
  }

  /**
   * Sets the message's character set from its MSH-18 text `declared` (first repetition, as
   * `charsetName` would return it) without scanning MSH again: for a caller that has MSH-18 from
   * a cache keyed by the MSH bytes. No effect once the charset is known.
   */
  adoptCharsetName(declared: string): void {
    if (this.charset === null) this.useCharsetName(declared);
  }

  private useCharsetName(declared: string): Charset {
    this.declaredCharset = declared;
    const name = declared === '' && this.defaultCharset !== undefined ? this.defaultCharset : declared;
    const cs = charsetFor(name);
    if (cs !== null) {
      this.charset = cs;
      return cs;
    }
    this.charset = ASCII_CHARSET;
    this.warn(
      hl7Problem(
        ErrorCode.HL7_BAD_CHARSET,
        '103',
        'MSH-18',
        'MSH-18 names a character set the gateway does not know; text is read as UTF-8 where valid, else ISO-8859-1',
        'W',
      ),
    );
    return ASCII_CHARSET;
  }

  /** Things that were odd but readable: unknown/mismatched charset, wrapped segments (bounded). */
  get warnings(): readonly Hl7Problem[] {
    this.indexTo(ALL_SEGMENTS);
    if (this.charset === null && this.fatal === null) this.resolvedCharset();
    return this.warningList ?? NO_WARNINGS;
  }

  // Adds a warning once per code+location.
  private warn(p: Hl7Problem): void {
    const list = (this.warningList ??= []);
    if (list.length >= MAX_WARNINGS) return;
    for (const w of list) if (w.code === p.code && w.location === p.location) return;
    list.push(p);
  }

  /** A `DataView` that reads `bytes[i]` at offset `viewOffset + i` (shared between messages). */
  get view(): DataView {
    return (this.dataView ??= wholeView(this.bytes));
  }

  /** Offset of `bytes[0]` in `view`. */
  get viewOffset(): number {
    return this.bytes.byteOffset;
  }

  /** MSH-18 as sent (first repetition), `''` when empty. */
  get charsetName(): string {
    if (this.charset === null && this.fatal === null) this.resolvedCharset();
    return this.declaredCharset;
  }

  /** Number of segments (0 when `fatal`). */
  get segmentCount(): number {
    this.indexTo(ALL_SEGMENTS);
    return this.segs.length >> 1;
  }

  /** The delimiters of this message (the standard ones when `fatal`). */
  get delimiters(): Hl7Delimiters {
    if (this.fatal !== null) return DEFAULT_DELIMITERS;
    if (this.fs === 0x7c && this.cs === 0x5e && this.rs === 0x7e && this.es === 0x5c && this.ss === 0x26) {
      return this.ts < 0 ? DEFAULT_DELIMITERS : this.ts === 0x23 ? V27_DELIMITERS : this.customDelimiters();
    }
    return this.customDelimiters();
  }

  private customDelimiters(): Hl7Delimiters {
    const ch = (c: number): string => (c < 0 ? '' : String.fromCharCode(c));
    return {
      field: ch(this.fs),
      component: ch(this.cs),
      repetition: ch(this.rs),
      escape: ch(this.es),
      subcomponent: ch(this.ss),
      truncation: ch(this.ts),
    };
  }

  /**
   * The encoding text is decoded with: `ascii` (no MSH-18 or `ASCII`), `latin1`, `utf8`, or a
   * WHATWG label (`iso-8859-15`, `windows-1252`). High bytes in an `ascii` message are read as
   * UTF-8 when valid, else Latin-1 (and a warning is added).
   */
  get encoding(): string {
    return this.fatal === null ? this.resolvedCharset().label : ASCII_CHARSET.label;
  }

  /** The MSH segment, or `null` when `fatal`. */
  get header(): Hl7Segment | null {
    if (this.headerSegment === null && this.fatal === null) this.headerSegment = this.segment(0);
    return this.headerSegment;
  }

  /** Offset of segment `index` in `bytes` (-1 when out of range). */
  segmentStart(index: number): number {
    if (2 * index >= this.segs.length) this.indexTo(index);
    return this.segs[2 * index] ?? -1;
  }

  /** Offset just past segment `index` (its terminator excluded; -1 when out of range). */
  segmentEnd(index: number): number {
    if (2 * index + 1 >= this.segs.length) this.indexTo(index);
    return this.segs[2 * index + 1] ?? -1;
  }

  /** True when segment `index` was broken over several lines in the input and joined. */
  segmentContinued(index: number): boolean {
    if (2 * index + 1 >= this.segs.length) this.indexTo(index);
    return this.continuedSegments !== null && this.continuedSegments.has(index);
  }

  /** The three-character name of segment `index` (`''` when out of range). */
  segmentName(index: number): string {
    if (2 * index + 1 >= this.segs.length) this.indexTo(index);
    const s = this.segs[2 * index];
    const e = this.segs[2 * index + 1];
    if (s === undefined || e === undefined) return '';
    return this.text(s, Math.min(s + 3, e));
  }

  /** True when segment `index` is named `name` (compares bytes; allocates nothing). */
  isSegment(index: number, name: string): boolean {
    if (2 * index + 1 >= this.segs.length) this.indexTo(index);
    const s = this.segs[2 * index];
    const e = this.segs[2 * index + 1];
    if (s === undefined || e === undefined || e - s < 3) return false;
    const b = this.bytes;
    return b[s] === name.charCodeAt(0) && b[s + 1] === name.charCodeAt(1) && b[s + 2] === name.charCodeAt(2);
  }

  /**
   * Segment `index` (0 = MSH). Pass `reuse` to re-point an existing segment object instead of
   * allocating one (for hot loops; the old view is gone). `null` when out of range.
   */
  segment(index: number, reuse?: Hl7Segment): Hl7Segment | null {
    if (2 * index + 1 >= this.segs.length) this.indexTo(index);
    const s = this.segs[2 * index];
    const e = this.segs[2 * index + 1];
    if (s === undefined || e === undefined) return null;
    const seg = reuse ?? new Hl7Segment();
    seg.reset(this, index, s, e, this.continuedSegments !== null && this.continuedSegments.has(index));
    return seg;
  }

  /** The first segment named `name`, or `null`. */
  firstSegment(name: string): Hl7Segment | null {
    for (let i = 0; i < this.segmentCount; i++) if (this.isSegment(i, name)) return this.segment(i);
    return null;
  }

  /** All segments named `name` (all segments when `name` is omitted), in message order. */
  segments(name?: string): Hl7Segment[] {
    const out: Hl7Segment[] = [];
    for (let i = 0; i < this.segmentCount; i++) {
      if (name === undefined || this.isSegment(i, name)) out.push(this.segment(i)!);
    }
    return out;
  }

  /**
   * Decodes one leaf `bytes[s, e)` (a primitive value: delimiters inside it are kept as they
   * are): escape sequences (HL7 v2.6 2.7) are replaced, line breaks of wrapped segments removed,
   * and the bytes decoded in the message's character set. Never throws. Pass `intern = false`
   * for personal data (PID fields): short leaves are otherwise kept in a process-wide cache.
   */
  text(s: number, e: number, intern = true): string {
    return this.leaf(s, e, this.es, intern);
  }

  /**
   * The text of `bytes[s, e)` without escape decoding (line breaks of wrapped segments removed,
   * charset applied): what an ACK echoes back in the sender's own notation.
   */
  rawText(s: number, e: number, intern = true): string {
    return this.leaf(s, e, -1, intern);
  }

  // esc = the escape byte to honour, -1 for none (raw text).
  private leaf(s: number, e: number, esc: number, intern: boolean): string {
    if (s >= e) return '';
    const b = this.bytes;
    const n = e - s;
    if (intern && n <= INTERN_MAX_LEN) {
      const slot = internKeys.slotOf(b, s, e, esc);
      if (internKeys.matches(slot, b, this.view, b.byteOffset, s, e, esc)) return internStrings[slot]!;
      for (let i = s; i < e; i++) {
        const c = b[i]!;
        // Anything outside printable ASCII, or the escape character, needs the slow path.
        if (c - 0x20 > 0x5e || c < 0x20 || c === esc) return this.decodeBytes(s, e, esc >= 0);
      }
      const str = latin1(b, s, e);
      internKeys.store(slot, b, s, e, esc);
      internStrings[slot] = str;
      return str;
    }
    for (let i = s; i < e; i++) {
      const c = b[i]!;
      if (c - 0x20 > 0x5e || c < 0x20 || c === esc) return this.decodeBytes(s, e, esc >= 0);
    }
    return latin1(b, s, e);
  }

  private decodeBytes(s: number, e: number, unescape: boolean): string {
    const b = this.bytes;
    // Escapes shrink or keep the length, except `\.spN\` (at most MAX_SP_LINES per 4+ bytes).
    const out = ensureScratch((e - s) * 3 + MAX_SP_LINES);
    const esc = unescape ? this.es : -1;
    let o = 0;
    let high = false;
    let i = s;
    while (i < e) {
      const c = b[i]!;
      if (c === CR || c === LF) {
        i++;
        continue;
      }
      if (c !== esc) {
        if (c >= 0x80) high = true;
        out[o++] = c;
        i++;
        continue;
      }
      let j = i + 1;
      while (j < e && b[j] !== esc) j++;
      if (j >= e) {
        // An escape character without its closing partner is taken literally.
        out[o++] = c;
        i++;
        continue;
      }
      const r = this.unescapeInto(b, i + 1, j, out, o);
      if (r < 0) {
        for (let k = i; k <= j; k++) {
          const d = b[k]!;
          if (d >= 0x80) high = true;
          out[o++] = d;
        }
      } else {
        for (let k = o; k < r; k++) if (out[k]! >= 0x80) high = true;
        o = r;
      }
      i = j + 1;
    }
    const view = toBuffer(out.subarray(0, o));
    if (!high) return latin1(view, 0, o);
    return this.decodeHigh(view, o);
  }

  // Writes the replacement of the escape body b[s, e) into out at o; returns the new end, or -1
  // when the sequence is not understood (the caller then keeps it literally).
  private unescapeInto(b: Buffer, s: number, e: number, out: Uint8Array, o: number): number {
    const n = e - s;
    if (n === 0) return -1;
    const kind = b[s]!;
    if (n === 1) {
      switch (kind) {
        case 0x46: // \F\ field separator
          out[o] = this.fs;
          return o + 1;
        case 0x53: // \S\ component separator
          if (this.cs < 0) return -1;
          out[o] = this.cs;
          return o + 1;
        case 0x54: // \T\ subcomponent separator
          if (this.ss < 0) return -1;
          out[o] = this.ss;
          return o + 1;
        case 0x52: // \R\ repetition separator
          if (this.rs < 0) return -1;
          out[o] = this.rs;
          return o + 1;
        case 0x45: // \E\ escape character
          out[o] = this.es;
          return o + 1;
        case 0x50: // \P\ truncation character (v2.7)
          if (this.ts < 0) return -1;
          out[o] = this.ts;
          return o + 1;
        case 0x48: // \H\ start highlighting: presentation only
        case 0x4e: // \N\ normal text
          return o;
        default:
          return -1;
      }
    }
    switch (kind) {
      case 0x58: {
        // \Xhh…\ hexadecimal data: bytes in the message's character set.
        if ((n - 1) % 2 !== 0) return -1;
        for (let k = s + 1; k < e; k += 2) {
          const hi = hexValue(b[k]!);
          const lo = hexValue(b[k + 1]!);
          if (hi < 0 || lo < 0) return -1;
          out[o++] = hi * 16 + lo;
        }
        return o;
      }
      case 0x2e: {
        // HL7 v2.6 2.7.6 formatted text commands: line breaks become '\n', layout is dropped.
        const cmd = latin1(b, s + 1, e);
        if (cmd === 'br') {
          out[o] = LF;
          return o + 1;
        }
        if (cmd.startsWith('sp')) {
          const arg = cmd.slice(2).trim();
          let lines = arg === '' ? 1 : Number.parseInt(arg, 10);
          if (!Number.isFinite(lines) || lines < 1) lines = 1;
          if (lines > MAX_SP_LINES) lines = MAX_SP_LINES;
          for (let k = 0; k < lines; k++) out[o++] = LF;
          return o;
        }
        if (/^(?:fi|nf|ce|in[+-]?\d*|ti[+-]?\d*|sk[+-]?\s*\d*)$/.test(cmd)) return o;
        return -1;
      }
      case 0x43: // \Cxxyy\ single-byte character set switch (ISO 2022): not supported, dropped
      case 0x4d: // \Mxxyyzz\ multi-byte character set switch: not supported, dropped
        return o;
      default:
        // \Z…\ (locally defined) and anything else stays as sent.
        return -1;
    }
  }

  private decodeHigh(view: Buffer, n: number): string {
    const cs = this.resolvedCharset();
    switch (cs.kind) {
      case CharsetKind.Latin1:
        return latin1(view, 0, n);
      case CharsetKind.Table: {
        const table = cs.table!;
        let s = '';
        for (let i = 0; i < n; i++) s += table[view[i]!];
        return s;
      }
      case CharsetKind.Utf8:
        if (isUtf8(view)) return utf8(view, 0, n);
        this.warn(
          hl7Problem(
            ErrorCode.HL7_BAD_CHARSET,
            '102',
            'MSH-18',
            'text is not valid UTF-8 although MSH-18 says so; read as ISO-8859-1',
            'W',
          ),
        );
        return latin1(view, 0, n);
      default:
        // ASCII declared (or nothing): the sender sent 8-bit text without naming its charset.
        if (isUtf8(view)) {
          this.warn(
            hl7Problem(ErrorCode.HL7_BAD_CHARSET, '102', 'MSH-18', 'non-ASCII text without a charset in MSH-18; read as UTF-8', 'W'),
          );
          return utf8(view, 0, n);
        }
        this.warn(
          hl7Problem(
            ErrorCode.HL7_BAD_CHARSET,
            '102',
            'MSH-18',
            'non-ASCII text without a charset in MSH-18; read as ISO-8859-1',
            'W',
          ),
        );
        return latin1(view, 0, n);
    }
  }

  /**
   * Encodes `text` for this message's character set (what an ACK to this sender must use).
   * Characters the set cannot represent become `?`.
   */
  encode(text: string): Buffer {
    return encodeText(text, this.fatal === null ? this.resolvedCharset() : ASCII_CHARSET);
  }
}

function encodeText(text: string, cs: Charset): Buffer {
  switch (cs.kind) {
    case CharsetKind.Utf8:
      return Buffer.from(text, 'utf8');
    case CharsetKind.Latin1:
    case CharsetKind.Ascii: {
      const max = cs.kind === CharsetKind.Latin1 ? 0xff : 0x7f;
      const out = Buffer.allocUnsafe(text.length);
      let o = 0;
      for (const ch of text) {
        const c = ch.codePointAt(0)!;
        out[o++] = c <= max ? c : 0x3f;
      }
      return out.subarray(0, o);
    }
    default: {
      const table = cs.table!;
      const reverse = new Map<string, number>();
      for (let b = 0; b < 256; b++) if (!reverse.has(table[b]!)) reverse.set(table[b]!, b);
      const out = Buffer.allocUnsafe(text.length);
      let o = 0;
      for (const ch of text) out[o++] = reverse.get(ch) ?? 0x3f;
      return out.subarray(0, o);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Segment


/**
 * A view of one segment. Field numbers are 1-based and read like the spec: `obx.get(5)` is
 * OBX-5, `msh.get(9, 2)` is MSH-9.2; for MSH, `get(1)` is the field separator and `get(2)` the
 * encoding characters (the MSH off-by-one lives only in `fieldRange`). Field offsets are found
 * on demand up to the highest field asked for and cached in the view.
 */
export class Hl7Segment {
  /** Start of the leaf found by the last successful `locate`. */
  leafStart = 0;
  /** End (exclusive) of the leaf found by the last successful `locate`. */
  leafEnd = 0;

  private msg: Hl7Message | null = null;
  private idx = -1;
  private start = 0;
  private end = 0;
  private isMsh = false;
  private continued = false;
  // fieldStarts[k] is the offset of the k-th '|'-separated piece (0 = the segment name).
  // A plain array (cheap to allocate per segment view, packed small integers); grows by push.
  private readonly fieldStarts: number[] = [0];
  private known = 0;
  private complete = false;

  /** @internal Use `Hl7Message.segment`. */
  reset(msg: Hl7Message, index: number, start: number, end: number, continued: boolean): void {
    this.msg = msg;
    this.idx = index;
    this.start = start;
    this.end = end;
    const b = msg.bytes;
    this.isMsh = b[start] === 0x4d && b[start + 1] === 0x53 && b[start + 2] === 0x48;
    this.continued = continued;
    this.fieldStarts[0] = start;
    this.known = 1;
    this.complete = false;
  }

  /** The message this segment belongs to. */
  get message(): Hl7Message {
    return this.msg!;
  }

  /** Position of the segment in its message (0 = MSH). */
  get index(): number {
    return this.idx;
  }

  /** The segment name (`OBX`). */
  get name(): string {
    return this.msg!.text(this.start, Math.min(this.start + 3, this.end));
  }

  /** Byte range of the whole segment (without its terminator). */
  get range(): Hl7Range {
    return { start: this.start, end: this.end };
  }

  /** Offset of the segment's first byte in `message.bytes`. */
  get byteStart(): number {
    return this.start;
  }

  /** Offset just past the segment's last byte (its terminator is not included). */
  get byteEnd(): number {
    return this.end;
  }

  /** True when the segment was broken over several lines in the input and joined. */
  get wasContinued(): boolean {
    return this.continued;
  }

  /** The number of the last field present (`OBX|1|NM` → 2; for MSH, counting MSH-1). */
  get fieldCount(): number {
    this.scanTo(0x7fffffff);
    const pieces = this.known - 1;
    return this.isMsh ? pieces + 1 : pieces;
  }

  // Scans field separators until piece k's end is known (or the segment ends).
  private scanTo(k: number): void {
    if (this.complete || this.known > k + 1) return;
    const b = this.msg!.bytes;
    const fs = this.msg!.fs;
    const end = this.end;
    const starts = this.fieldStarts;
    let known = this.known;
    let i = known === 1 ? this.start + 3 : starts[known - 1]!;
    // The MSH field separator is MSH-1 itself, not a boundary before MSH-2 …
    if (known === 1 && this.isMsh) {
      starts[1] = this.start + 4;
      known = 2;
      i = this.start + 4;
      if (known > k + 1) {
        this.known = known;
        return;
      }
    } else if (known === 1) {
      // … while for other segments the byte after the name must be the separator.
      if (i >= end || b[i] !== fs) {
        this.known = 1;
        this.complete = true;
        return;
      }
      starts[1] = i + 1;
      known = 2;
      i++;
      if (known > k + 1) {
        this.known = known;
        return;
      }
    }
    const view = this.msg!.view;
    const at = b.byteOffset;
    const fsWord = Math.imul(fs, 0x01010101);
    for (;;) {
      let next = -1;
      // Four bytes at a time (SWAR): the lowest zero byte of word ^ fs is the next separator.
      while (i + 4 <= end) {
        const x = view.getInt32(at + i, true) ^ fsWord;
        const m = (x - 0x01010101) & ~x & 0x80808080;
        if (m === 0) {
          i += 4;
          continue;
        }
        next = i + ((31 - Math.clz32(m & -m)) >> 3);
        break;
      }
      if (next < 0) {
        while (i < end && b[i] !== fs) i++;
        if (i >= end) break;
        next = i;
      }
      i = next + 1;
      if (known === starts.length) starts.push(i);
      else starts[known] = i;
      known++;
      if (known > k + 1) {
        this.known = known;
        return;
      }
    }
    this.known = known;
    this.complete = true;
  }

  /**
   * Sets `leafStart`/`leafEnd` to field `field` (HL7 numbering). Returns false when the segment
   * has no such field.
   */
  fieldRange(field: number): boolean {
    if (field < 1) return false;
    if (this.isMsh && field === 1) {
      this.leafStart = this.start + 3;
      this.leafEnd = this.start + 4;
      return this.end > this.start + 3;
    }
    const k = this.isMsh ? field - 1 : field;
    this.scanTo(k);
    if (k >= this.known) return false;
    this.leafStart = this.fieldStarts[k]!;
    this.leafEnd = k + 1 < this.known ? this.fieldStarts[k + 1]! - 1 : this.end;
    return true;
  }

  /**
   * Sets `leafStart`/`leafEnd` to one part of field `field`: repetition `repetition` (1-based),
   * then component `component` and subcomponent `subcomponent` (1-based; 0 = the whole
   * repetition / component). Returns false when that part is not present. MSH-1 and MSH-2 are
   * single leaves.
   */
  locate(field: number, component = 1, subcomponent = 1, repetition = 1): boolean {
    if (!this.fieldRange(field)) return false;
    if (this.isMsh && field <= 2) return component <= 1 && subcomponent <= 1 && repetition === 1;
    const msg = this.msg!;
    const b = msg.bytes;
    const rs = msg.rs;
    const cs = msg.cs;
    const ss = msg.ss;
    const e = this.leafEnd;
    let s = this.leafStart;
    // One forward pass that stops at the end of the part asked for; an unused delimiter is -1
    // and never matches a byte.
    for (let r = 1; r < repetition; r++) {
      while (s < e && b[s] !== rs) s++;
      if (s >= e) return false;
      s++;
    }
    let x = s;
    if (component === 0) {
      while (x < e && b[x] !== rs) x++;
      this.leafStart = s;
      this.leafEnd = x;
      return true;
    }
    for (let c = 1; c < component; c++) {
      while (s < e) {
        const ch = b[s];
        if (ch === cs || ch === rs) break;
        s++;
      }
      if (s >= e || b[s] !== cs) return false;
      s++;
    }
    if (subcomponent === 0) {
      x = s;
      while (x < e) {
        const ch = b[x];
        if (ch === cs || ch === rs) break;
        x++;
      }
      this.leafStart = s;
      this.leafEnd = x;
      return true;
    }
    for (let k = 1; k < subcomponent; k++) {
      while (s < e) {
        const ch = b[s];
        if (ch === ss || ch === cs || ch === rs) break;
        s++;
      }
      if (s >= e || b[s] !== ss) return false;
      s++;
    }
    x = s;
    while (x < e) {
      const ch = b[x];
      if (ch === ss || ch === cs || ch === rs) break;
      x++;
    }
    this.leafStart = s;
    this.leafEnd = x;
    return true;
  }

  /**
   * The decoded value at `field.component.subcomponent` of repetition `repetition` (all 1-based;
   * `get(5)` is OBX-5.1.1 of the first repetition, i.e. the value of a primitive field). `''`
   * when absent. Escapes are decoded; HL7's explicit null `""` is returned as the two quotes.
   */
  get(field: number, component = 1, subcomponent = 1, repetition = 1): string {
    if (!this.locate(field, component, subcomponent, repetition)) return '';
    if (this.isMsh && field <= 2) return this.msg!.rawText(this.leafStart, this.leafEnd);
    return this.msg!.text(this.leafStart, this.leafEnd);
  }

  /**
   * The field (or one repetition of it with `repetition`) as sent: delimiters and escape
   * sequences untouched (line breaks of a wrapped segment removed). `''` when absent. Pass
   * `intern = false` for values that are unique per message (MSH-10) or personal.
   */
  raw(field: number, repetition = 0, intern = true): string {
    if (repetition > 0 ? !this.locate(field, 0, 0, repetition) : !this.fieldRange(field)) return '';
    return this.msg!.rawText(this.leafStart, this.leafEnd, intern);
  }

  /**
   * The number at `field.component.subcomponent` (see `parseNumber`): `NaN` when absent, empty,
   * or not a plain decimal number.
   */
  number(field: number, component = 1, subcomponent = 1, repetition = 1): number {
    if (!this.locate(field, component, subcomponent, repetition)) return Number.NaN;
    return parseNumber(this.msg!.bytes, this.leafStart, this.leafEnd);
  }

  /** True when the part exists and is not empty. */
  has(field: number, component = 1, subcomponent = 1, repetition = 1): boolean {
    return this.locate(field, component, subcomponent, repetition) && this.leafEnd > this.leafStart;
  }

  /** Number of repetitions of `field` (0 when the field is absent or empty). */
  repetitionCount(field: number): number {
    if (!this.fieldRange(field)) return 0;
    const s = this.leafStart;
    const e = this.leafEnd;
    if (s >= e) return 0;
    if (this.isMsh && field <= 2) return 1;
    const rs = this.msg!.rs;
    if (rs < 0) return 1;
    const b = this.msg!.bytes;
    let n = 1;
    for (let i = s; i < e; i++) if (b[i] === rs) n++;
    return n;
  }

  /** Number of components in one repetition of `field` (0 when absent or empty). */
  componentCount(field: number, repetition = 1): number {
    if (!this.locate(field, 0, 0, repetition)) return 0;
    const s = this.leafStart;
    const e = this.leafEnd;
    if (s >= e) return 0;
    const cs = this.msg!.cs;
    if (cs < 0 || (this.isMsh && field <= 2)) return 1;
    const b = this.msg!.bytes;
    let n = 1;
    for (let i = s; i < e; i++) if (b[i] === cs) n++;
    return n;
  }

  /** The segment as text, without escape decoding. */
  toString(): string {
    return this.msg!.rawText(this.start, this.end);
  }
}

// ---------------------------------------------------------------------------------------------
// Numbers

const POW10 = [1, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22];

/**
 * Parses an HL7 NM value in `bytes[s, e)` without creating a string: optional surrounding
 * spaces, optional sign, digits with an optional decimal point (HL7 v2.6 2.A.47), and — leniently —
 * an exponent. Returns `NaN` for anything else (empty, `abc`, decimal commas `1,5`, hex, `Infinity`).
 * Values with at most 15 significant digits are exact to the nearest double (mantissa divided by
 * an exact power of ten); longer ones go through `Number.parseFloat`.
 */
export function parseNumber(bytes: Uint8Array, s: number, e: number): number {
  while (s < e && bytes[s] === SPACE) s++;
  while (e > s && bytes[e - 1] === SPACE) e--;
  if (s >= e) return Number.NaN;
  let i = s;
  let negative = false;
  const first = bytes[i];
  if (first === 0x2d || first === 0x2b) {
    negative = first === 0x2d;
    i++;
  }
  let mantissa = 0;
  let digits = 0;
  let scale = 0;
  let dot = false;
  let significant = 0;
  for (; i < e; i++) {
    const c = bytes[i]!;
    if (c >= 0x30 && c <= 0x39) {
      digits++;
      if (mantissa !== 0 || c !== 0x30) significant++;
      mantissa = mantissa * 10 + (c - 0x30);
      if (dot) scale++;
    } else if (c === 0x2e && !dot) {
      dot = true;
    } else {
      break;
    }
  }
  if (digits === 0) return Number.NaN;
  if (i < e) {
    const c = bytes[i];
    if (c !== 0x45 && c !== 0x65) return Number.NaN;
    let j = i + 1;
    if (j < e && (bytes[j] === 0x2b || bytes[j] === 0x2d)) j++;
    if (j >= e) return Number.NaN;
    for (; j < e; j++) {
      const d = bytes[j]!;
      if (d < 0x30 || d > 0x39) return Number.NaN;
    }
    return Number.parseFloat(latin1(toBuffer(bytes), s, e));
  }
  if (significant > 15 || scale > 22) return Number.parseFloat(latin1(toBuffer(bytes), s, e));
  const v = scale === 0 ? mantissa : mantissa / POW10[scale]!;
  return negative ? -v : v;
}

// ---------------------------------------------------------------------------------------------
// Escaping (for text we write into ACKs)

/**
 * Escapes `text` for use as one leaf in a message with `delimiters` (HL7 v2.6 2.7.1): the
 * escape character first, then the separators. Line breaks become spaces (ER7 cannot carry
 * them inside a field).
 */
export function escapeHl7(text: string, delimiters: Hl7Delimiters = DEFAULT_DELIMITERS): string {
  const esc = delimiters.escape;
  let out = '';
  for (const ch of text) {
    if (ch === '\r' || ch === '\n') out += ' ';
    else if (esc === '') out += ch;
    else if (ch === esc) out += `${esc}E${esc}`;
    else if (ch === delimiters.field) out += `${esc}F${esc}`;
    else if (ch === delimiters.component) out += `${esc}S${esc}`;
    else if (ch === delimiters.subcomponent) out += `${esc}T${esc}`;
    else if (ch === delimiters.repetition) out += `${esc}R${esc}`;
    else if (delimiters.truncation !== '' && ch === delimiters.truncation) out += `${esc}P${esc}`;
    else out += ch;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// ACK

/**
 * What an ACK needs from the message it answers, copied out of the message when it is read: the
 * frame buffer may be reused before the ACK is built (the ACK is sent only after the durable
 * store). `Pcd01Header` extends it; `ackTarget()` makes one from any message.
 */
export interface AckTarget {
  /** The incoming message's delimiters; the ACK uses the same ones. */
  readonly delimiters: Hl7Delimiters;
  /** Character set the ACK is encoded in: the incoming message's (see `Hl7Message.encoding`). */
  readonly encoding: string;
  /** MSH-3 as sent (escapes untouched): MSH-5 of the ACK. */
  readonly rawSendingApplication: string;
  /** MSH-4 as sent: MSH-6 of the ACK. */
  readonly rawSendingFacility: string;
  /** MSH-9.2 (trigger event), decoded: the ACK is `ACK^<trigger>^ACK`. */
  readonly trigger: string;
  /** MSH-10 as sent: MSA-2 of the ACK. */
  readonly rawControlId: string;
  /** MSH-11 as sent (echoed; `P` when empty). */
  readonly rawProcessingId: string;
  /** MSH-12 as sent (echoed; `2.6` when empty). */
  readonly rawVersion: string;
  /** MSH-18 as sent (echoed). */
  readonly rawCharset: string;
}

/** The `AckTarget` of `message`, or `null` when it has no usable MSH (`fatal` set). */
export function ackTarget(message: Hl7Message): AckTarget | null {
  const msh = message.header;
  if (message.fatal !== null || msh === null) return null;
  return {
    delimiters: message.delimiters,
    encoding: message.encoding,
    rawSendingApplication: msh.raw(3),
    rawSendingFacility: msh.raw(4),
    trigger: msh.get(9, 2),
    rawControlId: msh.raw(10),
    rawProcessingId: msh.raw(11),
    rawVersion: msh.raw(12),
    rawCharset: msh.raw(18),
  };
}

/** Options for `buildAck`. */
export interface AckOptions {
  /** MSH-3 of the ACK. Default `MDI_GATEWAY`. */
  readonly sendingApplication?: string;
  /** MSH-4 of the ACK. Default empty. */
  readonly sendingFacility?: string;
  /** MSH-10 of the ACK. Default: 20 random hex digits (fits the 20-character MSH-10 of v2.5). */
  readonly controlId?: string;
  /** MSH-7 time, epoch ms. Default `Date.now()`. */
  readonly now?: number;
  /** Zone for MSH-7: a `ZoneOffsets` or an IANA name. Default `Europe/Copenhagen`. */
  readonly timezone?: ZoneOffsets | string;
  /** Most ERR segments to write; further problems are summarised in one last ERR. Default 50. */
  readonly maxErrors?: number;
}

const LOCATION = /^([A-Z0-9]{3})(?:\[(\d+)\])?(?:-(\d+)(?:\.(\d+)(?:\.(\d+))?)?)?$/;

function versionBefore25(version: string): boolean {
  const m = /^(\d+)\.(\d+)/.exec(version);
  if (!m) return false;
  const major = Number(m[1]);
  const minor = Number(m[2]);
  return major < 2 || (major === 2 && minor < 5);
}

function charsetForLabel(label: string): Charset {
  switch (label) {
    case 'utf8':
      return UTF8_CHARSET;
    case 'latin1':
      return LATIN1_CHARSET;
    case 'ascii':
      return ASCII_CHARSET;
    default:
      return tableCharset(label) ?? ASCII_CHARSET;
  }
}

/** Random per process, so ACK control ids of two runs or two instances never meet. */
const ACK_ID_PREFIX = randomBytes(6).toString('hex');
let ackCounter = 0;

/**
 * A fresh ACK control id: 20 hex digits, the process prefix and a counter (a random draw per
 * ACK cost 1–2 % of the gateway's time on the MLLP path). Unique for 2^32 ACKs per process.
 */
function nextAckControlId(): string {
  ackCounter = (ackCounter + 1) >>> 0;
  return ACK_ID_PREFIX + ackCounter.toString(16).padStart(8, '0');
}

/**
 * Builds an original-mode acknowledgment (HL7 v2.6 2.9.2) for `target` (a message as read, or
 * the `AckTarget`/`Pcd01Header` taken from it):
 *
 * - `MSH|<delims>|<sendingApplication>|<sendingFacility>|<MSH-3>|<MSH-4>|<now>||ACK^<trigger>^ACK|<fresh id>|<MSH-11>|<MSH-12>|||||<MSH-18>`
 *   with the incoming message's own delimiters (a v2.7 `^~\&#` sender gets them back) and its
 *   fields echoed as sent;
 * - `MSA|<code>|<MSH-10>` (plus MSA-3, the first problem, for versions before 2.5);
 * - one `ERR` per problem: ERR-2 location (`OBX^4^5`), ERR-3 table 0357 code
 *   (`102^Data type error^HL70357`), ERR-4 severity, ERR-5 our error code
 *   (`MDI_ERR_…^^99MDI`), ERR-8 the message; versions before 2.5 also get ERR-1. In an `AA`
 *   every ERR is a warning (`W`): an accepted message carries no errors.
 *
 * When there is no usable incoming MSH (`null`, or a message with `fatal`), the ACK uses the
 * standard delimiters, has an empty MSA-2 and is always `AR`. Segments end with `\r`; the bytes
 * are in the incoming character set (characters it cannot hold become `?`). Never throws.
 */
export function buildAck(
  target: AckTarget | Hl7Message | null,
  code: AckCode,
  problems: readonly (Problem | Hl7Problem)[] = [],
  options: AckOptions = {},
): Buffer {
  const t = target instanceof Hl7Message ? ackTarget(target) : target;
  const d = t?.delimiters ?? DEFAULT_DELIMITERS;
  const ackCode: AckCode = t === null ? AckCode.AR : code;
  const now = options.now ?? Date.now();
  const zone = typeof options.timezone === 'string' ? zoneOffsets(options.timezone) : (options.timezone ?? zoneOffsets());
  const f = d.field;
  const c = d.component;
  const encChars = `${d.component}${d.repetition}${d.escape}${d.subcomponent}${d.truncation}`;
  const trigger = t?.trigger ?? '';
  const version = t === null ? '' : (t.rawVersion.split(d.component || '^')[0] ?? '');
  const old = versionBefore25(version);
  const controlId = options.controlId ?? nextAckControlId();
  const messageType = trigger === '' ? 'ACK' : `ACK${c}${escapeHl7(trigger, d)}${c}ACK`;

  const mshFields = [
    `MSH${f}${encChars}`,
    escapeHl7(options.sendingApplication ?? 'MDI_GATEWAY', d),
    escapeHl7(options.sendingFacility ?? '', d),
    t?.rawSendingApplication ?? '',
    t?.rawSendingFacility ?? '',
    formatHl7Time(now, zone.offsetAt(now)),
    '',
    messageType,
    escapeHl7(controlId, d),
    t?.rawProcessingId || 'P',
    t?.rawVersion || '2.6',
    '',
    '',
    '',
    '',
    '',
    t?.rawCharset ?? '',
  ];
  while (mshFields.length > 2 && mshFields[mshFields.length - 1] === '') mshFields.pop();
  const lines = [mshFields.join(f)];

  const msa = ['MSA', ackCode, t?.rawControlId ?? ''];
  if (old && problems.length > 0) msa.push(escapeHl7(problems[0]!.message, d));
  lines.push(msa.join(f));

  const accepted = ackCode === AckCode.AA;
  const max = Math.max(0, options.maxErrors ?? 50);
  const shown = problems.length > max ? Math.max(0, max - 1) : problems.length;
  for (let i = 0; i < shown; i++) lines.push(errSegment(problems[i]!, d, old, accepted));
  if (shown < problems.length) {
    const next = problems[shown]!;
    const rest = problems.length - shown;
    lines.push(errSegment(hl7Problem(next.code, next.hl7Code, '', `${rest} further problem(s) not listed`), d, old, accepted));
  }
  const text = `${lines.join('\r')}\r`;
  return encodeText(text, t === null ? ASCII_CHARSET : charsetForLabel(t.encoding));
}

function errSegment(p: Problem | Hl7Problem, d: Hl7Delimiters, old: boolean, accepted: boolean): string {
  const c = d.component;
  const sub = d.subcomponent === '' ? c : d.subcomponent;
  const hl7Code = p.hl7Code === '' ? Hl7ErrorCondition.APPLICATION_INTERNAL_ERROR : p.hl7Code;
  const conditionText = CONDITION_TEXT[hl7Code] ?? '';
  const severity: Hl7Severity = accepted ? 'W' : 'severity' in p ? p.severity : 'E';
  const m = LOCATION.exec(p.location);
  let erl = '';
  let eld = '';
  if (m) {
    const parts = [m[1] ?? '', m[2] ?? '1', m[3] ?? '', '', m[4] ?? '', m[5] ?? ''];
    while (parts.length > 1 && parts[parts.length - 1] === '') parts.pop();
    erl = parts.join(c);
    // ERR-1 (ELD, before v2.5): segment ^ sequence ^ field ^ code&text&HL70357.
    if (old) eld = [m[1] ?? '', m[2] ?? '1', m[3] ?? '', [hl7Code, conditionText, 'HL70357'].join(sub)].join(c);
  } else if (old) {
    eld = `${c}${c}${c}${[hl7Code, conditionText, 'HL70357'].join(sub)}`;
  }
  const fields = [
    'ERR',
    eld,
    erl,
    [hl7Code, conditionText, 'HL70357'].join(c),
    severity,
    [escapeHl7(p.code, d), '', '99MDI'].join(c),
    '',
    '',
    escapeHl7(p.message, d),
  ];
  return fields.join(d.field);
}

// ---------------------------------------------------------------------------------------------
// Exports

/**
 * Splits text as people export it — one or many messages; `\r`, `\n` or `\r\n` endings; MLLP
 * framed or not; blank lines; stray 0x0B/0x1C bytes; batch envelopes (FHS/BHS/BTS/FTS) — into
 * the byte ranges of the individual messages. Each range starts at `MSH` and ends after its last
 * non-blank byte (terminators, blank lines and framing bytes are trimmed). A line continues the
 * current message unless it starts a new `MSH` or a batch envelope segment, so a capture that
 * wrapped a segment stays in one message. Bytes before the first `MSH` are ignored. O(n).
 */
export function splitExport(input: Uint8Array): Hl7Range[] {
  const b = toBuffer(input);
  const end = b.length;
  const out: Hl7Range[] = [];
  let current = -1;
  let lastContent = -1;
  let nextCr = -2;
  let nextLf = -2;
  let pos = 0;
  while (pos < end) {
    if (nextCr < pos && nextCr !== end) {
      nextCr = b.indexOf(CR, pos);
      if (nextCr < 0) nextCr = end;
    }
    if (nextLf < pos && nextLf !== end) {
      nextLf = b.indexOf(LF, pos);
      if (nextLf < 0) nextLf = end;
    }
    const lineEnd = nextCr < nextLf ? nextCr : nextLf;
    let s = pos;
    while (s < lineEnd) {
      const c = b[s]!;
      if (c === VT || c === FS || c === SPACE || c === TAB) s++;
      else if (c === 0xef && b[s + 1] === 0xbb && b[s + 2] === 0xbf) s += 3;
      else break;
    }
    let e = lineEnd;
    while (e > s) {
      const c = b[e - 1]!;
      if (c === VT || c === FS || c === SPACE || c === TAB) e--;
      else break;
    }
    if (e > s) {
      const name3 = e - s >= 3 ? b.readUIntBE(s, 3) : -1;
      const sep = s + 3 < e ? b[s + 3]! : -1;
      const segmentLike = sep >= 0 && !isAlnum(sep) && sep > 0x20 && sep < 0x7f;
      if (name3 === 0x4d5348 && segmentLike) {
        // "MSH"
        if (current >= 0) out.push({ start: current, end: lastContent });
        current = s;
        lastContent = e;
      } else if (segmentLike && (name3 === 0x464853 || name3 === 0x424853 || name3 === 0x425453 || name3 === 0x465453)) {
        // FHS, BHS, BTS, FTS: batch envelope, not part of any message.
        if (current >= 0) out.push({ start: current, end: lastContent });
        current = -1;
      } else if (current >= 0) {
        lastContent = e;
      }
    }
    pos = lineEnd + 1;
  }
  if (current >= 0) out.push({ start: current, end: lastContent });
  return out;
}
