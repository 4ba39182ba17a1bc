/**
 * Fuzz tests for the MLLP decoder (style of undici's split-data fuzzing and mqtt-packet's
 * testRandom): the same bytes split in every way must give the same frames and errors, random
 * input must never crash it or grow its memory, and a good frame after any junk must arrive.
 *
 * The oracle is a second, deliberately naive decoder (`referenceDecode`, byte at a time over the
 * whole stream) written from the rules in `src/codec/mllp.ts`: events must match it exactly.
 *
 * Default run: a few seconds. Long run: `MDI_FUZZ_LONG=1` (duration `MDI_FUZZ_MS`, default
 * 180 000 ms); `MDI_FUZZ_SEED=<n>` replays a seed printed by a failure.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { mulberry32, randomInt } from '../../simulators/random.js';
import { encodeFrame, MllpDecoder, type MllpError } from '../../src/codec/mllp.js';
import { ErrorCode } from '../../src/errors.js';

const VT = 0x0b;
const FS = 0x1c;
const CR = 0x0d;
const LF = 0x0a;

const LONG = process.env.MDI_FUZZ_LONG === '1';
const LONG_MS = Number(process.env.MDI_FUZZ_MS ?? 180_000);
const BASE_SEED = process.env.MDI_FUZZ_SEED !== undefined ? Number(process.env.MDI_FUZZ_SEED) : (Date.now() >>> 0);

// ── fixtures ────────────────────────────────────────────────────────────────

/** The public corpus, beside the repo (absent in a fresh clone). Never copied into the repo. */
const CORPUS_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'shared', 'corpus', 'public');

/** Messages of the public corpus: blocks separated by blank lines, LF → CR (see its SOURCES.md). */
function corpusMessages(): Buffer[] | null {
  let names: string[];
  try {
    names = readdirSync(CORPUS_DIR).filter((n) => n.endsWith('.hl7'));
  } catch {
    return null;
  }
  const out: Buffer[] = [];
  for (const name of names.sort()) {
    const text = readFileSync(join(CORPUS_DIR, name), 'latin1');
    for (const block of text.split(/\n\s*\n/)) {
      // The Aesculon trace keeps the sender's own VT … FS around its message: unwrap it.
      const body = block.replace(/^\x0b/, '').replace(/\x1c\s*$/, '').replace(/\n+$/, '');
      if (body.trim() === '') continue;
      const msg = Buffer.from(`${body.replace(/\n/g, '\r')}\r`, 'latin1');
      expect(msg.includes(VT) || msg.includes(FS), `${name}: block characters inside a message`).toBe(false);
      out.push(msg);
    }
  }
  return out;
}

/** Our own fixtures: varied sizes, charsets, terminators and byte values. */
function ownMessages(): Buffer[] {
  const msh = (id: string, charset = 'UNICODE UTF-8') =>
    `MSH|^~\\&|SIM^0212A0FFFE000001^EUI-64|SIM|||20250301120000+0100||ORU^R01^ORU_R01|${id}|P|2.6|||AL|NE||${charset}`;
  const obx = (i: number) =>
    `OBX|${i}|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.${i}|${60 + (i % 40)}|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R|||20250301120000+0100`;
  const dansk = `PID|||0101904321^^^&1.2.208.176.1.2&ISO^NNDNK||Ærø^Søren||19900101|M`;
  const binary = Buffer.from(Array.from({ length: 256 }, (_, i) => i).filter((b) => b !== VT && b !== FS));
  return [
    Buffer.from(`${msh('ACK1')}\rMSA|AA|X1\r`),
    Buffer.from(`${msh('U1')}\r${dansk}\r${obx(1)}\r`, 'utf8'),
    Buffer.from(`${msh('L1', '8859/1')}\r${dansk}\r${obx(1)}\r`, 'latin1'),
    Buffer.from(`${msh('LF1')}\n${obx(1)}\n${obx(2)}\n`), // LF segment terminators
    Buffer.from(`\r\n${msh('LEAD')}\r`), // CR/LF inside a frame are content, not stray bytes
    Buffer.alloc(0), // empty frame
    Buffer.from('M'),
    Buffer.from('\r\n\r\n'),
    binary,
    Buffer.from(`${msh('BIG')}\r${Array.from({ length: 120 }, (_, i) => obx(i + 1)).join('\r')}\r`),
  ];
}

