/**
 * Fuzz tests for the serial framers and decoders (undici's split-data fuzzing, mqtt-packet's
 * random bytes; research/aesthetics.md §9.3.5): the same stream split at every byte offset and
 * in random chunks gives the same frames and refusals; random bytes never crash a framer or
 * grow its memory, every refusal is counted, and a good frame after any junk still arrives;
 * every truncation of a frame is survived.
 *
 * Default run: a few seconds. Long run: `MDI_FUZZ_LONG=1` (duration `MDI_FUZZ_MS`, default
 * 180 000 ms per random test); `MDI_FUZZ_SEED=<n>` replays the seed a failure printed.
 */
import { describe, expect, it } from 'vitest';
import { mulberry32, randomInt } from '../../simulators/random.js';
import { decodeBccBlock, parseBccRecords } from '../../drivers/serial/bbraun.js';
import {
  BccFramer,
  encodeBccFrame,
  encodeMedibusFrame,
  LineFramer,
  MedibusFramer,
  type FramerReject,
} from '../../drivers/serial/framers.js';
import { vendorCodesFor } from '../../drivers/serial/index.js';
import { decodeMasimoLine } from '../../drivers/serial/masimo.js';
import { decodeMedibusResponse } from '../../drivers/serial/medibus.js';
import { zoneOffsets } from '../../src/codec/hl7-time.js';
import { ErrorCode } from '../../src/errors.js';
import { Quality } from '../../src/model/measurement.js';
import { bccCorpusTelegrams, masimoCorpusLines, medibusCorpusFrames } from '../helpers/serial-corpus.js';

const LONG = process.env.MDI_FUZZ_LONG === '1';
const LONG_MS = Number(process.env.MDI_FUZZ_MS ?? 180_000);
const BASE_SEED = process.env.MDI_FUZZ_SEED !== undefined ? Number(process.env.MDI_FUZZ_SEED) : Date.now() >>> 0;


/** Runs `body(seed)` for a few seeds, or for `MDI_FUZZ_MS` in the long run. */
function forSeeds(runs: number, body: (seed: number) => void): void {
  const deadline = Date.now() + LONG_MS;
  for (let i = 0; LONG ? Date.now() < deadline : i < runs; i++) {
    const seed = (BASE_SEED + i * 0x9e3779b1) >>> 0;
    try {
      body(seed);
    } catch (err) {
      throw new Error(`fuzz failure with seed ${seed} (replay: MDI_FUZZ_SEED=${seed}): ${(err as Error).message}`, { cause: err });
    }
  }
}

// ── a uniform view of the three framers ─────────────────────────────────────

interface Harness {
  push(chunk: Uint8Array): void;
  end(): void;
  pending(): number;
  readonly events: string[];
  readonly rejects: FramerReject[];
  readonly counters: { rejected: number; frames: number };
}

type Make = () => Harness;

const describeReject = (r: FramerReject) => `reject ${r.code} @${r.offset}+${r.length} ${r.raw.toString('hex')}`;

const makeLines: Make = () => {
  const events: string[] = [];
  const rejects: FramerReject[] = [];
  const framer = new LineFramer({
    maxLineBytes: 256,
    tooLongCode: ErrorCode.MASIMO_LINE_TOO_LONG,
    onLine: (line, offset, length) => events.push(`line @${offset}+${length} ${Buffer.from(line, 'latin1').toString('hex')}`),
    onReject: (r) => {
      rejects.push(r);
      events.push(describeReject(r));
    },
  });
  return { push: (c) => framer.push(c), end: () => undefined, pending: () => framer.pending(), events, rejects, counters: framer.counters };
};

const makeMedibus: Make = () => {
  const events: string[] = [];
  const rejects: FramerReject[] = [];
  const framer = new MedibusFramer({
    maxFrameBytes: 512,
    onFrame: (f) => events.push(`frame ${f.kind} ${f.code} @${f.offset}+${f.length} ${f.data.toString('hex')}`),
    onReject: (r) => {
      rejects.push(r);
      events.push(describeReject(r));
    },
    onFlowControl: (b) => events.push(`flow ${b}`),
  });
  return { push: (c) => framer.push(c), end: () => framer.end(), pending: () => framer.pending(), events, rejects, counters: framer.counters };
};

