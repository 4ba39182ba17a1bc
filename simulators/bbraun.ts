/**
 * B. Braun SpaceCom / ComDevice simulator (BCC): a rack of Space pumps that answers
 * ADMIN:ALIVE (GNACK, naming its bed id), ADMIN:VERSION, MEM:GET (one block per pump, ETB
 * between blocks, each sent only after the host's ACK, resent on NAK) and MEM:GETSLOT#xy, over
 * a serial port (9600 8N1) or as a TCP server (the ComDevice listens on 4001). Rates drift,
 * volumes grow with time, an occlusion alarm stops a pump now and then; faults on request.
 *
 * It frames, stuffs and checks bytes with its own code (not the gateway's framers).
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

const SOH = 0x01;
const STX = 0x02;
const ETX = 0x03;
const EOT = 0x04;
const ACK = 0x06;
const NAK = 0x15;
const ETB = 0x17;
const RS = '\x1e';

/** Options of `startBbraunSimulator`. */
export interface BbraunSimulatorOptions extends SerialSimulatorOptions {
  /** The bed id the ComDevice answers ALIVE with. Default `ComSystem`. */
  readonly bedId?: string;
  /** BCC character stuffing (D→EX, E→EE, d→ex, e→ee). Default true. */
  readonly stuffing?: boolean;
  /** Pumps in the rack, by slot (`11` = pillar 1, slot 1). Default 11, 12, 13. */
  readonly slots?: readonly string[];
  /** Occlusion alarms now and then. Default true. */
  readonly episodes?: boolean;
  /** Give up waiting for the host's ACK after this long (ms). Default 2000. */
  readonly ackTimeoutMs?: number;
}

/** BCC: length = unstuffed bytes SOH … EOT; check = sum SOH … ETX/ETB mod 256; 5 digits each. */
export function bccFrame(header: string, info: string, options: { final?: boolean; stuffing?: boolean } = {}): Buffer {
  const body = Buffer.from(`${header}>${info}`, 'utf8');
  const length = 1 + 5 + 1 + body.length + 1 + 5 + 1;
  const bytes = [SOH, ...Buffer.from(String(length).padStart(5, '0')), STX, ...body, options.final === false ? ETB : ETX];
  let sum = 0;
  for (const b of bytes) sum = (sum + b) & 0xff;
  const frame = Buffer.from([...bytes, ...Buffer.from(String(sum).padStart(5, '0')), EOT]);
  return options.stuffing === false ? frame : stuff(frame);
}

/** BCC character stuffing. */
function stuff(bytes: Buffer): Buffer {
  const out: number[] = [];
  for (const b of bytes) {
    if (b === 0x44) out.push(0x45, 0x58);
    else if (b === 0x45) out.push(0x45, 0x45);
    else if (b === 0x64) out.push(0x65, 0x78);
    else if (b === 0x65) out.push(0x65, 0x65);
    else out.push(b);
  }
  return Buffer.from(out);
}

/** Frames from the host (requests), and the bare ACK/NAK it sends after each block. */
class HostReader {
  private buf: number[] = [];
  private inFrame = false;
  private escape = 0;

  constructor(
    private readonly stuffing: boolean,
    private readonly onRequest: (header: string, info: string) => void,
    private readonly onControl: (byte: number) => void,
  ) {}

  push(chunk: Buffer): void {
    for (const b of chunk) {
      if (b === SOH) {
        this.buf = [b];
        this.inFrame = true;
        this.escape = 0;
        continue;
      }
      if (!this.inFrame) {
        if (b === ACK || b === NAK) this.onControl(b);
        continue;
      }
      if (b === EOT) {
        this.buf.push(b);
        this.inFrame = false;
        this.finish();
        continue;
      }
      let value = b;
      if (this.stuffing) {
        if (this.escape) {
          value = this.escape === 0x45 ? (b === 0x58 ? 0x44 : 0x45) : b === 0x78 ? 0x64 : 0x65;
          this.escape = 0;
        } else if (b === 0x45 || b === 0x65) {
          this.escape = b;
          continue;
        }
      }
      if (this.buf.length < 4096) this.buf.push(value);
    }
  }

  private finish(): void {
    const f = Buffer.from(this.buf);
    const n = f.length;
    if (n < 16 || Number(f.toString('latin1', 1, 6)) !== n || f[6] !== STX) return;
    let sum = 0;
    for (let i = 0; i < n - 6; i++) sum = (sum + f[i]!) & 0xff;
    if (Number(f.toString('latin1', n - 6, n - 1)) !== sum) return; // corrupt: a ComDevice stays silent
    const text = f.toString('utf8', 7, n - 7);
    const gt = text.indexOf('>');
    if (gt < 0) return;
    this.onRequest(text.slice(0, gt), text.slice(gt + 1));
  }
}

