/**
 * Dräger MEDIBUS simulator: an Evita-style ICU ventilator (19200 8E1) that answers the host's
 * requests — ICC, NOP, device identification, measured data code pages 1 and 2, current
 * alarms — with plausible, slowly drifting ventilation values, sends a NOP of its own now and
 * then (both MEDIBUS sides are masters), enforces the 3 s keep-alive (after 3 s without a
 * command it answers nothing but ICC), and injects faults on request.
 *
 * It frames and checks bytes with its own code (not the gateway's framers).
 */
import { createPtyPair, type PtyPair } from './pty.js';
import {
  Drift,
  emptyStats,
  FaultPlan,
  mulberry32,
  noise,
  SimLink,
  unplugFor,
  type Rng,
  type SerialSimulator,
  type SerialSimulatorOptions,
} from './serial-common.js';

const ESC = 0x1b;
const SOH = 0x01;
const CR = 0x0d;

/** Options of `startMedibusSimulator`. */
export interface MedibusSimulatorOptions extends SerialSimulatorOptions {
  /** MEDIBUS: a device drops the link after this long without a command (ms). Default 3000. */
  readonly keepAliveMs?: number;
  /** Send a NOP command of its own every this many ms (0 = never). Default 5000. */
  readonly deviceNopMs?: number;
  /** Alarm episodes now and then. Default true. */
  readonly episodes?: boolean;
  /** The name in the device identification. Default `Evita4`. */
  readonly model?: string;
}

/** MEDIBUS checksum: low byte of the sum of all bytes before it, two upper-case hex digits. */
function withChecksum(bytes: number[]): Buffer {
  let sum = 0;
  for (const b of bytes) sum = (sum + b) & 0xff;
  const hex = sum.toString(16).toUpperCase().padStart(2, '0');
  return Buffer.from([...bytes, hex.charCodeAt(0), hex.charCodeAt(1), CR]);
}

/** A MEDIBUS response frame: SOH, echoed command, data, checksum, CR. */
export function medibusResponse(code: number, data = ''): Buffer {
  return withChecksum([SOH, code, ...Buffer.from(data, 'latin1')]);
}

/** A MEDIBUS command frame: ESC, command, arguments, checksum, CR. */
export function medibusCommand(code: number, args = ''): Buffer {
  return withChecksum([ESC, code, ...Buffer.from(args, 'latin1')]);
}

/** A 4-character MEDIBUS value field, the way Dräger pads it (` 98 `, `6.3 `, `1234`). */
export function medibusValue(value: number, decimals = 0): string {
  if (!Number.isFinite(value)) return '----';
  const text = value.toFixed(decimals);
  if (text.length >= 4) return text.slice(0, 4);
  return `${text.padStart(3, ' ')} `.slice(-4);
}

/** Frames the host sends: ESC … CR (commands) and SOH … CR (answers to our NOPs). */
class HostReader {
  private buf: number[] = [];
  private inFrame = false;

  constructor(private readonly onFrame: (kind: 'command' | 'response', code: number, args: string) => void) {}

  push(chunk: Buffer): void {
    for (const b of chunk) {
      if (b === ESC || b === SOH) {
        this.buf = [b];
        this.inFrame = true;
      } else if (!this.inFrame) {
        continue;
      } else if (b === CR) {
        this.inFrame = false;
        this.finish();
      } else if (this.buf.length < 512) {
        this.buf.push(b);
      }
    }
  }

  private finish(): void {
    const f = this.buf;
    if (f.length < 4) return;
    let sum = 0;
    for (let i = 0; i < f.length - 2; i++) sum = (sum + f[i]!) & 0xff;
    const sent = Number.parseInt(String.fromCharCode(f[f.length - 2]!, f[f.length - 1]!), 16);
    if (sent !== sum) return; // a real device ignores a corrupt command
    this.onFrame(f[0] === ESC ? 'command' : 'response', f[1]!, Buffer.from(f.slice(2, -2)).toString('latin1'));
  }
}

