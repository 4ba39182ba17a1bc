/**
 * B. Braun Space infusion pumps through a SpaceCom / ComDevice, BCC protocol, over RS-232 (9600
 * 8N1 default) or TCP (the ComDevice listens on port 4001).
 *
 * BCC: frame `SOH len(5) STX bedId/1/1>information ETX|ETB check(5) EOT`, character stuffing
 * D→EX, E→EE, d→ex, e→ee; length and check refer to the unstuffed message. Requests are
 * `area:command` (`ADMIN:ALIVE` with the default bed id `1`, whose answer names the real bed id;
 * `ADMIN:VERSION`; `MEM:GET`, one block per pump). Answers are records
 * `time,address,parameter,value` separated by RS; ETB means more blocks follow: the host sends
 * ACK for the next one, NAK for a retransmission. Wait ~0.1 s after a block before ACK, and
 * ≥ 0.5 s between MEM:GET requests. `time` counts seconds since the ComDevice powered on;
 * address `501xy` is pillar x (1–3), slot y (1–9, A–O), `50100` the ComDevice itself;
 * `_NV` is "no value" (not zero), `_NA` "temporarily not available".
 * Sources: B. Braun Technical Interface Specification BCC 3.25/3.26 v4.0,
 * mindleaving/patient-monitor-datalogger; research/device-formats.md §7.
 *
 * BCC answers can carry patient data (names, ids): parameters whose name starts with `PAT`
 * other than the mapped weight are dropped here, and values are never logged.
 */
import { ErrorCode } from '../../src/errors.js';
import type { VendorCodes } from '../../src/mappings.js';
import type { DeadLetterInput } from '../../src/model/dead-letter.js';
import { Quality, type Measurement } from '../../src/model/measurement.js';
import type { TimeZoneRule } from '../../src/codec/hl7-time.js';
import {
  BCC_ACK,
  BCC_NAK,
  BCC_RS,
  BccFramer,
  DEFAULT_BCC_MAX_FRAME_BYTES,
  encodeBccFrame,
  type BccFrame,
  type FramerReject,
} from './framers.js';
import { framerDeadLetter, type LineDefaults, type ProtocolSession, type SessionIo } from './session.js';
import { sleep } from '../../src/reconnect.js';
import { vendorMeasurement } from './vendor-measurement.js';

/** Coding system of BCC parameters that have no MDC code (`BBRAUN-BCC:INP2`). */
export const BCC_SYSTEM = 'BBRAUN-BCC';

/** SpaceCom default: 9600 baud, 8 data bits, no parity, 1 stop bit, no handshake. */
export const BCC_LINE_DEFAULTS: LineDefaults = { baudRate: 9600, dataBits: 8, parity: 'none', stopBits: 1 };

/** The ComDevice's TCP port in request mode. */
export const BCC_TCP_PORT = 4001;

/** One BCC record. `parameter` is '' for three-field answers such as the version. */
export interface BccRecord {
  /** Position of the record in its block, from 1 (for problem locations). */
  readonly index: number;
  /** Seconds since the ComDevice powered on. */
  readonly time: number;
  readonly address: string;
  readonly parameter: string;
  readonly value: string;
}

/** A problem in one record of a block; `location` is `record 4 (INRT)`. */
export interface BccProblem {
  readonly code: ErrorCode;
  readonly reason: string;
  readonly location: string;
}

/**
 * Splits the information part of an answer into records. Pure. A record that is not
 * `time,address,parameter,value` (or the three-field `time,address,value`) is a problem; the
 * others are kept. Values are UTF-8 (pump display glyphs are private-use characters).
 */