const makeBcc =
  (stuffing: boolean): Make =>
  () => {
    const events: string[] = [];
    const rejects: FramerReject[] = [];
    const framer = new BccFramer({
      stuffing,
      maxFrameBytes: 2048,
      onFrame: (f) => events.push(`frame ${f.header} ${f.final} @${f.offset}+${f.length} ${f.info.toString('hex')}`),
      onReject: (r) => {
        rejects.push(r);
        events.push(describeReject(r));
      },
      onControl: (b, offset) => events.push(`control ${b} @${offset}`),
    });
    return { push: (c) => framer.push(c), end: () => framer.end(), pending: () => framer.pending(), events, rejects, counters: framer.counters };
  };

function decodeWhole(make: Make, stream: Buffer): string[] {
  const h = make();
  h.push(stream);
  h.end();
  return h.events;
}

function decodeChunks(make: Make, chunks: Buffer[]): Harness {
  const h = make();
  for (const c of chunks) h.push(c);
  h.end();
  return h;
}

// ── streams ─────────────────────────────────────────────────────────────────

const RS = '\x1e';

function lineStream(): Buffer {
  const corpus = (masimoCorpusLines() ?? []).flatMap((f) => f.lines);
  const own = [
    '03/17/16 19:19:36 SN=0000093112 SPO2=098% BPM=072 PI=02.50 ALARM=0000 EXC=000800',
    '',
    'x'.repeat(600), // longer than the 256-byte bound
    '03/17/16 19:19:37 SPO2=---% BPM=--- EXC=000020',
    '\x00\xff\x13noise',
  ];
  const parts = [...corpus, ...own].map((l, i) => `${l}${i % 3 === 0 ? '\n' : '\r\n'}`);
  return Buffer.from(parts.join(''), 'latin1');
}

function medibusStream(): Buffer {
  const corpus = medibusCorpusFrames() ?? [];
  const badCheck = encodeMedibusFrame('response', 0x24, 'EB 98 ');
  badCheck[badCheck.length - 1 - 1] = 0x5a;
  const response = encodeMedibusFrame('response', 0x24, 'EB 98 E1 70 78  5 ');
  const nested = Buffer.concat([response.subarray(0, 7), encodeMedibusFrame('command', 0x30), response.subarray(7)]);
  return Buffer.concat([
    ...corpus,
    Buffer.from('noise'),
    badCheck,
    encodeMedibusFrame('command', 0x51).subarray(0, 3), // cut short by the next frame
    nested,
    Buffer.from([0xd0, 0xc1, 0x85, 0x11, 0x13]),
    Buffer.concat([Buffer.from([0x01, 0x24]), Buffer.alloc(700, 0x41), Buffer.from([0x0d])]), // too large
    encodeMedibusFrame('response', 0x2b, '21 450'),
  ]);
}

function bccStreamUnstuffed(): Buffer {
  const corpus = (bccCorpusTelegrams() ?? []).map((t) => t.bytes);
  return Buffer.concat([...corpus, encodeBccFrame('Bed/1/1', `1,50111,INRT,4${RS}1,50111,INVI,2`, { stuffing: false })]);
}

function bccStreamStuffed(): Buffer {
  const good = encodeBccFrame('ComSystem/1/1', `12,50111,INRT,0.30${RS}12,50111,INSOL,Dobutamin${RS}12,50111,INSOLSN,Dex\ue021`, { final: false });
  const badCheck = Buffer.from(encodeBccFrame('ComSystem/1/1', '12,50112,INRT,1'));
  badCheck[badCheck.length - 2] = badCheck[badCheck.length - 2] === 0x30 ? 0x31 : 0x30;
  return Buffer.concat([
    good,
    Buffer.from([0x06]),
    badCheck,
    Buffer.from([0x15]),
    Buffer.from('zz garbage'),
    encodeBccFrame('ComSystem/1/1', 'ADMIN:VERSION').subarray(0, 12), // cut short
    encodeBccFrame('ComSystem/1/1', 'EdEdDeDe, every stuffed letter'),
    Buffer.concat([Buffer.from([0x01]), Buffer.alloc(3000, 0x30), Buffer.from([0x04])]), // too large
    encodeBccFrame('ComSystem/1/1', '12,50100,GNACK,0'),
  ]);
}

