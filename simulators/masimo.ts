/**
 * Masimo Radical-7 / Rad-8 simulator: a pulse oximeter in "ASCII 1" mode, sending one line per
 * second (9600 8N1) with slowly drifting SpO2, pulse and perfusion index, sensor-off episodes
 * now and then (dashes, EXC=000820), and faults on request.
 *
 *   startMasimoSimulator({ path: '/dev/pts/4' })   // a port someone else made
 *   startMasimoSimulator({})                       // makes a pty pair; give .devicePath to the gateway
 */
import { createPtyPair, type PtyPair } from './pty.js';
import {
  Drift,
  emptyStats,
  FaultPlan,
  localParts,
  mulberry32,
  noise,
  pad2,
  SimLink,
  unplugFor,
  type Rng,
  type SerialFault,
  type SerialSimulator,
  type SerialSimulatorOptions,
} from './serial-common.js';

/** Options of `startMasimoSimulator`. */
export interface MasimoSimulatorOptions extends SerialSimulatorOptions {
  /** Time between two lines (ms). Default 1000: ASCII 1 sends once per second. */
  readonly intervalMs?: number;
  /** `radical7` lines carry SpHb, SpMet, PVI …; `rad8` lines only SpO2, pulse and PI. */
  readonly model?: 'radical7' | 'rad8';
  /** Zone of the oximeter's clock (it prints local time). Default Europe/Copenhagen. */
  readonly timezone?: string;
  /** Sensor-off and low-signal episodes now and then. Default true. */
  readonly episodes?: boolean;
  /** Chance per line that an episode starts. Default 1/300 (about every 5 minutes at 1 Hz). */
  readonly episodeRate?: number;
  /** The oximeter's serial number. */
  readonly serialNumber?: string;
}

/** One line's values; NaN prints as dashes. */
export interface MasimoValues {
  spo2: number;
  bpm: number;
  pi: number;
  sphb: number;
  spmet: number;
  pvi: number;
  /** Exception word (EXC). */
  exc: number;
}

function num(value: number, width: number, decimals: number, dashes: string): string {
  if (!Number.isFinite(value)) return dashes;
  return value.toFixed(decimals).padStart(width, '0');
}

/** Formats one ASCII 1 line (with CR LF) the way the oximeter prints it. */
export function masimoLine(time: number, v: MasimoValues, options: { model?: 'radical7' | 'rad8'; timezone?: string; serialNumber?: string } = {}): string {
  const t = localParts(time, options.timezone ?? 'Europe/Copenhagen');
  const head = `${pad2(t.month)}/${pad2(t.day)}/${pad2(t.year % 100)} ${pad2(t.hour)}:${pad2(t.minute)}:${pad2(t.second)}`;
  const sn = options.serialNumber ?? '0000093112';
  const spo2 = `SPO2=${num(v.spo2, 3, 0, '---')}%`;
  const bpm = `BPM=${num(v.bpm, 3, 0, '---')}`;
  const exc = `EXC=${v.exc.toString(16).toUpperCase().padStart(6, '0')}`;
  if (options.model === 'rad8') {
    return `${head} SN=${sn} ${spo2} ${bpm} PI=${num(v.pi, 5, 2, '--.--')}% DESAT=-- PIDELTA=+-- ALARM=0000 ${exc}\r\n`;
  }
  return (
    `${head} SN=${sn} ${spo2} ${bpm} PI=${num(v.pi, 5, 2, '--.--')} SPCO=--.-% SPMET=${num(v.spmet, 4, 1, '--.-')}% ` +
    `SPHB=${num(v.sphb, 4, 1, '--.-')} DESAT=-- PIDELTA=+-- PVI=${num(v.pvi, 3, 0, '---')} ALARM=0000 ${exc}\r\n`
  );
}

/** The patient behind the sensor: drifting values and the occasional episode. */
class MasimoPatient {
  private readonly spo2: Drift;
  private readonly bpm: Drift;
  private readonly pi: Drift;
  private readonly sphb: Drift;
  private readonly pvi: Drift;
  private episodeLeft = 0;
  private episodeExc = 0;
  private last = 0;

  constructor(
    private readonly rnd: Rng,
    private readonly episodes: boolean,
    private readonly episodeRate: number,
  ) {
    this.spo2 = new Drift(rnd, 96 + rnd() * 3, 0.8, 86, 100);
    this.bpm = new Drift(rnd, 60 + rnd() * 30, 3, 40, 160);
    this.pi = new Drift(rnd, 1.5 + rnd() * 3, 0.3, 0.2, 12);
    this.sphb = new Drift(rnd, 12 + rnd() * 3, 0.2, 7, 18);
    this.pvi = new Drift(rnd, 10 + rnd() * 10, 2, 3, 40);
  }

