/**
 * Offline decoding of a serial capture (what `mdi inspect --protocol …` shows): the same framers
 * and decoders as the driver, over a whole file, with every problem and where it is. Nothing
 * here talks to a device; times that a protocol does not carry (MEDIBUS, BCC's relative
 * seconds) are placed at `received`.
 */
import type { TimeZoneRule } from '../../src/codec/hl7-time.js';
import { ErrorCode } from '../../src/errors.js';
import type { Measurement } from '../../src/model/measurement.js';
import { decodeBccBlock, parseBccRequest } from './bbraun.js';
import type { SerialProtocolName } from './driver.js';
import { BccFramer, LineFramer, MedibusFramer, type BccFrame, type FramerReject, type MedibusFrame } from './framers.js';
import { decodeMasimoLine } from './masimo.js';
import { decodeMedibusResponse, medibusAlarmMeasurement } from './medibus.js';
import type { VendorCodes } from '../../src/mappings.js';

/** A problem found in a capture. */
export interface CaptureProblem {
  readonly code: ErrorCode;
  readonly reason: string;
  /** `bytes 10-25`, `line at byte 0, SPO2`. */
  readonly location: string;
  /** The decoded frame (line, block) it belongs to, from 1; 0 for bytes no frame came of. */
  readonly frame: number;
}

/** What a whole capture became. */
export interface CaptureDecoded {
  /** Frames (lines, blocks) the framer delivered, requests from the host included. */
  readonly frames: number;
  /** Requests from the host seen in the capture (MEDIBUS commands, BCC requests). */
  readonly requests: number;
  readonly measurements: Measurement[];
  readonly problems: CaptureProblem[];
  /** How the capture was read, for the report (`character stuffing off`). */
  readonly notes: string[];
}

/** What `decodeCapture` needs besides the bytes. */
export interface CaptureOptions {
  readonly deviceId: string;
  readonly zone: TimeZoneRule;
  readonly codes: VendorCodes;
  /** Time placed on readings whose protocol carries none (epoch ms). */
  readonly received: number;
}

function rejectProblem(r: FramerReject, frame: number): CaptureProblem {
  return { code: r.code, reason: r.reason, location: `bytes ${r.offset}-${r.offset + Math.max(0, r.length - 1)}`, frame };
}

/** Decodes a whole capture of `protocol`. Never throws for bad input. */
export function decodeCapture(protocol: SerialProtocolName, bytes: Buffer, options: CaptureOptions): CaptureDecoded {
  switch (protocol) {
    case 'masimo':
      return decodeMasimoCapture(bytes, options);
    case 'medibus':
      return decodeMedibusCapture(bytes, options);
    case 'bbraun': {
      // A capture does not say whether the ComDevice stuffs; read it both ways, keep the better.
      const stuffed = decodeBccCapture(bytes, options, true);
      const plain = decodeBccCapture(bytes, options, false);
      if (plain.frames > stuffed.frames || (plain.frames === stuffed.frames && plain.problems.length < stuffed.problems.length)) {
        return { ...plain, notes: [...plain.notes, 'read without BCC character stuffing (it decodes more of this capture)'] };
      }
      return stuffed;
    }
  }
}

function decodeMasimoCapture(bytes: Buffer, options: CaptureOptions): CaptureDecoded {
  const measurements: Measurement[] = [];
  const problems: CaptureProblem[] = [];
  let frames = 0;
  const framer = new LineFramer({
    tooLongCode: ErrorCode.MASIMO_LINE_TOO_LONG,
    onLine: (line, offset) => {
      frames++;
      const d = decodeMasimoLine(line, { deviceId: options.deviceId, zone: options.zone, codes: options.codes });
      for (const p of d.fatal ? [d.fatal, ...d.problems] : d.problems) {
        problems.push({ code: p.code, reason: p.reason, location: p.location === 'line' ? `line at byte ${offset}` : `line at byte ${offset}, ${p.location}`, frame: frames });
      }
      measurements.push(...d.readings, ...d.states);
    },
    onReject: (r) => problems.push(rejectProblem(r, 0)),
  });
  framer.push(bytes);
  if (framer.pending() > 0) {
    problems.push({ code: ErrorCode.MASIMO_BAD_LINE, reason: `the capture ends inside a line (${framer.pending()} bytes without a line feed)`, location: `bytes ${bytes.length - framer.pending()}-${bytes.length - 1}`, frame: frames + 1 });
  }
  return { frames, requests: 0, measurements, problems, notes: [] };
}

