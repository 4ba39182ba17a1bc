/**
 * A hospital ward's ADT feed: admits, transfers between beds, discharges, now and then an A08
 * update and — when asked — cancels (A11/A12/A13) right after the event they undo, as an EPJ
 * sends them over MLLP.
 *
 * Programmatic API (integration tests compute the ground truth with it):
 * - `adtMessage(spec)` writes one HL7 v2.6 ADT message;
 * - `AdtWard` is a ward model that produces the next consistent event at a given time and
 *   keeps every stay it caused, so `occupantAt(bed, t)` says who lay in a bed at any time;
 * - `runAdtSimulation(options)` plays a ward against a gateway's ADT listener and counts ACKs.
 *
 * Patients get clearly synthetic CPR-shaped numbers: birth dates from 01-01-1900 and a sequence
 * 4000–4999 (no modulus check): nobody real.
 */
import { connect, type Socket } from 'node:net';
import { formatHl7Time, zoneOffsets } from '../src/codec/hl7-time.js';
import { encodeFrame, MllpDecoder } from '../src/codec/mllp.js';
import type { AdtEventType } from '../src/registry/types.js';
import { readMsa } from './pcd01.js';
import { mulberry32, randomInt, type Rng } from './random.js';

/** One ADT message to write. */
export interface AdtSpec {
  readonly type: AdtEventType;
  /** 10 digits. */
  readonly cpr: string;
  /** Bed key `ward/room/bed` for PV1-3, or null. */
  readonly bed: string | null;
  /** PV1-6, or null. */
  readonly priorBed?: string | null;
  /** EVN-6 (event occurred), epoch ms. */
  readonly time: number;
  readonly controlId: string;
  /** MSH-3. Default `EPJ`. */
  readonly sender?: string;
  /** PV1-19. */
  readonly visit?: string | null;
  /** PID-5 (synthetic). */
  readonly name?: { readonly family: string; readonly given: string };
  /** Encoding of the bytes, declared in MSH-18. Default utf8. */
  readonly charset?: 'utf8' | 'latin1';
}

// HL7 v2.6 message structures of the events (A11 uses ADT_A09's, A13 ADT_A01's).
const STRUCTURE: Record<AdtEventType, string> = {
  A01: 'ADT_A01',
  A02: 'ADT_A02',
  A03: 'ADT_A03',
  A04: 'ADT_A01',
  A08: 'ADT_A01',
  A11: 'ADT_A09',
  A12: 'ADT_A12',
  A13: 'ADT_A01',
};

const zone = zoneOffsets('Europe/Copenhagen');

function hl7Time(ms: number): string {
  return formatHl7Time(ms, zone.offsetAt(ms));
}

function pl(bed: string | null | undefined): string {
  return bed ? bed.split('/').join('^') : '';
}

/** One ADT message (segments ended by CR), MSH-7 and EVN-2 = `time`, EVN-6 = `time`. */
export function adtMessage(spec: AdtSpec): Buffer {
  const charset = spec.charset ?? 'utf8';
  const ts = hl7Time(spec.time);
  const name = spec.name ?? { family: 'Testsen', given: 'Test' };
  const fields = (...f: string[]) => f.join('|').replace(/\|+$/, '');
  const pv1 = new Array<string>(20).fill('');
  pv1[0] = 'PV1';
  pv1[1] = '1';
  pv1[2] = 'I';
  pv1[3] = pl(spec.bed);
  pv1[6] = pl(spec.priorBed);
  pv1[19] = spec.visit ?? '';
  const text = [
    fields('MSH', '^~\\&', spec.sender ?? 'EPJ', 'SIM', 'MDI_GATEWAY', 'SIM', ts, '', `ADT^${spec.type}^${STRUCTURE[spec.type]}`, spec.controlId, 'P', '2.6', '', '', 'AL', 'NE', '', charset === 'utf8' ? 'UNICODE UTF-8' : '8859/1'),
    fields('EVN', spec.type, ts, '', '', 'sim', ts),
    fields('PID', '1', '', `${spec.cpr}^^^CPR&1.2.208.176.1.2&ISO^NNDNK`, '', `${name.family}^${name.given}`, '', `19${spec.cpr.slice(4, 6)}${spec.cpr.slice(2, 4)}${spec.cpr.slice(0, 2)}`, 'U'),
    pv1.join('|').replace(/\|+$/, ''),
  ].join('\r');
  return Buffer.from(`${text}\r`, charset === 'utf8' ? 'utf8' : 'latin1');
}

