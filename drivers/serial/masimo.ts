/**
 * Masimo Radical-7 / Rad-8 serial output, "ASCII 1" mode (and the trend-download lines, which
 * share the layout): RS-232, 9600 8N1, no handshake; one unsolicited text line per second:
 *
 *   03/17/16 19:19:36 SN=0000093112 SPO2=098% BPM=123 PI=00.55 … ALARM=0000 EXC=000C00
 *
 * Masimo ASCII 1: date MM/DD/YY and time HH:MM:SS (device clock, local time), then
 * space-separated KEY=value tokens. The set of keys differs by model and firmware, so lines are
 * parsed by key, never by position. Dashes (`---`, `--.-`) mean "no value"; the trend format
 * prints zeros instead. The exception word EXC (hex) becomes quality flags.
 * Sources: Rad-8 operator's manual (serial interface, trend format), research/device-formats.md §2.
 */
import type { TimeZoneRule } from '../../src/codec/hl7-time.js';
import { ErrorCode } from '../../src/errors.js';
import type { VendorCodes } from '../../src/mappings.js';
import type { DeadLetterInput } from '../../src/model/dead-letter.js';
import { Quality, type Measurement } from '../../src/model/measurement.js';
import { DEFAULT_MAX_LINE_BYTES, LineFramer } from './framers.js';
import { framerDeadLetter, type LineDefaults, type ProtocolSession, type SessionIo } from './session.js';
import { vendorMeasurement } from './vendor-measurement.js';

/** Coding system of Masimo keys that have no MDC code (`MASIMO:SPHB`). */
export const MASIMO_SYSTEM = 'MASIMO';

/** Masimo: RS-232 9600 baud, 8 data bits, no parity, 1 stop bit, no handshake. */
export const MASIMO_LINE_DEFAULTS: LineDefaults = { baudRate: 9600, dataBits: 8, parity: 'none', stopBits: 1 };

/** Masimo ASCII 1 exception word bits (EXC, hex). */
export const MasimoException = {
  NO_SENSOR: 0x001,
  DEFECTIVE_SENSOR: 0x002,
  LOW_PERFUSION: 0x004,
  PULSE_SEARCH: 0x008,
  INTERFERENCE: 0x010,
  SENSOR_OFF: 0x020,
  AMBIENT_LIGHT: 0x040,
  UNRECOGNIZED_SENSOR: 0x080,
  LOW_SIGNAL_IQ: 0x400,
  SET_MODE: 0x800,
} as const;

/** The sensor cannot measure: every value of the line is invalid, whatever digits it shows. */
const SENSOR_FAILURE =
  MasimoException.NO_SENSOR | MasimoException.DEFECTIVE_SENSOR | MasimoException.SENSOR_OFF | MasimoException.UNRECOGNIZED_SENSOR;
/** The values are measured but may be wrong. */
const SIGNAL_DOUBT =
  MasimoException.LOW_PERFUSION |
  MasimoException.PULSE_SEARCH |
  MasimoException.INTERFERENCE |
  MasimoException.AMBIENT_LIGHT |
  MasimoException.LOW_SIGNAL_IQ;

const EXCEPTION_NAMES: readonly [number, string][] = [
  [MasimoException.NO_SENSOR, 'no-sensor'],
  [MasimoException.DEFECTIVE_SENSOR, 'defective-sensor'],
  [MasimoException.LOW_PERFUSION, 'low-perfusion'],
  [MasimoException.PULSE_SEARCH, 'pulse-search'],
  [MasimoException.INTERFERENCE, 'interference'],
  [MasimoException.SENSOR_OFF, 'sensor-off'],
  [MasimoException.AMBIENT_LIGHT, 'ambient-light'],
  [MasimoException.UNRECOGNIZED_SENSOR, 'unrecognized-sensor'],
  [MasimoException.LOW_SIGNAL_IQ, 'low-signal-iq'],
  [MasimoException.SET_MODE, 'set-mode'],
];

/** Names of the exception bits set in `bits` (`sensor-off,set-mode`); unknown bits as hex. */
export function masimoExceptionNames(bits: number): string {
  const names: string[] = [];
  let known = 0;
  for (const [bit, name] of EXCEPTION_NAMES) {
    known |= bit;
    if (bits & bit) names.push(name);
  }
  const unknown = bits & ~known;
  if (unknown) names.push(`0x${unknown.toString(16)}`);
  return names.join(',');
}