function decodeMedibusCapture(bytes: Buffer, options: CaptureOptions): CaptureDecoded {
  const measurements: Measurement[] = [];
  const problems: CaptureProblem[] = [];
  let frames = 0;
  let requests = 0;
  const tzOffset = options.zone.offsetAt(options.received);
  const ctx = { deviceId: options.deviceId, time: options.received, tzOffset, codes: options.codes };
  const framer = new MedibusFramer({
    onFrame: (f: MedibusFrame) => {
      frames++;
      if (f.kind === 'command') {
        requests++;
        return;
      }
      const d = decodeMedibusResponse(f, ctx);
      measurements.push(...d.measurements, ...d.alarms.map((a) => medibusAlarmMeasurement(a, true, ctx)));
      for (const p of d.problems) problems.push({ code: p.code, reason: p.reason, location: `bytes ${f.offset}-${f.offset + f.length - 1}, ${p.location}`, frame: frames });
    },
    onReject: (r) => problems.push(rejectProblem(r, 0)),
  });
  framer.push(bytes);
  framer.end();
  return { frames, requests, measurements, problems, notes: [] };
}

function decodeBccCapture(bytes: Buffer, options: CaptureOptions, stuffing: boolean): CaptureDecoded {
  const measurements: Measurement[] = [];
  const problems: CaptureProblem[] = [];
  let frames = 0;
  let requests = 0;
  const framer = new BccFramer({
    stuffing,
    onFrame: (f: BccFrame) => {
      frames++;
      if (parseBccRequest(f.info)) {
        requests++;
        return;
      }
      const d = decodeBccBlock(f.info, { deviceId: options.deviceId, received: options.received, zone: options.zone, codes: options.codes });
      measurements.push(...d.readings, ...d.states);
      for (const p of d.problems) problems.push({ code: p.code, reason: p.reason, location: `bytes ${f.offset}-${f.offset + f.length - 1}, ${p.location}`, frame: frames });
      for (const e of d.deviceErrors) problems.push({ code: ErrorCode.BCC_DEVICE_ERROR, reason: `the ComDevice answered GNERR ${e.slice(0, 8)}`, location: `bytes ${f.offset}-${f.offset + f.length - 1}`, frame: frames });
    },
    onReject: (r) => problems.push(rejectProblem(r, 0)),
  });
  framer.push(bytes);
  framer.end();
  return { frames, requests, measurements, problems, notes: [] };
}

/**
 * Bytes of a hex dump: pairs of hex digits; whitespace, commas, colons and `0x` prefixes are
 * ignored, `#` starts a comment to the end of the line.
 * @throws RangeError naming the line of the first character that is not hex.
 */
export function parseHexDump(text: string): Buffer {
  const out: number[] = [];
  const lines = text.split(/\r?\n/);
  for (const [i, raw] of lines.entries()) {
    const line = raw.replace(/#.*$/, '').replace(/0x/gi, ' ');
    const digits = line.replace(/[\s,:;]+/g, '');
    if (!/^[0-9A-Fa-f]*$/.test(digits)) throw new RangeError(`line ${i + 1}: "${line.trim().slice(0, 40)}" is not hex`);
    if (digits.length % 2 !== 0) throw new RangeError(`line ${i + 1}: an odd number of hex digits`);
    for (let j = 0; j < digits.length; j += 2) out.push(Number.parseInt(digits.slice(j, j + 2), 16));
  }
  return Buffer.from(out);
}