/** The i-th synthetic CPR: birth date 01-01-1900 + i days, sequence 4000 + i mod 1000. */
export function syntheticCpr(i: number): string {
  const d = new Date(Date.UTC(1900, 0, 1) + i * 86_400_000);
  const dd = String(d.getUTCDate()).padStart(2, '0');
  const mm = String(d.getUTCMonth() + 1).padStart(2, '0');
  const yy = String(d.getUTCFullYear() % 100).padStart(2, '0');
  return `${dd}${mm}${yy}${4000 + (i % 1000)}`;
}

const FAMILY = ['Jensen', 'Nielsen', 'Hansen', 'Pedersen', 'Sørensen', 'Møller', 'Ærøe', 'Østergård'];
const GIVEN = ['Anne', 'Søren', 'Åse', 'Jørgen', 'Mette', 'Bjørn', 'Lærke', 'Ole'];

/** A stay as the ward model knows it (the ground truth). */
export interface WardStay {
  readonly cpr: string;
  readonly bed: string;
  readonly from: number;
  to: number | null;
}

/** One generated event with its message. */
export interface WardEvent {
  readonly spec: AdtSpec;
  readonly message: Buffer;
}

export interface AdtWardOptions {
  /** Bed keys `ward/room/bed`. */
  readonly beds: readonly string[];
  /** Patients in the pool (admitted, waiting or discharged and coming back). Default 2 × beds. */
  readonly patients?: number;
  /** Mean time between transfers on the ward (ms); 0 = none. Default 10 minutes. */
  readonly transferEveryMs?: number;
  /** Emit A11/A12/A13 now and then, right after the event they cancel. */
  readonly cancels?: boolean;
  /** Probability that an admit/transfer/discharge is cancelled (with `cancels`). Default 0.1. */
  readonly cancelRate?: number;
  readonly seed?: number;
  readonly sender?: string;
  readonly charset?: 'utf8' | 'latin1';
}

/**
 * A ward that only ever makes consistent moves (admit into a free bed, transfer into a free bed,
 * discharge, cancel the event just made), so the stays it records are exactly what a correct
 * gateway must derive from its messages.
 */
export class AdtWard {
  readonly beds: readonly string[];
  readonly patients: readonly string[];
  /** Every stay, cancelled ones removed: the ground truth. */
  readonly stays: WardStay[] = [];
  private readonly rnd: Rng;
  private readonly transferEveryMs: number;
  private readonly cancelRate: number;
  private readonly sender: string;
  private readonly charset: 'utf8' | 'latin1';
  private seq = 0;
  private lastTransfer = Number.NEGATIVE_INFINITY;
  private visits = 0;
  /** The event that may be cancelled next, with how to undo it in the model. */
  private undoable: { type: 'A11' | 'A12' | 'A13'; cpr: string; bed: string; priorBed: string | null; undo: () => void } | null = null;
  private readonly names = new Map<string, { family: string; given: string }>();

  constructor(options: AdtWardOptions) {
    if (options.beds.length === 0) throw new RangeError('a ward needs at least one bed');
    this.beds = options.beds;
    const n = options.patients ?? options.beds.length * 2;
    if (!(n >= 1)) throw new RangeError('patients must be at least 1');
    this.patients = Array.from({ length: n }, (_, i) => syntheticCpr(i));
    this.rnd = mulberry32(options.seed ?? 1);
    this.transferEveryMs = options.transferEveryMs ?? 600_000;
    this.cancelRate = options.cancels ? (options.cancelRate ?? 0.1) : 0;
    this.sender = options.sender ?? 'EPJ';
    this.charset = options.charset ?? 'utf8';
    for (const cpr of this.patients) this.names.set(cpr, { family: FAMILY[randomInt(this.rnd, FAMILY.length)]!, given: GIVEN[randomInt(this.rnd, GIVEN.length)]! });
  }