export function parseBccRecords(info: Uint8Array): { records: BccRecord[]; problems: BccProblem[] } {
  const records: BccRecord[] = [];
  const problems: BccProblem[] = [];
  const buf = Buffer.from(info.buffer, info.byteOffset, info.byteLength);
  let start = 0;
  let index = 0;
  while (start <= buf.length) {
    let end = buf.indexOf(BCC_RS, start);
    if (end === -1) end = buf.length;
    index++;
    // RS (0x1E) never occurs inside a UTF-8 sequence, so records split safely at byte level.
    const text = buf.toString('utf8', start, end);
    start = end + 1;
    if (text === '' && end === buf.length && index > 1) break; // a trailing RS
    const c1 = text.indexOf(',');
    const c2 = c1 === -1 ? -1 : text.indexOf(',', c1 + 1);
    const c3 = c2 === -1 ? -1 : text.indexOf(',', c2 + 1);
    const timeText = c1 === -1 ? '' : text.slice(0, c1);
    if (c2 === -1 || !/^\d{1,10}$/.test(timeText)) {
      problems.push({ code: ErrorCode.BCC_BAD_RECORD, reason: 'record is not time,address,parameter,value', location: `record ${index}` });
      continue;
    }
    const address = text.slice(c1 + 1, c2);
    if (!/^\d{5}$/.test(address)) {
      problems.push({ code: ErrorCode.BCC_BAD_RECORD, reason: 'address is not five digits', location: `record ${index}` });
      continue;
    }
    if (c3 === -1) {
      records.push({ index, time: Number(timeText), address, parameter: '', value: text.slice(c2 + 1) });
    } else {
      const parameter = text.slice(c2 + 1, c3);
      if (!/^[A-Z][A-Z0-9_]*$/.test(parameter)) {
        problems.push({ code: ErrorCode.BCC_BAD_RECORD, reason: 'parameter name is not upper-case letters and digits', location: `record ${index}` });
        continue;
      }
      records.push({ index, time: Number(timeText), address, parameter, value: text.slice(c3 + 1) });
    }
  }
  return { records, problems };
}

/** `50113` → `13` (pillar 1, slot 3); null for the ComDevice (`50100`) and other addresses. */
export function bccSlot(address: string): string | null {
  // BCC: address 501xy — x pillar 1–3, y slot 1–9 then A–O (bottom up); 50100 the ComDevice.
  const m = /^501([1-3])([1-9A-O])$/.exec(address);
  return m ? `${m[1]}${m[2]}` : null;
}

/** The device id of the pump at `address` behind the SpaceCom `deviceId`. */
export function bccPumpDeviceId(deviceId: string, address: string): string {
  if (address === '50100') return deviceId;
  const slot = bccSlot(address);
  return slot ? `${deviceId}/pump-${slot}` : `${deviceId}/${address}`;
}

/** What `decodeBccBlock` needs besides the bytes. */
export interface BccDecodeContext {
  /** Id of the SpaceCom; pumps become `<deviceId>/pump-<pillar><slot>`. */
  readonly deviceId: string;
  /** Arrival time of the block (epoch ms): the newest record time is taken to be now. */
  readonly received: number;
  readonly zone: TimeZoneRule;
  readonly codes: VendorCodes;
}

/** What one answer block became. */
export interface BccDecoded {
  /** Numeric and text readings, every block. */
  readonly readings: Measurement[];
  /** Status and alarm flags (and unknown parameters): a session stores them when they change. */
  readonly states: Measurement[];
  /** `pump-13 serial` → `40864`, `version` → `V3.30`. */
  readonly identity: Readonly<Record<string, string>>;
  /** The ComDevice acknowledged ADMIN:ALIVE (GNACK). */
  readonly aliveAck: boolean;
  /** GNERR codes the ComDevice sent. */
  readonly deviceErrors: string[];
  readonly problems: BccProblem[];
  /** Parameters dropped as personal data (never stored, never logged). */
  readonly personalDropped: number;
}

/** Value a pump sends for INRMT when no end time is set (0xFFFF). */
const NO_END_TIME = 65535;
const NUMBER = /^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$/;

/**
 * Decodes the records of one answer block into Measurements. Pure.
 * Record times are relative to the ComDevice's power-on; the newest one in the block is taken
 * as the arrival time and the others are placed before it by their difference, so the
 * ComDevice clock never has to be set.
 */
