/**
 * HL7 v2 codec benchmark: bytes → decoded rows → Measurements, ours against the HL7 libraries
 * on npm, in one process and one run, on one corpus (bench/corpus.ts).
 *
 *   npx tsx bench/codec.bench.ts                       # quick look
 *   node --expose-gc --import tsx bench/codec.bench.ts --write   # GC between contenders; update bench/RESULTS.md
 *
 * Options: --seconds <s> per round (default 2.5), --rounds <n> (default 3), --generated <n>
 * messages of our own (default 200), --no-public (leave out ../shared/corpus/public),
 * --devices <n> (instead: the simulator's messages from n devices, 2 each, round robin),
 * --no-normalize (leave out the pipeline contender), --write.
 *
 * Every contender starts from the same Buffer per message and extracts, per OBX, the code
 * (OBX-3.1), value (OBX-5 as a number), unit (OBX-6.1), time (OBX-14) and device (OBX-18.1)
 * with its natural API. Ours does more: `decodePcd01` yields full Measurements (refid, system,
 * containment, unit choice, parsed time and offset, quality flags, device tree, PID/PV1).
 * The byte scan only counts `\r` and `|` in a plain loop: the floor for anything that reads
 * every byte. Each contender is warmed up, then runs `rounds` timed rounds of `seconds`,
 * interleaved, and reports the median round; rates are per second of process CPU time.
 */
import { createRequire } from 'node:module';
import { cpus, release, type as osType } from 'node:os';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Hl7Message as MedplumHl7Message } from '@medplum/core';
import { Message as NodeHl7Message, type HL7Node } from 'node-hl7-client';
import { Hl7Message, Hl7Segment } from '../src/codec/hl7.js';
import { decodePcd01 } from '../src/codec/pcd01.js';
import { loadMappings } from '../src/mappings.js';
import type { Measurement } from '../src/model/measurement.js';
import { Normalizer } from '../src/pipeline/normalize.js';
import { loadBenchCorpus, loadDevicesCorpus, type BenchCorpus } from './corpus.js';

// ---------------------------------------------------------------------------------------------
// The CommonJS libraries without type declarations, typed as far as this bench uses them.

interface Hl7StandardSegment {
  get(path: string): unknown;
}
interface Hl7StandardMessage {
  transform(): void;
  getSegments(name: string): Hl7StandardSegment[];
}
type Hl7StandardCtor = new (raw: string) => Hl7StandardMessage;

interface SimpleHl7Segment {
  getComponent(field: number, component: number): string;
  getField(field: number): string;
}
interface SimpleHl7Parser {
  parse(text: string): { getSegments(name: string): SimpleHl7Segment[] };
}
interface SimpleHl7Module {
  Parser: new () => SimpleHl7Parser;
}

const require = createRequire(import.meta.url);
const HL7Standard = require('hl7-standard') as Hl7StandardCtor;
const simpleHl7 = require('simple-hl7') as SimpleHl7Module;

// ---------------------------------------------------------------------------------------------
// Contenders

/** One row as the library contenders extract it. */
interface Row {
  code: string;
  value: number;
  unit: string;
  time: string;
  device: string;
}

/** Decoded rows handed on by a contender; a Normalize step may consume Measurements. */
export type Normalize = (measurements: readonly Measurement[]) => unknown;

interface Contender {
  readonly name: string;
  readonly what: string;
  readonly library: boolean;
  /** Decodes one message; returns how many rows it produced (checked, and keeps the work live). */
  run(message: Buffer): number;
}

let sink = 0;

function str(v: unknown): string {
  return typeof v === 'string' ? v : '';
}

