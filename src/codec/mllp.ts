/**
 * MLLP (Minimal Lower Layer Protocol) framing for HL7 v2 over TCP: an incremental, bounded
 * decoder and a frame encoder. Pure: no sockets, no timers, no logging. The MLLP driver, the
 * device simulators, the benchmarks and the fuzz tests all use this one module.
 *
 * MLLP: a frame ("block") is `<VT> message <FS><CR>`, VT = 0x0B start block, FS = 0x1C end
 * block, CR = 0x0D (HL7 v2 Implementation Guide, Appendix C "Lower Layer Protocols", and the
 * HL7 "MLLP Release 2" transport specification). The message itself must not contain VT or FS.
 *
 * What real senders do, and what this decoder does about it (each choice is tested):
 *
 * | On the wire                               | Decoder                                                        |
 * |-------------------------------------------|----------------------------------------------------------------|
 * | `VT msg FS CR`                            | frame                                                          |
 * | `VT msg FS LF`, `VT msg FS VT…`, `VT msg FS` + stream end | frame (lenient end block, counted in `lenientEndBlocks`) |
 * | `VT msg FS x` (x not CR/LF/VT)            | `MLLP_TRUNCATED` (`bad-end-block`); `x…` is treated as outside |
 * | CR/LF-only run between frames             | ignored silently (counted in `ignoredBytes`)                   |
 * | any other bytes outside a frame           | `MLLP_GARBAGE` with a copy of the bytes                        |
 * | `VT` inside a frame (sender restarted)    | `MLLP_TRUNCATED` (`restarted`) for the partial frame; new frame |
 * | stream ends inside a frame                | `MLLP_TRUNCATED` (`end-of-stream`) at `end()`                  |
 * | frame content > `maxMessageBytes`         | `MLLP_FRAME_TOO_LARGE` with the first bytes (`head`); rest discarded |
 *
 * Why these choices:
 * - CR/LF between frames: many senders write `FS CR LF`, or a newline as a keep-alive. It
 *   carries nothing, so reporting it would only make noise. A run that holds anything else is
 *   garbage as a whole, its CR/LF included.
 * - `FS` without its CR: FS cannot occur inside a message, so it already marks the end of the
 *   content; the CR is a trailer. We accept the frame only when what follows confirms the end
 *   (CR, LF — the commonest substitution, seen in hand-written senders and in a corpus trace —
 *   the next start block, or the end of the stream). Any other byte after FS means the stream is
 *   corrupt at that point; delivering the content could store a reading cut short (`120` read as
 *   `12`), so the frame is reported, not delivered, and the sender's retransmission repairs it.
 * - Every discarded byte is reported (bounded copies), so bad input is dead-lettered, never lost
 *   silently. Errors are reported once per frame; a garbage run is reported when it ends, or in
 *   pieces of `maxErrorBytes` while it goes on (so an endless run is still seen, in bounded memory).
 * - Events depend only on the byte stream, never on how it was split into chunks: the fuzz tests
 *   hold the decoder to that.
 */
import { ErrorCode, type Problem } from '../errors.js';

/** MLLP: start block `<VT>` (0x0B). */
export const MLLP_START_BLOCK = 0x0b;
/** MLLP: end block `<FS>` (0x1C). */
export const MLLP_END_BLOCK = 0x1c;
/** MLLP: the carriage return `<CR>` (0x0D) that follows the end block. */
export const MLLP_CARRIAGE_RETURN = 0x0d;
/** Bytes MLLP adds around a message: VT before, FS CR after. */
export const MLLP_FRAME_OVERHEAD = 3;

const VT = MLLP_START_BLOCK;
const FS = MLLP_END_BLOCK;
const CR = MLLP_CARRIAGE_RETURN;
const LF = 0x0a;

/** Default bound on one message (frame content without framing bytes): 1 MiB. */
export const DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024;
/**
 * Default bound on the copy of discarded bytes an error carries (`MllpError.head`): 16 KiB.
 * Large enough for a whole typical PCD-01 message (2–4 KiB) and for MSH of any message.
 */
