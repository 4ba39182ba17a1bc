import { createHash } from 'node:crypto';
import type { Logger } from './log.js';
import type { DeadLetterInput } from './model/dead-letter.js';
import type { Measurement } from './model/measurement.js';
import type { CommitResult } from './store/store.js';

/**
 * The driver contract. A driver owns one transport and one device protocol: it turns bytes
 * into Measurements and hands them to its context. It knows nothing of FHIR, stores or the
 * registry.
 *
 * State rules:
 * - `start()` begins listening/connecting and resolves when the driver is running. Transport
 *   failures after that never reject anything: the driver reconnects by itself and reports
 *   them through `status()`. `start()` rejects only for configuration it cannot use at all
 *   (a port already taken, a path that can never be a device).
 * - `stop()` is idempotent and resolves when the transport is closed and every submitted batch
 *   has settled (its ACK written, when the protocol has ACKs).
 */
export interface Driver {
  readonly name: string;
  start(): Promise<void>;
  stop(): Promise<void>;
  status(): DriverStatus;
}

export const DriverState = {
  STARTING: 'starting',
  UP: 'up',
  DOWN: 'down',
  STOPPED: 'stopped',
} as const;
export type DriverState = (typeof DriverState)[keyof typeof DriverState];

export interface DriverStatus {
  readonly name: string;
  readonly kind: string;
  readonly state: DriverState;
  /** Error code (MDI_ERR_…) or system error text of the last failure, without payloads. */
  readonly lastError: string | null;
  /** Epoch ms of the last state change. */
  readonly since: number;
  readonly counters: Readonly<Record<string, number>>;
}

/**
 * Who sent a message, its id, and a digest of its bytes. A resend (same sender, id and bytes)
 * is a duplicate and is answered without storing it again. A different message that reuses an
 * id — a device whose counter restarted after a reboot, a test tool that always sends
 * `MSGID1234` — is NOT a duplicate: dropping it would lose readings.
 */
export interface MessageIdentity {
  /** HL7: MSH-3 and MSH-4 (HL7 v2.6 2.10.3: MSH-10 is unique per sending system). */
  readonly sender: string;
  /** HL7: MSH-10. */
  readonly controlId: string;
  /** A hash of the message bytes (`messageDigest()`). */
  readonly digest: string;
}

/** The digest of a message's bytes for `MessageIdentity` (SHA-1: fast, and no security role here). */
export function messageDigest(bytes: Uint8Array): string {
  return createHash('sha1').update(bytes).digest('base64url');
}

/** One decoded piece of input, ready to be normalized and committed. */
export interface IngestBatch {
  /** Arrival time, epoch ms. */
  readonly received: number;
  /** Where it came from: `mllp 10.1.2.3:5123`. */
  readonly source: string;
  /** Message identity for duplicate detection, or null when the input has none. */
  readonly message: MessageIdentity | null;
  readonly measurements: readonly Measurement[];
  /** Parts of the input the driver already refused (a bad OBX row), kept as dead letters. */
  readonly rejects: readonly DeadLetterInput[];
}

/** What a driver may do with the gateway. */
export interface DriverContext {
  /** Already bound to the driver's name. */
  readonly log: Logger;
  /** IANA zone for device times sent without a UTC offset. */
  readonly timezone: string;
  /**
   * Normalizes and commits the batch. Resolves after the commit is durable: only then may a
   * driver acknowledge the input to the device (MLLP ACK) or read more (backpressure).
   * Rejects with MDI_ERR_STORE_FAILED when nothing was stored (answer "retry later").
   */
  submit(batch: IngestBatch): Promise<CommitResult>;
}

export interface DriverFactory<O> {
  readonly kind: string;
  create(options: O, ctx: DriverContext): Driver;
}