const FRAMERS: { name: string; make: Make; stream: () => Buffer; good: Buffer; boundary: Buffer }[] = [
  { name: 'lines (Masimo)', make: makeLines, stream: lineStream, good: Buffer.from('GOOD LINE\r\n'), boundary: Buffer.from('\n') },
  { name: 'MEDIBUS', make: makeMedibus, stream: medibusStream, good: encodeMedibusFrame('response', 0x24, 'EB 97 '), boundary: Buffer.alloc(0) },
  { name: 'BCC (stuffing off)', make: makeBcc(false), stream: bccStreamUnstuffed, good: encodeBccFrame('G/1/1', 'good', { stuffing: false }), boundary: Buffer.alloc(0) },
  { name: 'BCC (stuffing on)', make: makeBcc(true), stream: bccStreamStuffed, good: encodeBccFrame('G/1/1', 'good'), boundary: Buffer.alloc(0) },
];

/** Bytes that matter to the framers, so random input hits their state machines often. */
const INTERESTING = [0x00, 0x01, 0x02, 0x03, 0x04, 0x06, 0x0a, 0x0d, 0x11, 0x13, 0x15, 0x17, 0x1b, 0x1e, 0x3e, 0x45, 0x58, 0x65, 0x78, 0x80, 0xd0, 0xff];

function randomBytes(rnd: () => number, length: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) out[i] = rnd() < 0.3 ? INTERESTING[randomInt(rnd, INTERESTING.length)]! : randomInt(rnd, 256);
  return out;
}

function randomChunks(rnd: () => number, stream: Buffer): Buffer[] {
  const chunks: Buffer[] = [];
  for (let i = 0; i < stream.length; ) {
    const n = 1 + randomInt(rnd, 64);
    chunks.push(stream.subarray(i, i + n));
    i += n;
  }
  return chunks;
}

// ── the tests ───────────────────────────────────────────────────────────────

describe('serial framers under fuzzing', () => {
  for (const f of FRAMERS) {
    describe(f.name, () => {
      const stream = f.stream();
      const whole = decodeWhole(f.make, stream);

      it('gives the same frames and refusals when the stream is split in two at every byte offset', () => {
        expect(whole.length).toBeGreaterThan(3);
        for (let cut = 1; cut < stream.length; cut++) {
          const h = decodeChunks(f.make, [stream.subarray(0, cut), stream.subarray(cut)]);
          if (h.events.length !== whole.length || h.events.some((e, i) => e !== whole[i])) {
            expect(h.events, `split at byte ${cut}`).toEqual(whole);
          }
        }
      });

      it('gives the same result in random chunk sizes', () => {
        forSeeds(100, (seed) => {
          const h = decodeChunks(f.make, randomChunks(mulberry32(seed), stream));
          expect(h.events).toEqual(whole);
        });
      });

      it('survives random bytes in bounded memory, counts every refusal, and a good frame after them arrives', () => {
        forSeeds(200, (seed) => {
          const rnd = mulberry32(seed);
          const h = f.make();
          const junk = randomBytes(rnd, 1 + randomInt(rnd, 4096));
          for (const chunk of randomChunks(rnd, junk)) {
            h.push(chunk);
            expect(h.pending()).toBeLessThanOrEqual(4096);
          }
          h.push(f.boundary);
          const framesBefore = h.counters.frames;
          h.push(f.good);
          expect(h.counters.frames, 'the good frame after the junk').toBe(framesBefore + 1);
          h.end();
          expect(h.counters.rejected).toBe(h.rejects.length);
          for (const r of h.rejects) {
            expect(r.code).toMatch(/^MDI_ERR_/);
            expect(r.raw.length).toBeLessThanOrEqual(4096);
          }
        });
      });

      it('survives every truncation of every frame, and the next frame arrives', () => {
        const good = f.good;
        for (let cut = 0; cut < good.length; cut++) {
          const h = f.make();
          h.push(good.subarray(0, cut));
          h.push(f.boundary);
          const framesBefore = h.counters.frames;
          h.push(good);
          expect(h.counters.frames, `cut at ${cut}`).toBe(framesBefore + 1);
          h.end();
          expect(h.counters.rejected).toBe(h.rejects.length);
        }
      });
    });
  }
});

