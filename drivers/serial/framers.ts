/**
 * Framers: bytes from a serial line → frames, one concept each (lines; ESC/SOH … CR frames;
 * SOH … EOT blocks with length, checksum and character stuffing).
 *
 * Rules every framer here keeps (the lessons of node-serialport's parsers, see
 * research/aesthetics.md §9.2):
 * - Bytes are looked at once. A framer keeps its position and never rescans what it has seen;
 *   no `Buffer.concat` of the whole backlog per chunk.
 * - Every buffer is bounded. A frame that outgrows its bound is refused (counted, its head kept
 *   for the dead letter) and the framer resynchronises on the next start byte.
 * - A frame split at any byte offset, in any number of chunks, gives the same result as the
 *   frame in one chunk (fuzzed in test/fuzz/serial-framers-fuzz.test.ts).
 * - Nothing is thrown for bad input: refused bytes go to `onReject` with a stable code, and the
 *   next good frame still arrives.
 * - Callbacks are synchronous and frames carry copies, so a callback may keep what it gets.
 */
import { ReadlineParser } from '@serialport/parser-readline';
import { ErrorCode } from '../../src/errors.js';

/** Input a framer refused: counted, and kept as a dead letter by the driver. */
export interface FramerReject {
  readonly code: ErrorCode;
  /** Why, in words, without payload bytes (BCC and text fields may carry patient data). */
  readonly reason: string;
  /** Stream offset of the first refused byte (bytes since the framer was created). */
  readonly offset: number;
  /** How many bytes were refused; `raw` may hold fewer (only the head is kept). */
  readonly length: number;
  /** The refused bytes, at most `MAX_REJECT_BYTES` of them (a copy). */
  readonly raw: Buffer;
}

/**
 * Head of refused input kept for the dead letter. A refused frame is kept whole up to this
 * size (real MEDIBUS and BCC blocks are 0.1–1.2 KiB); a garbage run or an endless line only
 * by its head, so a noisy line cannot fill the store.
 */
export const MAX_REJECT_BYTES = 4096;

/** Counters every framer keeps (read by the driver's status). */
export interface FramerCounters {
  /** Bytes pushed in. */
  bytes: number;
  /** Frames (or lines) delivered. */
  frames: number;
  /** Refusals reported through `onReject`. */
  rejected: number;
  /** Bytes dropped without a refusal of their own (the rest of an overlong frame, realtime bytes). */
  discardedBytes: number;
}

const LF = 0x0a;
const CR = 0x0d;

// ── lines (Masimo ASCII 1) ──────────────────────────────────────────────────

export interface LineFramerOptions {
  /**
   * Longest accepted line, without its CR LF. Masimo ASCII 1 lines are about 200 bytes; 1 KiB
   * leaves room for firmware that adds fields while bounding the readline buffer.
   */
  readonly maxLineBytes?: number;
  /**
   * Drop the bytes up to and including the first LF. Set it for a port just opened: the device
   * was sending before we listened, so the first line is usually the tail of one.
   */
  readonly discardFirstLine?: boolean;
  /** Code of the refusal for a line longer than `maxLineBytes`. */
  readonly tooLongCode: ErrorCode;
  /** A complete line, CR LF removed, as latin1 text (one character per byte, so raw bytes round-trip). */
  readonly onLine: (line: string, offset: number, length: number) => void;
  readonly onReject: (reject: FramerReject) => void;
}

/** Default `maxLineBytes` (see there for why). */
export const DEFAULT_MAX_LINE_BYTES = 1024;

const LF_BUFFER = Buffer.from([LF]);

/**
 * LF-terminated lines, split by `@serialport/parser-readline`, behind a guard that gives the
 * readline parser what it lacks: a bound on the line length (its buffer grows without limit
 * on a line that never ends), the discarding of the first partial line after opening a port,
 * and byte offsets for problem reports.
 *
 * The guard finds each LF once (`indexOf` from its position) and hands the parser at most one
 * line per write, so the parser's concat-and-rescan of its buffered partial line costs at most
 * `maxLineBytes` per chunk. The parser emits synchronously inside `write()` (asserted by a unit
 * test), which is what lets a line be matched with the offsets the guard computed.
 */
