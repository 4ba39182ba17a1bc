import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { observationItem } from '../api/observation-item.js';
import { driverFactories } from '../drivers.js';
import { loadMappings } from '../mappings.js';
import type { PatientId } from '../model/measurement.js';
import { Normalizer } from '../pipeline/normalize.js';
import { pseudonym } from '../pseudonym.js';
import { UsageError } from '../cli.js';
import { table, type InspectOptions } from './inspect.js';

/** Serial protocols `mdi inspect --protocol` decodes. */
export type SerialInspectProtocol = 'masimo' | 'medibus' | 'bbraun';

/**
 * `mdi inspect --protocol masimo|medibus|bbraun`: decodes a serial capture (raw bytes, or a hex
 * dump with `--hex`) with the driver's own framers and decoders, normalizes what they give as
 * the gateway would, and prints it with every problem and its byte location. A value the
 * device marks absent or invalid is printed without a number (value null, flag INVALID).
 * Returns 1 when any input had problems.
 */
export async function runSerialInspect(protocol: SerialInspectProtocol, options: InspectOptions): Promise<number> {
  const write = options.write ?? ((text: string) => process.stdout.write(text));
  const normalizer = new Normalizer(loadMappings());
  const key = randomBytes(32);
  const patientRef = (p: PatientId) => pseudonym(key, p);
  const serial = driverFactories.serial;

  const inputs: { name: string; bytes: Buffer }[] = [];
  if (options.files.length === 0) {
    inputs.push({ name: '<stdin>', bytes: await (options.stdin ?? readStdin)() });
  } else {
    for (const file of options.files) inputs.push({ name: file, bytes: readFileSync(file) });
  }

  let withProblems = 0;
  let observationCount = 0;
  for (const input of inputs) {
    let bytes = input.bytes;
    if (options.hex) {
      try {
        bytes = serial.parseHexDump(bytes.toString('latin1'));
      } catch (err) {
        throw new UsageError(`${input.name}: --hex: ${(err as Error).message}`);
      }
    }
    const decoded = serial.decodeCapture(protocol, bytes, { timezone: options.timezone });
    const { observations, rejects } = normalizer.normalizeBatch(decoded.measurements);
    const problems = [
      ...decoded.problems.map((p) => ({ code: p.code, message: p.reason, location: p.location, frame: p.frame })),
      ...rejects.map((r) => ({ code: r.code, message: r.reason, location: r.location, frame: 0 })),
    ];
    const items = observations.map((o) => observationItem(o, patientRef));
    observationCount += items.length;
    if (problems.length > 0 || decoded.frames === 0) withProblems++;
    if (options.json) {
      for (const item of items) write(`${JSON.stringify(item)}\n`);
    } else {
      const frames = `${decoded.frames} frame${decoded.frames === 1 ? '' : 's'}${decoded.requests > 0 ? ` (${decoded.requests} from the host)` : ''}`;
      write(`${input.name} (${protocol}): ${frames}, ${items.length} observation${items.length === 1 ? '' : 's'}, ${problems.length} problem${problems.length === 1 ? '' : 's'}\n`);
      for (const note of decoded.notes) write(`  note: ${note}\n`);
      if (items.length > 0) write(`${table(items)}\n`);
    }
    if (decoded.frames === 0 && problems.length === 0) {
      problems.push({ code: 'MDI_ERR_SERIAL_NO_DATA', message: `no ${protocol} frame in this input`, location: '', frame: 0 });
    }
    for (const p of problems) {
      if (options.json) {
        // The same keys as a PCD-01 problem line; `message` is the frame number here.
        write(`${JSON.stringify({ problem: p.message, code: p.code, hl7Code: '', location: p.location, file: input.name, message: p.frame, controlId: null })}\n`);
      } else {
        write(`  problem ${p.location || '(input)'}${p.frame > 0 ? ` (frame ${p.frame})` : ''}: ${p.message} [${p.code}]\n`);
      }
    }
    if (!options.json) write('\n');
  }
  if (!options.json) write(`${inputs.length} input${inputs.length === 1 ? '' : 's'}, ${observationCount} observations, ${withProblems} with problems\n`);
  return withProblems > 0 ? 1 : 0;
}

async function readStdin(): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}