export const DEFAULT_MAX_ERROR_BYTES = 16 * 1024;

/** Upper limit for `maxMessageBytes` (1 GiB): far beyond any HL7 message, below Buffer limits. */
const MAX_MAX_MESSAGE_BYTES = 1024 * 1024 * 1024;
/** Lower limit for `maxErrorBytes`: an error must at least be able to show where MSH starts. */
const MIN_MAX_ERROR_BYTES = 64;

/** The error codes the MLLP decoder reports. */
export type MllpErrorCode =
  | typeof ErrorCode.MLLP_FRAME_TOO_LARGE
  | typeof ErrorCode.MLLP_GARBAGE
  | typeof ErrorCode.MLLP_TRUNCATED;

/** Why bytes were discarded; finer than the error code, for diagnosis. */
export const MllpErrorReason = {
  /** Bytes outside any frame (before a start block, between frames). Code `MLLP_GARBAGE`. */
  GARBAGE: 'garbage',
  /** Frame content longer than `maxMessageBytes`. Code `MLLP_FRAME_TOO_LARGE`. */
  TOO_LARGE: 'too-large',
  /** A start block arrived inside a frame: the sender restarted. Code `MLLP_TRUNCATED`. */
  RESTARTED: 'restarted',
  /** The stream ended (`end()`) inside a frame. Code `MLLP_TRUNCATED`. */
  END_OF_STREAM: 'end-of-stream',
  /** The end block FS was followed by a byte other than CR, LF or VT. Code `MLLP_TRUNCATED`. */
  BAD_END_BLOCK: 'bad-end-block',
} as const;
export type MllpErrorReason = (typeof MllpErrorReason)[keyof typeof MllpErrorReason];

/**
 * A framing error: bytes the decoder discarded, with a bounded copy of them so the caller can
 * dead-letter them (and, for an oversized frame, read MSH-10 from `head` to answer AR).
 * `head` may contain personal data: store it as a dead letter, never log it.
 */
export interface MllpError extends Problem {
  readonly code: MllpErrorCode;
  readonly reason: MllpErrorReason;
  /**
   * Stream offset (bytes since the decoder was created or last `end()`ed) of the first
   * discarded byte: the start block for a frame error, the first garbage byte for garbage.
   */
  readonly offset: number;
  /**
   * Discarded bytes: the frame content (without VT/FS) for a frame error, the garbage bytes for
   * garbage. For `too-large` this is the whole content seen up to the end of that frame.
   */
  readonly length: number;
  /** A copy of the first `min(length, maxErrorBytes)` discarded bytes. */
  readonly head: Buffer;
}

/** Options of `MllpDecoder`. */
export interface MllpDecoderOptions {
  /**
   * Receives each complete message (frame content without VT/FS/CR). Called synchronously from
   * `push()`/`end()`. The buffer may be a view into a pushed chunk (zero-copy): copy it if you
   * keep it after returning and the chunk's owner reuses its memory. Should not throw; if it
   * does, the decoder still decodes the whole chunk (it never loses its place in the stream)
   * and then rethrows the first exception from `push()`/`end()`.
   */
  readonly onFrame: (message: Buffer) => void;
  /** Receives framing errors (same rules as `onFrame`). */
  readonly onError: (error: MllpError) => void;
  /** Largest accepted message in bytes (content without framing). Default 1 MiB. */
  readonly maxMessageBytes?: number;
  /** Largest copy of discarded bytes an error carries. Default 16 KiB. */
  readonly maxErrorBytes?: number;
}

/** Decoder counters, cumulative over the decoder's life (they survive `end()`). */
export interface MllpCounters {
  /** Bytes pushed. */
  readonly bytesIn: number;
  /** Frames delivered to `onFrame`. */
  readonly frames: number;
  /** Message bytes delivered (without framing bytes). */
  readonly frameBytes: number;
  /** Frames accepted although their end block was `FS LF`, `FS VT` or `FS` at stream end. */
  readonly lenientEndBlocks: number;
  /** Stray CR/LF bytes between frames that were ignored. */
  readonly ignoredBytes: number;
  /** Sum of `length` of all errors: frame content and garbage that was discarded. */
  readonly discardedBytes: number;
  /** Errors reported, by code. */
  readonly errors: Readonly<Record<MllpErrorCode, number>>;
}

