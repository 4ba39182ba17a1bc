/**
 * What the serial device simulators share: a seeded PRNG, slowly drifting vital signs, the
 * device's end of the line (a serial port that is reopened when the pty pair is replugged, or a
 * TCP listener for the B. Braun ComDevice), and fault injection.
 *
 * The simulators are independent peers, like real devices: they frame and check their bytes
 * with their own small code, never with the gateway's framers, so a symmetric bug in the
 * gateway cannot hide behind a simulator that shares it.
 */
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { SerialPort } from 'serialport';
import type { PtyPair } from './pty.js';
import { gaussian, type Rng } from './random.js';

// ── randomness and drift ────────────────────────────────────────────────────

export { mulberry32, type Rng } from './random.js';


/**
 * A vital sign that drifts like a real one: an Ornstein–Uhlenbeck walk that is pulled back to
 * the patient's baseline, with noise of `sd` per minute, clamped to a physiological range.
 */
export class Drift {
  private value: number;

  constructor(
    private readonly rnd: Rng,
    private readonly baseline: number,
    private readonly sdPerMinute: number,
    private readonly min: number,
    private readonly max: number,
  ) {
    this.value = baseline;
  }

  /** The value `dtMs` later. */
  next(dtMs: number): number {
    const minutes = Math.max(0, dtMs) / 60_000;
    const pull = 1 - Math.exp(-minutes / 5); // half-way back to baseline in ~3.5 min
    this.value += (this.baseline - this.value) * pull + gaussian(this.rnd) * this.sdPerMinute * Math.sqrt(minutes || 1 / 60);
    this.value = Math.min(this.max, Math.max(this.min, this.value));
    return this.value;
  }

  get current(): number {
    return this.value;
  }
}

// ── faults ──────────────────────────────────────────────────────────────────

/**
 * Faults a serial simulator injects, each at its next chance:
 * - `garbage`: noise bytes on the line (a bad ground, a cable next to a motor);
 * - `bad-checksum`: the next frame with a wrong checksum (MEDIBUS, BCC; Masimo has none and
 *   sends a digit-damaged line instead);
 * - `truncated`: the next frame cut short, the one after it whole;
 * - `huge`: a frame far larger than any real one, without its end byte, then a good one;
 * - `pause`: silence for `pauseMs` (longer than the MEDIBUS 3 s keep-alive by default);
 * - `unplug`: the cable pulled for `unplugMs` (self-made pty: the port vanishes; a given port:
 *   the line goes silent, as when the cable is pulled at the device end).
 */
export type SerialFault = 'garbage' | 'bad-checksum' | 'truncated' | 'huge' | 'pause' | 'unplug';

/** Every fault, for option parsing. */
export const SERIAL_FAULTS: readonly SerialFault[] = ['garbage', 'bad-checksum', 'truncated', 'huge', 'pause', 'unplug'];

/** `garbage,pause` → faults; throws RangeError naming an unknown one. */
export function parseSerialFaults(text: string): SerialFault[] {
  const out: SerialFault[] = [];
  for (const name of text.split(',').map((s) => s.trim()).filter(Boolean)) {
    if (!SERIAL_FAULTS.includes(name as SerialFault)) throw new RangeError(`unknown fault '${name}' (available: ${SERIAL_FAULTS.join(', ')})`);
    out.push(name as SerialFault);
  }
  return out;
}

/** Options every serial simulator takes. */
export interface SerialSimulatorOptions {
  /** The device's end of the line (a pty or a real port). Without it a pty pair is created. */
  readonly path?: string;
  /** B. Braun only: listen for the gateway on this TCP port (0 picks one) instead of a port. */
  readonly tcpPort?: number;
  readonly baudRate?: number;
  /** Seed of all randomness. Default: random. */
  readonly seed?: number;
  /** Faults injected now and then, at `faultRate` per frame. */
  readonly faults?: readonly SerialFault[];
  /** Fraction of frames followed by one of `faults`. Default 0.05 when faults are given. */
  readonly faultRate?: number;
  /** Length of a `pause` fault (ms). Default 4000: longer than the MEDIBUS keep-alive. */
  readonly pauseMs?: number;
  /** Length of an `unplug` fault (ms). Default 3000. */
  readonly unplugMs?: number;
  /** Called with counters after each frame (progress on a terminal). */
  readonly onProgress?: (stats: Readonly<SimulatorStats>) => void;
}