export class LineFramer {
  readonly counters: FramerCounters = { bytes: 0, frames: 0, rejected: 0, discardedBytes: 0 };
  private readonly parser: ReadlineParser;
  private readonly maxLineBytes: number;
  /** Stream offset of the next byte. */
  private position = 0;
  /** Stream offset where the current line started. */
  private lineStart = 0;
  /** Bytes of the current line already written to the parser. */
  private lineBytes = 0;
  /** Dropping bytes up to the next LF (first partial line, or the tail of an overlong one). */
  private discarding: boolean;
  /** Set while the guard flushes an overlong line's head through the parser. */
  private cutting = false;
  /** Offsets of the line the parser is about to emit. */
  private emitOffset = 0;
  private emitLength = 0;

  constructor(private readonly options: LineFramerOptions) {
    this.maxLineBytes = options.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES;
    if (!(this.maxLineBytes >= 1)) throw new RangeError('"maxLineBytes" must be ≥ 1');
    this.discarding = options.discardFirstLine ?? false;
    this.parser = new ReadlineParser({ delimiter: '\n', encoding: 'latin1' });
    this.parser.on('data', (line: string) => this.onParserLine(line));
  }

  push(chunk: Uint8Array): void {
    const n = chunk.length;
    this.counters.bytes += n;
    let i = 0;
    while (i < n) {
      const lf = chunk.indexOf(LF, i);
      if (this.discarding) {
        const end = lf === -1 ? n : lf + 1;
        this.counters.discardedBytes += end - i;
        this.position += end - i;
        i = end;
        if (lf !== -1) {
          this.discarding = false;
          this.lineStart = this.position;
        }
        continue;
      }
      const contentEnd = lf === -1 ? n : lf;
      const room = this.maxLineBytes - this.lineBytes;
      if (contentEnd - i > room) {
        // Too long: the parser gets what fits and a LF, so it hands back the head (refused in
        // onParserLine) and holds nothing; the rest of the line is dropped up to its LF.
        if (room > 0) this.parser.write(chunk.subarray(i, i + room));
        this.position += room;
        i += room;
        this.emitOffset = this.lineStart;
        this.emitLength = this.position - this.lineStart;
        this.cutting = true;
        this.parser.write(LF_BUFFER);
        this.cutting = false;
        this.lineBytes = 0;
        this.discarding = true;
        continue;
      }
      const end = lf === -1 ? n : lf + 1;
      if (lf !== -1) {
        this.emitOffset = this.lineStart;
        this.emitLength = this.position + (end - i) - this.lineStart;
      }
      // [i, end) holds at most one LF: the parser emits at most one line, synchronously.
      this.parser.write(chunk.subarray(i, end));
      this.position += end - i;
      i = end;
      if (lf === -1) {
        this.lineBytes = this.position - this.lineStart;
      } else {
        this.lineBytes = 0;
        this.lineStart = this.position;
      }
    }
  }

  /** Bytes of an unfinished line held by the parser (dropped when the port closes). */
  pending(): number {
    return this.discarding ? 0 : this.lineBytes;
  }

  private onParserLine(line: string): void {
    if (this.cutting) {
      this.counters.rejected++;
      this.options.onReject({
        code: this.options.tooLongCode,
        reason: `line longer than ${this.maxLineBytes} bytes without a line feed; dropped up to the next line feed`,
        offset: this.emitOffset,
        length: this.emitLength,
        raw: Buffer.from(line.length > MAX_REJECT_BYTES ? line.slice(0, MAX_REJECT_BYTES) : line, 'latin1'),
      });
      return;
    }
    const text = line.endsWith('\r') ? line.slice(0, -1) : line;
    if (text.length === 0) return; // an empty line carries nothing: not a frame, not an error
    this.counters.frames++;
    this.options.onLine(text, this.emitOffset, this.emitLength);
  }
}

// ── garbage runs (shared by the byte-oriented framers) ──────────────────────

/**
 * Collects a run of bytes outside any frame and reports it as one refusal when a frame starts,
 * or every `MAX_REJECT_BYTES` so a line of pure noise is reported (and its memory released)
 * as it goes.
 */
class GarbageRun {
  private head = Buffer.allocUnsafe(MAX_REJECT_BYTES);
  private headLength = 0;
  private start = -1;
  private length = 0;

  constructor(
    private readonly code: ErrorCode,
    private readonly what: string,
    private readonly report: (reject: FramerReject) => void,
  ) {}

