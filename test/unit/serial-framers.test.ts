import { describe, expect, it } from 'vitest';
import {
  BccFramer,
  bccStuff,
  encodeBccFrame,
  encodeMedibusFrame,
  LineFramer,
  MAX_REJECT_BYTES,
  MedibusFramer,
  type BccFrame,
  type FramerReject,
  type MedibusFrame,
} from '../../drivers/serial/framers.js';
import { ErrorCode } from '../../src/errors.js';
import { bccCorpusTelegrams, medibusCorpusFrames } from '../helpers/serial-corpus.js';
import { SHARED_ABSENT_NOTE } from '../helpers/shared.js';

function lines(options: { max?: number; discardFirst?: boolean } = {}) {
  const out: { line: string; offset: number; length: number }[] = [];
  const rejects: FramerReject[] = [];
  const framer = new LineFramer({
    maxLineBytes: options.max ?? 64,
    discardFirstLine: options.discardFirst ?? false,
    tooLongCode: ErrorCode.MASIMO_LINE_TOO_LONG,
    onLine: (line, offset, length) => out.push({ line, offset, length }),
    onReject: (r) => rejects.push(r),
  });
  return { framer, out, rejects };
}

describe('LineFramer (readline with a guard)', () => {
  it('emits each line synchronously inside push(), CR LF removed, with stream offsets', () => {
    const { framer, out } = lines();
    framer.push(Buffer.from('one\r\ntw'));
    expect(out.map((l) => l.line)).toEqual(['one']);
    framer.push(Buffer.from('o\r\n\r\nthree\n'));
    expect(out).toEqual([
      { line: 'one', offset: 0, length: 5 },
      { line: 'two', offset: 5, length: 5 },
      { line: 'three', offset: 12, length: 6 },
    ]);
    expect(framer.counters).toMatchObject({ bytes: 18, frames: 3, rejected: 0 });
  });

  it('discards the first, partial line after opening, without refusing it', () => {
    const { framer, out, rejects } = lines({ discardFirst: true });
    framer.push(Buffer.from('SPO2=098% BPM=07'));
    framer.push(Buffer.from('2 EXC=000\r\nwhole line\r\n'));
    expect(out.map((l) => l.line)).toEqual(['whole line']);
    expect(rejects).toEqual([]);
    expect(framer.counters.discardedBytes).toBe(27);
  });

  it('refuses a line longer than the bound with its head, drops the rest, and goes on', () => {
    const { framer, out, rejects } = lines({ max: 10 });
    framer.push(Buffer.from('short\n0123456789ABCDEF'));
    framer.push(Buffer.from('GHIJ\nafter\n'));
    expect(out.map((l) => l.line)).toEqual(['short', 'after']);
    expect(rejects).toHaveLength(1);
    expect(rejects[0]).toMatchObject({ code: ErrorCode.MASIMO_LINE_TOO_LONG, offset: 6, length: 10 });
    expect(rejects[0]!.raw.toString()).toBe('0123456789');
    expect(framer.counters.discardedBytes).toBe(11);
  });

  it('keeps memory bounded on a line that never ends', () => {
    const { framer, rejects } = lines({ max: 100 });
    for (let i = 0; i < 1000; i++) {
      framer.push(Buffer.alloc(1000, 0x41));
      expect(framer.pending()).toBeLessThanOrEqual(100);
    }
    expect(rejects).toHaveLength(1);
    expect(framer.counters.discardedBytes).toBe(1_000_000 - 100);
  });
});

function medibus(maxFrameBytes = 256) {
  const frames: MedibusFrame[] = [];
  const rejects: FramerReject[] = [];
  const flow: number[] = [];
  const framer = new MedibusFramer({ maxFrameBytes, onFrame: (f) => frames.push(f), onReject: (r) => rejects.push(r), onFlowControl: (b) => flow.push(b) });
  return { framer, frames, rejects, flow };
}

