/**
 * Dräger MEDIBUS (Evita, Savina, V500, Apollo, Fabius …): RS-232, request/response.
 *
 * MEDIBUS: command `ESC cmd [args] cs cs CR`, response `SOH cmd-echo data cs cs CR`; the
 * checksum is the low byte of the sum of every byte from ESC/SOH through the last data byte,
 * as two upper-case hex characters. Communication starts with ICC (0x51) and its echo; the
 * link is dropped by the device after 3 s without traffic, so the host sends NOP (0x30) when
 * idle; one request may be outstanding at a time (a second one is dropped by the device); a
 * command is answered within 10 s. Either side may send commands: the device's are answered.
 * Measured data (0x24 code page 1, 0x2B code page 2): repeated items of 2 hex code characters +
 * 4 value characters. Alarms (0x27, 0x2E): items of priority (1) + code (2 hex) + phrase (12).
 * Device identification (0x52): id (4), name in apostrophes, revision.
 * Sources: Dräger RS 232 MEDIBUS Protocol Definition rev. 4.03, OpenICE `Medibus.java`,
 * VSCaptureDrgVent; research/device-formats.md §5.
 */
import { ErrorCode } from '../../src/errors.js';
import type { VendorCodes } from '../../src/mappings.js';
import type { DeadLetterInput } from '../../src/model/dead-letter.js';
import { measurement, Quality, type Measurement } from '../../src/model/measurement.js';
import {
  DEFAULT_MEDIBUS_MAX_FRAME_BYTES,
  encodeMedibusFrame,
  hexByte,
  MEDIBUS_DC1,
  MEDIBUS_DC3,
  MedibusFramer,
  type MedibusFrame,
} from './framers.js';
import { framerDeadLetter, type LineDefaults, type ProtocolSession, type SessionIo } from './session.js';
import { sleep } from '../../src/reconnect.js';
import { vendorMeasurement } from './vendor-measurement.js';

/** Coding system of MEDIBUS data codes that have no MDC code (`MEDIBUS:cp1:B5`). */
export const MEDIBUS_SYSTEM = 'MEDIBUS';

/** Evita 4 / MEDIBUS.X ventilators: 19200 baud, 8 data bits, even parity, 1 stop bit. */
export const MEDIBUS_LINE_DEFAULTS: LineDefaults = { baudRate: 19200, dataBits: 8, parity: 'even', stopBits: 1 };

/** MEDIBUS command bytes used here. */
export const MedibusCommand = {
  MEASURED_DATA_CP1: 0x24,
  LOW_ALARM_LIMITS_CP1: 0x25,
  HIGH_ALARM_LIMITS_CP1: 0x26,
  ALARMS_CP1: 0x27,
  DATE_TIME: 0x28,
  DEVICE_SETTINGS: 0x29,
  TEXT_MESSAGES: 0x2a,
  MEASURED_DATA_CP2: 0x2b,
  ALARMS_CP2: 0x2e,
  NOP: 0x30,
  TIME_CHANGED: 0x49,
  CONFIGURE_RESPONSE: 0x4a,
  ICC: 0x51,
  DEVICE_ID: 0x52,
  STOP: 0x55,
} as const;

/** One active alarm as the device reports it. */
export interface MedibusAlarm {
  readonly codepage: 1 | 2;
  /** Alarm code, 2 upper-case hex characters. */
  readonly code: string;
  /** Priority digit as sent (higher is more urgent on Dräger devices). */
  readonly priority: number;
  /** The 12-character alarm phrase, trimmed. */
  readonly phrase: string;
}

/** A problem in one response; the frame is kept as its dead letter. */
export interface MedibusProblem {
  readonly code: ErrorCode;
  readonly reason: string;
  /** `cp1:EB`, `alarm item 3`, `device id`. */
  readonly location: string;
}

/** What one response frame became. */
export interface MedibusDecoded {
  readonly measurements: Measurement[];
  readonly alarms: MedibusAlarm[];
  readonly identity: Readonly<Record<string, string>>;
  readonly problems: MedibusProblem[];
}