  add(byte: number, offset: number): void {
    if (this.start < 0) this.start = offset;
    if (this.headLength < MAX_REJECT_BYTES) this.head[this.headLength++] = byte;
    this.length++;
    if (this.length >= MAX_REJECT_BYTES) this.flush();
  }

  flush(): void {
    if (this.length === 0) return;
    this.report({
      code: this.code,
      reason: `${this.length} byte${this.length === 1 ? '' : 's'} outside any ${this.what}`,
      offset: this.start,
      length: this.length,
      raw: Buffer.from(this.head.subarray(0, this.headLength)),
    });
    this.start = -1;
    this.length = 0;
    this.headLength = 0;
  }
}

/** Upper-case hex digit of a nibble. */
function hexDigit(n: number): number {
  return n < 10 ? 0x30 + n : 0x37 + n;
}

/** Value of an ASCII hex digit (either case), or -1. */
function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  return -1;
}

/** Two upper-case hex digits of a byte, e.g. `7A`. */
export function hexByte(value: number): string {
  return String.fromCharCode(hexDigit((value >> 4) & 0xf), hexDigit(value & 0xf));
}

// ── MEDIBUS ─────────────────────────────────────────────────────────────────

/** MEDIBUS: a command starts with ESC. */
export const MEDIBUS_ESC = 0x1b;
/** MEDIBUS: a response starts with SOH. */
export const MEDIBUS_SOH = 0x01;
/** MEDIBUS: DC1 (XON) resumes, DC3 (XOFF) pauses the other side's sending. */
export const MEDIBUS_DC1 = 0x11;
export const MEDIBUS_DC3 = 0x13;

/** One checked MEDIBUS frame (command or response). */
export interface MedibusFrame {
  /** `command` (ESC …) or `response` (SOH …). */
  readonly kind: 'command' | 'response';
  /** The command byte (a response echoes the command it answers). */
  readonly code: number;
  /** Bytes between the command byte and the checksum (ASCII; a copy). */
  readonly data: Buffer;
  /** Stream offset of the start byte. */
  readonly offset: number;
  /** Bytes on the wire from the start byte through CR (realtime bytes inside not counted). */
  readonly length: number;
}

/** Options of `MedibusFramer`. */
export interface MedibusFramerOptions {
  /**
   * Largest frame from start byte to CR. A full measured-data response is about 600 bytes and
   * text-message responses stay under 2 KiB; the reference implementation (OpenICE) uses 8000.
   */
  readonly maxFrameBytes?: number;
  readonly onFrame: (frame: MedibusFrame) => void;
  readonly onReject: (reject: FramerReject) => void;
  /** DC1 (0x11) or DC3 (0x13) from the peer: software flow control in the slow data stream. */
  readonly onFlowControl?: (byte: number) => void;
}

/** Default `maxFrameBytes` of MEDIBUS (see there for why). */
export const DEFAULT_MEDIBUS_MAX_FRAME_BYTES = 8192;

/** The 8-bit sum MEDIBUS uses: low byte of the sum of `bytes[start, end)`. */
export function medibusChecksum(bytes: Uint8Array, start = 0, end = bytes.length): number {
  let sum = 0;
  for (let i = start; i < end; i++) sum += bytes[i]!;
  return sum & 0xff;
}

/**
 * Encodes one MEDIBUS frame: start byte, command byte, data, checksum, CR.
 * MEDIBUS: checksum = low byte of the sum of every byte from ESC/SOH through the last data
 * byte, sent as two upper-case ASCII hex characters.
 */
export function encodeMedibusFrame(kind: 'command' | 'response', code: number, data: Uint8Array | string = ''): Buffer {
  const body = typeof data === 'string' ? Buffer.from(data, 'latin1') : data;
  const out = Buffer.allocUnsafe(body.length + 5);
  out[0] = kind === 'command' ? MEDIBUS_ESC : MEDIBUS_SOH;
  out[1] = code;
  out.set(body, 2);
  const sum = medibusChecksum(out, 0, body.length + 2);
  out[body.length + 2] = hexDigit(sum >> 4);
  out[body.length + 3] = hexDigit(sum & 0xf);
  out[body.length + 4] = CR;
  return out;
}