describe('MedibusFramer', () => {
  const corpus = medibusCorpusFrames();

  it.skipIf(!corpus)(`accepts every example frame of the MEDIBUS definition (${corpus ? 'public corpus' : SHARED_ABSENT_NOTE})`, () => {
    const { framer, frames, rejects } = medibus(8192);
    for (const f of corpus!) framer.push(f);
    expect(rejects).toEqual([]);
    expect(frames).toHaveLength(corpus!.length);
    // MEDIBUS Appendix example 2: SOH $ "EB 98 E1 70 " 7A CR = SpO2 98 %, pulse 70.
    expect(frames[6]).toMatchObject({ kind: 'response', code: 0x24 });
    expect(frames[6]!.data.toString('latin1')).toBe('EB 98 E1 70 ');
    // Our encoder writes the same bytes as the specification.
    for (const [i, f] of frames.entries()) expect(encodeMedibusFrame(f.kind, f.code, f.data)).toEqual(corpus![i]);
  });

  it('encodes ICC as in the specification: ESC Q 6C CR', () => {
    expect(encodeMedibusFrame('command', 0x51)).toEqual(Buffer.from([0x1b, 0x51, 0x36, 0x43, 0x0d]));
  });

  it('refuses a bad checksum with both values and is in sync for the next frame', () => {
    const { framer, frames, rejects } = medibus();
    const bad = encodeMedibusFrame('response', 0x24, 'EB 98 ');
    bad[bad.length - 2] = bad[bad.length - 2]! ^ 0x01;
    framer.push(Buffer.concat([bad, encodeMedibusFrame('response', 0x24, 'E1 70 ')]));
    expect(rejects).toHaveLength(1);
    expect(rejects[0]!.code).toBe(ErrorCode.MEDIBUS_BAD_CHECKSUM);
    expect(rejects[0]!.reason).toMatch(/does not match the computed [0-9A-F]{2}/);
    expect(rejects[0]!.raw).toEqual(bad);
    expect(frames.map((f) => f.data.toString())).toEqual(['E1 70 ']);
  });

  it('accepts a lower-case checksum', () => {
    const { framer, frames } = medibus();
    const frame = encodeMedibusFrame('response', 0x24, 'EB 98 E1 70 ');
    framer.push(Buffer.from(frame.toString('latin1').toLowerCase().replace('eb', 'EB').replace('e1', 'E1'), 'latin1'));
    expect(frames).toHaveLength(1);
  });

  it('skips MEDIBUS.X realtime bytes (bit 7 set) anywhere, and reports DC1/DC3', () => {
    const { framer, frames, rejects, flow } = medibus();
    const frame = encodeMedibusFrame('response', 0x24, 'EB 98 ');
    framer.push(Buffer.concat([Buffer.from([0xd0, 0xc1]), frame.subarray(0, 4), Buffer.from([0x13, 0x85, 0x91, 0x11]), frame.subarray(4)]));
    expect(frames).toHaveLength(1);
    expect(frames[0]!.data.toString()).toBe('EB 98 ');
    expect(rejects).toEqual([]);
    expect(flow).toEqual([0x13, 0x11]);
    expect(framer.counters.realtimeBytes).toBe(4);
  });

  it('keeps a response open while a device command arrives inside it', () => {
    const { framer, frames, rejects } = medibus();
    const response = encodeMedibusFrame('response', 0x24, 'EB 98 E1 70 ');
    const nop = encodeMedibusFrame('command', 0x30);
    framer.push(Buffer.concat([response.subarray(0, 6), nop, response.subarray(6)]));
    expect(rejects).toEqual([]);
    expect(frames.map((f) => [f.kind, f.code])).toEqual([
      ['command', 0x30],
      ['response', 0x24],
    ]);
  });

  it('refuses a frame cut short by the next one, and the next one arrives', () => {
    const { framer, frames, rejects } = medibus();
    const frame = encodeMedibusFrame('response', 0x24, 'EB 98 ');
    framer.push(Buffer.concat([frame.subarray(0, 5), frame]));
    expect(rejects.map((r) => r.code)).toEqual([ErrorCode.MEDIBUS_TRUNCATED]);
    expect(frames).toHaveLength(1);
  });

  it('bounds a frame without CR and resynchronises at the next start byte', () => {
    const { framer, frames, rejects } = medibus(64);
    framer.push(Buffer.concat([Buffer.from([0x01, 0x24]), Buffer.alloc(10_000, 0x41), encodeMedibusFrame('response', 0x24, 'EB 98 ')]));
    expect(rejects.map((r) => r.code)).toEqual([ErrorCode.MEDIBUS_FRAME_TOO_LARGE]);
    expect(rejects[0]!.raw.length).toBeLessThanOrEqual(64);
    expect(frames).toHaveLength(1);
    expect(framer.pending()).toBe(0);
  });

  it('reports a run of garbage once, and a long run in bounded pieces', () => {
    const { framer, rejects } = medibus();
    framer.push(Buffer.from('noise'));
    framer.push(encodeMedibusFrame('command', 0x30));
    expect(rejects).toHaveLength(1);
    expect(rejects[0]).toMatchObject({ code: ErrorCode.MEDIBUS_GARBAGE, offset: 0, length: 5 });
    framer.push(Buffer.alloc(3 * MAX_REJECT_BYTES + 10, 0x41));
    framer.end();
    expect(rejects.slice(1).map((r) => r.length)).toEqual([MAX_REJECT_BYTES, MAX_REJECT_BYTES, MAX_REJECT_BYTES, 10]);
  });

  it('refuses an unfinished frame at the end of the stream', () => {
    const { framer, rejects } = medibus();
    framer.push(Buffer.from([0x01, 0x24, 0x45]));
    framer.end();
    expect(rejects.map((r) => r.code)).toEqual([ErrorCode.MEDIBUS_TRUNCATED]);
  });
});