// Decoder states.
/** Between frames: looking for a start block. */
const OUTSIDE = 0;
/** After a start block: collecting content until FS (or a VT, which restarts). */
const IN_FRAME = 1;
/** Just after FS: the next byte decides whether the frame is accepted. */
const AFTER_END_BLOCK = 2;
type State = typeof OUTSIDE | typeof IN_FRAME | typeof AFTER_END_BLOCK;

/**
 * Incremental, bounded MLLP decoder. Feed it the bytes of one connection with `push()` as they
 * arrive and call `end()` when the connection closes; complete messages go to `onFrame`, framing
 * errors to `onError`.
 *
 * Cost: each pushed byte is examined once (`indexOf` from the current position, never a rescan
 * of earlier bytes). A frame inside one chunk is delivered as a view of that chunk (no copy); a
 * frame spanning chunks is copied once, when it completes.
 *
 * Memory: at most `maxMessageBytes` of frame content is retained (as views of pushed chunks),
 * plus one `maxErrorBytes` scratch buffer for garbage. Chunks are retained while a frame that
 * began in them is incomplete, so a caller must not modify a chunk after pushing it (the usual
 * Node stream contract; socket chunks are never reused).
 *
 * Not re-entrant: do not call `push()` or `end()` from inside `onFrame`/`onError`. A handler
 * that throws does not derail decoding: the chunk is decoded to its end, then the first
 * exception is rethrown.
 */
export class MllpDecoder {
  readonly #onFrame: (message: Buffer) => void;
  readonly #onError: (error: MllpError) => void;
  readonly #maxMessageBytes: number;
  readonly #maxErrorBytes: number;

  #state: State = OUTSIDE;
  /** Stream offset of the first byte of the chunk being decoded (bytes before it). */
  #base = 0;

  // Current frame.
  /** Stream offset of the current frame's start block. */
  #frameOffset = 0;
  /** Content bytes of the current frame so far (including discarded ones when oversized). */
  #frameLength = 0;
  /** Content from earlier chunks (views), while the frame is incomplete and not oversized. */
  #parts: Buffer[] = [];
  /** Bytes held in `#parts`. */
  #retained = 0;
  /**
   * Set once the frame exceeded `maxMessageBytes`: a copy of its first `maxErrorBytes` bytes
   * (filled on as content arrives); everything else of the frame is skipped.
   */
  #oversizedHead: Buffer | null = null;
  /** Bytes filled in `#oversizedHead`. */
  #oversizedHeadLength = 0;
  /** The whole content, in state AFTER_END_BLOCK, while waiting for the byte after FS. */
  #pending: Buffer | null = null;

  // Current garbage run.
  #inGarbage = false;
  /** Stream offset of the first byte in `#garbage`. */
  #garbageOffset = 0;
  /** Bytes of the current piece held in `#garbage`. */
  #garbageLength = 0;
  /** Scratch copy of the current garbage piece; allocated on first garbage. */
  #garbage: Buffer | null = null;

  /** The first exception a handler threw during the current `push()`/`end()`, rethrown at its end. */
  #thrown: { error: unknown } | null = null;

