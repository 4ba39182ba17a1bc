import { describe, expect, it } from 'vitest';
import {
  DEFAULT_MAX_MESSAGE_BYTES,
  encodeFrame,
  encodeFrameInto,
  framedLength,
  MLLP_FRAME_OVERHEAD,
  MllpDecoder,
  MllpErrorReason,
  type MllpDecoderOptions,
  type MllpError,
} from '../../src/codec/mllp.js';
import { ErrorCode } from '../../src/errors.js';

const VT = '\x0b';
const FS = '\x1c';
const CR = '\r';

const MSG_A = 'MSH|^~\\&|MON|ICU|||20250101120000+0100||ORU^R01^ORU_R01|A1|P|2.6\rOBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|72\r';
const MSG_B = 'MSH|^~\\&|MON|ICU|||20250101120001+0100||ORU^R01^ORU_R01|B2|P|2.6\rOBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1|97\r';

type Event = { frame: string } | { error: MllpError };

/** A decoder that records what it reports, in order. */
function recorder(options: Partial<MllpDecoderOptions> = {}) {
  const events: Event[] = [];
  const frames: Buffer[] = [];
  const errors: MllpError[] = [];
  const decoder = new MllpDecoder({
    ...options,
    onFrame: (m) => {
      frames.push(m);
      events.push({ frame: m.toString('latin1') });
    },
    onError: (e) => {
      errors.push(e);
      events.push({ error: e });
    },
  });
  const push = (...chunks: (string | Buffer)[]) => {
    for (const c of chunks) decoder.push(typeof c === 'string' ? Buffer.from(c, 'latin1') : c);
  };
  return { decoder, events, frames, errors, push };
}

const frame = (m: string) => `${VT}${m}${FS}${CR}`;

describe('encodeFrame', () => {
  it('wraps a message in VT … FS CR', () => {
    const out = encodeFrame(Buffer.from('MSH|x'));
    expect([...out]).toEqual([0x0b, ...Buffer.from('MSH|x'), 0x1c, 0x0d]);
    expect(framedLength(5)).toBe(5 + MLLP_FRAME_OVERHEAD);
    expect(encodeFrame(new Uint8Array(0))).toEqual(Buffer.from([0x0b, 0x1c, 0x0d]));
  });

  it('refuses a message that contains a block character', () => {
    expect(() => encodeFrame(Buffer.from('MSH\x0b|'))).toThrow(RangeError);
    expect(() => encodeFrame(Buffer.from('MSH\x1c|'))).toThrow(/block character/);
  });

  it('frames several messages into one preallocated buffer', () => {
    const a = Buffer.from(MSG_A);
    const b = new Uint8Array(Buffer.from(MSG_B)); // a plain Uint8Array works too
    const target = Buffer.alloc(framedLength(a.length) + framedLength(b.length));
    const mid = encodeFrameInto(a, target, 0);
    expect(encodeFrameInto(b, target, mid)).toBe(target.length);
    const { push, frames } = recorder();
    push(target);
    expect(frames.map(String)).toEqual([MSG_A, MSG_B]);
  });

  it('refuses a frame that does not fit the target', () => {
    expect(() => encodeFrameInto(Buffer.from('abc'), Buffer.alloc(5), 0)).toThrow(RangeError);
    expect(() => encodeFrameInto(Buffer.from('abc'), Buffer.alloc(10), 5)).toThrow(/does not fit/);
    expect(() => encodeFrameInto(Buffer.from('abc'), Buffer.alloc(10), -1)).toThrow(RangeError);
  });
});

