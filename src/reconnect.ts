/**
 * The one reconnect policy of the gateway: exponential backoff with jitter and a cap. Every
 * transport that opens something that can vanish (a serial port, a TCP terminal server, an MLLP
 * peer in client mode, an MQTT broker) waits with `Backoff` between attempts.
 *
 * Why these rules:
 * - Exponential: a port that is gone (USB adapter pulled) is not hammered with open() calls,
 *   and the log is not flooded with one failure every few milliseconds.
 * - Cap: a device that comes back after an hour is found again within `maxDelayMs`, not after an
 *   ever-growing wait.
 * - Jitter: after a power blip every device on a terminal server drops at once; without jitter
 *   they would all retry in lock-step and keep colliding.
 * The defaults are undici's (500 ms × 2 up to 30 s), with ±20 % jitter.
 */

/** How long to wait between attempts. All times in milliseconds. */
export interface BackoffOptions {
  /** Delay after the first failure. */
  readonly initialDelayMs: number;
  /** No delay is ever longer than this. */
  readonly maxDelayMs: number;
  /** Growth of the delay per consecutive failure (2 doubles it). */
  readonly factor: number;
  /** Fraction of each delay that is random: 0.2 gives a delay in [0.8 d, 1.2 d] (then capped). */
  readonly jitter: number;
}

/** 500 ms, doubling, capped at 30 s, ±20 % jitter. */
export const DEFAULT_BACKOFF: BackoffOptions = Object.freeze({
  initialDelayMs: 500,
  maxDelayMs: 30_000,
  factor: 2,
  jitter: 0.2,
});

/**
 * The delay before attempt `failures + 1`, after `failures` consecutive failures (≥ 1).
 * `random` returns a number in [0, 1); tests pass a fixed one.
 * @throws RangeError for options that would make no sense (negative delays, factor < 1,
 *   jitter outside [0, 1]); they are configuration errors, caught at start.
 */
export function backoffDelay(failures: number, options: BackoffOptions, random: () => number = Math.random): number {
  checkBackoff(options);
  const exponent = Math.max(0, failures - 1);
  // Cap the exponent too: factor ** 1000 is Infinity, and Infinity × 0 jitter is NaN.
  const base = Math.min(options.maxDelayMs, options.initialDelayMs * options.factor ** Math.min(exponent, 64));
  const spread = base * options.jitter;
  const delay = base - spread + random() * 2 * spread;
  return Math.round(Math.min(options.maxDelayMs, Math.max(0, delay)));
}

/** Throws a RangeError naming the option when a backoff setting cannot work. */
export function checkBackoff(options: BackoffOptions): void {
  if (!(options.initialDelayMs >= 0)) throw new RangeError('"initialDelayMs" must be ≥ 0');
  if (!(options.maxDelayMs >= options.initialDelayMs)) throw new RangeError('"maxDelayMs" must be ≥ "initialDelayMs"');
  if (!(options.factor >= 1)) throw new RangeError('"factor" must be ≥ 1');
  if (!(options.jitter >= 0 && options.jitter <= 1)) throw new RangeError('"jitter" must be between 0 and 1');
}

/**
 * Consecutive-failure counter with the delays of `backoffDelay`. Call `next()` after each
 * failure for the time to wait, and `reset()` once the connection has proved itself (for a
 * device: the first valid frame after opening, not merely a successful open — a port that
 * opens and drops at once must keep backing off).
 */
export class Backoff {
  private failures = 0;

  constructor(
    private readonly options: BackoffOptions = DEFAULT_BACKOFF,
    private readonly random: () => number = Math.random,
  ) {
    checkBackoff(options);
  }

  /** Records a failure and returns how long to wait before the next attempt. */
  next(): number {
    this.failures++;
    return backoffDelay(this.failures, this.options, this.random);
  }

  /** The connection works again: the next failure waits `initialDelayMs` again. */
  reset(): void {
    this.failures = 0;
  }

  /** Consecutive failures since the last reset. */
  get attempts(): number {
    return this.failures;
  }
}

/**
 * Waits `ms`, or less when `signal` aborts first. Resolves true when the full time passed,
 * false when aborted; never rejects, so a stop during a backoff wait is an ordinary exit.
 */
export function sleep(ms: number, signal?: AbortSignal): Promise<boolean> {
  if (signal?.aborted) return Promise.resolve(false);
  return new Promise((resolve) => {
    const onAbort = () => {
      clearTimeout(timer);
      resolve(false);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve(true);
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
