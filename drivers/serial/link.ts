/**
 * A link is an open byte stream to one device: a serial port, or a TCP connection to a
 * terminal server or a B. Braun ComDevice. The driver opens links through a `LinkOpener` and
 * reopens them when they close; protocols never see which kind they talk over.
 *
 * Contract (the driver relies on it):
 * - `open()` resolves with an open link or rejects with an error that has a stable `code`
 *   (`MDI_ERR_SERIAL_PORT_NOT_FOUND`, `MDI_ERR_SERIAL_OPEN_FAILED`) and a message without
 *   payload; it rejects promptly when `signal` aborts (stop during connect).
 * - After open, `onData` delivers bytes in order and `onClose` is called exactly once, whether
 *   the peer vanished (USB adapter pulled, socket reset) or `close()` was called.
 * - `pause()` stops `onData` until `resume()` (backpressure); bytes wait in the OS buffer.
 */
import { ErrorCode, GatewayError } from '../../src/errors.js';

/** An open link (see the contract above). */
export interface Link {
  /** Queues bytes for the device. Write errors surface as a close, never as a throw. */
  write(bytes: Uint8Array): void;
  pause(): void;
  resume(): void;
  /** Closes the link; resolves once `onClose` has been called. Idempotent. */
  close(): Promise<void>;
  /**
   * True when what the link was opened on is gone or replaced (the port's device node vanished
   * or is another node now) although no close was reported: some adapters (and pty pairs) die
   * silently. Absent for links that always report their close (TCP).
   */
  vanished?(): boolean;
}

/** What a link reports to the driver. */
export interface LinkEvents {
  onData(chunk: Buffer): void;
  /** `error` is null for a close we asked for. */
  onClose(error: Error | null): void;
}

/** Opens links to one address; the driver calls `open` again after each close. */
export interface LinkOpener {
  /** What the status shows as the port: `/dev/ttyUSB0` or `tcp 10.0.0.5:4001`. */
  readonly address: string;
  /** Line settings in words, for logs: `9600 8N1`, `tcp`. */
  readonly settings: string;
  open(events: LinkEvents, signal: AbortSignal): Promise<Link>;
}

/** A link-level error with a stable code (what `lastError` shows). */
export class LinkError extends GatewayError {
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'LinkError';
  }
}

/** The error an aborted open rejects with. */
export function abortedError(): Error {
  const err = new Error('stopped while opening');
  err.name = 'AbortError';
  return err;
}