  /** Who lies in `bed` now (after every event so far). */
  occupant(bed: string): string | null {
    return this.stays.find((s) => s.bed === bed && s.to === null)?.cpr ?? null;
  }

  /** Who lay in `bed` at `t` (half-open stays). */
  occupantAt(bed: string, t: number): string | null {
    return this.stays.find((s) => s.bed === bed && s.from <= t && (s.to === null || t < s.to))?.cpr ?? null;
  }

  /** The next event at `time` (times must not decrease). */
  next(time: number): WardEvent {
    // A cancel follows the event it undoes, before anything else happens.
    if (this.undoable !== null) {
      const u = this.undoable;
      this.undoable = null;
      if (this.rnd() < this.cancelRate) {
        u.undo();
        return this.emit({ type: u.type, cpr: u.cpr, bed: u.bed, priorBed: u.priorBed, time });
      }
    }
    const free = this.beds.filter((b) => this.occupant(b) === null);
    const inBed = this.stays.filter((s) => s.to === null);
    const waiting = this.patients.filter((p) => !inBed.some((s) => s.cpr === p));
    const transferDue = this.transferEveryMs > 0 && time - this.lastTransfer >= this.transferEveryMs * (0.5 + this.rnd());
    if (transferDue && free.length > 0 && inBed.length > 0) {
      this.lastTransfer = time;
      const stay = inBed[randomInt(this.rnd, inBed.length)]!;
      const bed = free[randomInt(this.rnd, free.length)]!;
      const prior = stay.bed;
      stay.to = time;
      const moved: WardStay = { cpr: stay.cpr, bed, from: time, to: null };
      this.stays.push(moved);
      this.undoable = {
        type: 'A12',
        cpr: stay.cpr,
        bed,
        priorBed: prior,
        undo: () => {
          this.stays.splice(this.stays.indexOf(moved), 1);
          stay.to = null;
        },
      };
      return this.emit({ type: 'A02', cpr: stay.cpr, bed, priorBed: prior, time });
    }
    const r = this.rnd();
    if (free.length > 0 && waiting.length > 0 && (r < 0.55 || inBed.length === 0)) {
      const cpr = waiting[randomInt(this.rnd, waiting.length)]!;
      const bed = free[randomInt(this.rnd, free.length)]!;
      const stay: WardStay = { cpr, bed, from: time, to: null };
      this.stays.push(stay);
      this.undoable = { type: 'A11', cpr, bed, priorBed: null, undo: () => void this.stays.splice(this.stays.indexOf(stay), 1) };
      return this.emit({ type: this.rnd() < 0.9 ? 'A01' : 'A04', cpr, bed, time, visit: `V${++this.visits}` });
    }
    if (inBed.length > 0 && r < 0.9) {
      const stay = inBed[randomInt(this.rnd, inBed.length)]!;
      stay.to = time;
      this.undoable = { type: 'A13', cpr: stay.cpr, bed: stay.bed, priorBed: null, undo: () => void (stay.to = null) };
      return this.emit({ type: 'A03', cpr: stay.cpr, bed: stay.bed, time });
    }
    // An update that changes nothing about the bed (demographics): the gateway must ignore it.
    const stay = inBed[0];
    if (stay !== undefined) return this.emit({ type: 'A08', cpr: stay.cpr, bed: stay.bed, time });
    const cpr = waiting[0]!;
    const bed = free[0]!;
    const admitted: WardStay = { cpr, bed, from: time, to: null };
    this.stays.push(admitted);
    return this.emit({ type: 'A01', cpr, bed, time, visit: `V${++this.visits}` });
  }

  private emit(e: { type: AdtEventType; cpr: string; bed: string | null; priorBed?: string | null; time: number; visit?: string }): WardEvent {
    const spec: AdtSpec = {
      type: e.type,
      cpr: e.cpr,
      bed: e.bed,
      priorBed: e.priorBed ?? null,
      time: e.time,
      controlId: `ADT${String(++this.seq).padStart(8, '0')}`,
      sender: this.sender,
      visit: e.visit ?? null,
      name: this.names.get(e.cpr)!,
      charset: this.charset,
    };
    return { spec, message: adtMessage(spec) };
  }
}