interface PumpProfile {
  readonly drug: string;
  readonly shortName: string;
  readonly drugId: string;
  readonly rate: number;
  readonly syringe: number | null;
  readonly vtbi: number | null;
  readonly serial: number;
}

const PROFILES: readonly PumpProfile[] = [
  { drug: 'Noradrenalin4mg/50', shortName: 'Norad', drugId: '33~4mg/5002', rate: 3.2, syringe: 50, vtbi: null, serial: 40864 },
  { drug: 'Propofol1%', shortName: 'Propof', drugId: '41~10mg/ml', rate: 15, syringe: 50, vtbi: null, serial: 1815 },
  { drug: 'NaCl0.9%', shortName: 'NaCl', drugId: '12~0.9%', rate: 80, syringe: null, vtbi: 1000, serial: 36248 },
];

/** One pump: drifting rate, growing volume, an occlusion now and then. */
class Pump {
  private readonly rate: Drift;
  private infused = 0;
  private last = 0;
  private occlusion = 0;

  constructor(
    readonly slot: string,
    private readonly profile: PumpProfile,
    private readonly rnd: Rng,
    private readonly episodes: boolean,
  ) {
    this.rate = new Drift(rnd, profile.rate, profile.rate * 0.02, profile.rate * 0.5, profile.rate * 1.5);
  }

  /** The pump's records for one block. */
  records(t: number, now: number): string[] {
    const dt = this.last === 0 ? 0 : now - this.last;
    this.last = now;
    if (this.episodes && this.occlusion === 0 && this.rnd() < 1 / 200) this.occlusion = 3 + Math.floor(this.rnd() * 5);
    const occluded = this.occlusion > 0;
    if (occluded) this.occlusion--;
    const rate = Math.round(this.rate.next(dt) * 100) / 100;
    if (!occluded) this.infused += (rate * dt) / 3_600_000;
    const p = this.profile;
    const address = `501${this.slot}`;
    const remainingMin = p.vtbi !== null ? Math.max(0, Math.round(((p.vtbi - this.infused) / rate) * 60)) : 65535;
    const r = (parameter: string, value: string | number) => `${t},${address},${parameter},${value}`;
    const out = [
      r('GNNEW', '688F030006'),
      r('INRT', rate.toFixed(2)),
      r('INSOL', p.drug),
      r('INSOLSN', `${p.shortName}\ue021`), // a pump display glyph (Unicode private use), as real pumps send
      r('INSOLID', p.drugId),
      r('INVOLACT', p.syringe !== null ? Math.max(0, p.syringe - this.infused).toFixed(2) : '_NV'),
      r('INRMT', remainingMin),
      r('INDCON', 0),
      r('INDCONU', 32),
      r('INDORT', 0),
      r('INDORTU', 50),
      r('INVI', this.infused.toFixed(1)),
      r('INVTB', p.vtbi ?? '_NV'),
      r('INP1', 4),
      r('INP2', occluded ? 95 : 20 + Math.round(this.rnd() * 10)),
      r('INSYR', p.syringe ?? '_NV'),
      r('INSERNUM', p.serial),
      r('DSSTATUS', '00051'),
      r('PATW', 72),
      r('INM1', 0),
      r('INM2', 0),
      r('INM3', occluded ? 0 : 1),
      r('INM4', '_NV'),
      r('INM6', 0),
      r('INM8', 1),
    ];
    for (let i = 1; i <= 15; i++) out.push(r(`INA${i}`, i === 3 && occluded ? 1 : i === 6 || i === 10 || i === 13 ? '_NV' : 0));
    return out;
  }
}

/**
 * Starts the ComDevice. Resolves once its end of the line is open (or its TCP port listens:
 * see `tcpPort` of the result).
 */