  // Counters (mutable here; `counters` hands out a snapshot).
  #bytesIn = 0;
  #frames = 0;
  #frameBytes = 0;
  #lenientEndBlocks = 0;
  #ignoredBytes = 0;
  #discardedBytes = 0;
  #errors: Record<MllpErrorCode, number> = {
    [ErrorCode.MLLP_FRAME_TOO_LARGE]: 0,
    [ErrorCode.MLLP_GARBAGE]: 0,
    [ErrorCode.MLLP_TRUNCATED]: 0,
  };

  /** @throws RangeError when `maxMessageBytes` or `maxErrorBytes` is not a sane integer. */
  constructor(options: MllpDecoderOptions) {
    this.#onFrame = options.onFrame;
    this.#onError = options.onError;
    this.#maxMessageBytes = checkLimit(
      'maxMessageBytes',
      options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES,
      1,
      MAX_MAX_MESSAGE_BYTES,
    );
    this.#maxErrorBytes = checkLimit(
      'maxErrorBytes',
      options.maxErrorBytes ?? DEFAULT_MAX_ERROR_BYTES,
      MIN_MAX_ERROR_BYTES,
      MAX_MAX_MESSAGE_BYTES,
    );
  }

  /** The configured message bound. */
  get maxMessageBytes(): number {
    return this.#maxMessageBytes;
  }

  /** Frame content currently retained for an incomplete frame (always ≤ `maxMessageBytes`). */
  get bufferedBytes(): number {
    return this.#retained + (this.#pending === null ? 0 : this.#pending.length);
  }

  /** True between frames (nothing partial is held, apart from a garbage run in progress). */
  get idle(): boolean {
    return this.#state === OUTSIDE;
  }

  /** A snapshot of the counters. */
  get counters(): MllpCounters {
    return {
      bytesIn: this.#bytesIn,
      frames: this.#frames,
      frameBytes: this.#frameBytes,
      lenientEndBlocks: this.#lenientEndBlocks,
      ignoredBytes: this.#ignoredBytes,
      discardedBytes: this.#discardedBytes,
      errors: { ...this.#errors },
    };
  }

  /** Decodes the next bytes of the stream. Complete frames and errors are reported before it returns. */
  push(chunk: Buffer): void {
    const len = chunk.length;
    if (len === 0) return;
    this.#bytesIn += len;
    let pos = 0;
    // Where the current frame's content begins in this chunk (0 when it began in an earlier one).
    let contentStart = 0;
    // Next VT / FS at or after `pos`: an index, -1 when there is none left in this chunk, or
    // stale (< pos) when it must be searched again. Caching them keeps the scan linear: a chunk
    // holding many frames is searched once per byte value, not once per frame.
    let vt = -2;
    let fs = -2;

    while (pos < len) {
      if (this.#state === OUTSIDE) {
        if (vt !== -1 && vt < pos) vt = chunk.indexOf(VT, pos);
        const stop = vt === -1 ? len : vt;
        if (stop > pos) this.#outside(chunk, pos, stop);
        if (vt === -1) break;
        this.#endGarbageRun();
        this.#startFrame(this.#base + vt);
        pos = contentStart = vt + 1;
      } else if (this.#state === IN_FRAME) {
        // MLLP: content runs to the end block; a start block here means the sender restarted.
        if (vt !== -1 && vt < pos) vt = chunk.indexOf(VT, pos);
        if (fs !== -1 && fs < pos) fs = chunk.indexOf(FS, pos);
        const stop = fs === -1 ? vt : vt === -1 ? fs : Math.min(fs, vt);
        const end = stop === -1 ? len : stop;
        this.#frameLength += end - pos;
        if (this.#oversizedHead !== null) this.#fillOversizedHead(chunk, pos, end);
        else if (this.#frameLength > this.#maxMessageBytes) this.#becomeOversized(chunk, contentStart, end);
        if (stop === -1) {
          // The frame goes on in the next chunk: keep a view of this part.
          if (this.#oversizedHead === null && end > contentStart) {
            this.#parts.push(chunk.subarray(contentStart, end));
            this.#retained += end - contentStart;
          }
          break;
        }
        if (stop === fs) {
          if (this.#oversizedHead !== null) {
            this.#reportOversized();
            this.#resetFrame();
          } else {
            this.#pending = this.#content(chunk, contentStart, fs);
          }
          this.#state = AFTER_END_BLOCK;
          pos = fs + 1;
        } else {
          this.#abandonFrame(MllpErrorReason.RESTARTED, chunk, contentStart, vt);
          this.#startFrame(this.#base + vt);
          pos = contentStart = vt + 1;
        }
      } else {
        // AFTER_END_BLOCK. `#pending` is null when the frame that just ended was oversized
        // (already reported): then only its trailer is swallowed.
        const b = chunk[pos];
        if (b === CR || b === LF) {
          // MLLP: FS CR ends the frame; FS LF is accepted as the commonest sender mistake.
          if (this.#pending !== null && b === LF) this.#lenientEndBlocks++;
          this.#state = OUTSIDE;
          pos++;
          this.#deliverPending();
        } else if (b === VT) {
          // FS directly followed by the next start block: the sender omitted the CR.
          if (this.#pending !== null) this.#lenientEndBlocks++;
          this.#deliverPending();
          this.#startFrame(this.#base + pos);
          pos = contentStart = pos + 1;
        } else {
          // FS followed by anything else: the end of this frame is not trustworthy.
          if (this.#pending !== null) {
            const content = this.#pending;
            this.#pending = null;
            this.#reportFrameError(ErrorCode.MLLP_TRUNCATED, MllpErrorReason.BAD_END_BLOCK, this.#copyHead([content]));
          }
          this.#resetFrame();
          this.#state = OUTSIDE; // the byte is decoded again as outside-frame data
        }
      }
    }
    this.#base += len;
    this.#rethrow();
  }

  /**
   * The stream ended (the connection closed). Reports what is unfinished — a frame without its
   * end block as `MLLP_TRUNCATED`, a garbage run as `MLLP_GARBAGE` — and delivers a frame whose
   * FS was the last byte. Afterwards the decoder is ready for a new stream (offsets restart at
   * 0, counters continue).
   */
  end(): void {
    if (this.#state === OUTSIDE) {
      this.#endGarbageRun();
    } else if (this.#state === IN_FRAME) {
      this.#abandonFrame(MllpErrorReason.END_OF_STREAM, null, 0, 0);
    } else if (this.#pending !== null) {
      // MLLP: FS then end of stream; the content is complete (FS cannot occur inside it).
      this.#lenientEndBlocks++;
      this.#state = OUTSIDE;
      this.#deliverPending();
    }
    this.#state = OUTSIDE;
    this.#resetFrame();
    this.#inGarbage = false;
    this.#garbageLength = 0;
    this.#base = 0;
    this.#rethrow();
  }

  /** Rethrows what a handler threw, once the decoder's state is complete and consistent. */
  #rethrow(): void {
    const thrown = this.#thrown;
    if (thrown === null) return;
    this.#thrown = null;
    throw thrown.error;
  }

  // ── frames ────────────────────────────────────────────────────────────────

  #startFrame(offset: number): void {
    this.#state = IN_FRAME;
    this.#frameOffset = offset;
    this.#frameLength = 0;
  }

  #resetFrame(): void {
    if (this.#parts.length > 0) this.#parts = [];
    this.#retained = 0;
    this.#frameLength = 0;
    this.#oversizedHead = null;
    this.#oversizedHeadLength = 0;
    this.#pending = null;
  }

  /** The whole content of the current frame: earlier parts plus `chunk[from, to)`. */
  #content(chunk: Buffer, from: number, to: number): Buffer {
    const parts = this.#parts;
    if (parts.length === 0) return chunk.subarray(from, to); // zero-copy
    if (to > from) parts.push(chunk.subarray(from, to));
    // Spanning frame: the one copy (or none when it all sits in one earlier chunk).
    const content = parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts, this.#frameLength);
    this.#parts = [];
    this.#retained = 0;
    return content;
  }

  #deliverPending(): void {
    const message = this.#pending;
    this.#pending = null;
    this.#frameLength = 0;
    if (message === null) return;
    this.#frames++;
    this.#frameBytes += message.length;
    try {
      this.#onFrame(message);
    } catch (error) {
      this.#thrown ??= { error };
    }
  }

  /** The frame passed `maxMessageBytes`: keep a copy of its first bytes, drop the rest. */
  #becomeOversized(chunk: Buffer, from: number, to: number): void {
    this.#oversizedHead = Buffer.allocUnsafe(this.#maxErrorBytes);
    this.#oversizedHeadLength = 0;
    for (const part of this.#parts) this.#fillOversizedHead(part, 0, part.length);
    this.#fillOversizedHead(chunk, from, to);
    this.#parts = [];
    this.#retained = 0;
  }

  /** Copies `chunk[from, to)` into the oversized frame's head while it has room. */
  #fillOversizedHead(chunk: Buffer, from: number, to: number): void {
    const head = this.#oversizedHead as Buffer;
    const room = head.length - this.#oversizedHeadLength;
    if (room > 0 && to > from) {
      this.#oversizedHeadLength += chunk.copy(head, this.#oversizedHeadLength, from, Math.min(to, from + room));
    }
  }

  #reportOversized(): void {
    const head = (this.#oversizedHead as Buffer).subarray(0, this.#oversizedHeadLength);
    this.#reportFrameError(ErrorCode.MLLP_FRAME_TOO_LARGE, MllpErrorReason.TOO_LARGE, head);
  }

  /** Reports the current frame as truncated; its content is `#parts` plus `chunk[from, to)`. */
  #abandonFrame(reason: MllpErrorReason, chunk: Buffer | null, from: number, to: number): void {
    if (this.#oversizedHead !== null) {
      this.#reportOversized();
    } else {
      const parts = this.#parts;
      if (chunk !== null && to > from) parts.push(chunk.subarray(from, to));
      this.#reportFrameError(ErrorCode.MLLP_TRUNCATED, reason, this.#copyHead(parts));
    }
    this.#resetFrame();
  }

  /** A copy of the first `maxErrorBytes` bytes of `parts`. */
  #copyHead(parts: readonly Buffer[]): Buffer {
    let total = 0;
    for (const p of parts) total += p.length;
    const head = Buffer.allocUnsafe(Math.min(total, this.#maxErrorBytes));
    let at = 0;
    for (const p of parts) {
      if (at === head.length) break;
      at += p.copy(head, at, 0, Math.min(p.length, head.length - at));
    }
    return head;
  }

  #reportFrameError(code: MllpErrorCode, reason: MllpErrorReason, head: Buffer): void {
    const length = this.#frameLength;
    this.#report(code, reason, this.#frameOffset, length, head, frameErrorMessage(reason, length, this.#maxMessageBytes));
  }

  // ── outside frames ────────────────────────────────────────────────────────

  /** Bytes `chunk[from, to)` lie outside any frame (none of them is VT). */
  #outside(chunk: Buffer, from: number, to: number): void {
    let s = from;
    if (!this.#inGarbage) {
      // MLLP: tolerate stray CR/LF between frames (`FS CR LF`, newline keep-alives).
      while (s < to) {
        const b = chunk[s];
        if (b !== CR && b !== LF) break;
        s++;
      }
      this.#ignoredBytes += s - from;
      if (s === to) return;
      this.#inGarbage = true;
      this.#garbageOffset = this.#base + s;
      this.#garbageLength = 0;
    }
    const max = this.#maxErrorBytes;
    this.#garbage ??= Buffer.allocUnsafe(max);
    while (s < to) {
      const n = Math.min(max - this.#garbageLength, to - s);
      chunk.copy(this.#garbage, this.#garbageLength, s, s + n);
      this.#garbageLength += n;
      s += n;
      if (this.#garbageLength === max) this.#reportGarbagePiece(); // a long run: report it as it goes
    }
  }

  #endGarbageRun(): void {
    if (this.#inGarbage && this.#garbageLength > 0) this.#reportGarbagePiece();
    this.#inGarbage = false;
  }

  #reportGarbagePiece(): void {
    const length = this.#garbageLength;
    const offset = this.#garbageOffset;
    const head = Buffer.from((this.#garbage as Buffer).subarray(0, length));
    this.#garbageOffset += length;
    this.#garbageLength = 0;
    this.#report(
      ErrorCode.MLLP_GARBAGE,
      MllpErrorReason.GARBAGE,
      offset,
      length,
      head,
      `${length} bytes outside an MLLP frame (expected a start block 0x0B)`,
    );
  }

  #report(
    code: MllpErrorCode,
    reason: MllpErrorReason,
    offset: number,
    length: number,
    head: Buffer,
    message: string,
  ): void {
    this.#errors[code]++;
    this.#discardedBytes += length;
    const error: MllpError = {
      code,
      message,
      location: `bytes ${offset}-${offset + length}`,
      // HL7 table 0357 has no "message too large"; 207 (application internal error) is the code
      // an AR for a message the receiver cannot take carries. The other errors get no ACK: there
      // is no complete message to acknowledge.
      hl7Code: code === ErrorCode.MLLP_FRAME_TOO_LARGE ? '207' : '',
      reason,
      offset,
      length,
      head,
    };
    try {
      this.#onError(error);
    } catch (thrown) {
      this.#thrown ??= { error: thrown };
    }
  }
}