export function decodeBccBlock(info: Uint8Array, ctx: BccDecodeContext): BccDecoded {
  const { records, problems } = parseBccRecords(info);
  const readings: Measurement[] = [];
  const states: Measurement[] = [];
  const identity: Record<string, string> = {};
  const deviceErrors: string[] = [];
  let aliveAck = false;
  let personalDropped = 0;
  let newest = 0;
  for (const r of records) if (r.time > newest) newest = r.time;
  for (const r of records) {
    const time = ctx.received - (newest - r.time) * 1000;
    const tzOffset = ctx.zone.offsetAt(time);
    const deviceId = bccPumpDeviceId(ctx.deviceId, r.address);
    const slot = bccSlot(r.address);
    const who = slot ? `pump-${slot}` : r.address === '50100' ? 'comdevice' : r.address;
    if (r.parameter === '') {
      identity.version = r.value;
      continue;
    }
    if (r.parameter === 'GNACK') {
      aliveAck = true;
      continue;
    }
    if (r.parameter === 'GNERR') {
      deviceErrors.push(r.value);
      continue;
    }
    const def = ctx.codes.byCode.get(r.parameter);
    if (def === undefined && r.parameter.startsWith('PAT')) {
      personalDropped++; // patient data (name, id, …): not a reading, never kept
      continue;
    }
    const kind = def?.kind ?? 'state';
    if (kind === 'ignore') continue;
    const absent = r.value === '_NV' || r.value === '_NA';
    if (kind === 'identity') {
      if (!absent) identity[`${who} ${r.parameter}`] = r.value;
      continue;
    }
    const make = (value: number, text: string | null, flags: number) =>
      vendorMeasurement(BCC_SYSTEM, deviceId, r.parameter, def, value, text, time, tzOffset, flags);
    if (kind === 'numeric') {
      if (absent) {
        readings.push(make(Number.NaN, null, Quality.INVALID));
      } else if (NUMBER.test(r.value)) {
        const n = Number(r.value);
        // INRMT 65535: no end time is set; it is not a remaining time of 45 days.
        if (r.parameter === 'INRMT' && n === NO_END_TIME) readings.push(make(Number.NaN, null, Quality.INVALID));
        else readings.push(make(n, null, 0));
      } else {
        problems.push({ code: ErrorCode.BCC_BAD_RECORD, reason: `${r.parameter} is not a number`, location: `record ${r.index} (${r.parameter})` });
      }
      continue;
    }
    if (kind === 'text') {
      if (!absent) readings.push(make(Number.NaN, r.value, 0));
      continue;
    }
    // state, alarm, unknown
    if (absent) continue;
    const numeric = NUMBER.test(r.value) ? Number(r.value) : Number.NaN;
    const text = def?.states.get(r.value) ?? r.value;
    const flags = kind === 'alarm' && numeric === 1 ? Quality.ABNORMAL : 0;
    states.push(make(numeric, text, flags));
  }
  return { readings, states, identity, aliveAck, deviceErrors, problems, personalDropped };
}

