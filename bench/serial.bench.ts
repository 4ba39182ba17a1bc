/**
 * Serial decoders: bytes/s from raw serial bytes to Measurements, per protocol.
 *
 *   npx tsx bench/serial.bench.ts [--mb 8] [--runs 7]
 *
 * Each protocol gets a realistic stream (simulator-made lines, MEDIBUS measured-data responses,
 * stuffed BCC MEM:GET blocks), pushed in 64-byte chunks (what a serial read delivers at 9600–
 * 115200 baud) and in 4 KiB chunks (a TCP terminal server), through framer + decoder exactly as
 * the driver runs them. For each, the median of `--runs` runs is reported (after a warm-up run);
 * framing alone is measured too, to show where the time goes. Prints a Markdown table with the
 * machine, Node version and command.
 */
import { cpus } from 'node:os';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { decodeBccBlock } from '../drivers/serial/bbraun.js';
import { BccFramer, encodeBccFrame, encodeMedibusFrame, LineFramer, MedibusFramer } from '../drivers/serial/framers.js';
import { vendorCodesFor } from '../drivers/serial/index.js';
import { decodeMasimoLine } from '../drivers/serial/masimo.js';
import { decodeMedibusResponse } from '../drivers/serial/medibus.js';
import { zoneOffsets } from '../src/codec/hl7-time.js';
import { ErrorCode } from '../src/errors.js';
import { masimoLine } from '../simulators/masimo.js';
import { medibusValue } from '../simulators/medibus.js';

const { values } = parseArgs({ options: { mb: { type: 'string', default: '8' }, runs: { type: 'string', default: '7' } } });
const TARGET_BYTES = Number(values.mb) * 1024 * 1024;
const RUNS = Number(values.runs);
const zone = zoneOffsets('Europe/Copenhagen');

function repeat(unit: Buffer[]): Buffer {
  const size = unit.reduce((n, b) => n + b.length, 0);
  const copies = Math.max(1, Math.ceil(TARGET_BYTES / size));
  const parts: Buffer[] = [];
  for (let i = 0; i < copies; i++) parts.push(...unit);
  return Buffer.concat(parts);
}

// ── streams ─────────────────────────────────────────────────────────────────

function masimoStream(): Buffer {
  const lines: Buffer[] = [];
  const t0 = Date.UTC(2026, 0, 1, 8);
  for (let i = 0; i < 600; i++) {
    const values = { spo2: 95 + (i % 5), bpm: 60 + (i % 30), pi: 1 + (i % 40) / 10, sphb: 13.2, spmet: 1.1, pvi: 12, exc: i % 50 === 0 ? 0x820 : 0x800 };
    lines.push(Buffer.from(masimoLine(t0 + i * 1000, values), 'latin1'));
  }
  return repeat(lines);
}

function medibusStream(): Buffer {
  const cp1 = ['78', '7D', '74', '73', '71', '88', 'B8', 'D6', 'F0', 'EF', 'E6', 'EB', 'E1', '07', 'C1', 'B5'];
  const frames: Buffer[] = [];
  for (let i = 0; i < 200; i++) {
    frames.push(encodeMedibusFrame('response', 0x24, cp1.map((c, j) => c + medibusValue(10 + ((i + j) % 90))).join('')));
    frames.push(encodeMedibusFrame('response', 0x2b, `21${medibusValue(450)}22${medibusValue(462)}23${medibusValue(17)}`));
  }
  return repeat(frames);
}

function bccStream(): Buffer {
  const RS = '\x1e';
  const blocks: Buffer[] = [];
  for (let p = 0; p < 9; p++) {
    const a = `5011${p + 1}`;
    const t = 1200 + p;
    const records = [
      `${t},${a},GNNEW,688F030006`, `${t},${a},INRT,${(p * 1.7 + 0.3).toFixed(2)}`, `${t},${a},INSOL,Arterenol4mg/50`,
      `${t},${a},INSOLSN,Arteren\ue021`, `${t},${a},INSOLID,33~4mg/5002`, `${t},${a},INVOLACT,47.64`, `${t},${a},INRMT,65535`,
      `${t},${a},INDOCAL,0`, `${t},${a},INDCON,0`, `${t},${a},INDCONU,32`, `${t},${a},INDORT,0`, `${t},${a},INDORTU,50`,
      `${t},${a},INVI,1.4`, `${t},${a},INTIME,97`, `${t},${a},INBORT,800.00`, `${t},${a},INNR,60009FA0`, `${t},${a},INP1,4`,
      `${t},${a},INP2,35`, `${t},${a},INSYR,50`, `${t},${a},INSTBY,0`, `${t},${a},INSERNUM,40864`, `${t},${a},INDTNR,6144`,
      `${t},${a},DSSTATUS,00051`, `${t},${a},INBOVAL,0.0`, `${t},${a},INBOCNT,0`,
      ...Array.from({ length: 12 }, (_, i) => `${t},${a},INM${i + 1},${i === 2 ? 1 : 0}`),
      ...Array.from({ length: 15 }, (_, i) => `${t},${a},INA${i + 1},0`),
    ];
    blocks.push(encodeBccFrame('ComSystem/1/1', records.join(RS), { final: p === 8 }));
  }
  return repeat(blocks);
}