function contenders(normalize: Normalize | null): Contender[] {
  const rowSegment = new Hl7Segment();
  const list: Contender[] = [
    {
      name: 'mdi-gateway decodePcd01',
      what: 'bytes → Measurement[] (full PCD-01 semantics)',
      library: false,
      run(message) {
        const r = decodePcd01(message);
        return r.measurements.length + r.rejectedRows.length;
      },
    },
  ];
  if (normalize !== null) {
    list.push({
      name: 'mdi-gateway decodePcd01 + normalize',
      what: 'bytes → Measurement[] → Observation[] (src/pipeline/normalize.ts)',
      library: false,
      run(message) {
        const r = decodePcd01(message);
        normalize(r.measurements);
        return r.measurements.length + r.rejectedRows.length;
      },
    });
  }
  list.push(
    {
      name: 'mdi-gateway Hl7Message reader',
      what: 'same 5-field extraction as the libraries',
      library: false,
      run(message) {
        const msg = Hl7Message.parse(message);
        const rows: Row[] = [];
        const seg = rowSegment;
        for (let i = 0; i < msg.segmentCount; i++) {
          if (!msg.isSegment(i, 'OBX')) continue;
          msg.segment(i, seg);
          if (!seg.has(5)) continue;
          rows.push({ code: seg.get(3, 1), value: seg.number(5), unit: seg.get(6, 1), time: seg.get(14), device: seg.get(18, 1) });
        }
        return rows.length;
      },
    },
    {
      name: '@medplum/core Hl7Message.parse',
      what: 'parse + getComponent per OBX field',
      library: true,
      run(message) {
        const msg = MedplumHl7Message.parse(message.toString('latin1'));
        const rows: Row[] = [];
        for (const seg of msg.getAll('OBX')) {
          const value = seg.getComponent(5, 1);
          if (value === '') continue;
          rows.push({
            code: seg.getComponent(3, 1),
            value: Number.parseFloat(value),
            unit: seg.getComponent(6, 1),
            time: seg.getComponent(14, 1),
            device: seg.getComponent(18, 1),
          });
        }
        return rows.length;
      },
    },
    {
      name: 'hl7-standard',
      what: "new HL7(text).transform() + get('OBX.n.m')",
      library: true,
      run(message) {
        const msg = new HL7Standard(message.toString('latin1'));
        msg.transform();
        const rows: Row[] = [];
        for (const seg of msg.getSegments('OBX')) {
          const value = str(seg.get('OBX.5')) || str(seg.get('OBX.5.1'));
          if (value === '') continue;
          rows.push({
            code: str(seg.get('OBX.3.1')),
            value: Number.parseFloat(value),
            unit: str(seg.get('OBX.6.1')),
            time: str(seg.get('OBX.14')),
            device: str(seg.get('OBX.18.1')) || str(seg.get('OBX.18')),
          });
        }
        return rows.length;
      },
    },
    {
      name: 'simple-hl7',
      what: 'Parser.parse + getComponent/getField',
      library: true,
      run(message) {
        const msg = new simpleHl7.Parser().parse(message.toString('latin1'));
        const rows: Row[] = [];
        for (const seg of msg.getSegments('OBX')) {
          const value = seg.getComponent(5, 1);
          if (value === '') continue;
          rows.push({
            code: seg.getComponent(3, 1),
            value: Number.parseFloat(value),
            unit: seg.getComponent(6, 1),
            time: seg.getField(14),
            device: seg.getComponent(18, 1),
          });
        }
        return rows.length;
      },
    },
    {
      name: 'node-hl7-client',
      what: "new Message({ text }) + get('n.m')",
      library: true,
      run(message) {
        const msg = new NodeHl7Message({ text: message.toString('latin1') });
        const rows: Row[] = [];
        msg.get('OBX').forEach((seg: HL7Node) => {
          const value = seg.get('5.1').toString();
          if (value === '') return;
          rows.push({
            code: seg.get('3.1').toString(),
            value: Number.parseFloat(value),
            unit: seg.get('6.1').toString(),
            time: seg.get('14').toString(),
            device: seg.get('18.1').toString(),
          });
        });
        return rows.length;
      },
    },
    {
      name: 'plain byte scan',
      what: "count '\\r' and '|' (floor: touches every byte once)",
      library: false,
      run(message) {
        let n = 0;
        for (let i = 0; i < message.length; i++) {
          const c = message[i];
          if (c === 0x0d || c === 0x7c) n++;
        }
        return n;
      },
    },
  );
  return list;
}