describe('MllpDecoder: frames', () => {
  it('delivers a frame inside one chunk as a view of the chunk (zero-copy)', () => {
    const { decoder, frames } = recorder();
    const chunk = encodeFrame(Buffer.from(MSG_A));
    decoder.push(chunk);
    expect(frames).toHaveLength(1);
    const f = frames[0] as Buffer;
    expect(f.toString()).toBe(MSG_A);
    expect(f.buffer).toBe(chunk.buffer);
    expect(f.byteOffset).toBe(chunk.byteOffset + 1);
  });

  it('delivers pipelined frames from one chunk, in order', () => {
    const { push, events, decoder } = recorder();
    push(frame(MSG_A) + frame(MSG_B) + frame(MSG_A));
    expect(events).toEqual([{ frame: MSG_A }, { frame: MSG_B }, { frame: MSG_A }]);
    expect(decoder.counters).toMatchObject({ frames: 3, frameBytes: 2 * MSG_A.length + MSG_B.length, lenientEndBlocks: 0 });
  });

  it('joins a frame that spans chunks, whatever the split', () => {
    const wire = frame(MSG_A);
    for (const cut of [1, 2, 10, wire.length - 2, wire.length - 1]) {
      const { push, events, decoder } = recorder();
      push(wire.slice(0, cut));
      expect(decoder.idle).toBe(false);
      push(wire.slice(cut));
      expect(events).toEqual([{ frame: MSG_A }]);
      expect(decoder.idle).toBe(true);
      expect(decoder.bufferedBytes).toBe(0);
    }
  });

  it('joins a frame spread over many small chunks', () => {
    const { push, events } = recorder();
    const wire = frame(MSG_A) + frame(MSG_B);
    for (let i = 0; i < wire.length; i += 3) push(wire.slice(i, i + 3));
    expect(events).toEqual([{ frame: MSG_A }, { frame: MSG_B }]);
  });

  it('delivers an empty frame as an empty message (the caller decides what it means)', () => {
    const { push, frames } = recorder();
    push(frame(''));
    expect(frames.map((f) => f.length)).toEqual([0]);
  });

  it('keeps every byte value except VT and FS inside a message', () => {
    const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i).filter((b) => b !== 0x0b && b !== 0x1c));
    const { decoder, frames } = recorder();
    decoder.push(encodeFrame(all));
    expect(frames[0]).toEqual(all);
  });

  it('keeps its place when a handler throws: the chunk is decoded to its end, then the first exception is rethrown', () => {
    const seen: string[] = [];
    const decoder = new MllpDecoder({
      onFrame: (m) => {
        seen.push(m.toString());
        if (seen.length <= 2) throw new Error(`handler failed on ${seen.length}`);
      },
      onError: () => {
        throw new Error('error handler failed');
      },
    });
    expect(() => decoder.push(Buffer.from(frame(MSG_A) + frame(MSG_B) + `${VT}${MSG_A.slice(0, 9)}`))).toThrow('handler failed on 1');
    expect(seen).toEqual([MSG_A, MSG_B]);
    expect(() => decoder.push(Buffer.from(`${MSG_A.slice(9)}${FS}${CR}`))).not.toThrow();
    expect(seen).toEqual([MSG_A, MSG_B, MSG_A]);
    expect(() => decoder.push(Buffer.from('junk'))).not.toThrow();
    expect(() => decoder.end()).toThrow('error handler failed');
    expect(decoder.counters).toMatchObject({ frames: 3, bytesIn: expect.any(Number) as number });
  });

  it('ignores an empty chunk', () => {
    const { decoder, events } = recorder();
    decoder.push(Buffer.alloc(0));
    expect(events).toEqual([]);
    expect(decoder.counters.bytesIn).toBe(0);
  });
});

