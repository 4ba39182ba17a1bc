import type { ErrorCode } from '../errors.js';

/**
 * Input the gateway could not accept, kept with the reason so nothing vanishes. `raw` is the
 * exact bytes (a whole message, one OBX segment, a garbage run); it is stored and can be
 * fetched through the API, and is never written to a log.
 */
export interface DeadLetterInput {
  readonly code: ErrorCode;
  /** Human-readable reason without personal data. */
  readonly reason: string;
  /** Where in the input: `OBX[4]-5`, `MSH-9`, `bytes 0-120`; '' when not applicable. */
  readonly location: string;
  /** Control id of the message it came in (MSH-10), when known. */
  readonly controlId: string | null;
  readonly raw: Uint8Array;
}

export interface DeadLetter {
  readonly id: number;
  /** Arrival time, epoch ms. */
  readonly received: number;
  /** Where it came from: `mllp 10.1.2.3:5123`, `serial /dev/ttyUSB0`, … */
  readonly source: string;
  readonly code: string;
  readonly reason: string;
  readonly location: string;
  readonly controlId: string | null;
  readonly size: number;
}