// ---------------------------------------------------------------------------------------------
// Timing

interface Round {
  readonly messages: number;
  readonly bytes: number;
  readonly seconds: number;
}

// Rates use the process's CPU time (user + system), not wall time: on a shared machine a
// contender that is descheduled would otherwise be charged for other people's work.
function timeRound(c: Contender, corpus: BenchCorpus, seconds: number): Round {
  const messages = corpus.messages;
  const deadline = process.hrtime.bigint() + BigInt(Math.round(seconds * 1e9));
  const cpu = process.cpuUsage();
  let count = 0;
  let bytes = 0;
  // Check the clock once per pass over the corpus (a pass is a few ms at most).
  while (process.hrtime.bigint() < deadline) {
    for (let i = 0; i < messages.length; i++) {
      const m = messages[i]!;
      sink += c.run(m);
      bytes += m.length;
    }
    count += messages.length;
  }
  const used = process.cpuUsage(cpu);
  return { messages: count, bytes, seconds: (used.user + used.system) / 1e6 };
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

function gc(): void {
  const g = (globalThis as { gc?: () => void }).gc;
  if (g !== undefined) g();
}

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  const v = i >= 0 ? Number(process.argv[i + 1]) : Number.NaN;
  return Number.isFinite(v) && v > 0 ? v : fallback;
}

function pipelineNormalize(): Normalize {
  const normalizer = new Normalizer(loadMappings());
  return (ms) => normalizer.normalizeBatch(ms);
}

// ---------------------------------------------------------------------------------------------