// ── the sender ──────────────────────────────────────────────────────────────

export interface AdtSimulationOptions extends AdtWardOptions {
  readonly host: string;
  readonly port: number;
  /** Messages per second (one in flight at a time, as ADT feeds do). Default 1. */
  readonly rate?: number;
  readonly count?: number;
  readonly durationMs?: number;
  readonly signal?: AbortSignal;
  /** ms to wait for each ACK. Default 10 s. */
  readonly ackTimeoutMs?: number;
  readonly onProgress?: (report: AdtSimulationReport) => void;
}

export interface AdtSimulationReport {
  sent: number;
  aa: number;
  ae: number;
  ar: number;
  timeouts: number;
  errors: number;
  byType: Record<string, number>;
}

export const ADT_SIMULATION_DEFAULTS = { host: '127.0.0.1', port: 2576, rate: 1 } as const;

/** Plays a ward against an ADT listener over one MLLP connection; one message in flight. */
export async function runAdtSimulation(options: AdtSimulationOptions): Promise<AdtSimulationReport> {
  const rate = options.rate ?? ADT_SIMULATION_DEFAULTS.rate;
  if (!(rate >= 0)) throw new RangeError('rate must be 0 or more');
  if (options.count === undefined && options.durationMs === undefined && options.signal === undefined) {
    throw new RangeError('give a count, a duration or a signal');
  }
  const ward = new AdtWard(options);
  const report: AdtSimulationReport = { sent: 0, aa: 0, ae: 0, ar: 0, timeouts: 0, errors: 0, byType: {} };
  const socket: Socket = connect({ host: options.host, port: options.port, noDelay: true });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  let waiting: ((frame: Buffer | null) => void) | null = null;
  const decoder = new MllpDecoder({
    onFrame: (frame) => {
      const w = waiting;
      waiting = null;
      w?.(Buffer.from(frame));
    },
    onError: () => {
      report.errors++;
    },
  });
  socket.on('data', (chunk: Buffer) => decoder.push(chunk));
  socket.on('error', () => {
    report.errors++;
  });
  socket.on('close', () => {
    const w = waiting;
    waiting = null;
    w?.(null);
  });
  const started = Date.now();
  const intervalMs = rate === 0 ? 0 : 1000 / rate;
  try {
    while (!options.signal?.aborted) {
      if (options.count !== undefined && report.sent >= options.count) break;
      if (options.durationMs !== undefined && Date.now() - started >= options.durationMs) break;
      const { spec, message } = ward.next(Date.now());
      const ack = new Promise<Buffer | null>((resolve) => {
        const timer = setTimeout(() => {
          waiting = null;
          resolve(null);
        }, options.ackTimeoutMs ?? 10_000);
        waiting = (frame) => {
          clearTimeout(timer);
          resolve(frame);
        };
      });
      socket.write(encodeFrame(message));
      report.sent++;
      report.byType[spec.type] = (report.byType[spec.type] ?? 0) + 1;
      const frame = await ack;
      if (frame === null) {
        report.timeouts++;
        if (socket.destroyed) break;
      } else {
        const msa = readMsa(frame);
        if (msa?.code === 'AA') report.aa++;
        else if (msa?.code === 'AE') report.ae++;
        else report.ar++;
      }
      options.onProgress?.(report);
      const due = started + report.sent * intervalMs;
      const wait = due - Date.now();
      if (wait > 0) await sleep(wait, options.signal);
    }
  } finally {
    socket.end();
    socket.destroySoon();
  }
  return report;
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}

export function formatAdtReport(r: AdtSimulationReport): string {
  const types = Object.entries(r.byType)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([t, n]) => `${t} ${n}`)
    .join(', ');
  return `${r.sent} ADT messages sent (${types}): ${r.aa} AA, ${r.ae} AE, ${r.ar} AR, ${r.timeouts} timeouts, ${r.errors} errors`;
}