/**
 * Keys whose zero means "no reading": the trend format writes `SpO2=000 PR=000 PI=00.00` where
 * ASCII 1 writes dashes (see the Rad-8 manual's trend sample: zeros with `EXC=820:OffPat`, and
 * zeros while only SET mode is flagged). A saturation or pulse of exactly 0 is never a reading
 * to chart.
 */
const ZERO_MEANS_ABSENT = new Set(['SPO2', 'BPM', 'PR', 'PI']);

/** How the decoder reaches the outside world. */
export interface MasimoDecodeContext {
  readonly deviceId: string;
  /** Zone of the oximeter's clock (it prints local time without an offset). */
  readonly zone: TimeZoneRule;
  readonly codes: VendorCodes;
}

/** A problem with one token or the whole line. `location` is the key (`SPO2`) or `line`. */
export interface MasimoProblem {
  readonly code: ErrorCode;
  readonly reason: string;
  readonly location: string;
}

/** What one line became. */
export interface MasimoDecoded {
  /** Readings: one per numeric or text key. */
  readonly readings: Measurement[];
  /** Status values (EXC, ALARM): a session stores them when they change. */
  readonly states: Measurement[];
  /** Identity found in the line (`serial`). */
  readonly identity: Readonly<Record<string, string>>;
  /** Problems that do not refuse the line (none today: every detected damage is fatal). */
  readonly problems: MasimoProblem[];
  /** The line as a whole is unusable (no valid time, noise); nothing else is set. */
  readonly fatal: MasimoProblem | null;
}

const HEAD = /^(\d{2})\/(\d{2})\/(\d{2}) (\d{2}):(\d{2}):(\d{2})(?: |$)/;
const NUMBER = /^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$/;
/** Dashes in place of digits, with an optional sign and decimal point: `---`, `--.-`, `+--`. */
const DASHES = /^[+-]?-+(?:\.-*)?$/;

/**
 * Decodes one ASCII 1 (or trend) line, CR/LF already removed. Pure: no I/O, no clock.
 *
 * - A line with bytes outside printable ASCII is refused whole (`MASIMO_GARBLED`): without a
 *   checksum, noise is only detectable this way, and a digit damaged into another digit must
 *   not be guessed at.
 * - A line without a valid `MM/DD/YY HH:MM:SS` head is refused whole.
 * - A value the device marks absent (dashes; zero SpO2/pulse/PI) is NaN with INVALID; so is
 *   every value of a line whose EXC says the sensor is off, missing, defective or unknown.
 * - A token that is not KEY=value, a key twice, a missing EXC (the line was cut short) or a
 *   value that is neither a number nor dashes refuses the whole line: without a checksum a
 *   damaged line cannot be trusted in part.
 */