/** What `decodeMedibusResponse` needs besides the frame. */
export interface MedibusDecodeContext {
  readonly deviceId: string;
  /** Reading time: MEDIBUS data carries no time stamps, so this is the arrival time. */
  readonly time: number;
  readonly tzOffset: number;
  readonly codes: VendorCodes;
}

const NUMBER = /^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$/;
const ABSENT = /^[-\s.]*$/;

/**
 * Decodes the data of one response frame (checksum already verified by the framer). Pure.
 * Responses this gateway does not interpret (alarm limits, settings, text, date/time, echoes)
 * give nothing and no problem.
 */
export function decodeMedibusResponse(frame: MedibusFrame, ctx: MedibusDecodeContext): MedibusDecoded {
  const out: MedibusDecoded = { measurements: [], alarms: [], identity: {}, problems: [] };
  switch (frame.code) {
    case MedibusCommand.MEASURED_DATA_CP1:
      decodeMeasuredData(frame.data, 1, ctx, out);
      break;
    case MedibusCommand.MEASURED_DATA_CP2:
      decodeMeasuredData(frame.data, 2, ctx, out);
      break;
    case MedibusCommand.ALARMS_CP1:
      decodeAlarms(frame.data, 1, out);
      break;
    case MedibusCommand.ALARMS_CP2:
      decodeAlarms(frame.data, 2, out);
      break;
    case MedibusCommand.DEVICE_ID:
      decodeDeviceId(frame.data, out);
      break;
    default:
      break;
  }
  return out;
}

function decodeMeasuredData(data: Buffer, codepage: 1 | 2, ctx: MedibusDecodeContext, out: MedibusDecoded): void {
  // MEDIBUS: measured data = items of 2 ASCII-hex code characters + 4 value characters.
  const items = Math.floor(data.length / 6);
  for (let i = 0; i < items; i++) {
    const at = i * 6;
    const codeText = data.toString('latin1', at, at + 2).toUpperCase();
    if (!/^[0-9A-F]{2}$/.test(codeText)) {
      out.problems.push({ code: ErrorCode.MEDIBUS_BAD_DATA, reason: `item ${i + 1} has no hex data code`, location: `cp${codepage} item ${i + 1}` });
      continue;
    }
    const key = `cp${codepage}:${codeText}`;
    const raw = data.toString('latin1', at + 2, at + 6).trim();
    const def = ctx.codes.byCode.get(key);
    let value = Number.NaN;
    let flags = 0;
    if (ABSENT.test(raw)) {
      flags = Quality.INVALID; // blanks or dashes: the device has no value for this code now
    } else if (NUMBER.test(raw)) {
      value = Number(raw);
    } else {
      out.problems.push({ code: ErrorCode.MEDIBUS_BAD_DATA, reason: `value of ${key} is not a number`, location: key });
      continue;
    }
    out.measurements.push(vendorMeasurement(MEDIBUS_SYSTEM, ctx.deviceId, key, def, value, null, ctx.time, ctx.tzOffset, flags));
  }
  if (data.length % 6 !== 0) {
    out.problems.push({
      code: ErrorCode.MEDIBUS_BAD_DATA,
      reason: `${data.length % 6} trailing byte(s) do not make a 6-character item`,
      location: `cp${codepage} item ${items + 1}`,
    });
  }
}

