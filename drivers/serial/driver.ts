/**
 * The serial device driver: one device, one link (serial port or TCP), one protocol session per
 * opened link. It owns opening and reopening (with `src/reconnect.ts` backoff), backpressure
 * (reading pauses while readings are being committed), the device's connection state, its last
 * error and counters.
 *
 * State (what `/api/status` shows):
 * - `starting`: never talked to the device since `start()`;
 * - `up`: the link is open and the device sent a valid frame within `silenceTimeoutMs`;
 * - `down`: the port is missing or closed (reopened with backoff), or open but silent;
 * - `stopped`.
 * Every up → down → up is a gap: `lastGap` says when the readings stopped and resumed.
 *
 * Which errors mean what: an open failure or a close is a link error (`MDI_ERR_SERIAL_*`,
 * reopen with backoff); a refused frame is input (counted, dead-lettered, the link stays);
 * a store failure loses that batch (counted, `MDI_ERR_STORE_FAILED`), the link stays.
 */
import type { TimeZoneRule } from '../../src/codec/hl7-time.js';
import { DriverState, type Driver, type DriverContext, type DriverStatus } from '../../src/driver.js';
import { ErrorCode, GatewayError } from '../../src/errors.js';
import type { DeadLetterInput } from '../../src/model/dead-letter.js';
import type { Measurement } from '../../src/model/measurement.js';
import { Backoff, DEFAULT_BACKOFF, sleep, type BackoffOptions } from '../../src/reconnect.js';
import type { Link, LinkOpener } from './link.js';
import type { ProtocolSession, SessionIo } from './session.js';

/** The protocols a serial device can speak. */
export type SerialProtocolName = 'masimo' | 'medibus' | 'bbraun';

/** How `serialDriver.create` wires one device (built from its configuration in index.ts). */
export interface SerialDriverOptions {
  /** Registered id of the device; readings carry it (B. Braun pumps add `/pump-<slot>`). */
  readonly deviceId: string;
  readonly protocol: SerialProtocolName;
  readonly link: LinkOpener;
  /** Builds the protocol conversation for one opened link. */
  readonly createSession: (io: SessionIo) => ProtocolSession;
  /** Zone of the device clock. */
  readonly zone: TimeZoneRule;
  /** No valid frame for this long (ms) while the link is open: the device counts as down. */
  readonly silenceTimeoutMs: number;
  readonly backoff?: BackoffOptions;
}

/** `serial:<deviceId>`. */
export function serialDriverName(deviceId: string): string {
  return `serial:${deviceId}`;
}

/** A stretch without readings: from the moment the device went down to when it came back. */
export interface SerialGap {
  /** Epoch ms the device went down. */
  readonly from: number;
  /** Epoch ms it was up again; null while still down. */
  readonly to: number | null;
  readonly ms: number | null;
}

/** The status of a serial device (an extension of `DriverStatus`, shown as is by the API). */
export interface SerialDriverStatus extends DriverStatus {
  readonly deviceId: string;
  readonly protocol: SerialProtocolName;
  /** The port path, or `tcp host:port`. */
  readonly port: string;
  /** `9600 8N1`, `tcp`. */
  readonly settings: string;
  readonly link: 'closed' | 'opening' | 'open';
  /** Why the last failure happened, in words (no payload). */
  readonly lastErrorMessage: string | null;
  readonly lastErrorAt: number | null;
  /** Epoch ms of the last committed reading. */
  readonly lastReadingAt: number | null;
  /** Epoch ms of the last valid frame. */
  readonly lastFrameAt: number | null;
  /** Epoch ms the link opened; null while closed. */
  readonly connectedSince: number | null;
  /** The current gap (to = null) or the last one. */
  readonly lastGap: SerialGap | null;
  /** What the device said about itself (serial number, model, version, bed id). */
  readonly device: Readonly<Record<string, string>>;
}

/** Chunks that arrive before the session exists are replayed; a handful at most. */
const MAX_EARLY_CHUNKS = 64;
/** The same error is logged at most this often (ms); the status always has the latest. */
const LOG_REPEAT_MS = 60_000;
/** Identity keys kept in the status (a ComDevice with 45 pumps has a few per pump). */
const MAX_IDENTITY_KEYS = 500;

/**
 * One serial device. `start()` returns at once: a port that does not exist yet is retried with
 * backoff and its absence shows in `status()`. `stop()` (idempotent) aborts an open in
 * progress, closes the link, and waits for every submitted batch to settle.
 */