/** One open frame: its bytes (start byte, command, data, checksum chars) and where it began. */
class FrameBuffer {
  readonly bytes: Buffer;
  length = 0;
  offset = 0;
  kind: 'command' | 'response' = 'command';
  /** The frame outgrew the buffer: its remaining bytes are dropped up to its CR. */
  overflowed = false;
  /** Wire bytes seen, including those dropped after an overflow. */
  wireLength = 0;

  constructor(size: number) {
    this.bytes = Buffer.allocUnsafe(size);
  }
}

/**
 * MEDIBUS slow-data framer: `ESC cmd data cs cs CR` (commands) and `SOH cmd data cs cs CR`
 * (responses), checksums verified.
 *
 * - MEDIBUS.X realtime data is interleaved in the same byte stream and always has the high bit
 *   set; those bytes are skipped wherever they appear (counted in `realtimeBytes`), as the
 *   reference implementation partitions the stream.
 * - DC1/DC3 are flow control, reported through `onFlowControl`, never part of a frame.
 * - A command may arrive inside a response (each side is master and slave at once): one level
 *   of nesting is kept, as in the reference implementation. Any other start byte inside a
 *   frame means the open frame was cut short (`MEDIBUS_TRUNCATED`).
 * - A bad checksum refuses that frame only (`MEDIBUS_BAD_CHECKSUM`); the framer is already in
 *   sync for the next one, because frames are delimited by their start and CR bytes.
 */
export class MedibusFramer {
  readonly counters: FramerCounters & { realtimeBytes: number } = {
    bytes: 0,
    frames: 0,
    rejected: 0,
    discardedBytes: 0,
    realtimeBytes: 0,
  };
  private readonly maxFrameBytes: number;
  private readonly outer: FrameBuffer;
  private readonly inner: FrameBuffer;
  /** 0: outside frames, 1: in `outer`, 2: in `inner` (nested in `outer`). */
  private depth = 0;
  private position = 0;
  private readonly garbage: GarbageRun;

  constructor(private readonly options: MedibusFramerOptions) {
    this.maxFrameBytes = options.maxFrameBytes ?? DEFAULT_MEDIBUS_MAX_FRAME_BYTES;
    if (!(this.maxFrameBytes >= 5)) throw new RangeError('"maxFrameBytes" must be ≥ 5');
    this.outer = new FrameBuffer(this.maxFrameBytes);
    this.inner = new FrameBuffer(this.maxFrameBytes);
    this.garbage = new GarbageRun(ErrorCode.MEDIBUS_GARBAGE, 'MEDIBUS frame', (r) => this.reject(r));
  }