const CORPUS = corpusMessages();
const MESSAGES = [...ownMessages(), ...(CORPUS ?? [])];
const SEPARATORS = ['', '\r\n', '', '\n', '', '\r'];

/** All messages as pipelined frames, with the stray CR/LF real senders add between some. */
function pipelined(messages: readonly Buffer[]): Buffer {
  const parts: Buffer[] = [];
  messages.forEach((m, i) => {
    parts.push(encodeFrame(m), Buffer.from(SEPARATORS[i % SEPARATORS.length] ?? '', 'latin1'));
  });
  return Buffer.concat(parts);
}

// ── PRNG ────────────────────────────────────────────────────────────────────


// ── the oracle ──────────────────────────────────────────────────────────────

type Ev =
  | { kind: 'frame'; bytes: Buffer }
  | { kind: 'error'; code: string; reason: string; offset: number; length: number; head: Buffer };

/** A naive MLLP decoder over a whole stream, written from the documented rules, for comparison. */
function referenceDecode(stream: Buffer, maxMessage: number, maxError: number): Ev[] {
  const out: Ev[] = [];
  let state: 'out' | 'in' | 'fs' = 'out';
  let content: number[] = [];
  let frameStart = 0;
  let pending: Buffer | null = null;
  let inGarbage = false;
  let garbage: number[] = [];
  let garbageStart = 0;

  const garbagePiece = () => {
    out.push({ kind: 'error', code: ErrorCode.MLLP_GARBAGE, reason: 'garbage', offset: garbageStart, length: garbage.length, head: Buffer.from(garbage) });
    garbageStart += garbage.length;
    garbage = [];
  };
  const frameError = (reason: string) => {
    const big = content.length > maxMessage;
    out.push({
      kind: 'error',
      code: big ? ErrorCode.MLLP_FRAME_TOO_LARGE : ErrorCode.MLLP_TRUNCATED,
      reason: big ? 'too-large' : reason,
      offset: frameStart,
      length: content.length,
      head: Buffer.from(content.slice(0, maxError)),
    });
  };
  const start = (i: number): 'in' => {
    frameStart = i;
    content = [];
    return 'in';
  };

  for (let i = 0; i < stream.length; i++) {
    const b = stream[i] as number;
    if (state === 'out') {
      if (b === VT) {
        if (inGarbage && garbage.length > 0) garbagePiece();
        inGarbage = false;
        state = start(i);
      } else if (inGarbage || (b !== CR && b !== LF)) {
        if (!inGarbage) {
          inGarbage = true;
          garbageStart = i;
        }
        garbage.push(b);
        if (garbage.length === maxError) garbagePiece();
      }
    } else if (state === 'in') {
      if (b === VT) {
        frameError('restarted');
        state = start(i);
      } else if (b === FS) {
        if (content.length > maxMessage) {
          frameError('too-large');
          pending = null;
        } else {
          pending = Buffer.from(content);
        }
        state = 'fs';
      } else {
        content.push(b);
      }
    } else if (b === CR || b === LF || b === VT) {
      if (pending) out.push({ kind: 'frame', bytes: pending });
      pending = null;
      state = b === VT ? start(i) : 'out';
    } else {
      if (pending) frameError('bad-end-block');
      pending = null;
      state = 'out';
      i--; // decode this byte again, outside a frame
    }
  }
  if (state === 'out' && inGarbage && garbage.length > 0) garbagePiece();
  if (state === 'in') frameError('end-of-stream');
  if (state === 'fs' && pending) out.push({ kind: 'frame', bytes: pending });
  return out;
}

// ── the decoder under test ──────────────────────────────────────────────────

interface Run {
  events: Ev[];
  maxBuffered: number;
}