function bcc(options: { stuffing?: boolean; max?: number } = {}) {
  const frames: BccFrame[] = [];
  const rejects: FramerReject[] = [];
  const controls: number[] = [];
  const framer = new BccFramer({
    stuffing: options.stuffing ?? true,
    maxFrameBytes: options.max ?? 4096,
    onFrame: (f) => frames.push(f),
    onReject: (r) => rejects.push(r),
    onControl: (b) => controls.push(b),
  });
  return { framer, frames, rejects, controls };
}

describe('BccFramer', () => {
  const corpus = bccCorpusTelegrams();

  it.skipIf(!corpus)(`verifies the ALIVE request and refuses the edited ComSystem examples with a clear reason (${corpus ? 'public corpus' : SHARED_ABSENT_NOTE})`, () => {
    const { framer, frames, rejects, controls } = bcc({ stuffing: false });
    for (const t of corpus!) framer.push(t.bytes);
    framer.end();
    // BCC spec v4.0 §3.2.6.3: `1/1/1>ADMIN:ALIVE`, length 31, check 61: verifies.
    expect(frames).toHaveLength(1);
    expect(frames[0]).toMatchObject({ bedId: '1', header: '1/1/1', final: true });
    expect(frames[0]!.info.toString()).toBe('ADMIN:ALIVE');
    // SOURCES.md: every `ComSystem/1/1>` frame has a length field or check that does not match
    // (the bed id was edited in the document). Each is refused, saying which numbers disagree.
    expect(rejects).toHaveLength(corpus!.filter((t) => t.bytes.includes(0x01)).length - 1);
    for (const r of rejects) {
      expect([ErrorCode.BCC_BAD_LENGTH, ErrorCode.BCC_BAD_CHECKSUM]).toContain(r.code);
      expect(r.reason).toMatch(/length field \d{5} but the frame has \d+ bytes|check \d{5} but the bytes SOH…ETX sum to \d{5}/);
    }
    expect(rejects.filter((r) => r.code === ErrorCode.BCC_BAD_LENGTH).length).toBeGreaterThanOrEqual(5);
    expect(controls).toEqual(corpus!.filter((t) => t.bytes.length === 1).map(() => 0x06));
  });

  it('encodes ALIVE exactly as the specification prints it', () => {
    const alive = encodeBccFrame('1/1/1', 'ADMIN:ALIVE', { stuffing: false });
    expect(alive.toString('latin1')).toBe('\x0100031\x021/1/1>ADMIN:ALIVE\x0300061\x04');
  });

  it('stuffs D, E, d, e on the wire and unstuffs them left to right', () => {
    const info = 'ED,EEX,dee,xEdD';
    const wire = encodeBccFrame('Bed/1/1', info);
    expect(wire.includes(Buffer.from('D'))).toBe(false);
    expect(wire.includes(Buffer.from('EEEEX'))).toBe(true); // "EEX": E→EE, E→EE, X unchanged
    const { framer, frames, rejects } = bcc();
    framer.push(wire);
    expect(rejects).toEqual([]);
    expect(frames[0]!.info.toString()).toBe(info);
    expect(bccStuff(Buffer.from('EX'))).toEqual(Buffer.from('EEX'));
  });

  it('refuses a stuffing pair that is not one, naming the likely cause', () => {
    const { framer, frames, rejects } = bcc();
    const unstuffed = encodeBccFrame('Bed/1/1', 'ERROR', { stuffing: false });
    framer.push(Buffer.concat([unstuffed, encodeBccFrame('Bed/1/1', 'ok')]));
    expect(rejects.map((r) => r.code)).toEqual([ErrorCode.BCC_BAD_STUFFING]);
    expect(rejects[0]!.reason).toMatch(/character stuffing/);
    expect(frames.map((f) => f.info.toString())).toEqual(['ok']);
  });

  it('tells ETB (more blocks) from ETX (last block), and reports bare ACK/NAK', () => {
    const { framer, frames, controls } = bcc();
    framer.push(Buffer.concat([encodeBccFrame('B/1/1', 'a', { final: false }), Buffer.from([0x06, 0x15]), encodeBccFrame('B/1/1', 'b')]));
    expect(frames.map((f) => f.final)).toEqual([false, true]);
    expect(controls).toEqual([0x06, 0x15]);
  });

  it('refuses a bad check and a bad length with the numbers', () => {
    const { framer, rejects } = bcc({ stuffing: false });
    const good = encodeBccFrame('B/1/1', 'x', { stuffing: false });
    const badCheck = Buffer.from(good);
    badCheck[badCheck.length - 2] = badCheck[badCheck.length - 2] === 0x30 ? 0x31 : 0x30;
    const badLength = Buffer.concat([good.subarray(0, 9), Buffer.from('y'), good.subarray(9)]);
    framer.push(Buffer.concat([badCheck, badLength]));
    expect(rejects.map((r) => r.code)).toEqual([ErrorCode.BCC_BAD_CHECKSUM, ErrorCode.BCC_BAD_LENGTH]);
  });

  it('bounds a frame without EOT and resynchronises at the next SOH', () => {
    const { framer, frames, rejects } = bcc({ max: 100 });
    framer.push(Buffer.concat([Buffer.from([0x01]), Buffer.alloc(5000, 0x30), encodeBccFrame('B/1/1', 'ok')]));
    expect(rejects.map((r) => r.code)).toEqual([ErrorCode.BCC_FRAME_TOO_LARGE]);
    expect(rejects[0]!.raw.length).toBeLessThanOrEqual(100);
    expect(frames).toHaveLength(1);
  });

  it('refuses a frame cut short by the next SOH, and garbage between frames', () => {
    const { framer, frames, rejects } = bcc();
    const frame = encodeBccFrame('B/1/1', 'ok');
    framer.push(Buffer.concat([frame.subarray(0, 8), Buffer.from('zz'), frame]));
    framer.push(Buffer.from('zz'));
    framer.push(frame);
    expect(rejects.map((r) => r.code)).toEqual([ErrorCode.BCC_TRUNCATED, ErrorCode.BCC_GARBAGE]);
    expect(frames).toHaveLength(2);
  });
});