  push(chunk: Uint8Array): void {
    this.counters.bytes += chunk.length;
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i]!;
      const offset = this.position++;
      if (b & 0x80) {
        // MEDIBUS.X: realtime data bytes have bit 7 set and may appear anywhere.
        this.counters.realtimeBytes++;
        continue;
      }
      if (b === MEDIBUS_DC1 || b === MEDIBUS_DC3) {
        this.options.onFlowControl?.(b);
        continue;
      }
      if (b === MEDIBUS_ESC || b === MEDIBUS_SOH) {
        this.start(b === MEDIBUS_ESC ? 'command' : 'response', b, offset);
        continue;
      }
      if (this.depth === 0) {
        this.garbage.add(b, offset);
        continue;
      }
      const frame = this.depth === 2 ? this.inner : this.outer;
      frame.wireLength++;
      if (b === CR) {
        this.finish(frame);
        this.depth--;
        continue;
      }
      if (frame.overflowed) {
        this.counters.discardedBytes++;
        continue;
      }
      if (frame.length === this.maxFrameBytes - 1) {
        // Room is kept for nothing else: one more byte and the frame cannot be valid.
        frame.overflowed = true;
        this.reject({
          code: ErrorCode.MEDIBUS_FRAME_TOO_LARGE,
          reason: `frame longer than ${this.maxFrameBytes} bytes without CR; dropped up to its CR`,
          offset: frame.offset,
          length: frame.wireLength,
          raw: Buffer.from(frame.bytes.subarray(0, Math.min(frame.length, MAX_REJECT_BYTES))),
        });
        this.counters.discardedBytes++;
        continue;
      }
      frame.bytes[frame.length++] = b;
    }
  }

  /** Ends the stream: an unfinished frame is refused as truncated; a garbage run is reported. */
  end(): void {
    this.garbage.flush();
    while (this.depth > 0) {
      const frame = this.depth === 2 ? this.inner : this.outer;
      this.truncated(frame, 'the stream ended inside a frame');
      this.depth--;
    }
  }

  /** Bytes held for unfinished frames. */
  pending(): number {
    return (this.depth >= 1 ? this.outer.length : 0) + (this.depth === 2 ? this.inner.length : 0);
  }

  private start(kind: 'command' | 'response', byte: number, offset: number): void {
    this.garbage.flush();
    if (this.depth === 0) {
      this.open(this.outer, kind, byte, offset);
      this.depth = 1;
    } else if (this.depth === 1 && this.outer.kind !== kind) {
      // A command inside a response (or the reverse): keep the outer frame open.
      this.open(this.inner, kind, byte, offset);
      this.depth = 2;
    } else if (this.depth === 1) {
      this.truncated(this.outer, 'a new frame started before CR');
      this.open(this.outer, kind, byte, offset);
    } else if (this.inner.kind === kind) {
      this.truncated(this.inner, 'a new frame started before CR');
      this.open(this.inner, kind, byte, offset);
    } else {
      // Inner is the other kind, so the new frame has the outer's kind: both are cut short.
      this.truncated(this.inner, 'a new frame started before CR');
      this.truncated(this.outer, 'a new frame started before CR');
      this.open(this.outer, kind, byte, offset);
      this.depth = 1;
    }
  }

  private open(frame: FrameBuffer, kind: 'command' | 'response', byte: number, offset: number): void {
    frame.kind = kind;
    frame.offset = offset;
    frame.length = 0;
    frame.bytes[frame.length++] = byte;
    frame.wireLength = 1;
    frame.overflowed = false;
  }

  private truncated(frame: FrameBuffer, why: string): void {
    if (frame.overflowed) return; // already refused as too large
    this.reject({
      code: ErrorCode.MEDIBUS_TRUNCATED,
      reason: `${frame.kind} frame cut short: ${why}`,
      offset: frame.offset,
      length: frame.wireLength,
      raw: Buffer.from(frame.bytes.subarray(0, Math.min(frame.length, MAX_REJECT_BYTES))),
    });
  }

  private finish(frame: FrameBuffer): void {
    if (frame.overflowed) return;
    const bytes = frame.bytes;
    const n = frame.length; // without CR
    const raw = () => {
      const out = Buffer.allocUnsafe(n + 1);
      bytes.copy(out, 0, 0, n);
      out[n] = CR;
      return out;
    };
    if (n < 4) {
      this.reject({
        code: ErrorCode.MEDIBUS_TRUNCATED,
        reason: `${frame.kind} frame of ${n + 1} bytes is too short for a command byte and a checksum`,
        offset: frame.offset,
        length: frame.wireLength,
        raw: raw(),
      });
      return;
    }
    const hi = hexValue(bytes[n - 2]!);
    const lo = hexValue(bytes[n - 1]!);
    const computed = medibusChecksum(bytes, 0, n - 2);
    if (hi < 0 || lo < 0 || ((hi << 4) | lo) !== computed) {
      const sent = String.fromCharCode(bytes[n - 2]!, bytes[n - 1]!);
      this.reject({
        code: ErrorCode.MEDIBUS_BAD_CHECKSUM,
        // MEDIBUS: checksum = low byte of the sum of all bytes from ESC/SOH to the last data byte.
        reason: `checksum "${printable(sent)}" does not match the computed ${hexByte(computed)}`,
        offset: frame.offset,
        length: frame.wireLength,
        raw: raw(),
      });
      return;
    }
    this.counters.frames++;
    this.options.onFrame({
      kind: frame.kind,
      code: bytes[1]!,
      data: Buffer.from(bytes.subarray(2, n - 2)),
      offset: frame.offset,
      length: frame.wireLength,
    });
  }

  private reject(reject: FramerReject): void {
    this.counters.rejected++;
    this.options.onReject(reject);
  }
}

// ── B. Braun BCC ────────────────────────────────────────────────────────────

/** BCC control bytes: SOH, STX, ETX, EOT frame a block; ACK/NAK answer it; ETB: more follow; RS separates records. */
export const BCC_SOH = 0x01;
export const BCC_STX = 0x02;
export const BCC_ETX = 0x03;
export const BCC_EOT = 0x04;
export const BCC_ACK = 0x06;
export const BCC_NAK = 0x15;
export const BCC_ETB = 0x17;
export const BCC_RS = 0x1e;