function main(): void {
  const seconds = arg('--seconds', 2.5);
  const rounds = arg('--rounds', 3);
  const generated = arg('--generated', 200);
  const devices = arg('--devices', 0);
  const corpus =
    devices > 0 ? loadDevicesCorpus(devices) : loadBenchCorpus({ generated, includePublic: !process.argv.includes('--no-public') });
  const normalize = process.argv.includes('--no-normalize') ? null : pipelineNormalize();
  const list = contenders(normalize);
  const gcOn = typeof (globalThis as { gc?: unknown }).gc === 'function';

  // Sanity: every row-extracting contender finds values on the generated messages.
  for (const c of list) {
    const n = c.run(corpus.messages[0]!);
    if (n <= 0) throw new Error(`${c.name} extracted nothing from the first message`);
  }

  process.stderr.write(`corpus: ${corpus.description}\n`);
  for (const c of list) {
    gc();
    timeRound(c, corpus, Math.min(0.5, seconds));
  }
  const results = new Map<string, Round[]>();
  for (let r = 0; r < rounds; r++) {
    for (const c of list) {
      gc();
      const round = timeRound(c, corpus, seconds);
      (results.get(c.name) ?? results.set(c.name, []).get(c.name)!).push(round);
      process.stderr.write(`round ${r + 1}/${rounds} ${c.name}: ${Math.round(round.messages / round.seconds)} msgs/s\n`);
    }
  }

  const rate = (name: string): { msgs: number; mb: number } => {
    const rs = results.get(name)!;
    return { msgs: median(rs.map((x) => x.messages / x.seconds)), mb: median(rs.map((x) => x.bytes / x.seconds / 1e6)) };
  };
  const ours = rate(list[0]!.name);
  const scan = rate('plain byte scan');
  const fastestLibrary = Math.max(...list.filter((c) => c.library).map((c) => rate(c.name).msgs));
  const fastestLibraryName = list.filter((c) => c.library).find((c) => rate(c.name).msgs === fastestLibrary)!.name;

  const cpu = cpus();
  const command = `node ${process.execArgv.join(' ')} ${process.argv.slice(1).map((a) => a.replace(/^.*\/bench\//, 'bench/')).join(' ')}`.replace(/\s+/g, ' ');
  const lines: string[] = [];
  lines.push('## Codec: decode PCD-01', '');
  lines.push(`- Date: ${new Date().toISOString().slice(0, 10)}`);
  lines.push(`- Machine: ${cpu[0]?.model ?? 'unknown CPU'}, ${cpu.length} cores, ${osType()} ${release()} (shared with other work)`);
  lines.push(`- Node: ${process.version}`);
  lines.push(`- Command: \`${command.trim()}\`${gcOn ? '' : ' (no --expose-gc: no GC between contenders)'}`);
  lines.push(`- Corpus: ${corpus.description}`);
  lines.push(
    `- Method: warm-up, then ${rounds} interleaved rounds of ${seconds} s per contender; rates from process CPU time (user + system); median round.`,
  );
  lines.push('');
  lines.push('| Contender | Work per message | msgs/s | MB/s | ours ÷ it | it ÷ byte scan |');
  lines.push('|---|---|---:|---:|---:|---:|');
  for (const c of list) {
    const r = rate(c.name);
    lines.push(
      `| ${c.name} | ${c.what} | ${Math.round(r.msgs).toLocaleString('en-US')} | ${r.mb.toFixed(1)} | ${(ours.msgs / r.msgs).toFixed(2)}× | ${(r.msgs / scan.msgs).toFixed(2)} |`,
    );
  }
  lines.push('');
  const vsLib = ours.msgs / fastestLibrary;
  const vsScan = scan.msgs / ours.msgs;
  const pipeline = normalize !== null ? rate(list[1]!.name).msgs / fastestLibrary : null;
  lines.push(
    `Targets: decodePcd01 ≥ 10× the fastest library (${fastestLibraryName}): **${vsLib.toFixed(1)}×** ${vsLib >= 10 ? '(met)' : '(NOT met)'}; ` +
      (pipeline === null ? '' : `decodePcd01 + normalize ≥ 10× it: **${pipeline.toFixed(1)}×** ${pipeline >= 10 ? '(met)' : '(NOT met)'}; `) +
      `within 3× of the plain byte scan: **${vsScan.toFixed(2)}×** slower ${vsScan <= 3 ? '(met)' : '(NOT met)'}.`,
  );
  lines.push('');
  lines.push(
    'Reading the numbers: the libraries extract five strings per OBX (plus `parseFloat`); `decodePcd01` does more for each row ' +
      '(code/refid/system, containment, unit choice UCUM > MDC > text, parsed time with offset, quality flags, device from the ' +
      'containment tree, PID/PV1, rejected rows with their bytes) and is still the fastest. It gets there by not building a tree: ' +
      'rows are compared with cached row templates eight bytes at a time and only new rows are scanned (src/codec/pcd01.ts). ' +
      'The byte scan is the floor for anything that reads every byte in JavaScript. On this shared 2-core machine single runs ' +
      'vary by about ±10% in the ratios.',
  );
  lines.push('');
  const section = lines.join('\n');
  process.stdout.write(`${section}\n`);
  if (sink === 0.5) process.stdout.write('\n');

  if (process.argv.includes('--write')) {
    const file = join(dirname(fileURLToPath(import.meta.url)), 'RESULTS.md');
    const old = existsSync(file) ? readFileSync(file, 'utf8') : '# Benchmark results\n';
    const start = old.indexOf('## Codec: decode PCD-01');
    let next: string;
    if (start >= 0) {
      const after = old.indexOf('\n## ', start + 3);
      next = old.slice(0, start) + section + (after >= 0 ? old.slice(after + 1) : '');
    } else {
      const firstSection = old.indexOf('\n## ');
      next = firstSection >= 0 ? `${old.slice(0, firstSection + 1)}${section}\n${old.slice(firstSection + 1)}` : `${old.trimEnd()}\n\n${section}`;
    }
    writeFileSync(file, next.endsWith('\n') ? next : `${next}\n`);
    process.stderr.write(`wrote ${file}\n`);
  }
}

main();