/** Decodes `stream` cut at the given offsets (ascending), then ends it. */
function decodeChunks(stream: Buffer, cuts: readonly number[], maxMessage: number, maxError: number): Run {
  const events: Ev[] = [];
  const decoder = new MllpDecoder({
    maxMessageBytes: maxMessage,
    maxErrorBytes: maxError,
    // Copy: a view of a chunk is only promised valid during the call.
    onFrame: (m) => events.push({ kind: 'frame', bytes: Buffer.from(m) }),
    onError: (e: MllpError) =>
      events.push({ kind: 'error', code: e.code, reason: e.reason, offset: e.offset, length: e.length, head: e.head }),
  });
  let maxBuffered = 0;
  let from = 0;
  for (const cut of [...cuts, stream.length]) {
    decoder.push(stream.subarray(from, cut));
    maxBuffered = Math.max(maxBuffered, decoder.bufferedBytes);
    from = cut;
  }
  decoder.end();
  const c = decoder.counters;
  const errors = Object.values(c.errors).reduce((a, b) => a + b, 0);
  // Counters agree with the events.
  expect(c.frames + errors).toBe(events.length);
  expect(c.bytesIn).toBe(stream.length);
  return { events, maxBuffered };
}

function randomCuts(rnd: () => number, length: number, maxChunk: number): number[] {
  const cuts: number[] = [];
  for (let at = 1 + randomInt(rnd, maxChunk); at < length; at += 1 + randomInt(rnd, maxChunk)) cuts.push(at);
  return cuts;
}

/** Random bytes biased towards the interesting ones (block characters, CR, LF). */
function randomBytes(rnd: () => number, n: number): Buffer {
  const out = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) {
    const r = rnd();
    out[i] = r < 0.06 ? VT : r < 0.12 ? FS : r < 0.2 ? CR : r < 0.24 ? LF : randomInt(rnd, 256);
  }
  return out;
}

/** A stream mixing good frames, garbage, truncations, lenient and bad end blocks, oversized frames. */
function randomStream(rnd: () => number, maxMessage: number): Buffer {
  const parts: Buffer[] = [];
  const count = 1 + randomInt(rnd, 12);
  for (let i = 0; i < count; i++) {
    const m = MESSAGES[randomInt(rnd, MESSAGES.length)] as Buffer;
    const r = rnd();
    if (r < 0.45) parts.push(encodeFrame(m));
    else if (r < 0.55) parts.push(randomBytes(rnd, randomInt(rnd, 300)));
    else if (r < 0.65) parts.push(Buffer.concat([Buffer.from([VT]), m.subarray(0, randomInt(rnd, m.length + 1))]));
    else if (r < 0.72) parts.push(Buffer.concat([Buffer.from([VT]), m, Buffer.from([FS, [LF, VT, 0x41][randomInt(rnd, 3)] as number])]));
    else if (r < 0.8) parts.push(encodeFrame(Buffer.alloc(maxMessage + 1 + randomInt(rnd, 3 * maxMessage), 0x4d)));
    else if (r < 0.9) parts.push(Buffer.from(['\r\n', '\n', '\r', ''][randomInt(rnd, 4)] as string, 'latin1'));
    else parts.push(encodeFrame(Buffer.from(randomBytes(rnd, randomInt(rnd, 200)).filter((b) => b !== VT && b !== FS))));
  }
  return Buffer.concat(parts);
}

/** Runs `body` with a seed and says which seed failed, so the case can be replayed. */
function withSeed(seed: number, body: (rnd: () => number) => void): void {
  try {
    body(mulberry32(seed));
  } catch (err) {
    // Every seed derives from BASE_SEED, so replaying that base replays this case.
    throw new Error(`MLLP fuzz failed (replay: MDI_FUZZ_SEED=${BASE_SEED}; case seed ${seed}): ${(err as Error).message}`, {
      cause: err,
    });
  }
}