/** A request (`MEM:GET`) the host sent, as the simulator and `mdi inspect` see it. */
export function parseBccRequest(info: Uint8Array): { area: string; command: string } | null {
  const text = Buffer.from(info).toString('latin1');
  const m = /^([A-Z]+):([A-Z0-9#]+)$/.exec(text);
  return m ? { area: m[1]!, command: m[2]! } : null;
}

/** Problems of a block as dead letters (the block's information part is kept as raw). */
export function bccDeadLetters(frame: BccFrame, problems: readonly BccProblem[]): DeadLetterInput[] {
  return problems.map((p) => ({
    code: p.code,
    reason: p.reason,
    location: `bytes ${frame.offset}-${frame.offset + frame.length - 1}, ${p.location}`,
    controlId: null,
    raw: frame.info,
  }));
}

// ── session ─────────────────────────────────────────────────────────────────

export interface BbraunOptions {
  /**
   * Time between the starts of two MEM:GET requests (ms). Default 5000. BCC asks for ≥ 0.5 s;
   * 0 means cyclic mode: the ComDevice pushes answers by itself and is only acknowledged.
   */
  readonly pollIntervalMs?: number;
  /** Wait this long for an answer block (ms). Default 5000. */
  readonly responseTimeoutMs?: number;
  /** BCC: wait ~0.1 s after a block before ACK (ms). Default 100. */
  readonly ackDelayMs?: number;
  /** Character stuffing (default true, as the ComDevice ships). */
  readonly characterStuffing?: boolean;
  readonly maxFrameBytes?: number;
}

const BCC_DEFAULTS = { pollIntervalMs: 5000, responseTimeoutMs: 5000, ackDelayMs: 100 };
/** BCC: at least 0.5 s between MEM:GET requests. */
const MIN_POLL_INTERVAL_MS = 500;
/** NAKs for one block before the answer is given up (the next poll asks again). */
const MAX_NAKS_PER_BLOCK = 3;
/** Failed requests in a row before ADMIN:ALIVE is sent again. */
const FAILURES_BEFORE_REALIVE = 3;
/** Frames waiting for the loop; the ComDevice sends the next block only after our ACK. */
const MAX_QUEUED_FRAMES = 64;
/** Before the ComDevice names its bed id, requests use the default `1/1/1>`. */
const DEFAULT_HEADER = '1/1/1';

type Incoming = { frame: BccFrame } | { bad: FramerReject };

/**
 * The host side of a BCC link: ADMIN:ALIVE (learning the bed id), ADMIN:VERSION, then MEM:GET
 * every `pollIntervalMs`. Each block is decoded and committed, then ACKed (after the BCC pause),
 * so the ComDevice only sends the next block once the last one is durable. A block that fails
 * its length/check/stuffing is NAKed (retransmitted) up to 3 times. Status and alarm flags are
 * stored when they change.
 */
export class BbraunSession implements ProtocolSession {
  private readonly framer: BccFramer;
  private readonly pollIntervalMs: number;
  private readonly responseTimeoutMs: number;
  private readonly ackDelayMs: number;
  private readonly stuffing: boolean;
  private readonly queue: Incoming[] = [];
  private waiter: ((item: Incoming | null) => void) | null = null;
  private waitTimer: NodeJS.Timeout | null = null;
  private closed = false;
  /** Aborted when the link closes: ends any pause at once. */
  private readonly closing = new AbortController();
  private header = DEFAULT_HEADER;
  private readonly lastState = new Map<string, string>();
  private pendingRejects: DeadLetterInput[] = [];

  constructor(
    private readonly io: SessionIo,
    private readonly codes: VendorCodes,
    options: BbraunOptions = {},
  ) {
    const interval = options.pollIntervalMs ?? BCC_DEFAULTS.pollIntervalMs;
    this.pollIntervalMs = interval === 0 ? 0 : Math.max(MIN_POLL_INTERVAL_MS, interval);
    this.responseTimeoutMs = options.responseTimeoutMs ?? BCC_DEFAULTS.responseTimeoutMs;
    this.ackDelayMs = options.ackDelayMs ?? BCC_DEFAULTS.ackDelayMs;
    this.stuffing = options.characterStuffing ?? true;
    this.framer = new BccFramer({
      maxFrameBytes: options.maxFrameBytes ?? DEFAULT_BCC_MAX_FRAME_BYTES,
      stuffing: this.stuffing,
      onFrame: (frame) => this.enqueue({ frame }),
      onReject: (reject) => {
        this.io.count('rejected');
        this.pendingRejects.push(framerDeadLetter(reject));
        // A block that failed its checks is worth a NAK; noise between blocks is not.
        if (reject.code !== ErrorCode.BCC_GARBAGE) this.enqueue({ bad: reject });
      },
      onControl: () => this.io.count('unexpectedControl'),
    });
    void this.run();
  }

  onData(chunk: Buffer): void {
    this.framer.push(chunk);
    if (this.pendingRejects.length > 0 && this.waiter === null) void this.io.submit([], this.takeRejects());
  }

  onClose(): void {
    if (this.closed) return;
    this.closed = true;
    this.closing.abort();
    this.deliver(null);
    const pending = this.framer.pending();
    if (pending > 0) this.io.count('truncatedBytes', pending);
    if (this.pendingRejects.length > 0) void this.io.submit([], this.takeRejects());
  }

  private async run(): Promise<void> {
    while (!this.closed) {
      this.header = DEFAULT_HEADER;
      // BCC: ADMIN:ALIVE with the default bed id; the answer's header names the real one.
      const alive = await this.exchange('ADMIN:ALIVE', true);
      if (this.closed) return;
      if (!alive) {
        await this.pause(1000);
        continue;
      }
      this.io.count('initializations');
      const version = await this.exchange('ADMIN:VERSION', false);
      if (this.closed) return;
      if (!version) continue;
      if (this.pollIntervalMs === 0) {
        await this.cyclic();
        continue;
      }
      let failures = 0;
      while (!this.closed && failures < FAILURES_BEFORE_REALIVE) {
        const started = Date.now();
        const ok = await this.exchange('MEM:GET', false);
        if (this.closed) return;
        failures = ok ? 0 : failures + 1;
        await this.pause(this.pollIntervalMs - (Date.now() - started));
      }
      if (!this.closed) {
        this.io.problem(ErrorCode.BCC_TIMEOUT, `${FAILURES_BEFORE_REALIVE} requests in a row failed; sending ADMIN:ALIVE again`);
        this.io.count('reinitializations');
      }
    }
  }

  /** Cyclic mode: acknowledge what the ComDevice pushes; re-ALIVE after long silence. */
  private async cyclic(): Promise<void> {
    while (!this.closed) {
      const item = await this.next(this.responseTimeoutMs * 4);
      if (this.closed) return;
      if (item === null) return; // silence: start over with ALIVE
      if ('bad' in item) {
        this.io.write(Buffer.from([BCC_NAK]));
        continue;
      }
      await this.accept(item.frame, false);
    }
  }

  /**
   * Sends one request and takes in every block of its answer. True when the whole answer
   * arrived (and, for ALIVE, was acknowledged with GNACK).
   */
  private async exchange(request: string, expectAlive: boolean): Promise<boolean> {
    this.drop();
    this.io.write(encodeBccFrame(this.header, request, { stuffing: this.stuffing }));
    let naks = 0;
    let gotAlive = false;
    for (;;) {
      const item = await this.next(this.responseTimeoutMs);
      if (this.closed) return false;
      if (item === null) {
        this.io.count('timeouts');
        this.io.problem(ErrorCode.BCC_TIMEOUT, `no answer to ${request} within ${this.responseTimeoutMs} ms`);
        return false;
      }
      if ('bad' in item) {
        if (++naks > MAX_NAKS_PER_BLOCK) {
          this.io.problem(item.bad.code, `block refused ${MAX_NAKS_PER_BLOCK + 1} times; answer to ${request} given up`);
          return false;
        }
        // BCC: NAK asks the ComDevice to send the block again.
        this.io.count('naks');
        this.io.write(Buffer.from([BCC_NAK]));
        continue;
      }
      naks = 0;
      const decoded = await this.accept(item.frame, expectAlive);
      if (decoded.aliveAck) gotAlive = true;
      if (item.frame.final) return expectAlive ? gotAlive : true;
    }
  }

  /** Decodes, commits, then ACKs one block. */
  private async accept(frame: BccFrame, adoptBedId: boolean): Promise<BccDecoded> {
    const received = this.io.now();
    const decoded = decodeBccBlock(frame.info, { deviceId: this.io.deviceId, received, zone: this.io.zone, codes: this.codes });
    this.io.alive();
    this.io.count('frames');
    if (adoptBedId && decoded.aliveAck) {
      this.header = frame.header; // BCC: requests use the bed id the ComDevice answered with
      this.io.identify('bedId', frame.bedId);
    }
    for (const [key, value] of Object.entries(decoded.identity)) this.io.identify(key, value);
    for (const code of decoded.deviceErrors) {
      this.io.count('deviceErrors');
      this.io.problem(ErrorCode.BCC_DEVICE_ERROR, `the ComDevice answered GNERR ${code.slice(0, 8)}`);
    }
    if (decoded.personalDropped > 0) this.io.count('personalFieldsDropped', decoded.personalDropped);
    const measurements = [...decoded.readings];
    for (const state of decoded.states) {
      const key = `${state.deviceId}|${state.system}|${state.code}`;
      const text = state.text ?? String(state.value);
      if (this.lastState.get(key) === text) continue;
      // Bounded: one entry per pump parameter, at most 45 slots × the parameters of a pump.
      if (this.lastState.size < 10_000 || this.lastState.has(key)) this.lastState.set(key, text);
      measurements.push(state);
    }
    const rejects = [...this.takeRejects(), ...bccDeadLetters(frame, decoded.problems)];
    if (decoded.problems.length > 0) this.io.count('fieldProblems', decoded.problems.length);
    if (measurements.length > 0 || rejects.length > 0) await this.io.submit(measurements, rejects);
    await this.pause(this.ackDelayMs);
    if (!this.closed) this.io.write(Buffer.from([BCC_ACK]));
    return decoded;
  }

  private enqueue(item: Incoming): void {
    if (this.waiter) {
      this.deliver(item);
      return;
    }
    if (this.queue.length >= MAX_QUEUED_FRAMES) {
      this.queue.shift();
      this.io.count('droppedFrames');
    }
    this.queue.push(item);
  }

  /** Forgets blocks nobody asked for (late answers to a request that timed out). */
  private drop(): void {
    if (this.queue.length > 0) this.io.count('unexpectedFrames', this.queue.length);
    this.queue.length = 0;
  }

  private next(timeoutMs: number): Promise<Incoming | null> {
    const queued = this.queue.shift();
    if (queued) return Promise.resolve(queued);
    if (this.closed) return Promise.resolve(null);
    return new Promise((resolve) => {
      this.waiter = resolve;
      this.waitTimer = setTimeout(() => this.deliver(null), timeoutMs);
    });
  }

  private deliver(item: Incoming | null): void {
    const waiter = this.waiter;
    if (!waiter) return;
    this.waiter = null;
    if (this.waitTimer) clearTimeout(this.waitTimer);
    this.waitTimer = null;
    waiter(item);
  }

  private async pause(ms: number): Promise<void> {
    if (ms > 0 && !this.closed) await sleep(ms, this.closing.signal);
  }


  private takeRejects(): DeadLetterInput[] {
    const out = this.pendingRejects;
    this.pendingRejects = [];
    return out;
  }
}