function decodeAlarms(data: Buffer, codepage: 1 | 2, out: MedibusDecoded): void {
  // MEDIBUS: alarm item = priority (1 char) + alarm code (2 hex) + alarm phrase (12 chars).
  const items = Math.floor(data.length / 15);
  for (let i = 0; i < items; i++) {
    const at = i * 15;
    const priority = data[at]! - 0x30;
    const code = data.toString('latin1', at + 1, at + 3).toUpperCase();
    if (priority < 0 || priority > 9 || !/^[0-9A-F]{2}$/.test(code)) {
      out.problems.push({ code: ErrorCode.MEDIBUS_BAD_DATA, reason: `alarm item ${i + 1} has no priority digit and hex code`, location: `alarm cp${codepage} item ${i + 1}` });
      continue;
    }
    out.alarms.push({ codepage, code, priority, phrase: data.toString('latin1', at + 3, at + 15).trim() });
  }
  if (data.length % 15 !== 0) {
    out.problems.push({
      code: ErrorCode.MEDIBUS_BAD_DATA,
      reason: `${data.length % 15} trailing byte(s) do not make a 15-character alarm item`,
      location: `alarm cp${codepage} item ${items + 1}`,
    });
  }
}

function decodeDeviceId(data: Buffer, out: MedibusDecoded): void {
  // MEDIBUS: device id number (4 chars), device name between apostrophes, revision.
  if (data.length === 0) return; // an empty identification is a valid answer
  const text = data.toString('latin1');
  const match = /^(.{4})'([^']*)'(.*)$/.exec(text);
  if (!match) {
    out.problems.push({ code: ErrorCode.MEDIBUS_BAD_DATA, reason: 'device identification is not id, \'name\', revision', location: 'device id' });
    return;
  }
  const identity = out.identity as Record<string, string>;
  identity.idNumber = match[1]!.trim();
  if (match[2]) identity.model = match[2].trim();
  if (match[3]?.trim()) identity.revision = match[3].trim();
}

/** The measurement a MEDIBUS alarm becomes (`MEDIBUS alarm1:1A`, value = priority). */
export function medibusAlarmMeasurement(alarm: MedibusAlarm, active: boolean, ctx: Omit<MedibusDecodeContext, 'codes'>): Measurement {
  return measurement({
    deviceId: ctx.deviceId,
    code: `alarm${alarm.codepage}:${alarm.code}`,
    system: MEDIBUS_SYSTEM,
    refid: '',
    value: active ? alarm.priority : Number.NaN,
    text: active ? alarm.phrase : `${alarm.phrase} (ended)`,
    unit: '',
    time: ctx.time,
    tzOffset: ctx.tzOffset,
    flags: active ? Quality.ABNORMAL : 0,
    containment: '',
    patient: null,
    location: null,
  });
}

/** A MEDIBUS problem of a frame as a dead letter; the frame is rebuilt byte for byte. */
export function medibusDeadLetter(frame: MedibusFrame, problem: MedibusProblem): DeadLetterInput {
  return {
    code: problem.code,
    reason: problem.reason,
    location: `bytes ${frame.offset}-${frame.offset + frame.length - 1}, ${problem.location}`,
    controlId: null,
    raw: encodeMedibusFrame(frame.kind, frame.code, frame.data),
  };
}

// ── session ─────────────────────────────────────────────────────────────────

export interface MedibusOptions {
  /** Time between the starts of two poll cycles (ms). Default 1000. */
  readonly pollIntervalMs?: number;
  /** Also poll code page 2 (0x2B) and its alarms (0x2E). Default true. */
  readonly codepage2?: boolean;
  /** Poll current alarms (0x27, and 0x2E with code page 2). Default true. */
  readonly alarms?: boolean;
  /**
   * Wait this long for an answer (ms). Default 3000: MEDIBUS allows a device 10 s, but a
   * ventilator that has not answered in 3 s has also dropped the link by its own keep-alive
   * rule, so waiting longer only delays the re-initialisation.
   */
  readonly responseTimeoutMs?: number;
  /** Send NOP after this long without sending anything (ms). Default 2000: under the 3 s limit. */
  readonly keepAliveMs?: number;
  readonly maxFrameBytes?: number;
}

const DEFAULTS = {
  pollIntervalMs: 1000,
  responseTimeoutMs: 3000,
  keepAliveMs: 2000,
};