describe('MllpDecoder: stray bytes between frames', () => {
  it('ignores CR/LF runs between frames silently and counts them', () => {
    const { push, events, decoder } = recorder();
    push('\r\n', frame(MSG_A), '\r\n', '\n', frame(MSG_B), '\r');
    decoder.end();
    expect(events).toEqual([{ frame: MSG_A }, { frame: MSG_B }]);
    expect(decoder.counters.ignoredBytes).toBe(6);
    expect(decoder.counters.errors[ErrorCode.MLLP_GARBAGE]).toBe(0);
  });

  it('reports garbage before a frame once, with its bytes and offset, and still delivers the frame', () => {
    const { push, events } = recorder();
    push('junk\r\nmore', frame(MSG_A));
    expect(events).toHaveLength(2);
    const e = (events[0] as { error: MllpError }).error;
    expect(e).toMatchObject({
      code: ErrorCode.MLLP_GARBAGE,
      reason: MllpErrorReason.GARBAGE,
      offset: 0,
      length: 10,
      location: 'bytes 0-10',
      hl7Code: '',
    });
    expect(e.head.toString('latin1')).toBe('junk\r\nmore');
    expect(events[1]).toEqual({ frame: MSG_A });
  });

  it('reports a garbage run split over chunks once, when it ends', () => {
    const { push, errors, frames } = recorder();
    push(frame(MSG_A), '\r\nab', 'cd', 'ef\n', frame(MSG_B));
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ offset: frame(MSG_A).length + 2, length: 7 });
    expect(errors[0]?.head.toString()).toBe('abcdef\n');
    expect(frames.map(String)).toEqual([MSG_A, MSG_B]);
  });

  it('reports a long garbage run in pieces of maxErrorBytes, so nothing is held unbounded or lost', () => {
    const { push, errors, decoder } = recorder({ maxErrorBytes: 100 });
    const junk = 'x'.repeat(250);
    for (let i = 0; i < junk.length; i += 7) push(junk.slice(i, i + 7));
    expect(errors.map((e) => [e.offset, e.length])).toEqual([
      [0, 100],
      [100, 100],
    ]);
    decoder.end();
    expect(errors.map((e) => [e.offset, e.length])).toEqual([
      [0, 100],
      [100, 100],
      [200, 50],
    ]);
    expect(decoder.counters.discardedBytes).toBe(250);
  });

  it('treats unframed HL7 (a sender without MLLP) as garbage, so it can be dead-lettered', () => {
    const { push, errors, frames, decoder } = recorder();
    push(MSG_A);
    decoder.end();
    expect(frames).toHaveLength(0);
    expect(errors[0]).toMatchObject({ code: ErrorCode.MLLP_GARBAGE, length: MSG_A.length });
    expect(errors[0]?.head.toString()).toBe(MSG_A);
  });
});

describe('MllpDecoder: end blocks', () => {
  it('accepts FS LF, FS VT and FS at the end of the stream, and counts them as lenient', () => {
    const { push, events, decoder } = recorder();
    push(`${VT}${MSG_A}${FS}\n`, `${VT}${MSG_B}${FS}`, `${VT}${MSG_A}${FS}`);
    expect(events).toEqual([{ frame: MSG_A }, { frame: MSG_B }]);
    decoder.end();
    expect(events).toEqual([{ frame: MSG_A }, { frame: MSG_B }, { frame: MSG_A }]);
    expect(decoder.counters.lenientEndBlocks).toBe(3);
  });

  it('does not deliver a frame whose FS is followed by another byte; that byte is outside data', () => {
    const { push, events } = recorder();
    push(`${VT}${MSG_A}${FS}XY`, frame(MSG_B));
    expect(events).toHaveLength(3);
    expect((events[0] as { error: MllpError }).error).toMatchObject({
      code: ErrorCode.MLLP_TRUNCATED,
      reason: MllpErrorReason.BAD_END_BLOCK,
      offset: 0,
      length: MSG_A.length,
    });
    expect((events[0] as { error: MllpError }).error.head.toString()).toBe(MSG_A);
    expect((events[1] as { error: MllpError }).error).toMatchObject({
      code: ErrorCode.MLLP_GARBAGE,
      offset: MSG_A.length + 2,
      length: 2,
    });
    expect(events[2]).toEqual({ frame: MSG_B });
  });

  it('decides on the byte after FS when FS ends a chunk', () => {
    const { push, events } = recorder();
    push(`${VT}${MSG_A}${FS}`);
    expect(events).toEqual([]);
    push(`${CR}${VT}`, `${MSG_B}${FS}`, CR);
    expect(events).toEqual([{ frame: MSG_A }, { frame: MSG_B }]);
  });
});

