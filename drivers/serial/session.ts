/**
 * The contract between the serial transport (`driver.ts`: opens, reopens, paces reading) and a
 * device protocol (`masimo.ts`, `medibus.ts`, `bbraun.ts`: frames, requests, decoding). A
 * protocol creates one session per opened link; the session lives until that link closes.
 */
import type { TimeZoneRule } from '../../src/codec/hl7-time.js';
import type { ErrorCode } from '../../src/errors.js';
import type { Logger } from '../../src/log.js';
import type { DeadLetterInput } from '../../src/model/dead-letter.js';
import type { Measurement } from '../../src/model/measurement.js';
import type { FramerReject } from './framers.js';

/** What a session may do with its link and the gateway. */
export interface SessionIo {
  /** The registered id of the device (or of the SpaceCom, for B. Braun pumps). */
  readonly deviceId: string;
  /** Zone of the device clock, for devices that send local times without an offset. */
  readonly zone: TimeZoneRule;
  /** Bound to the driver and device. Log codes, sizes and locations; never values or raw bytes. */
  readonly log: Logger;
  /** Writes to the device. Ignored once the link has closed (the session is then ending). */
  write(bytes: Uint8Array): void;
  /**
   * Hands readings and refused input to the gateway. Reading from the link pauses until every
   * submission has settled (backpressure: the commit is durable before more is read).
   * Resolves true once committed, false when the store refused it (counted and logged here).
   * Never rejects.
   */
  submit(measurements: readonly Measurement[], rejects: readonly DeadLetterInput[]): Promise<boolean>;
  /** A valid frame arrived: the device is talking (state up, silence timer restarted). */
  alive(): void;
  /** A protocol-level problem for the status (`lastError`) and the log; no payload in `message`. */
  problem(code: ErrorCode, message: string): void;
  /** Adds to a status counter of the driver. */
  count(name: string, by?: number): void;
  /** Records what the device says about itself (serial number, model, version, bed id). */
  identify(key: string, value: string): void;
  /** Epoch ms (the arrival time of what is being decoded). */
  now(): number;
}

/** One protocol conversation over one opened link. */
export interface ProtocolSession {
  /** Bytes from the device, in order. */
  onData(chunk: Buffer): void;
  /** The link closed: stop timers and forget partial frames. Called once. */
  onClose(): void;
}

/** Line settings a protocol suggests when the configuration leaves them out. */
export interface LineDefaults {
  readonly baudRate: number;
  readonly dataBits: 5 | 6 | 7 | 8;
  readonly parity: 'none' | 'even' | 'odd' | 'mark' | 'space';
  readonly stopBits: 1 | 1.5 | 2;
}

/** A framer refusal as a dead letter: code, reason, byte range; the raw head is kept. */
export function framerDeadLetter(reject: FramerReject): DeadLetterInput {
  return {
    code: reject.code,
    reason: reject.reason,
    location: `bytes ${reject.offset}-${reject.offset + Math.max(0, reject.length - 1)}`,
    controlId: null,
    raw: reject.raw,
  };
}