/** One checked, unstuffed BCC frame. */
export interface BccFrame {
  /** Bed id from the header `bedId/1/1>` (the SpaceCom's name for itself, `1` before ALIVE). */
  readonly bedId: string;
  /** The header between STX and `>`, e.g. `ComSystem/1/1`. */
  readonly header: string;
  /** The information part after `>`, unstuffed (UTF-8 text with RS-separated records). */
  readonly info: Buffer;
  /** ETX: the last block of an answer. ETB: more blocks follow after our ACK. */
  readonly final: boolean;
  readonly offset: number;
  /** Bytes on the wire (stuffed) from SOH through EOT. */
  readonly length: number;
}

/** Options of `BccFramer`. */
export interface BccFramerOptions {
  /**
   * Largest frame, unstuffed, from SOH through EOT. One MEM:GET block describes one pump in
   * about 1.2 KiB; 16 KiB allows for firmware with more parameters while bounding memory.
   */
  readonly maxFrameBytes?: number;
  /** BCC character stuffing (D→EX, E→EE, d→ex, e→ee on the wire). On unless the ComDevice has it off. */
  readonly stuffing?: boolean;
  readonly onFrame: (frame: BccFrame) => void;
  readonly onReject: (reject: FramerReject) => void;
  /** A bare ACK (0x06) or NAK (0x15) between frames (what the host sends after each block). */
  readonly onControl?: (byte: number, offset: number) => void;
}

/** Default `maxFrameBytes` of BCC (see there for why). */
export const DEFAULT_BCC_MAX_FRAME_BYTES = 16 * 1024;

/** BCC check: sum of all bytes from SOH through ETX/ETB, modulo 256. */
export function bccChecksum(bytes: Uint8Array, start = 0, end = bytes.length): number {
  let sum = 0;
  for (let i = start; i < end; i++) sum += bytes[i]!;
  return sum & 0xff;
}

/**
 * Encodes one BCC frame: `SOH length STX header>info ETX|ETB check EOT`, then stuffs it when
 * `stuffing` is on. BCC: length counts the whole unstuffed message from SOH through EOT, and
 * the check is the sum of SOH … ETX/ETB modulo 256; both are five ASCII digits.
 */
export function encodeBccFrame(header: string, info: Uint8Array | string, options: { final?: boolean; stuffing?: boolean } = {}): Buffer {
  const head = Buffer.from(`${header}>`, 'latin1');
  const body = typeof info === 'string' ? Buffer.from(info, 'utf8') : info;
  const length = 1 + 5 + 1 + head.length + body.length + 1 + 5 + 1;
  const out = Buffer.allocUnsafe(length);
  out[0] = BCC_SOH;
  out.write(digits5(length), 1, 'latin1');
  out[6] = BCC_STX;
  head.copy(out, 7);
  out.set(body, 7 + head.length);
  const end = 7 + head.length + body.length;
  out[end] = options.final === false ? BCC_ETB : BCC_ETX;
  out.write(digits5(bccChecksum(out, 0, end + 1)), end + 1, 'latin1');
  out[length - 1] = BCC_EOT;
  return options.stuffing === false ? out : bccStuff(out);
}

/** BCC character stuffing of a whole frame: D→EX, E→EE, d→ex, e→ee (control bytes untouched). */
export function bccStuff(bytes: Uint8Array): Buffer {
  let extra = 0;
  for (const b of bytes) if (b === 0x44 || b === 0x45 || b === 0x64 || b === 0x65) extra++;
  if (extra === 0) return Buffer.from(bytes);
  const out = Buffer.allocUnsafe(bytes.length + extra);
  let j = 0;
  for (const b of bytes) {
    if (b === 0x44 || b === 0x45) {
      out[j++] = 0x45; // 'E'
      out[j++] = b === 0x44 ? 0x58 : 0x45; // 'X' for D, 'E' for E
    } else if (b === 0x64 || b === 0x65) {
      out[j++] = 0x65; // 'e'
      out[j++] = b === 0x64 ? 0x78 : 0x65; // 'x' for d, 'e' for e
    } else {
      out[j++] = b;
    }
  }
  return out;
}

function digits5(n: number): string {
  return String(n).padStart(5, '0');
}