export function decodeMasimoLine(line: string, ctx: MasimoDecodeContext): MasimoDecoded {
  const problems: MasimoProblem[] = [];
  const fail = (code: ErrorCode, reason: string): MasimoDecoded => ({
    readings: [],
    states: [],
    identity: {},
    problems,
    fatal: { code, reason, location: 'line' },
  });
  let unprintable = 0;
  for (let i = 0; i < line.length; i++) {
    const c = line.charCodeAt(i);
    if (c < 0x20 || c > 0x7e) unprintable++;
  }
  if (unprintable > 0) {
    return fail(ErrorCode.MASIMO_GARBLED, `line holds ${unprintable} byte${unprintable === 1 ? '' : 's'} that are not printable ASCII (noise on the line?)`);
  }
  const head = HEAD.exec(line);
  if (head === null) return fail(ErrorCode.MASIMO_BAD_LINE, 'line does not start with MM/DD/YY HH:MM:SS');
  const [month, day, year, hour, minute, second] = head.slice(1, 7).map(Number) as [number, number, number, number, number, number];
  const fullYear = 2000 + year; // Masimo ASCII 1: two-digit year
  const local = Date.UTC(fullYear, month - 1, day, hour, minute, second);
  const check = new Date(local);
  if (
    month < 1 ||
    month > 12 ||
    hour > 23 ||
    minute > 59 ||
    second > 59 ||
    check.getUTCDate() !== day ||
    check.getUTCMonth() !== month - 1
  ) {
    return fail(ErrorCode.MASIMO_BAD_TIME, `${head[0].trim()} is not a valid date and time`);
  }
  const time = ctx.zone.localToUtc(local);
  const tzOffset = ctx.zone.offsetAt(time);

  // Without a checksum, damage shows only as a line that breaks the layout. Any such sign
  // refuses the whole line: a digit damaged into another digit next to it cannot be detected,
  // so nothing of a damaged line is trusted.
  const values = new Map<string, string>();
  const rest = line.slice(head[0].length).trim();
  if (rest !== '') {
    for (const token of rest.split(/\s+/)) {
      const eq = token.indexOf('=');
      if (eq <= 0) {
        return fail(ErrorCode.MASIMO_BAD_LINE, `token "${clip(token)}" is not KEY=value (damaged line, or two lines run together)`);
      }
      const key = token.slice(0, eq).toUpperCase();
      if (values.has(key)) return fail(ErrorCode.MASIMO_BAD_LINE, `key ${clip(key)} appears twice (two lines run together?)`);
      values.set(key, token.slice(eq + 1));
    }
  }
  // Masimo ASCII 1 (and the trend format) always send the exception word near the end of the
  // line; a line without it was cut short, and its last value may be cut too (SPO2=09…).
  const excText = values.get('EXC');
  if (excText === undefined) return fail(ErrorCode.MASIMO_BAD_LINE, 'no EXC field: the line was cut short');
  const exception = parseHexWord(excText);
  if (exception === null) return fail(ErrorCode.MASIMO_BAD_VALUE, 'EXC is not a hex word');
  const sensorFailed = (exception & SENSOR_FAILURE) !== 0;
  const lineFlags = (sensorFailed ? Quality.INVALID : 0) | (exception & SIGNAL_DOUBT ? Quality.QUESTIONABLE : 0);

  const readings: Measurement[] = [];
  const states: Measurement[] = [];
  const identity: Record<string, string> = {};
  for (const [key, raw] of values) {
    const def = ctx.codes.byCode.get(key);
    const kind = def?.kind ?? 'numeric';
    if (kind === 'ignore') continue;
    if (kind === 'identity') {
      if (!DASHES.test(raw) && raw !== '') identity[key === 'SN' ? 'serial' : key.toLowerCase()] = raw;
      continue;
    }
    if (kind === 'state' || kind === 'alarm') {
      const bits = parseHexWord(raw);
      if (bits === null) return fail(ErrorCode.MASIMO_BAD_VALUE, `${clip(key)} is not a hex word`);
      const text = key === 'EXC' ? masimoExceptionNames(bits) || 'none' : bits.toString(16).toUpperCase().padStart(4, '0');
      const flags = kind === 'alarm' && bits !== 0 ? Quality.ABNORMAL : 0;
      // A bit word is not a quantity: it is kept as text (names or hex), never as a number.
      states.push(vendorMeasurement(MASIMO_SYSTEM, ctx.deviceId, key, def, Number.NaN, text, time, tzOffset, flags));
      continue;
    }
    // numeric (also unknown keys) and text
    const value = raw.endsWith('%') ? raw.slice(0, -1) : raw;
    if (value === '' || DASHES.test(value)) {
      readings.push(vendorMeasurement(MASIMO_SYSTEM, ctx.deviceId, key, def, Number.NaN, null, time, tzOffset, lineFlags | Quality.INVALID));
      continue;
    }
    if (NUMBER.test(value)) {
      const n = Number(value);
      if (sensorFailed || (n === 0 && ZERO_MEANS_ABSENT.has(key))) {
        // Masimo: digits under a sensor exception, or zeros of the trend format, are not readings.
        readings.push(vendorMeasurement(MASIMO_SYSTEM, ctx.deviceId, key, def, Number.NaN, null, time, tzOffset, lineFlags | Quality.INVALID));
      } else {
        readings.push(vendorMeasurement(MASIMO_SYSTEM, ctx.deviceId, key, def, n, null, time, tzOffset, lineFlags));
      }
      continue;
    }
    if (kind === 'text' || def === undefined) {
      readings.push(vendorMeasurement(MASIMO_SYSTEM, ctx.deviceId, key, def, Number.NaN, value, time, tzOffset, lineFlags));
      continue;
    }
    return fail(ErrorCode.MASIMO_BAD_VALUE, `${clip(key)} value is neither a number nor dashes`);
  }
  return { readings, states, identity, problems, fatal: null };
}