function frameErrorMessage(reason: MllpErrorReason, length: number, max: number): string {
  switch (reason) {
    case MllpErrorReason.TOO_LARGE:
      return `MLLP frame of ${length} bytes exceeds maxMessageBytes (${max}); discarded`;
    case MllpErrorReason.RESTARTED:
      return `MLLP frame truncated after ${length} bytes: a start block (0x0B) arrived before the end block (0x1C)`;
    case MllpErrorReason.END_OF_STREAM:
      return `MLLP frame truncated after ${length} bytes: the stream ended before the end block (0x1C)`;
    case MllpErrorReason.BAD_END_BLOCK:
      return `MLLP frame of ${length} bytes not accepted: its end block 0x1C was not followed by 0x0D`;
    case MllpErrorReason.GARBAGE:
      return `${length} bytes outside an MLLP frame`;
    default:
      return reason satisfies never;
  }
}

function checkLimit(name: string, value: number, min: number, max: number): number {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(`"${name}" must be an integer from ${min} to ${max}, got ${String(value)}`);
  }
  return value;
}

// ── encoding ────────────────────────────────────────────────────────────────

/** Size of the MLLP frame around a message of `messageLength` bytes. */
export function framedLength(messageLength: number): number {
  return messageLength + MLLP_FRAME_OVERHEAD;
}