  values(now: number): MasimoValues {
    const dt = this.last === 0 ? 1000 : now - this.last;
    this.last = now;
    const v: MasimoValues = {
      spo2: Math.round(this.spo2.next(dt)),
      bpm: Math.round(this.bpm.next(dt)),
      pi: this.pi.next(dt),
      sphb: this.sphb.next(dt),
      spmet: 1.1,
      pvi: Math.round(this.pvi.next(dt)),
      exc: 0x800, // SET mode on, as every Masimo in the field
    };
    if (this.episodes && this.episodeLeft === 0 && this.rnd() < this.episodeRate) {
      // The sensor slips off (20) or the signal gets poor (400).
      this.episodeLeft = 5 + Math.floor(this.rnd() * 10);
      this.episodeExc = this.rnd() < 0.5 ? 0x020 : 0x400;
    }
    if (this.episodeLeft > 0) {
      this.episodeLeft--;
      v.exc |= this.episodeExc;
      if (this.episodeExc === 0x020) {
        v.spo2 = Number.NaN;
        v.bpm = Number.NaN;
        v.pi = Number.NaN;
        v.sphb = Number.NaN;
        v.pvi = Number.NaN;
      }
    }
    return v;
  }
}

/**
 * Starts the oximeter. Resolves once its end of the line is open. Faults come from
 * `options.faults` at `faultRate` per line, or from `inject()`.
 */
export async function startMasimoSimulator(options: MasimoSimulatorOptions = {}): Promise<SerialSimulator> {
  const seed = options.seed ?? Math.floor(Math.random() * 2 ** 32);
  const rnd = mulberry32(seed);
  const faultRnd = mulberry32(seed ^ 0x5eed);
  const plan = new FaultPlan(faultRnd, options.faults ?? [], options.faultRate ?? (options.faults?.length ? 0.05 : 0));
  const patient = new MasimoPatient(rnd, options.episodes ?? true, options.episodeRate ?? 1 / 300);
  const stats = emptyStats();
  const pty: PtyPair | null = options.path ? null : await createPtyPair();
  const link = await SimLink.open({
    path: options.path ?? pty!.simulatorPath,
    baudRate: options.baudRate ?? 9600,
    onData: () => undefined, // ASCII 1 is output only
  });
  const intervalMs = options.intervalMs ?? 1000;
  const pauseMs = options.pauseMs ?? 4000;
  const unplugMs = options.unplugMs ?? 3000;
  let silentUntil = 0;
  let stopped = false;

  const send = (bytes: Buffer | string) => {
    const buf = typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : bytes;
    if (link.write(buf)) stats.bytesSent += buf.length;
  };

  const tick = () => {
    if (stopped) return;
    const now = Date.now();
    if (now < silentUntil) return;
    const line = masimoLine(now, patient.values(now), options);
    const fault: SerialFault | null = plan.next();
    if (fault) stats.faults[fault]++;
    switch (fault) {
      case 'garbage':
        // Noise, then the line ends: the next line is whole again.
        send(Buffer.concat([noise(faultRnd, 16 + Math.floor(faultRnd() * 48)).map((b) => (b === 0x0a ? 0x00 : b)), Buffer.from('\r\n')]));
        break;
      case 'bad-checksum': {
        // ASCII 1 has no checksum: noise shows as a damaged byte inside a line.
        const at = 20 + Math.floor(faultRnd() * (line.length - 24));
        send(`${line.slice(0, at)}\x9f${line.slice(at + 1)}`);
        break;
      }
      case 'truncated':
        send(`${line.slice(0, Math.floor(line.length * 0.4))}\r\n`);
        break;
      case 'huge':
        send(Buffer.alloc(100_000, 0x41));
        send('\r\n');
        break;
      case 'pause':
        silentUntil = now + pauseMs;
        return;
      case 'unplug':
        silentUntil = now + unplugMs + 200;
        void unplugFor(unplugMs, pty, link);
        return;
      default:
        break;
    }
    send(line);
    stats.framesSent++;
    options.onProgress?.(stats);
  };
  const timer = setInterval(tick, intervalMs);

  return {
    devicePath: pty?.devicePath ?? null,
    tcpPort: null,
    stats,
    inject: (fault) => plan.inject(fault),
    async stop() {
      if (stopped) return;
      stopped = true;
      clearInterval(timer);
      await link.close();
      await pty?.stop();
    },
  };
}