/** What a simulator did: frames and bytes sent, host requests, ACK/NAK seen, faults injected. */
export interface SimulatorStats {
  framesSent: number;
  bytesSent: number;
  requests: number;
  acks: number;
  naks: number;
  faults: Record<SerialFault, number>;
}

/** Zeroed stats. */
export function emptyStats(): SimulatorStats {
  return {
    framesSent: 0,
    bytesSent: 0,
    requests: 0,
    acks: 0,
    naks: 0,
    faults: { garbage: 0, 'bad-checksum': 0, truncated: 0, huge: 0, pause: 0, unplug: 0 },
  };
}

/** A running simulator. */
export interface SerialSimulator {
  /** The port to give the gateway when the simulator made its own pty pair; else null. */
  readonly devicePath: string | null;
  /** The TCP port the gateway connects to (B. Braun `tcpPort`), else null. */
  readonly tcpPort: number | null;
  readonly stats: Readonly<SimulatorStats>;
  /** Injects a fault at the next chance (tests use this; the CLI uses `faults`/`faultRate`). */
  inject(fault: SerialFault): void;
  stop(): Promise<void>;
}

/** Picks faults at random for a simulator: `next()` is called once per frame. */
export class FaultPlan {
  private readonly queue: SerialFault[] = [];

  constructor(
    private readonly rnd: Rng,
    private readonly faults: readonly SerialFault[],
    private readonly rate: number,
  ) {}

  inject(fault: SerialFault): void {
    this.queue.push(fault);
  }

  /** The fault to apply to the frame about to be sent, if any. */
  next(): SerialFault | null {
    const queued = this.queue.shift();
    if (queued) return queued;
    if (this.faults.length === 0 || this.rnd() >= this.rate) return null;
    return this.faults[Math.floor(this.rnd() * this.faults.length)] ?? null;
  }
}

/** Random bytes that look like line noise: any value, a few CR/LF among them. */
export function noise(rnd: Rng, length: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) out[i] = Math.floor(rnd() * 256);
  return out;
}

// ── the device's end of the line ────────────────────────────────────────────

export interface SimLinkOptions {
  readonly path?: string;
  readonly tcpPort?: number;
  readonly baudRate?: number;
  readonly parity?: 'none' | 'even' | 'odd';
  readonly onData: (chunk: Buffer) => void;
  /** A gateway connected (TCP) or the port (re)opened. */
  readonly onConnect?: () => void;
}

/**
 * The simulator's end: a serial port, reopened every 100 ms after it vanishes (the pty pair was
 * unplugged and plugged back), or a TCP listener that serves one gateway connection at a time.
 */
export class SimLink {
  private port: SerialPort | null = null;
  private server: Server | null = null;
  private socket: Socket | null = null;
  private stopped = false;
  private pulledUntil = 0;
  private reopenTimer: NodeJS.Timeout | null = null;

  private constructor(private readonly options: SimLinkOptions) {}

  static async open(options: SimLinkOptions): Promise<SimLink> {
    const link = new SimLink(options);
    if (options.tcpPort !== undefined) await link.listen(options.tcpPort);
    else if (options.path) await link.openPort();
    else throw new RangeError('a simulator needs a port path or a TCP port');
    return link;
  }

  /** The TCP port listened on (after `open` with `tcpPort: 0`). */
  tcpPort(): number | null {
    const address = this.server?.address();
    return address && typeof address === 'object' ? (address as AddressInfo).port : null;
  }

  get connected(): boolean {
    return this.port?.isOpen === true || (this.socket !== null && !this.socket.destroyed);
  }

  write(bytes: Uint8Array): boolean {
    if (Date.now() < this.pulledUntil) return false;
    if (this.port?.isOpen) {
      this.port.write(Buffer.from(bytes));
      return true;
    }
    if (this.socket && !this.socket.destroyed) {
      this.socket.write(bytes);
      return true;
    }
    return false;
  }