/** One line per event: cheap to compare, readable in a diff. */
function show(events: readonly Ev[]): string[] {
  return events.map((e) =>
    e.kind === 'frame'
      ? `frame ${e.bytes.length} ${JSON.stringify(e.bytes.toString('latin1'))}`
      : `${e.code} ${e.reason} @${e.offset}+${e.length} ${JSON.stringify(e.head.toString('latin1'))}`,
  );
}

/** Asserts the decoder under test agrees with the reference on `stream` cut at `cuts`. */
function agree(stream: Buffer, cuts: readonly number[], maxMessage: number, maxError: number, expected?: Ev[]): Run {
  const run = decodeChunks(stream, cuts, maxMessage, maxError);
  expect(show(run.events)).toEqual(show(expected ?? referenceDecode(stream, maxMessage, maxError)));
  expect(run.maxBuffered).toBeLessThanOrEqual(maxMessage);
  return run;
}

// ── tests ───────────────────────────────────────────────────────────────────

describe('MLLP fuzz: split boundaries', () => {
  const stream = pipelined(MESSAGES);
  const expected: Ev[] = MESSAGES.map((m) => ({ kind: 'frame', bytes: m }));
  const expectedFrames = MESSAGES;

  it(`has fixtures (${MESSAGES.length} messages, ${CORPUS?.length ?? 0} from the public corpus)`, () => {
    if (CORPUS === null) console.warn(`MLLP fuzz: ${CORPUS_DIR} is absent (a fresh clone): public-corpus fixtures skipped`);
    else expect(CORPUS.length).toBeGreaterThanOrEqual(40);
    expect(referenceDecode(stream, 1 << 20, 16 << 10)).toEqual(expected);
  });

  it('gives the same frames for the pipelined stream in one chunk and split in two at every byte offset', () => {
    agree(stream, [], 1 << 20, 16 << 10, expected);
    // Compare frames as they arrive instead of collecting them: this loop runs the decoder over
    // the whole stream once per offset.
    for (let cut = 1; cut < stream.length; cut++) {
      let n = 0;
      const decoder = new MllpDecoder({
        onFrame: (m) => {
          const want = expectedFrames[n];
          if (want === undefined || !m.equals(want)) {
            throw new Error(`split at ${cut}: frame ${n} differs`);
          }
          n++;
        },
        onError: (e) => {
          throw new Error(`split at ${cut}: unexpected ${e.code} at ${e.location}`);
        },
      });
      decoder.push(stream.subarray(0, cut));
      decoder.push(stream.subarray(cut));
      decoder.end();
      if (n !== expected.length) throw new Error(`split at ${cut}: ${n} frames, expected ${expected.length}`);
    }
  });

  it('gives the same frames fed byte by byte', () => {
    const cuts = Array.from({ length: stream.length - 1 }, (_, i) => i + 1);
    agree(stream, cuts, 1 << 20, 16 << 10, expected);
  });

  it('gives the same frames in random chunk sizes', () => {
    withSeed(BASE_SEED, (rnd) => {
      for (let round = 0; round < 30; round++) {
        const maxChunk = [2, 16, 100, 1500, 65536][round % 5] as number;
        agree(stream, randomCuts(rnd, stream.length, maxChunk), 1 << 20, 16 << 10, expected);
      }
    });
  });
});