// ── runners: framer (+ decoder) as the driver runs them ─────────────────────

type Runner = (stream: Buffer, chunk: number) => { frames: number; readings: number };

function chunks(stream: Buffer, size: number, push: (c: Buffer) => void): void {
  for (let i = 0; i < stream.length; i += size) push(stream.subarray(i, i + size));
}

const masimoRunner =
  (decode: boolean): Runner =>
  (stream, size) => {
    const codes = vendorCodesFor('masimo');
    let frames = 0;
    let readings = 0;
    const framer = new LineFramer({
      tooLongCode: ErrorCode.MASIMO_LINE_TOO_LONG,
      onLine: (line) => {
        frames++;
        if (decode) readings += decodeMasimoLine(line, { deviceId: 'spo2', zone, codes }).readings.length;
      },
      onReject: () => undefined,
    });
    chunks(stream, size, (c) => framer.push(c));
    return { frames, readings };
  };

const medibusRunner =
  (decode: boolean): Runner =>
  (stream, size) => {
    const codes = vendorCodesFor('medibus');
    let frames = 0;
    let readings = 0;
    const framer = new MedibusFramer({
      onFrame: (f) => {
        frames++;
        if (decode) readings += decodeMedibusResponse(f, { deviceId: 'vent', time: 0, tzOffset: 60, codes }).measurements.length;
      },
      onReject: () => undefined,
    });
    chunks(stream, size, (c) => framer.push(c));
    return { frames, readings };
  };

const bccRunner =
  (decode: boolean): Runner =>
  (stream, size) => {
    const codes = vendorCodesFor('bbraun');
    let frames = 0;
    let readings = 0;
    const framer = new BccFramer({
      onFrame: (f) => {
        frames++;
        if (decode) {
          const d = decodeBccBlock(f.info, { deviceId: 'spacecom', received: 1.7e12, zone, codes });
          readings += d.readings.length + d.states.length;
        }
      },
      onReject: () => undefined,
    });
    chunks(stream, size, (c) => framer.push(c));
    return { frames, readings };
  };

interface Result {
  name: string;
  chunk: number;
  mbPerSecond: number;
  framesPerSecond: number;
  readingsPerSecond: number;
}

function measure(name: string, stream: Buffer, chunk: number, run: Runner): Result {
  run(stream, chunk); // warm-up: JIT the path
  const times: number[] = [];
  let last = { frames: 0, readings: 0 };
  for (let i = 0; i < RUNS; i++) {
    (globalThis as { gc?: () => void }).gc?.();
    const t0 = performance.now();
    last = run(stream, chunk);
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  const seconds = times[Math.floor(times.length / 2)]! / 1000;
  return {
    name,
    chunk,
    mbPerSecond: stream.length / 1024 / 1024 / seconds,
    framesPerSecond: last.frames / seconds,
    readingsPerSecond: last.readings / seconds,
  };
}

const streams = { masimo: masimoStream(), medibus: medibusStream(), bcc: bccStream() };
const results: Result[] = [];
for (const chunk of [64, 4096]) {
  results.push(measure('Masimo ASCII 1: lines + decode', streams.masimo, chunk, masimoRunner(true)));
  results.push(measure('Masimo ASCII 1: lines only (readline + guard)', streams.masimo, chunk, masimoRunner(false)));
  results.push(measure('MEDIBUS: frames + decode', streams.medibus, chunk, medibusRunner(true)));
  results.push(measure('MEDIBUS: frames only', streams.medibus, chunk, medibusRunner(false)));
  results.push(measure('BCC (stuffed): frames + decode', streams.bcc, chunk, bccRunner(true)));
  results.push(measure('BCC (stuffed): frames only', streams.bcc, chunk, bccRunner(false)));
}

const fmt = (n: number) => (n >= 100 ? Math.round(n).toLocaleString('en-US') : n.toFixed(1));
const cpu = cpus()[0]?.model ?? 'unknown CPU';
console.log(`Machine: ${cpu}, ${cpus().length} cores; Node ${process.version}; ${new Date().toISOString().slice(0, 10)}`);
console.log(`Command: npx tsx bench/serial.bench.ts --mb ${values.mb} --runs ${RUNS}${(globalThis as { gc?: unknown }).gc ? ' (with --expose-gc)' : ''}`);
console.log(`Streams: Masimo ${(streams.masimo.length / 1048576).toFixed(1)} MiB, MEDIBUS ${(streams.medibus.length / 1048576).toFixed(1)} MiB, BCC ${(streams.bcc.length / 1048576).toFixed(1)} MiB; median of ${RUNS} runs\n`);
console.log('| decoder | chunk | MiB/s | frames/s | readings/s |');
console.log('|---|---:|---:|---:|---:|');
for (const r of results) {
  console.log(`| ${r.name} | ${r.chunk} B | ${fmt(r.mbPerSecond)} | ${fmt(r.framesPerSecond)} | ${r.readingsPerSecond > 0 ? fmt(r.readingsPerSecond) : '–'} |`);
}