  /**
   * The cable pulled at the device end for `ms`: our end closes (TCP: the connection drops and
   * new ones are refused), the gateway's port stays but hears nothing; then it comes back.
   */
  async pullCable(ms: number): Promise<void> {
    this.pulledUntil = Date.now() + ms;
    if (this.port?.isOpen) await new Promise<void>((r) => this.port!.close(() => r()));
    this.socket?.destroy();
    await new Promise((r) => setTimeout(r, ms));
    this.pulledUntil = 0;
    if (this.options.path && !this.stopped && !this.port?.isOpen) this.scheduleReopen(0);
  }

  async close(): Promise<void> {
    this.stopped = true;
    if (this.reopenTimer) clearTimeout(this.reopenTimer);
    if (this.port?.isOpen) await new Promise<void>((r) => this.port!.close(() => r()));
    this.socket?.destroy();
    if (this.server) await new Promise<void>((r) => this.server!.close(() => r()));
  }

  private openPort(): Promise<void> {
    return new Promise((resolve, reject) => {
      const port = new SerialPort({
        path: this.options.path!,
        baudRate: this.options.baudRate ?? 9600,
        parity: this.options.parity ?? 'none',
        autoOpen: false,
      });
      port.open((err) => {
        if (err) return reject(err);
        this.port = port;
        port.on('data', (chunk: Buffer) => {
          if (Date.now() >= this.pulledUntil) this.options.onData(chunk);
        });
        port.on('error', () => undefined);
        port.on('close', () => {
          if (this.port === port) this.port = null;
          if (!this.stopped && Date.now() >= this.pulledUntil) this.scheduleReopen(100);
        });
        this.options.onConnect?.();
        resolve();
      });
    });
  }

  private scheduleReopen(ms: number): void {
    if (this.reopenTimer || this.stopped) return;
    this.reopenTimer = setTimeout(() => {
      this.reopenTimer = null;
      if (this.stopped || this.port?.isOpen) return;
      this.openPort().catch(() => this.scheduleReopen(100));
    }, ms);
  }

  private listen(port: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const server = createServer((socket) => {
        if (Date.now() < this.pulledUntil) {
          socket.destroy();
          return;
        }
        this.socket?.destroy(); // one gateway at a time, as a ComDevice in request mode
        this.socket = socket;
        socket.setNoDelay(true);
        socket.on('data', (chunk: Buffer) => this.options.onData(chunk));
        socket.on('error', () => undefined);
        socket.on('close', () => {
          if (this.socket === socket) this.socket = null;
        });
        this.options.onConnect?.();
      });
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => {
        server.off('error', reject);
        this.server = server;
        resolve();
      });
    });
  }
}

/**
 * Applies the `unplug` fault: a pty pair the simulator made itself is unplugged and plugged
 * back (the gateway's port vanishes and returns); otherwise the device end is closed.
 */
export async function unplugFor(ms: number, pty: PtyPair | null, link: SimLink): Promise<void> {
  if (pty) {
    await pty.unplug();
    await new Promise((r) => setTimeout(r, ms));
    await pty.replug();
  } else {
    await link.pullCable(ms);
  }
}

/** 2-digit zero padding. */
export function pad2(n: number): string {
  return n < 10 ? `0${n}` : String(n);
}

/** Wall-clock parts of `ms` in `zone` (for devices that print local time). */
export function localParts(ms: number, zone: string): { year: number; month: number; day: number; hour: number; minute: number; second: number } {
  const parts = new Intl.DateTimeFormat('en-US', {
    timeZone: zone,
    hourCycle: 'h23',
    year: 'numeric',
    month: '2-digit',
    day: '2-digit',
    hour: '2-digit',
    minute: '2-digit',
    second: '2-digit',
  }).formatToParts(new Date(ms));
  const get = (type: string) => Number(parts.find((p) => p.type === type)?.value ?? 0);
  return { year: get('year'), month: get('month'), day: get('day'), hour: get('hour'), minute: get('minute'), second: get('second') };
}