describe('MLLP fuzz: hostile input', () => {
  it('agrees with the reference on random mixed streams, however they are split', () => {
    withSeed(BASE_SEED + 1, (rnd) => {
      for (let round = 0; round < 300; round++) {
        const maxMessage = [64, 512, 4096][round % 3] as number;
        const maxError = [64, 100, 1024][randomInt(rnd, 3)] as number;
        const stream = randomStream(rnd, maxMessage);
        const expected = referenceDecode(stream, maxMessage, maxError);
        agree(stream, [], maxMessage, maxError, expected);
        agree(stream, randomCuts(rnd, stream.length, 1 + randomInt(rnd, 200)), maxMessage, maxError, expected);
      }
    });
  });

  it('survives random bytes in bounded memory, and a good frame after them always arrives', () => {
    const good = ownMessages()[1] as Buffer;
    withSeed(BASE_SEED + 2, (rnd) => {
      for (let round = 0; round < 300; round++) {
        const junk = round % 2 === 0 ? randomBytes(rnd, randomInt(rnd, 3000)) : Buffer.from(Array.from({ length: randomInt(rnd, 3000) }, () => randomInt(rnd, 256)));
        const stream = Buffer.concat([junk, encodeFrame(good)]);
        const run = agree(stream, randomCuts(rnd, stream.length, 1 + randomInt(rnd, 500)), 1024, 64);
        const last = run.events.at(-1);
        expect(last?.kind === 'frame' && last.bytes.equals(good)).toBe(true);
        for (const e of run.events) if (e.kind === 'error') expect(e.head.length).toBeLessThanOrEqual(64);
      }
    });
  });

  it('reports every oversized frame with its head and still delivers the good frame after it', () => {
    withSeed(BASE_SEED + 3, (rnd) => {
      for (let round = 0; round < 50; round++) {
        const size = 2049 + randomInt(rnd, 20_000);
        const huge = Buffer.alloc(size, 0x58);
        Buffer.from('MSH|^~\\&|X|||||||BIG42|').copy(huge);
        const good = MESSAGES[randomInt(rnd, MESSAGES.length)] as Buffer;
        if (good.length > 2048) continue;
        const stream = Buffer.concat([encodeFrame(huge), encodeFrame(good)]);
        const run = agree(stream, randomCuts(rnd, stream.length, 1 + randomInt(rnd, 4000)), 2048, 256);
        expect(run.events).toHaveLength(2);
        const [e, f] = run.events;
        expect(e?.kind === 'error' && e.code === ErrorCode.MLLP_FRAME_TOO_LARGE && e.length === size).toBe(true);
        expect(e?.kind === 'error' && e.head.toString('latin1').startsWith('MSH|^~\\&|X|||||||BIG42|')).toBe(true);
        expect(f?.kind === 'frame' && f.bytes.equals(good)).toBe(true);
      }
    });
  });

  it('reports truncated frames and a start block inside a frame, then goes on', () => {
    withSeed(BASE_SEED + 4, (rnd) => {
      for (let round = 0; round < 200; round++) {
        const a = MESSAGES[randomInt(rnd, MESSAGES.length)] as Buffer;
        const b = MESSAGES[randomInt(rnd, MESSAGES.length)] as Buffer;
        const cutAt = randomInt(rnd, a.length + 1);
        const stream = Buffer.concat([Buffer.from([VT]), a.subarray(0, cutAt), encodeFrame(b), Buffer.from([VT]), a.subarray(0, cutAt)]);
        const run = agree(stream, randomCuts(rnd, stream.length, 1 + randomInt(rnd, 300)), 1 << 20, 16 << 10);
        expect(run.events.map((e) => (e.kind === 'frame' ? 'frame' : e.reason))).toEqual(['restarted', 'frame', 'end-of-stream']);
      }
    });
  });

  it.runIf(LONG)(
    `long run: random streams for ${LONG_MS} ms (MDI_FUZZ_LONG=1)`,
    () => {
      const deadline = Date.now() + LONG_MS;
      let rounds = 0;
      for (let seed = BASE_SEED + 100; Date.now() < deadline; seed++, rounds++) {
        withSeed(seed, (rnd) => {
          const maxMessage = [16, 64, 512, 4096, 65536][randomInt(rnd, 5)] as number;
          const maxError = [64, 100, 1024, 16384][randomInt(rnd, 4)] as number;
          const stream = rnd() < 0.3 ? randomBytes(rnd, randomInt(rnd, 20_000)) : randomStream(rnd, maxMessage);
          const expected = referenceDecode(stream, maxMessage, maxError);
          for (const maxChunk of [1, 7, 300, 100_000]) {
            agree(stream, randomCuts(rnd, stream.length, maxChunk), maxMessage, maxError, expected);
          }
        });
      }
      console.info(`MLLP long fuzz: ${rounds} rounds from seed ${BASE_SEED + 100}`);
    },
    LONG_MS + 60_000,
  );
});