export class SerialDeviceDriver implements Driver {
  readonly name: string;
  private state: DriverState = DriverState.STOPPED;
  private since = Date.now();
  private lastError: string | null = null;
  private lastErrorMessage: string | null = null;
  private lastErrorAt: number | null = null;
  private lastLogged = new Map<string, number>();
  private linkState: 'closed' | 'opening' | 'open' = 'closed';
  private lastReadingAt: number | null = null;
  private lastFrameAt: number | null = null;
  private connectedSince: number | null = null;
  private gap: { from: number; to: number | null } | null = null;
  private readonly identity = new Map<string, string>();
  private readonly counters: Record<string, number> = {
    opens: 0,
    openFailures: 0,
    disconnects: 0,
    gaps: 0,
    bytesIn: 0,
    bytesOut: 0,
    frames: 0,
    readings: 0,
    rejected: 0,
    deadLetters: 0,
    storeErrors: 0,
  };
  private abort: AbortController | null = null;
  private loop: Promise<void> | null = null;
  private stopping: Promise<void> | null = null;
  private link: Link | null = null;
  private session: ProtocolSession | null = null;
  private early: Buffer[] = [];
  private linkClosed: (() => void) | null = null;
  private silenceTimer: NodeJS.Timeout | null = null;
  private readonly inFlight = new Set<Promise<boolean>>();
  private readonly backoff: Backoff;
  private readonly source: string;

  constructor(
    private readonly options: SerialDriverOptions,
    private readonly ctx: DriverContext,
  ) {
    this.name = serialDriverName(options.deviceId);
    this.backoff = new Backoff(options.backoff ?? DEFAULT_BACKOFF);
    this.source = `serial ${options.link.address}`;
  }

  async start(): Promise<void> {
    if (this.abort) return;
    this.stopping = null;
    this.abort = new AbortController();
    this.setState(DriverState.STARTING);
    this.ctx.log.info({ port: this.options.link.address, settings: this.options.link.settings, protocol: this.options.protocol }, 'serial device starting');
    const interval = Math.max(20, Math.min(1000, Math.floor(this.options.silenceTimeoutMs / 4)));
    this.silenceTimer = setInterval(() => this.checkSilence(), interval);
    this.silenceTimer.unref();
    this.loop = this.run(this.abort.signal);
  }

  stop(): Promise<void> {
    if (this.stopping) return this.stopping;
    if (!this.abort) return Promise.resolve();
    this.stopping = this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    this.abort!.abort();
    if (this.silenceTimer) clearInterval(this.silenceTimer);
    this.silenceTimer = null;
    await this.link?.close();
    await this.loop;
    await Promise.allSettled([...this.inFlight]);
    this.abort = null;
    this.loop = null;
    this.linkState = 'closed';
    this.setState(DriverState.STOPPED);
    this.ctx.log.info('serial device stopped');
  }

  status(): SerialDriverStatus {
    const gap = this.gap;
    return {
      name: this.name,
      kind: 'serial',
      state: this.state,
      lastError: this.lastError,
      since: this.since,
      counters: { ...this.counters },
      deviceId: this.options.deviceId,
      protocol: this.options.protocol,
      port: this.options.link.address,
      settings: this.options.link.settings,
      link: this.linkState,
      lastErrorMessage: this.lastErrorMessage,
      lastErrorAt: this.lastErrorAt,
      lastReadingAt: this.lastReadingAt,
      lastFrameAt: this.lastFrameAt,
      connectedSince: this.connectedSince,
      lastGap: gap ? { from: gap.from, to: gap.to, ms: gap.to === null ? null : gap.to - gap.from } : null,
      device: Object.fromEntries(this.identity),
    };
  }