/** Five ASCII digits at `bytes[at]` as a number, or -1. */
function read5(bytes: Uint8Array, at: number): number {
  let n = 0;
  for (let i = at; i < at + 5; i++) {
    const d = bytes[i]! - 0x30;
    if (d < 0 || d > 9) return -1;
    n = n * 10 + d;
  }
  return n;
}

/**
 * BCC framer: `SOH len(5) STX bedId/1/1>info ETX|ETB check(5) EOT`, unstuffed with a
 * left-to-right scanner (never a string replace: `EEX` must become `ED`, not `EX`→`D` first),
 * length and check verified against the unstuffed bytes.
 *
 * The frame is delimited by SOH and EOT, not by the length field, so a frame whose length
 * field lies (the spec's own `ComSystem` examples are one byte longer than they say) is
 * refused with both numbers in the reason instead of desynchronising the stream.
 */
export class BccFramer {
  readonly counters: FramerCounters = { bytes: 0, frames: 0, rejected: 0, discardedBytes: 0 };
  private readonly maxFrameBytes: number;
  private readonly stuffing: boolean;
  private readonly frame: Buffer;
  private length = 0;
  private inFrame = false;
  private frameOffset = 0;
  private wireLength = 0;
  /** 0 none, else the escape byte ('E' or 'e') waiting for its partner. */
  private escape = 0;
  /** The open frame is already refused (overflow, bad stuffing): drop bytes up to EOT/SOH. */
  private dropping = false;
  private position = 0;
  private readonly garbage: GarbageRun;

  constructor(private readonly options: BccFramerOptions) {
    this.maxFrameBytes = options.maxFrameBytes ?? DEFAULT_BCC_MAX_FRAME_BYTES;
    if (!(this.maxFrameBytes >= 20)) throw new RangeError('"maxFrameBytes" must be ≥ 20');
    this.stuffing = options.stuffing ?? true;
    this.frame = Buffer.allocUnsafe(this.maxFrameBytes);
    this.garbage = new GarbageRun(ErrorCode.BCC_GARBAGE, 'BCC frame', (r) => this.reject(r));
  }