/**
 * Frames one message: `VT message FS CR`, in a new buffer.
 * @throws RangeError when the message contains VT (0x0B) or FS (0x1C), which MLLP cannot carry.
 */
export function encodeFrame(message: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(framedLength(message.length));
  encodeFrameInto(message, out, 0);
  return out;
}

/**
 * Frames one message into `target` at `offset` (e.g. a preallocated write buffer holding several
 * frames) and returns the offset just past the frame.
 * @throws RangeError when the frame does not fit, or the message contains VT (0x0B) or FS (0x1C).
 */
export function encodeFrameInto(message: Uint8Array, target: Uint8Array, offset = 0): number {
  const end = offset + framedLength(message.length);
  if (!Number.isInteger(offset) || offset < 0 || end > target.length) {
    throw new RangeError(`MLLP frame of ${end - offset} bytes does not fit at offset ${offset} of ${target.length}`);
  }
  // MLLP: the message must not contain the block characters; a VT would make the receiver
  // restart and an FS would end the frame early. A memchr-fast check, worth its cost.
  const bytes = Buffer.isBuffer(message) ? message : Buffer.from(message.buffer, message.byteOffset, message.byteLength);
  if (bytes.indexOf(VT) !== -1 || bytes.indexOf(FS) !== -1) {
    throw new RangeError('message contains an MLLP block character (0x0B or 0x1C) and cannot be framed');
  }
  target[offset] = VT;
  target.set(bytes, offset + 1);
  target[end - 2] = FS;
  target[end - 1] = CR;
  return end;
}