describe('serial decoders under fuzzing', () => {
  const zone = zoneOffsets('Europe/Copenhagen');

  it('Masimo: random lines never throw, and an invalid value is never a number', () => {
    const codes = vendorCodesFor('masimo');
    const keys = ['SPO2', 'BPM', 'PI', 'EXC', 'ALARM', 'SN', 'PVI', 'X', 'spo2'];
    const values = ['098%', '---', '--.-', '000', '00.00', '+--', 'C00:LowSigIQ', '000820', '9x', '', '12.5', '-1'];
    forSeeds(2000, (seed) => {
      const rnd = mulberry32(seed);
      const tokens = Array.from({ length: randomInt(rnd, 8) }, () => (rnd() < 0.1 ? randomBytes(rnd, 4).toString('latin1') : `${keys[randomInt(rnd, keys.length)]}=${values[randomInt(rnd, values.length)]}`));
      const head = rnd() < 0.9 ? `0${1 + randomInt(rnd, 9)}/${10 + randomInt(rnd, 25)}/16 1${randomInt(rnd, 10)}:${10 + randomInt(rnd, 50)}:${10 + randomInt(rnd, 50)} ` : '';
      const d = decodeMasimoLine(head + tokens.join(' '), { deviceId: 'd', zone, codes });
      for (const m of [...d.readings, ...d.states]) {
        if (m.flags & Quality.INVALID) expect(Number.isNaN(m.value)).toBe(true);
        expect(Number.isFinite(m.time)).toBe(true);
      }
      if (d.fatal) expect(d.readings).toEqual([]);
    });
  });

  it('MEDIBUS: random response data never throws', () => {
    const codes = vendorCodesFor('medibus');
    forSeeds(2000, (seed) => {
      const rnd = mulberry32(seed);
      const data = randomBytes(rnd, randomInt(rnd, 200));
      for (const code of [0x24, 0x2b, 0x27, 0x2e, 0x52]) {
        const d = decodeMedibusResponse({ kind: 'response', code, data, offset: 0, length: data.length + 5 }, { deviceId: 'd', time: 0, tzOffset: 0, codes });
        for (const m of d.measurements) if (m.flags & Quality.INVALID) expect(Number.isNaN(m.value)).toBe(true);
      }
    });
  });

  it('BCC: random records never throw', () => {
    const codes = vendorCodesFor('bbraun');
    const params = ['INRT', 'INRMT', 'INSOL', 'INM3', 'INA3', 'PATNAME', 'GNERR', 'FOO'];
    forSeeds(2000, (seed) => {
      const rnd = mulberry32(seed);
      const records = Array.from({ length: randomInt(rnd, 10) }, () =>
        rnd() < 0.2
          ? randomBytes(rnd, randomInt(rnd, 20)).toString('latin1')
          : `${randomInt(rnd, 1000)},501${1 + randomInt(rnd, 3)}${1 + randomInt(rnd, 9)},${params[randomInt(rnd, params.length)]},${rnd() < 0.2 ? '_NV' : (rnd() * 100).toFixed(2)}`,
      );
      const info = Buffer.from(records.join(RS), 'latin1');
      expect(() => parseBccRecords(info)).not.toThrow();
      const d = decodeBccBlock(info, { deviceId: 'd', received: 1e12, zone, codes });
      for (const m of [...d.readings, ...d.states]) {
        if (m.flags & Quality.INVALID) expect(Number.isNaN(m.value)).toBe(true);
        expect(m.code).not.toBe('PATNAME');
      }
    });
  });
});