  private async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      this.linkState = 'opening';
      let link: Link;
      const closed = new Promise<void>((resolve) => (this.linkClosed = resolve));
      try {
        link = await this.options.link.open(
          { onData: (chunk) => this.onData(chunk), onClose: (err) => this.onClose(err) },
          signal,
        );
      } catch (err) {
        this.linkState = 'closed';
        if (signal.aborted) break;
        this.counters.openFailures!++;
        this.noteError(err, ErrorCode.SERIAL_OPEN_FAILED);
        this.goDown();
        await sleep(this.backoff.next(), signal);
        continue;
      }
      this.link = link;
      this.linkState = 'open';
      this.connectedSince = Date.now();
      this.counters.opens!++;
      this.ctx.log.info({ port: this.options.link.address }, 'serial link open');
      this.session = this.options.createSession(this.sessionIo(link));
      for (const chunk of this.early.splice(0)) this.session.onData(chunk);
      await closed;
      if (signal.aborted) break;
      // Reopen after a pause, even when the port is back at once: a flapping adapter must
      // not spin; the backoff is reset only by a valid frame.
      await sleep(this.backoff.next(), signal);
    }
    this.linkState = 'closed';
  }

  private onData(chunk: Buffer): void {
    this.counters.bytesIn! += chunk.length;
    if (this.session) {
      this.session.onData(chunk);
    } else if (this.early.length < MAX_EARLY_CHUNKS) {
      this.early.push(chunk);
    }
  }

  private onClose(err: Error | null): void {
    const session = this.session;
    this.session = null;
    this.link = null;
    this.early = [];
    this.linkState = 'closed';
    this.connectedSince = null;
    session?.onClose();
    if (!this.abort?.signal.aborted) {
      this.counters.disconnects!++;
      this.noteError(err ?? new GatewayError(ErrorCode.SERIAL_DISCONNECTED, 'the link closed'), ErrorCode.SERIAL_DISCONNECTED);
      this.goDown();
    }
    const resolve = this.linkClosed;
    this.linkClosed = null;
    resolve?.();
  }

  private sessionIo(link: Link): SessionIo {
    const { deviceId, zone } = this.options;
    return {
      deviceId,
      zone,
      log: this.ctx.log,
      write: (bytes) => {
        if (this.link !== link) return;
        this.counters.bytesOut! += bytes.length;
        link.write(bytes);
      },
      submit: (measurements, rejects) => this.submit(measurements, rejects),
      alive: () => this.alive(),
      problem: (code, message) => this.noteError(new GatewayError(code, message), code),
      count: (name, by = 1) => {
        this.counters[name] = (this.counters[name] ?? 0) + by;
      },
      identify: (key, value) => {
        if (this.identity.size < MAX_IDENTITY_KEYS || this.identity.has(key)) this.identity.set(key, value.slice(0, 200));
      },
      now: () => Date.now(),
    };
  }

  /** Commits a batch; the link stays paused until every batch in flight has settled. */
  private submit(measurements: readonly Measurement[], rejects: readonly DeadLetterInput[]): Promise<boolean> {
    const link = this.link;
    if (this.inFlight.size === 0) link?.pause();
    const work = this.ctx
      .submit({ received: Date.now(), source: this.source, message: null, measurements, rejects })
      .then(
        (result) => {
          this.counters.readings! += result.stored;
          this.counters.deadLetters! += result.deadLetters;
          if (result.stored > 0) this.lastReadingAt = Date.now();
          return true;
        },
        (err: unknown) => {
          this.counters.storeErrors!++;
          const code = err instanceof GatewayError ? err.code : ErrorCode.STORE_FAILED;
          this.noteError(new GatewayError(code, `${measurements.length} readings and ${rejects.length} refused inputs could not be stored`), code);
          return false;
        },
      );
    this.inFlight.add(work);
    void work.finally(() => {
      this.inFlight.delete(work);
      if (this.inFlight.size === 0 && this.link === link) link?.resume();
    });
    return work;
  }

  private alive(): void {
    const now = Date.now();
    this.lastFrameAt = now;
    this.backoff.reset();
    if (this.state !== DriverState.UP) {
      if (this.gap && this.gap.to === null) {
        this.gap.to = now;
        this.ctx.log.info({ gapMs: now - this.gap.from }, 'serial device up again');
      } else {
        this.ctx.log.info('serial device up');
      }
      this.setState(DriverState.UP);
    }
  }

  private checkSilence(): void {
    // An adapter that died without the system reporting a close: reopen the path afresh (the
    // port stays open through a mere pause of the device, whose node is still the same).
    if (this.link?.vanished?.()) {
      this.ctx.log.info({ port: this.options.link.address }, 'serial port node vanished or replaced; reopening');
      void this.link.close();
      return;
    }
    if (this.state !== DriverState.UP || this.lastFrameAt === null) return;
    const silent = Date.now() - this.lastFrameAt;
    if (silent < this.options.silenceTimeoutMs) return;
    this.noteError(new GatewayError(ErrorCode.SERIAL_NO_DATA, `no valid frame for ${silent} ms (cable pulled at the device, device off?)`), ErrorCode.SERIAL_NO_DATA);
    this.goDown();
  }

  private goDown(): void {
    if (this.state === DriverState.DOWN || this.state === DriverState.STOPPED) return;
    if (this.state === DriverState.UP) {
      this.counters.gaps!++;
      this.gap = { from: this.lastFrameAt ?? Date.now(), to: null };
    }
    this.setState(DriverState.DOWN);
  }

  private noteError(err: unknown, fallback: ErrorCode): void {
    const code = err instanceof GatewayError ? err.code : fallback;
    const message = err instanceof Error ? err.message : String(err);
    const now = Date.now();
    this.lastError = code;
    this.lastErrorMessage = message;
    this.lastErrorAt = now;
    const key = `${code}|${message}`;
    const last = this.lastLogged.get(key);
    if (last !== undefined && now - last < LOG_REPEAT_MS) return;
    if (this.lastLogged.size > 100) this.lastLogged.clear();
    this.lastLogged.set(key, now);
    this.ctx.log.warn({ code, port: this.options.link.address }, message);
  }

  private setState(state: DriverState): void {
    if (this.state === state) return;
    this.state = state;
    this.since = Date.now();
  }
}