export async function startBbraunSimulator(options: BbraunSimulatorOptions = {}): Promise<SerialSimulator> {
  const seed = options.seed ?? Math.floor(Math.random() * 2 ** 32);
  const rnd = mulberry32(seed);
  const faultRnd = mulberry32(seed ^ 0x5eed);
  const plan = new FaultPlan(faultRnd, options.faults ?? [], options.faultRate ?? (options.faults?.length ? 0.05 : 0));
  const stats = emptyStats();
  const bedId = options.bedId ?? 'ComSystem';
  const stuffing = options.stuffing ?? true;
  const header = `${bedId}/1/1`;
  const pauseMs = options.pauseMs ?? 4000;
  const unplugMs = options.unplugMs ?? 3000;
  const ackTimeoutMs = options.ackTimeoutMs ?? 2000;
  const slots = options.slots ?? ['11', '12', '13'];
  const pumps = slots.map((slot, i) => new Pump(slot, PROFILES[i % PROFILES.length]!, rnd, options.episodes ?? true));
  const started = Date.now();
  const uptime = () => 200 + Math.floor((Date.now() - started) / 1000); // BCC: seconds since power-on
  let deafUntil = 0;
  let stopped = false;
  let link: SimLink | null = null;
  /** Blocks of the answer being sent; the next goes out on ACK. */
  let answer: Buffer[] = [];
  let answerTimer: NodeJS.Timeout | null = null;

  const send = (bytes: Buffer) => {
    if (link?.write(bytes)) stats.bytesSent += bytes.length;
  };

  const sendBlock = (block: Buffer) => {
    const fault = plan.next();
    if (fault) stats.faults[fault]++;
    switch (fault) {
      case 'garbage': {
        const junk = noise(faultRnd, 8 + Math.floor(faultRnd() * 24)).map((b) => (b === SOH || b === EOT || b === ACK || b === NAK ? 0x78 : b));
        send(Buffer.concat([junk, block]));
        break;
      }
      case 'bad-checksum': {
        // Damage one digit of the check (the host NAKs, the block is sent again intact).
        const bad = Buffer.from(block);
        const at = bad.length - 2;
        bad[at] = bad[at] === 0x30 ? 0x31 : 0x30;
        send(bad);
        break;
      }
      case 'truncated':
        send(block.subarray(0, Math.floor(block.length / 2)));
        break;
      case 'huge':
        send(Buffer.concat([Buffer.from([SOH]), Buffer.alloc(40_000, 0x41)]));
        send(block);
        break;
      case 'pause':
        deafUntil = Date.now() + pauseMs;
        answer = [];
        return;
      case 'unplug':
        deafUntil = Date.now() + unplugMs + 200;
        answer = [];
        if (link) void unplugFor(unplugMs, pty, link);
        return;
      default:
        send(block);
    }
    stats.framesSent++;
    options.onProgress?.(stats);
    if (answerTimer) clearTimeout(answerTimer);
    answerTimer = setTimeout(() => {
      answer = []; // no ACK: the host gave up; so does the ComDevice
    }, ackTimeoutMs);
  };

  const respond = (infos: string[]) => {
    answer = infos.map((info, i) => bccFrame(header, info, { final: i === infos.length - 1, stuffing }));
    sendBlock(answer[0]!);
  };

  const onRequest = (_header: string, info: string) => {
    if (Date.now() < deafUntil) return;
    stats.requests++;
    const t = uptime();
    const now = Date.now();
    const m = /^([A-Z]+):([A-Z0-9#]+)$/.exec(info);
    const command = m ? `${m[1]}:${m[2]}` : '';
    if (command === 'ADMIN:ALIVE') return respond([`${t},50100,GNACK,0`]);
    if (command === 'ADMIN:VERSION') return respond([`${t},50100,V3.30`]);
    if (command === 'MEM:GET') {
      const comdevice = [`${t},50100,FMNOR,1`, `${t},50100,FMSTAT,00051`, `${t},50100,FMDONGLE,T`];
      const blocks = pumps.map((pump, i) => [...(i === 0 ? comdevice : []), ...pump.records(t, now)].join(RS));
      return respond(blocks.length > 0 ? blocks : [comdevice.join(RS)]);
    }
    const slot = /^MEM:GETSLOT#([1-3][1-9A-O])$/.exec(command);
    if (slot) {
      const pump = pumps.find((p) => p.slot === slot[1]);
      return respond([pump ? pump.records(t, now).join(RS) : `${t},501${slot[1]},GNERR,3`]);
    }
    return respond([`${t},50100,GNERR,1`]);
  };

  const onControl = (byte: number) => {
    if (Date.now() < deafUntil || answer.length === 0) return;
    if (byte === NAK) {
      stats.naks++;
      sendBlock(answer[0]!); // BCC: NAK → the same block again
      return;
    }
    stats.acks++;
    answer.shift();
    if (answerTimer) clearTimeout(answerTimer);
    answerTimer = null;
    if (answer.length > 0) sendBlock(answer[0]!);
  };

  const reader = new HostReader(stuffing, onRequest, onControl);
  const pty: PtyPair | null = options.path || options.tcpPort !== undefined ? null : await createPtyPair();
  link = await SimLink.open({
    ...(options.tcpPort !== undefined ? { tcpPort: options.tcpPort } : { path: options.path ?? pty!.simulatorPath }),
    baudRate: options.baudRate ?? 9600,
    onData: (chunk) => reader.push(chunk),
  });
  const tcpPort = link.tcpPort();

  return {
    devicePath: pty?.devicePath ?? null,
    tcpPort,
    stats,
    inject: (fault) => plan.inject(fault),
    async stop() {
      if (stopped) return;
      stopped = true;
      if (answerTimer) clearTimeout(answerTimer);
      await link?.close();
      await pty?.stop();
    },
  };
}
