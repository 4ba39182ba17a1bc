import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { observationItem, type ObservationItem } from '../api/observation-item.js';
import { UsageError } from '../cli.js';
import { splitExport } from '../codec/hl7.js';
import { decodePcd01 } from '../codec/pcd01.js';
import { driverFactories } from '../drivers.js';
import type { Problem } from '../errors.js';
import { loadMappings } from '../mappings.js';
import type { PatientId } from '../model/measurement.js';
import { Normalizer } from '../pipeline/normalize.js';
import { pseudonym } from '../pseudonym.js';

export interface InspectOptions {
  readonly files: readonly string[];
  readonly json: boolean;
  readonly timezone: string;
  /** Where output goes; stdout by default (tests pass their own). */
  readonly write?: (text: string) => void;
  /** Input when no file is given; stdin by default. */
  readonly stdin?: () => Promise<Buffer>;
  /** `pcd01` (default) or a serial protocol: `masimo`, `medibus`, `bbraun`. */
  readonly protocol?: 'pcd01' | 'masimo' | 'medibus' | 'bbraun';
  /** The inputs are hex dumps (pairs of hex digits), not raw bytes. */
  readonly hex?: boolean;
}

interface ProblemLine {
  problem: string;
  code: string;
  hl7Code: string;
  location: string;
  message: string;
  file: string;
  index: number;
  controlId: string | null;
}

/**
 * `mdi inspect`: decodes PCD-01 as people export it and prints what the gateway would store,
 * and every problem with its location. Uses the same decoder and normalizer as the gateway,
 * so what it shows is what the gateway does. Returns 1 when any message had a problem.
 */
export async function runInspect(options: InspectOptions): Promise<number> {
  if (options.protocol !== undefined && options.protocol !== 'pcd01') {
    const { runSerialInspect } = await import('./inspect-serial.js');
    return runSerialInspect(options.protocol, options);
  }
  const write = options.write ?? ((text: string) => process.stdout.write(text));
  const normalizer = new Normalizer(loadMappings());
  // Patients are shown as pseudonyms that are stable within this run only.
  const key = randomBytes(32);
  const patientRef = (p: PatientId) => pseudonym(key, p);

  const inputs: { name: string; bytes: Buffer }[] = [];
  if (options.files.length === 0) {
    inputs.push({ name: '<stdin>', bytes: await (options.stdin ?? readStdin)() });
  } else {
    for (const file of options.files) inputs.push({ name: file, bytes: readFileSync(file) });
  }
  if (options.hex) {
    const { parseHexDump } = driverFactories.serial;
    for (const input of inputs) {
      try {
        input.bytes = parseHexDump(input.bytes.toString('latin1'));
      } catch (err) {
        throw new UsageError(`${input.name}: --hex: ${(err as Error).message}`);
      }
    }
  }

  let messages = 0;
  let withProblems = 0;
  let observationCount = 0;
  for (const input of inputs) {
    const ranges = splitExport(input.bytes);
    if (ranges.length === 0) {
      withProblems++;
      emitProblems(write, options.json, [
        {
          problem: 'no-message',
          code: 'MDI_ERR_HL7_NO_MSH',
          hl7Code: '100',
          location: '',
          message: 'no HL7 message (no line starting with MSH) in this input',
          file: input.name,
          index: 0,
          controlId: null,
        },
      ]);
      continue;
    }
    for (const [i, range] of ranges.entries()) {
      messages++;
      const decoded = decodePcd01(input.bytes.subarray(range.start, range.end), { timezone: options.timezone });
      const controlId = decoded.header?.controlId ?? null;
      const problems: Problem[] = decoded.fatal ? [decoded.fatal, ...decoded.problems] : [...decoded.problems];
      const { observations, rejects } = normalizer.normalizeBatch(decoded.measurements, controlId);
      for (const r of rejects) problems.push({ code: r.code, message: r.reason, location: r.location, hl7Code: '102' });
      const items = observations.map((o) => observationItem(o, patientRef));
      observationCount += items.length;
      if (problems.length > 0) withProblems++;
      const where = `${input.name} message ${i + 1}${controlId ? ` (MSH-10 ${controlId})` : ''}`;
      if (options.json) {
        for (const item of items) write(`${JSON.stringify(item)}\n`);
      } else {
        write(`${where}: ${items.length} observation${items.length === 1 ? '' : 's'}, ${problems.length} problem${problems.length === 1 ? '' : 's'}\n`);
        if (items.length > 0) write(`${table(items)}\n`);
      }
      emitProblems(
        write,
        options.json,
        problems.map((p) => ({
          problem: where,
          code: p.code,
          hl7Code: p.hl7Code,
          location: p.location,
          message: p.message,
          file: input.name,
          index: i + 1,
          controlId,
        })),
      );
      if (!options.json) write('\n');
    }
  }
  if (!options.json) {
    write(`${messages} message${messages === 1 ? '' : 's'}, ${observationCount} observations, ${withProblems} with problems\n`);
  }
  return withProblems > 0 ? 1 : 0;
}

function emitProblems(write: (text: string) => void, json: boolean, problems: ProblemLine[]): void {
  for (const p of problems) {
    if (json) {
      write(
        `${JSON.stringify({ problem: p.message, code: p.code, hl7Code: p.hl7Code, location: p.location, file: p.file, message: p.index, controlId: p.controlId })}\n`,
      );
    } else {
      write(`  problem ${p.location || '(message)'}: ${p.message} [${p.code}, HL7 0357 ${p.hl7Code}]\n`);
    }
  }
}

const COLUMNS: [string, (i: ObservationItem) => string][] = [
  ['time', (i) => i.time],
  ['device', (i) => i.device],
  ['code', (i) => (i.code === null ? '' : String(i.code))],
  ['metric', (i) => i.metric],
  ['value', (i) => (i.value !== null ? String(i.value) : (i.text ?? ''))],
  ['unit', (i) => i.unit],
  ['loinc', (i) => i.loinc ?? ''],
  ['flags', (i) => i.flags.join(',')],
];

export function table(items: ObservationItem[]): string {
  const cells = items.map((item) => COLUMNS.map(([, get]) => clip(get(item))));
  const widths = COLUMNS.map(([name], c) => Math.max(name.length, ...cells.map((row) => row[c]!.length)));
  const line = (row: string[]) => `  ${row.map((cell, c) => cell.padEnd(widths[c]!)).join('  ')}`.trimEnd();
  return [line(COLUMNS.map(([name]) => name)), ...cells.map(line)].join('\n');
}

function clip(text: string): string {
  return text.length > 40 ? `${text.slice(0, 39)}…` : text;
}

async function readStdin(): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}