  push(chunk: Uint8Array): void {
    this.counters.bytes += chunk.length;
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i]!;
      const offset = this.position++;
      if (b === BCC_SOH) {
        this.garbage.flush();
        if (this.inFrame && !this.dropping) this.refuseOpen(ErrorCode.BCC_TRUNCATED, 'a new frame started before EOT');
        this.inFrame = true;
        this.dropping = false;
        this.escape = 0;
        this.frameOffset = offset;
        this.wireLength = 1;
        this.length = 0;
        this.frame[this.length++] = b;
        continue;
      }
      if (!this.inFrame) {
        if (b === BCC_ACK || b === BCC_NAK) {
          this.garbage.flush();
          this.options.onControl?.(b, offset);
        } else {
          this.garbage.add(b, offset);
        }
        continue;
      }
      this.wireLength++;
      if (b === BCC_EOT) {
        if (!this.dropping) {
          if (this.escape !== 0) {
            this.refuseOpen(ErrorCode.BCC_BAD_STUFFING, 'the frame ends inside a stuffing pair');
          } else if (this.append(b)) {
            this.finish();
          }
        }
        this.inFrame = false;
        this.dropping = false;
        continue;
      }
      if (this.dropping) {
        this.counters.discardedBytes++;
        continue;
      }
      let value = b;
      if (this.stuffing) {
        if (this.escape !== 0) {
          const e = this.escape;
          this.escape = 0;
          // BCC stuffing: EX→D, EE→E, ex→d, ee→e.
          if (e === 0x45 && b === 0x58) value = 0x44;
          else if (e === 0x45 && b === 0x45) value = 0x45;
          else if (e === 0x65 && b === 0x78) value = 0x64;
          else if (e === 0x65 && b === 0x65) value = 0x65;
          else {
            this.refuseOpen(
              ErrorCode.BCC_BAD_STUFFING,
              `"${String.fromCharCode(e)}" followed by byte 0x${hexByte(b)} is not a stuffing pair (is character stuffing off on the ComDevice?)`,
            );
            continue;
          }
        } else if (b === 0x45 || b === 0x65) {
          this.escape = b;
          continue;
        }
      }
      this.append(value);
    }
  }

  /** Ends the stream: an unfinished frame is refused as truncated; a garbage run is reported. */
  end(): void {
    this.garbage.flush();
    if (this.inFrame && !this.dropping) this.refuseOpen(ErrorCode.BCC_TRUNCATED, 'the stream ended inside a frame');
    this.inFrame = false;
    this.dropping = false;
  }

  /** Bytes held for an unfinished frame. */
  pending(): number {
    return this.inFrame ? this.length : 0;
  }

  /** Appends an unstuffed byte; false (and the frame refused) when it does not fit. */
  private append(value: number): boolean {
    if (this.length === this.maxFrameBytes) {
      this.refuseOpen(ErrorCode.BCC_FRAME_TOO_LARGE, `frame longer than ${this.maxFrameBytes} bytes; dropped up to its EOT`);
      return false;
    }
    this.frame[this.length++] = value;
    return true;
  }

  /** Refuses the open frame and drops the rest of it. */
  private refuseOpen(code: ErrorCode, reason: string): void {
    this.reject({
      code,
      reason,
      offset: this.frameOffset,
      length: this.wireLength,
      raw: Buffer.from(this.frame.subarray(0, Math.min(this.length, MAX_REJECT_BYTES))),
    });
    this.dropping = true;
    this.escape = 0;
  }

  private finish(): void {
    const f = this.frame;
    const n = this.length; // SOH … EOT, unstuffed
    const refuse = (code: ErrorCode, reason: string) =>
      this.reject({ code, reason, offset: this.frameOffset, length: this.wireLength, raw: Buffer.from(f.subarray(0, Math.min(n, MAX_REJECT_BYTES))) });
    // SOH + 5 digits + STX + at least `x>` + ETX + 5 digits + EOT.
    if (n < 16) return refuse(ErrorCode.BCC_BAD_FRAME, `frame of ${n} bytes is too short`);
    const declared = read5(f, 1);
    if (declared < 0) return refuse(ErrorCode.BCC_BAD_FRAME, 'the length field is not five digits');
    if (f[6] !== BCC_STX) return refuse(ErrorCode.BCC_BAD_FRAME, 'no STX after the length field');
    const end = f[n - 7];
    if (end !== BCC_ETX && end !== BCC_ETB) return refuse(ErrorCode.BCC_BAD_FRAME, 'no ETX/ETB before the check field');
    const check = read5(f, n - 6);
    if (check < 0) return refuse(ErrorCode.BCC_BAD_FRAME, 'the check field is not five digits');
    const computed = bccChecksum(f, 0, n - 6);
    if (declared !== n) {
      // BCC: the length counts every unstuffed byte from SOH through EOT.
      const alsoCheck = check !== computed ? `; and check ${digits5(check)} ≠ computed ${digits5(computed)}` : '';
      return refuse(ErrorCode.BCC_BAD_LENGTH, `length field ${digits5(declared)} but the frame has ${n} bytes${alsoCheck}`);
    }
    if (check !== computed) {
      return refuse(ErrorCode.BCC_BAD_CHECKSUM, `check ${digits5(check)} but the bytes SOH…ETX sum to ${digits5(computed)} (mod 256)`);
    }
    // The header `bedId/1/1` ends at the first '>' (a bed id never contains one).
    const textEnd = n - 7;
    const gt = f.indexOf(0x3e, 7);
    if (gt === -1 || gt >= textEnd) return refuse(ErrorCode.BCC_BAD_FRAME, 'no `>` after the bed id');
    const header = f.toString('latin1', 7, gt);
    const slash = header.indexOf('/');
    const bedId = slash === -1 ? header : header.slice(0, slash);
    if (bedId === '' || header.length > 40) return refuse(ErrorCode.BCC_BAD_FRAME, 'the header is not `bedId/1/1`');
    this.counters.frames++;
    this.options.onFrame({
      bedId,
      header,
      info: Buffer.from(f.subarray(gt + 1, textEnd)),
      final: end === BCC_ETX,
      offset: this.frameOffset,
      length: this.wireLength,
    });
  }

  private reject(reject: FramerReject): void {
    this.counters.rejected++;
    this.options.onReject(reject);
  }
}

/** Shows control bytes of a short protocol token as `<0x..>` (for reasons; never payloads). */
function printable(text: string): string {
  return text.replace(/[^\x20-\x7e]/g, (c) => `<0x${hexByte(c.charCodeAt(0))}>`);
}