/** `000C00`, `C00:LowSigIQ,SET` (trend format names the bits after a colon) → number. */
function parseHexWord(text: string): number | null {
  const colon = text.indexOf(':');
  const hex = colon === -1 ? text : text.slice(0, colon);
  if (!/^[0-9A-Fa-f]{1,8}$/.test(hex)) return null;
  return Number.parseInt(hex, 16);
}

function clip(text: string): string {
  return text.length > 24 ? `${text.slice(0, 23)}…` : text;
}

/** Problems of a line as dead letters: the whole line is kept as raw bytes, never logged. */
export function masimoDeadLetters(line: string, offset: number, decoded: MasimoDecoded): DeadLetterInput[] {
  const all = decoded.fatal ? [decoded.fatal, ...decoded.problems] : decoded.problems;
  if (all.length === 0) return [];
  const raw = Buffer.from(line, 'latin1');
  return all.map((p) => ({
    code: p.code,
    reason: p.reason,
    location: p.location === 'line' ? `line at byte ${offset}` : `line at byte ${offset}, ${p.location}`,
    controlId: null,
    raw,
  }));
}

// ── session ─────────────────────────────────────────────────────────────────

export interface MasimoOptions {
  /** Longest accepted line (bytes without CR LF); default 1024. */
  readonly maxLineBytes?: number;
}

/**
 * The oximeter talks by itself; the session only listens. Per link: the first (partial) line
 * is discarded, lines are decoded as they complete, and the readings of one chunk are
 * submitted together (the link pauses until they are committed). EXC/ALARM words are stored
 * when they change, not every second.
 */
export class MasimoSession implements ProtocolSession {
  private readonly framer: LineFramer;
  private readonly lastState = new Map<string, string>();
  private measurements: Measurement[] = [];
  private rejects: DeadLetterInput[] = [];

  constructor(
    private readonly io: SessionIo,
    private readonly codes: VendorCodes,
    options: MasimoOptions = {},
  ) {
    this.framer = new LineFramer({
      maxLineBytes: options.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES,
      // Masimo ASCII 1: the oximeter was talking before we listened; the first line is a tail.
      discardFirstLine: true,
      tooLongCode: ErrorCode.MASIMO_LINE_TOO_LONG,
      onLine: (line, offset) => this.onLine(line, offset),
      onReject: (reject) => {
        this.io.count('rejected');
        this.rejects.push(framerDeadLetter(reject));
      },
    });
  }

  onData(chunk: Buffer): void {
    this.framer.push(chunk);
    if (this.measurements.length === 0 && this.rejects.length === 0) return;
    const measurements = this.measurements;
    const rejects = this.rejects;
    this.measurements = [];
    this.rejects = [];
    void this.io.submit(measurements, rejects);
  }

  onClose(): void {
    const pending = this.framer.pending();
    if (pending > 0) this.io.count('truncatedBytes', pending);
  }

  private onLine(line: string, offset: number): void {
    const decoded = decodeMasimoLine(line, { deviceId: this.io.deviceId, zone: this.io.zone, codes: this.codes });
    const letters = masimoDeadLetters(line, offset, decoded);
    if (decoded.fatal) {
      this.io.count('rejected');
      this.rejects.push(...letters);
      return;
    }
    this.io.alive();
    this.io.count('frames');
    if (letters.length > 0) {
      this.io.count('fieldProblems', letters.length);
      this.rejects.push(...letters);
    }
    for (const [key, value] of Object.entries(decoded.identity)) this.io.identify(key, value);
    this.measurements.push(...decoded.readings);
    for (const state of decoded.states) {
      const key = `${state.system}|${state.code}`;
      const text = state.text ?? String(state.value);
      if (this.lastState.get(key) === text) continue;
      this.lastState.set(key, text);
      this.measurements.push(state);
    }
  }
}