/** Failed requests in a row (timeouts, bad checksums) before ICC is sent again. */
const FAILURES_BEFORE_REINIT = 3;
/** Wait after a failed ICC before the next; the device may be booting. */
const ICC_RETRY_MS = 1000;

/** Our own identification, sent when the device asks (0x52); the OpenICE convention. */
const OUR_DEVICE_ID = `0161'mdi-gateway'${'01.00'.padEnd(11, ' ')}`;

interface Outstanding {
  readonly code: number;
  readonly timer: NodeJS.Timeout;
  readonly resolve: (frame: MedibusFrame | null) => void;
}

/**
 * The host side of a MEDIBUS link. Per link: ICC until echoed, device identification, then
 * poll cycles (code page 1, code page 2, alarms), one request outstanding at a time; NOP when
 * idle for `keepAliveMs`; device commands answered at once. After a bad checksum the framer is
 * already resynchronised at the next start byte; the request it answered is failed at once
 * (not left to time out) and the cycle goes on. Repeated failures send ICC again.
 * Readings of a response are committed before the next request is sent.
 */
export class MedibusSession implements ProtocolSession {
  private readonly framer: MedibusFramer;
  private readonly pollIntervalMs: number;
  private readonly responseTimeoutMs: number;
  private readonly keepAliveMs: number;
  private readonly cycle: number[];
  private closed = false;
  private outstanding: Outstanding | null = null;
  /** Callers waiting for the one request slot, in order. */
  private readonly slotWaiters: (() => void)[] = [];
  private slotBusy = false;
  /** DC3 from the device: do not send until DC1. */
  private paused = false;
  private readonly resumeWaiters: (() => void)[] = [];
  private lastSent = 0;
  private readonly keepAliveTimer: NodeJS.Timeout;
  /** Aborted when the link closes: ends any pause at once. */
  private readonly closing = new AbortController();
  private activeAlarms = new Map<string, MedibusAlarm>();
  private pendingRejects: DeadLetterInput[] = [];

  constructor(
    private readonly io: SessionIo,
    private readonly codes: VendorCodes,
    options: MedibusOptions = {},
  ) {
    this.pollIntervalMs = options.pollIntervalMs ?? DEFAULTS.pollIntervalMs;
    this.responseTimeoutMs = options.responseTimeoutMs ?? DEFAULTS.responseTimeoutMs;
    this.keepAliveMs = options.keepAliveMs ?? DEFAULTS.keepAliveMs;
    const cp2 = options.codepage2 ?? true;
    const alarms = options.alarms ?? true;
    this.cycle = [MedibusCommand.MEASURED_DATA_CP1];
    if (cp2) this.cycle.push(MedibusCommand.MEASURED_DATA_CP2);
    if (alarms) this.cycle.push(MedibusCommand.ALARMS_CP1);
    if (alarms && cp2) this.cycle.push(MedibusCommand.ALARMS_CP2);
    this.framer = new MedibusFramer({
      maxFrameBytes: options.maxFrameBytes ?? DEFAULT_MEDIBUS_MAX_FRAME_BYTES,
      onFrame: (frame) => this.onFrame(frame),
      onReject: (reject) => {
        this.io.count('rejected');
        this.pendingRejects.push(framerDeadLetter(reject));
        if (reject.code === ErrorCode.MEDIBUS_BAD_CHECKSUM && this.outstanding) {
          // MEDIBUS: resync after a bad checksum. The framer already waits for the next start
          // byte; the answer we were waiting for is the frame that failed, so fail it now.
          this.finishOutstanding(null);
        }
      },
      onFlowControl: (byte) => this.onFlowControl(byte),
    });
    // Keep-alive runs beside the poll loop, so a slow commit can never let the link lapse.
    this.keepAliveTimer = setInterval(() => this.keepAlive(), Math.max(50, Math.floor(this.keepAliveMs / 4)));
    this.keepAliveTimer.unref();
    void this.run();
  }

  onData(chunk: Buffer): void {
    this.framer.push(chunk);
    this.flushRejects();
  }