/** The ventilated patient: drifting values of code pages 1 and 2. */
class Ventilation {
  private readonly peep: Drift;
  private readonly peak: Drift;
  private readonly vt: Drift;
  private readonly rr: Drift;
  private readonly fio2: Drift;
  private readonly etco2: Drift;
  private readonly spo2: Drift;
  private readonly pulse: Drift;
  private last = 0;
  alarmLeft = 0;

  constructor(private readonly rnd: Rng) {
    this.peep = new Drift(rnd, 5 + Math.round(rnd() * 5), 0.2, 0, 20);
    this.peak = new Drift(rnd, 18 + rnd() * 8, 1, 8, 45);
    this.vt = new Drift(rnd, 400 + rnd() * 150, 15, 150, 900);
    this.rr = new Drift(rnd, 12 + rnd() * 6, 0.8, 4, 40);
    this.fio2 = new Drift(rnd, 30 + Math.round(rnd() * 20), 0.5, 21, 100);
    this.etco2 = new Drift(rnd, 35 + rnd() * 8, 1, 15, 70);
    this.spo2 = new Drift(rnd, 96 + rnd() * 3, 0.6, 80, 100);
    this.pulse = new Drift(rnd, 65 + rnd() * 30, 3, 35, 170);
  }

  /** Code page 1 items: 2 hex code characters + 4 value characters each. */
  codepage1(now: number): string {
    const dt = this.last === 0 ? 1000 : now - this.last;
    this.last = now;
    const peep = this.peep.next(dt);
    const peak = Math.max(peep + 5, this.peak.next(dt));
    const plateau = peak - 2 - this.rnd();
    const mean = peep + (peak - peep) * 0.35;
    const vt = this.vt.next(dt);
    const rr = this.rr.next(dt);
    const fio2 = this.fio2.next(dt);
    const items: [string, string][] = [
      ['78', medibusValue(peep)],
      ['7D', medibusValue(peak)],
      ['74', medibusValue(plateau)],
      ['73', medibusValue(mean)],
      ['71', medibusValue(peep - 1)],
      ['88', medibusValue(vt)],
      ['B8', medibusValue((vt * rr) / 1000, 1)],
      ['D6', medibusValue(rr)],
      ['F0', medibusValue(fio2)],
      ['EF', medibusValue(fio2 - 4)],
      ['E6', medibusValue(this.etco2.next(dt))],
      ['EB', medibusValue(this.spo2.next(dt))],
      ['E1', medibusValue(this.pulse.next(dt))],
      ['07', medibusValue(vt / (plateau - peep), 0)],
      ['C1', medibusValue(33.5, 1)],
      ['B5', '--- '], // no spontaneous breaths: the device sends dashes
    ];
    return items.map(([code, value]) => code + value).join('');
  }

  codepage2(): string {
    const vt = this.vt.current;
    return `21${medibusValue(vt)}22${medibusValue(vt + 12)}23${medibusValue(this.peak.current - 1)}`;
  }

  /** Current alarms of code page 1: priority, code, 12-character phrase. */
  alarms(episodes: boolean): string {
    if (episodes && this.alarmLeft === 0 && this.rnd() < 1 / 120) this.alarmLeft = 10 + Math.floor(this.rnd() * 20);
    if (this.alarmLeft === 0) return '';
    this.alarmLeft--;
    return `5${'1D'}${'Paw high'.padEnd(12, ' ')}`;
  }
}

/**
 * Starts the ventilator. Resolves once its end of the line is open.
 */