describe('MllpDecoder: truncated frames', () => {
  it('reports a frame cut by a new start block (sender restarted) and delivers the new one', () => {
    const { push, events } = recorder();
    const partial = MSG_A.slice(0, 30);
    push(`${VT}${partial}`, frame(MSG_B));
    expect(events).toHaveLength(2);
    const e = (events[0] as { error: MllpError }).error;
    expect(e).toMatchObject({ code: ErrorCode.MLLP_TRUNCATED, reason: MllpErrorReason.RESTARTED, offset: 0, length: 30 });
    expect(e.head.toString()).toBe(partial);
    expect(events[1]).toEqual({ frame: MSG_B });
  });

  it('reports a frame left open when the stream ends', () => {
    const { push, errors, decoder } = recorder();
    push(frame(MSG_A), `${VT}${MSG_B.slice(0, 12)}`);
    expect(decoder.bufferedBytes).toBe(12);
    decoder.end();
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({
      code: ErrorCode.MLLP_TRUNCATED,
      reason: MllpErrorReason.END_OF_STREAM,
      offset: frame(MSG_A).length,
      length: 12,
    });
    expect(errors[0]?.head.toString()).toBe(MSG_B.slice(0, 12));
    expect(decoder.bufferedBytes).toBe(0);
  });

  it('starts afresh after end(): offsets restart, counters continue', () => {
    const { push, errors, frames, decoder } = recorder();
    push(`${VT}abc`);
    decoder.end();
    push('zz', frame(MSG_A));
    decoder.end();
    expect(frames.map(String)).toEqual([MSG_A]);
    expect(errors.map((e) => [e.code, e.offset])).toEqual([
      [ErrorCode.MLLP_TRUNCATED, 0],
      [ErrorCode.MLLP_GARBAGE, 0],
    ]);
    expect(decoder.counters.errors).toEqual({
      [ErrorCode.MLLP_FRAME_TOO_LARGE]: 0,
      [ErrorCode.MLLP_GARBAGE]: 1,
      [ErrorCode.MLLP_TRUNCATED]: 1,
    });
  });

  it('is quiet at end() between frames', () => {
    const { push, events, decoder } = recorder();
    push(frame(MSG_A));
    decoder.end();
    decoder.end();
    expect(events).toEqual([{ frame: MSG_A }]);
  });
});