  onClose(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.keepAliveTimer);
    this.finishOutstanding(null);
    this.closing.abort();
    for (const waiter of this.slotWaiters.splice(0)) waiter();
    for (const waiter of this.resumeWaiters.splice(0)) waiter();
    const pending = this.framer.pending();
    if (pending > 0) this.io.count('truncatedBytes', pending);
    // Refused frames still waiting for a response to ride with are kept, not lost.
    if (this.pendingRejects.length > 0) void this.io.submit([], this.takeRejects());
  }

  private async run(): Promise<void> {
    while (!this.closed) {
      // MEDIBUS: initialise communication; the device echoes ICC.
      const icc = await this.request(MedibusCommand.ICC);
      if (this.closed) return;
      if (icc === null) {
        await this.pause(ICC_RETRY_MS);
        continue;
      }
      this.io.count('initializations');
      const id = await this.request(MedibusCommand.DEVICE_ID);
      if (id) await this.handle(id);
      let failures = 0;
      while (!this.closed && failures < FAILURES_BEFORE_REINIT) {
        const started = Date.now();
        for (const code of this.cycle) {
          const frame = await this.request(code);
          if (this.closed) return;
          if (frame === null) {
            if (++failures >= FAILURES_BEFORE_REINIT) break;
            continue;
          }
          failures = 0;
          await this.handle(frame);
        }
        if (failures >= FAILURES_BEFORE_REINIT) break;
        await this.pause(this.pollIntervalMs - (Date.now() - started));
      }
      if (!this.closed) {
        this.io.problem(ErrorCode.MEDIBUS_TIMEOUT, `${FAILURES_BEFORE_REINIT} requests in a row failed; initialising communication again`);
        this.io.count('reinitializations');
      }
    }
  }

  /** Decodes a response and commits what it holds before the caller sends the next request. */
  private async handle(frame: MedibusFrame): Promise<void> {
    const time = this.io.now();
    const ctx = { deviceId: this.io.deviceId, time, tzOffset: this.io.zone.offsetAt(time), codes: this.codes };
    const decoded = decodeMedibusResponse(frame, ctx);
    for (const [key, value] of Object.entries(decoded.identity)) this.io.identify(key, value);
    const measurements = decoded.measurements;
    if (frame.code === MedibusCommand.ALARMS_CP1 || frame.code === MedibusCommand.ALARMS_CP2) {
      measurements.push(...this.alarmChanges(frame.code === MedibusCommand.ALARMS_CP1 ? 1 : 2, decoded.alarms, ctx));
    }
    const rejects = [...this.takeRejects(), ...decoded.problems.map((p) => medibusDeadLetter(frame, p))];
    if (decoded.problems.length > 0) this.io.count('fieldProblems', decoded.problems.length);
    if (measurements.length > 0 || rejects.length > 0) await this.io.submit(measurements, rejects);
  }

  /** Alarms of one code page that started or ended since the last poll. */
  private alarmChanges(codepage: 1 | 2, alarms: MedibusAlarm[], ctx: { deviceId: string; time: number; tzOffset: number }): Measurement[] {
    const out: Measurement[] = [];
    const now = new Map<string, MedibusAlarm>();
    for (const alarm of alarms) now.set(`${codepage}:${alarm.code}`, alarm);
    for (const [key, alarm] of now) {
      const before = this.activeAlarms.get(key);
      if (!before || before.priority !== alarm.priority || before.phrase !== alarm.phrase) {
        out.push(medibusAlarmMeasurement(alarm, true, ctx));
      }
    }
    for (const [key, alarm] of this.activeAlarms) {
      if (alarm.codepage === codepage && !now.has(key)) out.push(medibusAlarmMeasurement(alarm, false, ctx));
    }
    for (const key of [...this.activeAlarms.keys()]) if (key.startsWith(`${codepage}:`)) this.activeAlarms.delete(key);
    for (const [key, alarm] of now) this.activeAlarms.set(key, alarm);
    return out;
  }

  /** Sends one command and waits for its echo; null on timeout, bad checksum or close. */
  private async request(code: number, args = ''): Promise<MedibusFrame | null> {
    await this.acquireSlot();
    try {
      if (this.paused) await new Promise<void>((resolve) => this.resumeWaiters.push(resolve));
      if (this.closed) return null;
      const answer = new Promise<MedibusFrame | null>((resolve) => {
        const timer = setTimeout(() => {
          this.io.count('timeouts');
          this.io.problem(ErrorCode.MEDIBUS_TIMEOUT, `no answer to command 0x${hexByte(code)} within ${this.responseTimeoutMs} ms`);
          this.finishOutstanding(null);
        }, this.responseTimeoutMs);
        this.outstanding = { code, timer, resolve };
      });
      this.send(encodeMedibusFrame('command', code, args));
      return await answer;
    } finally {
      this.releaseSlot();
    }
  }

  private send(bytes: Buffer): void {
    this.lastSent = Date.now();
    this.io.write(bytes);
  }

  private finishOutstanding(frame: MedibusFrame | null): void {
    const outstanding = this.outstanding;
    if (!outstanding) return;
    this.outstanding = null;
    clearTimeout(outstanding.timer);
    outstanding.resolve(frame);
  }

  private acquireSlot(): Promise<void> {
    if (!this.slotBusy) {
      this.slotBusy = true;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.slotWaiters.push(resolve));
  }

  private releaseSlot(): void {
    const next = this.slotWaiters.shift();
    if (next) next();
    else this.slotBusy = false;
  }

  private keepAlive(): void {
    if (this.closed || this.slotBusy || this.paused) return;
    if (Date.now() - this.lastSent < this.keepAliveMs) return;
    // MEDIBUS: the device drops the link after 3 s without traffic; NOP keeps it.
    this.io.count('keepAlives');
    void this.request(MedibusCommand.NOP);
  }

  private onFrame(frame: MedibusFrame): void {
    if (frame.kind === 'command') {
      this.answerCommand(frame);
      return;
    }
    const outstanding = this.outstanding;
    if (outstanding && frame.code === outstanding.code) {
      this.io.alive();
      this.io.count('frames');
      this.finishOutstanding(frame);
      return;
    }
    // A late answer to a request that already timed out, or an answer to nothing.
    this.io.count('unexpectedResponses');
  }

  /** MEDIBUS: both sides are masters; a device command is answered at once. */
  private answerCommand(frame: MedibusFrame): void {
    this.io.alive();
    this.io.count('deviceCommands');
    switch (frame.code) {
      case MedibusCommand.DEVICE_ID:
        this.send(encodeMedibusFrame('response', frame.code, OUR_DEVICE_ID));
        break;
      case MedibusCommand.STOP:
        this.send(encodeMedibusFrame('response', frame.code));
        // The device ends the conversation; requests now time out and ICC starts it again.
        break;
      default:
        // ICC, NOP, time changed and requests we have no data for: an empty echo.
        this.send(encodeMedibusFrame('response', frame.code));
        break;
    }
  }

  private onFlowControl(byte: number): void {
    if (byte === MEDIBUS_DC3) {
      this.paused = true;
    } else if (byte === MEDIBUS_DC1) {
      this.paused = false;
      for (const waiter of this.resumeWaiters.splice(0)) waiter();
    }
  }

  /** Waits `ms` (or until close). */
  private async pause(ms: number): Promise<void> {
    if (ms > 0 && !this.closed) await sleep(ms, this.closing.signal);
  }


  private takeRejects(): DeadLetterInput[] {
    const out = this.pendingRejects;
    this.pendingRejects = [];
    return out;
  }

  /** Refused frames are committed as they come when no response is being handled. */
  private flushRejects(): void {
    if (this.pendingRejects.length === 0 || this.outstanding) return;
    void this.io.submit([], this.takeRejects());
  }
}