export async function startMedibusSimulator(options: MedibusSimulatorOptions = {}): Promise<SerialSimulator> {
  const seed = options.seed ?? Math.floor(Math.random() * 2 ** 32);
  const rnd = mulberry32(seed);
  const faultRnd = mulberry32(seed ^ 0x5eed);
  const plan = new FaultPlan(faultRnd, options.faults ?? [], options.faultRate ?? (options.faults?.length ? 0.05 : 0));
  const vent = new Ventilation(rnd);
  const stats = emptyStats();
  const keepAliveMs = options.keepAliveMs ?? 3000;
  const pauseMs = options.pauseMs ?? 4000;
  const unplugMs = options.unplugMs ?? 3000;
  const episodes = options.episodes ?? true;
  const model = options.model ?? 'Evita4';
  let talking = false;
  let lastHeard = 0;
  let deafUntil = 0;
  let stopped = false;
  let link: SimLink | null = null;

  const send = (bytes: Buffer) => {
    if (link?.write(bytes)) stats.bytesSent += bytes.length;
  };

  const answer = (code: number, data: string) => {
    const fault = plan.next();
    if (fault) stats.faults[fault]++;
    const frame = medibusResponse(code, data);
    switch (fault) {
      case 'garbage': {
        // Line noise before the answer; no start or end bytes in it, so the answer survives.
        const junk = noise(faultRnd, 8 + Math.floor(faultRnd() * 24)).map((b) => (b === ESC || b === SOH || b === CR || b === 0x11 || b === 0x13 ? 0x78 : b & 0x7f));
        send(Buffer.concat([junk, frame]));
        break;
      }
      case 'bad-checksum': {
        const bad = Buffer.from(frame);
        bad[bad.length - 2] = bad[bad.length - 2] === 0x30 ? 0x31 : 0x30;
        send(bad);
        break;
      }
      case 'truncated':
        send(frame.subarray(0, Math.max(2, frame.length - 4)));
        break;
      case 'huge':
        send(Buffer.concat([Buffer.from([SOH, code]), Buffer.alloc(20_000, 0x41)]));
        break;
      case 'pause':
        deafUntil = Date.now() + pauseMs;
        return;
      case 'unplug':
        deafUntil = Date.now() + unplugMs + 200;
        if (link) void unplugFor(unplugMs, pty, link);
        return;
      default:
        send(frame);
    }
    stats.framesSent++;
    options.onProgress?.(stats);
  };

  const onCommand = (code: number) => {
    const now = Date.now();
    if (now < deafUntil) return;
    // MEDIBUS: more than 3 s without traffic drops the link; only ICC starts it again.
    if (talking && now - lastHeard > keepAliveMs) talking = false;
    lastHeard = now;
    stats.requests++;
    if (code === 0x51) {
      talking = true;
      answer(code, '');
      return;
    }
    if (!talking) return;
    switch (code) {
      case 0x24:
        answer(code, vent.codepage1(now));
        break;
      case 0x2b:
        answer(code, vent.codepage2());
        break;
      case 0x27:
        answer(code, vent.alarms(episodes));
        break;
      case 0x2e:
        answer(code, '');
        break;
      case 0x52:
        answer(code, `8417'${model}'${'04.03'.padEnd(11, ' ')}`);
        break;
      case 0x55:
        answer(code, '');
        talking = false;
        break;
      default:
        answer(code, ''); // NOP, configure response, …: an empty echo
    }
  };

  const reader = new HostReader((kind, code) => {
    if (kind === 'command') onCommand(code);
    else stats.acks++; // the host answered our NOP
  });
  const pty: PtyPair | null = options.path ? null : await createPtyPair();
  link = await SimLink.open({
    path: options.path ?? pty!.simulatorPath,
    baudRate: options.baudRate ?? 19200,
    parity: 'even',
    onData: (chunk) => reader.push(chunk),
  });
  const deviceNopMs = options.deviceNopMs ?? 5000;
  const nopTimer =
    deviceNopMs > 0
      ? setInterval(() => {
          if (!stopped && talking && Date.now() >= deafUntil) send(medibusCommand(0x30));
        }, deviceNopMs)
      : null;

  return {
    devicePath: pty?.devicePath ?? null,
    tcpPort: null,
    stats,
    inject: (fault) => plan.inject(fault),
    async stop() {
      if (stopped) return;
      stopped = true;
      if (nopTimer) clearInterval(nopTimer);
      await link?.close();
      await pty?.stop();
    },
  };
}