describe('MllpDecoder: bounds', () => {
  const big = (n: number) => 'MSH|^~\\&|BIG|' + 'x'.repeat(n - 13);

  it('accepts a message of exactly maxMessageBytes and rejects one byte more', () => {
    const { push, events } = recorder({ maxMessageBytes: 1000 });
    push(frame(big(1000)), frame(big(1001)));
    expect(events).toHaveLength(2);
    expect((events[0] as { frame: string }).frame).toHaveLength(1000);
    expect((events[1] as { error: MllpError }).error).toMatchObject({
      code: ErrorCode.MLLP_FRAME_TOO_LARGE,
      reason: MllpErrorReason.TOO_LARGE,
      length: 1001,
      offset: 1003,
      hl7Code: '207',
    });
  });

  it('reports an oversized frame with its head (to read MSH-10), discards the rest and delivers the next frame', () => {
    const { push, events, decoder } = recorder({ maxMessageBytes: 4096, maxErrorBytes: 256 });
    const huge = big(100_000);
    const wire = frame(huge) + frame(MSG_A);
    let maxBuffered = 0;
    for (let i = 0; i < wire.length; i += 1000) {
      push(wire.slice(i, i + 1000));
      maxBuffered = Math.max(maxBuffered, decoder.bufferedBytes);
    }
    expect(maxBuffered).toBeLessThanOrEqual(4096);
    expect(events).toHaveLength(2);
    const e = (events[0] as { error: MllpError }).error;
    expect(e).toMatchObject({ code: ErrorCode.MLLP_FRAME_TOO_LARGE, length: 100_000, offset: 0 });
    expect(e.head).toHaveLength(256);
    expect(e.head.toString()).toBe(huge.slice(0, 256));
    expect(events[1]).toEqual({ frame: MSG_A });
    expect(decoder.counters.discardedBytes).toBe(100_000);
  });

  it('reports an oversized frame cut by a restart or by the end of the stream as too large, once', () => {
    const { push, errors, frames, decoder } = recorder({ maxMessageBytes: 200 });
    push(`${VT}${big(500)}`, frame(MSG_A), `${VT}${big(300)}`);
    decoder.end();
    expect(frames.map(String)).toEqual([MSG_A]);
    expect(errors.map((e) => [e.code, e.length])).toEqual([
      [ErrorCode.MLLP_FRAME_TOO_LARGE, 500],
      [ErrorCode.MLLP_FRAME_TOO_LARGE, 300],
    ]);
  });

  it('swallows the trailer of an oversized frame, whatever it is', () => {
    const { push, errors, frames } = recorder({ maxMessageBytes: 200 });
    push(`${VT}${big(300)}${FS}\n`, `${VT}${big(300)}${FS}`, frame(MSG_A));
    expect(frames.map(String)).toEqual([MSG_A]);
    expect(errors.map((e) => e.code)).toEqual([ErrorCode.MLLP_FRAME_TOO_LARGE, ErrorCode.MLLP_FRAME_TOO_LARGE]);
  });

  it('uses 1 MiB by default and refuses nonsense limits', () => {
    expect(recorder().decoder.maxMessageBytes).toBe(DEFAULT_MAX_MESSAGE_BYTES);
    expect(DEFAULT_MAX_MESSAGE_BYTES).toBe(1024 * 1024);
    const noop = { onFrame: () => {}, onError: () => {} };
    expect(() => new MllpDecoder({ ...noop, maxMessageBytes: 0 })).toThrow(/"maxMessageBytes"/);
    expect(() => new MllpDecoder({ ...noop, maxMessageBytes: 1.5 })).toThrow(RangeError);
    expect(() => new MllpDecoder({ ...noop, maxMessageBytes: Number.NaN })).toThrow(RangeError);
    expect(() => new MllpDecoder({ ...noop, maxErrorBytes: 8 })).toThrow(/"maxErrorBytes"/);
  });

  it('gives errors an owned copy: later pushes do not change a reported head', () => {
    const { push, errors } = recorder({ maxErrorBytes: 64 });
    push('garbage-one', `${VT}x`);
    push('y', `${VT}`);
    const head = Buffer.from(errors[0]?.head ?? Buffer.alloc(0));
    push('garbage-two-is-longer', `${VT}`);
    expect(errors[0]?.head).toEqual(head);
    expect(errors[0]?.head.toString()).toBe('garbage-one');
  });

  it('keeps counters that add up', () => {
    const { push, decoder } = recorder({ maxMessageBytes: 130 });
    const wire = ['\r\n', frame(MSG_A), 'junk', `${VT}${big(150)}${FS}${CR}`, `${VT}part`, frame(MSG_B)];
    push(...wire);
    decoder.end();
    const c = decoder.counters;
    expect(c.bytesIn).toBe(wire.join('').length);
    expect(c.frames).toBe(2);
    expect(c.frameBytes).toBe(MSG_A.length + MSG_B.length);
    expect(c.ignoredBytes).toBe(2);
    expect(c.discardedBytes).toBe(4 + 150 + 4);
    expect(c.errors).toEqual({
      [ErrorCode.MLLP_FRAME_TOO_LARGE]: 1,
      [ErrorCode.MLLP_GARBAGE]: 1,
      [ErrorCode.MLLP_TRUNCATED]: 1,
    });
  });
});
