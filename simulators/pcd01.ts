/**
 * IHE PCD-01 device simulator: patient monitors and infusion pumps that send HL7 v2.6
 * ORU^R01 over MLLP, as a real bedside gateway or device does.
 *
 * Two parts, usable on their own:
 * - `createPcd01Generator()` makes deterministic messages from a seed (plausible values drifting
 *   slowly, correct 11073 containment, EUI-64 device ids, fake Danish patients), with faults on
 *   request. Benchmarks and tests use it without any socket.
 * - `runPcd01Simulation()` plays the devices against a gateway over TCP: one connection per
 *   device (or fewer), a rate per device, a window of unacknowledged messages per connection,
 *   ACK matching (MSA-2 ↔ MSH-10), timeouts, reconnects with backoff, and a report with ACK
 *   counts and latency percentiles.
 *
 * The simulator is an independent peer, like a real device: it uses only the MLLP codec of the
 * gateway, and reads ACKs with its own tiny reader (`readMsa`), never the gateway's HL7 code.
 *
 * Patients are fake: random CPR-shaped numbers and Danish-island surnames (`Ærø^Søren`).
 */
import { formatHl7Time, zoneOffsets } from '../src/codec/hl7-time.js';
import { gaussian, mixSeed, mulberry32, type Rng } from './random.js';
import { connect, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { DEFAULT_MAX_MESSAGE_BYTES, encodeFrame, MllpDecoder } from '../src/codec/mllp.js';

// ── options and vocabulary ──────────────────────────────────────────────────

/**
 * Which devices to simulate:
 * - `monitor`: multiparameter monitors, 10 OBX per message (MDS row + 9 vital signs);
 * - `obx20`: the same monitors sending their whole containment tree (MDS, VMD and channel rows
 *   plus the metrics), 20 OBX per message, like real gateways;
 * - `pump`: large-volume infusion pumps, 13 OBX (rate, volume infused, VTBI, drug name, …);
 * - `mixed`: monitors and pumps, 3 : 1; a pump stands at the bed of the monitor before it.
 */
export type Pcd01Profile = 'monitor' | 'obx20' | 'pump' | 'mixed';
/** All profiles, for option parsing. */
export const PCD01_PROFILES: readonly Pcd01Profile[] = ['monitor', 'obx20', 'pump', 'mixed'];

/** Message encoding: `utf8` declares MSH-18 `UNICODE UTF-8`, `latin1` declares `8859/1`. */
export type Pcd01Charset = 'utf8' | 'latin1';

/** OBX-6 style: MDC (`266016^MDC_DIM_MMHG^MDC`), UCUM (`mm[Hg]^mm[Hg]^UCUM`) or both in one CWE. */
export type Pcd01UnitStyle = 'mdc' | 'ucum' | 'both';

/**
 * Faults the simulator can inject, each once per faulted message:
 * - `bad-value`: one NM row carries `abc` (→ the gateway should answer AE or dead-letter the row);
 * - `garbage`: a run of junk bytes on the wire before the frame (→ MLLP_GARBAGE, frame still ACKed);
 * - `truncated`: the frame is cut short and the next frame starts (→ MLLP_TRUNCATED, no ACK);
 * - `oversize`: a waveform OBX makes the message larger than `oversizeBytes` (→ AR);
 * - `wrong-charset`: latin1 bytes in a message that declares UTF-8 (→ HL7_BAD_CHARSET);
 * - `unknown-code`: an extra OBX with an MDC code no table knows (→ unmapped, dead letter).
 */
export type Pcd01Fault = 'bad-value' | 'garbage' | 'truncated' | 'oversize' | 'wrong-charset' | 'unknown-code';
/** All faults, for option parsing. */
export const PCD01_FAULTS: readonly Pcd01Fault[] = [
  'bad-value',
  'garbage',
  'truncated',
  'oversize',
  'wrong-charset',
  'unknown-code',
];

/** The MDC code the `unknown-code` fault sends (partition 2, term 65000: not in any table). */
export const UNKNOWN_MDC_CODE = 196072;

/** Options of `createPcd01Generator`. Every field is optional; defaults are given per field. */
export interface Pcd01GeneratorOptions {
  /** Number of simulated devices. Default 1. */
  readonly devices?: number;
  /** Device mix and message layout. Default `mixed`. */
  readonly profile?: Pcd01Profile;
  /** Message charset. Default `utf8`. */
  readonly charset?: Pcd01Charset;
  /** OBX-6 unit style. Default `mdc` (what IHE PCD TF-2 requires; UCUM is optional there). */
  readonly units?: Pcd01UnitStyle;
  /** PRNG seed: the same seed, options and clock give the same messages. Default: random. */
  readonly seed?: number;
  /** Virtual clock start (epoch ms) when `now` is not given. Default: now, whole second. */
  readonly startTime?: number;
  /** Virtual time between two messages of one device, ms. Default 1000 (monitors send at 1 Hz). */
  readonly intervalMs?: number;
  /** A real clock (e.g. `Date.now`); then message times are read from it, not virtual. */
  readonly now?: () => number;
  /** Time between two NIBP measurements of a monitor, ms. Default 300 000 (5 min). */
  readonly nibpIntervalMs?: number;
  /** Faults to inject (at random, `faultRate` of the messages). Default none. */
  readonly faults?: readonly Pcd01Fault[];
  /** Fraction of messages that get one of `faults`. Default 0.01 when `faults` is set. */
  readonly faultRate?: number;
  /** Faults at fixed message numbers (0-based, counted over all devices): exact, for tests. */
  readonly faultSchedule?: Readonly<Record<number, Pcd01Fault>>;
  /** Size the `oversize` fault exceeds, bytes. Default 1 MiB + 64 KiB (the gateway default + margin). */
  readonly oversizeBytes?: number;
  /** Fixed UTC offset of message times, minutes. Default: Europe/Copenhagen (CET/CEST rules). */
  readonly utcOffsetMinutes?: number;
}

/** One simulated device. */
export interface SimulatedDevice {
  readonly index: number;
  readonly kind: 'monitor' | 'pump';
  /** EUI-64 (16 hex digits), sent in MSH-3 and OBX-18. Locally administered, never a real vendor's. */
  readonly eui64: string;
  /** PV1-3 point of care, `ICU^<room>^<bed>`. */
  readonly location: string;
}

/** One generated message, with what the sender needs to put it on the wire. */
export interface Pcd01Message {
  /** Message number over all devices, from 0. */
  readonly seq: number;
  /** Index of the device that sent it. */
  readonly device: number;
  /** The device's EUI-64. */
  readonly deviceId: string;
  /** MSH-10, unique per generator run (device, start time and sequence). */
  readonly controlId: string;
  /** Observation time, epoch ms. */
  readonly time: number;
  /** The fault injected into this message, if any. */
  readonly fault: Pcd01Fault | null;
  /** The HL7 message (CR-terminated segments), encoded as MSH-18 says (except `wrong-charset`). */
  readonly bytes: Buffer;
  /** What goes on the TCP connection: the MLLP frame, with junk before it or cut short when faulted. */
  readonly wire: Buffer;
  /** False when no ACK can come (a truncated frame). */
  readonly expectAck: boolean;
}

/** A deterministic PCD-01 message source. */
export interface Pcd01Generator {
  readonly devices: readonly SimulatedDevice[];
  /** The next message of the next device (round robin), as HL7 bytes. */
  next(): Buffer;
  /** The next message of `device` (default: round robin), with its wire form. */
  nextMessage(device?: number): Pcd01Message;
}

const uniform = (rnd: Rng, lo: number, hi: number) => lo + (hi - lo) * rnd();
const pick = <T>(rnd: Rng, items: readonly T[]): T => items[Math.floor(rnd() * items.length)] as T;


// ── units and metrics (codes checked against shared/corpus/mdc-loinc-ucum.csv) ──────────────

interface Unit {
  readonly mdc: number;
  readonly refid: string;
  readonly ucum: string;
}

const U = {
  BPM: { mdc: 264864, refid: 'MDC_DIM_BEAT_PER_MIN', ucum: '/min' },
  RPM: { mdc: 264928, refid: 'MDC_DIM_RESP_PER_MIN', ucum: '/min' },
  PERCENT: { mdc: 262688, refid: 'MDC_DIM_PERCENT', ucum: '%' },
  MMHG: { mdc: 266016, refid: 'MDC_DIM_MMHG', ucum: 'mm[Hg]' },
  DEGC: { mdc: 268192, refid: 'MDC_DIM_DEGC', ucum: 'Cel' },
  ML_PER_H: { mdc: 265266, refid: 'MDC_DIM_MILLI_L_PER_HR', ucum: 'mL/h' },
  ML: { mdc: 263762, refid: 'MDC_DIM_MILLI_L', ucum: 'mL' },
  MG_PER_ML: { mdc: 264306, refid: 'MDC_DIM_MILLI_G_PER_ML', ucum: 'mg/mL' },
  MIN: { mdc: 264352, refid: 'MDC_DIM_MIN', ucum: 'min' },
  DIMLESS: { mdc: 262656, refid: 'MDC_DIM_DIMLESS', ucum: '1' },
} as const satisfies Record<string, Unit>;

/** A row of the 11073 containment tree: MDS, VMD or channel (OBX-11 `X`, no value). */
interface DeviceRow {
  readonly row: 'device';
  readonly code: number;
  readonly refid: string;
  /** PCD-01: OBX-4 is the containment path MDS.VMD.CHAN.METRIC. */
  readonly path: string;
}

/** Monitor metrics, named for the state that feeds them. */
type MonitorMetric = 'hr' | 'rr' | 'spo2' | 'pr' | 'sys' | 'dia' | 'mean' | 'temp' | 'etco2';
/** Pump metrics. */
type PumpMetric = 'status' | 'flowNow' | 'drug' | 'rate' | 'conc' | 'vtbi' | 'remain' | 'delivered' | 'timeLeft';

interface MetricRow<K extends string> {
  readonly row: 'metric';
  readonly key: K;
  readonly type: 'NM' | 'ST' | 'CWE';
  readonly code: number;
  readonly refid: string;
  readonly path: string;
  readonly unit: Unit | null;
  readonly decimals: number;
  /** OBX-7 alarm limits `low-high` (monitors send them), or ''. */
  readonly limits: readonly [number, number] | null;
}

const dev = (code: number, refid: string, path: string): DeviceRow => ({ row: 'device', code, refid, path });
function nm<K extends string>(
  key: K,
  code: number,
  refid: string,
  path: string,
  unit: Unit,
  decimals = 0,
  limits: readonly [number, number] | null = null,
): MetricRow<K> {
  return { row: 'metric', key, type: 'NM', code, refid, path, unit, decimals, limits };
}
function text<K extends string>(key: K, type: 'ST' | 'CWE', code: number, refid: string, path: string): MetricRow<K> {
  return { row: 'metric', key, type, code, refid, path, unit: null, decimals: 0, limits: null };
}

const MONITOR_MDS = dev(69965, 'MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS', '1.0.0.0');
const PUMP_MDS = dev(69985, 'MDC_DEV_PUMP_INFUS_MDS', '1.0.0.0');

/**
 * The monitor's whole tree (the `obx20` profile: 20 OBX). The `monitor` profile sends the MDS
 * row and the metrics only, with the same OBX-4 paths.
 */
const MONITOR_TREE: readonly (DeviceRow | MetricRow<MonitorMetric>)[] = [
  MONITOR_MDS,
  dev(69798, 'MDC_DEV_ECG_VMD', '1.1.0.0'),
  dev(69799, 'MDC_DEV_ECG_CHAN', '1.1.1.0'),
  nm('hr', 147842, 'MDC_ECG_HEART_RATE', '1.1.1.1', U.BPM, 0, [50, 120]),
  // Respiration from the ECG leads' impedance; Philips reports it in the ECG channel too.
  nm('rr', 151562, 'MDC_RESP_RATE', '1.1.1.2', U.RPM, 0, [8, 30]),
  dev(69642, 'MDC_DEV_ANALY_SAT_O2_VMD', '1.2.0.0'),
  dev(69643, 'MDC_DEV_ANALY_SAT_O2_CHAN', '1.2.1.0'),
  nm('spo2', 150456, 'MDC_PULS_OXIM_SAT_O2', '1.2.1.1', U.PERCENT, 0, [90, 100]),
  nm('pr', 149530, 'MDC_PULS_OXIM_PULS_RATE', '1.2.1.2', U.BPM, 0, [50, 120]),
  dev(70686, 'MDC_DEV_PRESS_BLD_NONINV_VMD', '1.3.0.0'),
  dev(70687, 'MDC_DEV_PRESS_BLD_NONINV_CHAN', '1.3.1.0'),
  nm('sys', 150021, 'MDC_PRESS_BLD_NONINV_SYS', '1.3.1.1', U.MMHG, 0, [90, 160]),
  nm('dia', 150022, 'MDC_PRESS_BLD_NONINV_DIA', '1.3.1.2', U.MMHG, 0, [50, 90]),
  nm('mean', 150023, 'MDC_PRESS_BLD_NONINV_MEAN', '1.3.1.3', U.MMHG, 0, [65, 110]),
  dev(69902, 'MDC_DEV_METER_TEMP_VMD', '1.4.0.0'),
  dev(69903, 'MDC_DEV_METER_TEMP_CHAN', '1.4.1.0'),
  nm('temp', 150364, 'MDC_TEMP_BODY', '1.4.1.1', U.DEGC, 1, [35.5, 38.5]),
  dev(69650, 'MDC_DEV_ANALY_CONC_GAS_MULTI_PARAM_VMD', '1.5.0.0'),
  dev(69651, 'MDC_DEV_ANALY_CONC_GAS_MULTI_PARAM_CHAN', '1.5.1.0'),
  nm('etco2', 151708, 'MDC_CONC_AWAY_CO2_ET', '1.5.1.1', U.MMHG, 0, [25, 50]),
];
const MONITOR_FLAT = MONITOR_TREE.filter((r) => r.row === 'metric' || r === MONITOR_MDS);

/** An infusion pump as B. Braun's SpaceStation reports one: delivery channel, then the source. */
const PUMP_TREE: readonly (DeviceRow | MetricRow<PumpMetric>)[] = [
  PUMP_MDS,
  dev(69986, 'MDC_DEV_PUMP_INFUS_VMD', '1.1.0.0'),
  dev(70067, 'MDC_DEV_PUMP_DELIVERY_INFO', '1.1.1.0'),
  text('status', 'CWE', 184519, 'MDC_PUMP_INFUSING_STATUS', '1.1.1.1'),
  nm('flowNow', 158014, 'MDC_FLOW_FLUID_PUMP_CURRENT', '1.1.1.2', U.ML_PER_H, 1),
  dev(70071, 'MDC_DEV_PUMP_INFUSATE_SOURCE_PRIMARY', '1.1.2.0'),
  text('drug', 'ST', 184514, 'MDC_DRUG_NAME_LABEL', '1.1.2.1'),
  nm('rate', 157784, 'MDC_FLOW_FLUID_PUMP', '1.1.2.2', U.ML_PER_H, 1),
  nm('conc', 157760, 'MDC_CONC_DRUG', '1.1.2.3', U.MG_PER_ML, 3),
  nm('vtbi', 157884, 'MDC_VOL_FLUID_TBI', '1.1.2.4', U.ML, 0),
  nm('remain', 157872, 'MDC_VOL_FLUID_TBI_REMAIN', '1.1.2.5', U.ML, 1),
  nm('delivered', 157993, 'MDC_VOL_FLUID_DELIV_TOTAL', '1.1.2.6', U.ML, 1),
  nm('timeLeft', 157916, 'MDC_TIME_PD_REMAIN', '1.1.2.7', U.MIN, 0),
];

/** Infusions a pump may run: name (ST), concentration, rate range and container. */
const DRUGS: readonly { name: string; mgPerMl: number; rate: readonly [number, number]; volume: number }[] = [
  { name: 'Noradrenalin', mgPerMl: 0.1, rate: [2, 15], volume: 50 },
  { name: 'Propofol', mgPerMl: 10, rate: [5, 25], volume: 50 },
  { name: 'Morfin', mgPerMl: 1, rate: [1, 5], volume: 50 },
  { name: 'Furosemid', mgPerMl: 10, rate: [1, 4], volume: 50 },
  { name: 'Dexmedetomidin', mgPerMl: 0.004, rate: [2, 10], volume: 50 },
  { name: 'Natriumklorid 9 mg/ml', mgPerMl: 9, rate: [50, 125], volume: 1000 },
  { name: 'Glukose 50 mg/ml', mgPerMl: 50, rate: [40, 100], volume: 500 },
];

// Fake patients: surnames are Danish islands, so no real person is named; all carry æ, ø or å
// so that a charset error always shows.
const SURNAMES = [
  'Ærø', 'Læsø', 'Fanø', 'Rømø', 'Mandø', 'Fænø', 'Bågø', 'Årø', 'Strynø', 'Hjarnø', 'Drejø', 'Lyø', 'Thurø', 'Avernakø',
];
const GIVEN_MALE = ['Søren', 'Bjørn', 'Jørgen', 'Åge', 'Øjvind', 'Mads', 'Niels', 'Torben'];
const GIVEN_FEMALE = ['Åse', 'Søs', 'Mette', 'Birthe', 'Bente', 'Jytte', 'Kirsten', 'Hanne'];

// ── time ────────────────────────────────────────────────────────────────────

/** Message times carry the Danish offset (CET/CEST), from the gateway's own zone rules. */
const COPENHAGEN = zoneOffsets('Europe/Copenhagen');

const pad = (n: number, width = 2) => String(n).padStart(width, '0');


/** HL7 v2 escaping of a text value (ST): the delimiters `|^~\&` become escape sequences. */
function escapeHl7(text: string): string {
  return text.replace(/[\\|^~&]/g, (c) => ({ '\\': '\\E\\', '|': '\\F\\', '^': '\\S\\', '~': '\\R\\', '&': '\\T\\' })[c] as string);
}

// ── device state ────────────────────────────────────────────────────────────

/**
 * A vital sign that drifts: an Ornstein–Uhlenbeck walk around the patient's own baseline
 * (pulled back over ~5 minutes), clamped to physiological bounds.
 */
class Drift {
  value: number;
  constructor(
    readonly mean: number,
    readonly sd: number,
    readonly lo: number,
    readonly hi: number,
  ) {
    this.value = mean;
  }

  step(rnd: Rng, dtSeconds: number): number {
    const theta = 1 / 300; // mean reversion rate, 1/s
    const dt = Math.min(Math.max(dtSeconds, 0), 3600);
    const sigma = this.sd * Math.sqrt(2 * theta); // stationary s.d. = sd
    const next = this.value + theta * (this.mean - this.value) * dt + sigma * Math.sqrt(dt) * gaussian(rnd);
    this.value = Math.min(this.hi, Math.max(this.lo, next));
    return this.value;
  }
}

interface Patient {
  readonly cpr: string;
  readonly surname: string;
  readonly given: string;
  readonly birth: string;
  readonly sex: 'M' | 'F';
}

/** A fake patient with a CPR-shaped number (DDMMYY-SSSS; odd last digit = male, as in CPR). */
function fakePatient(rnd: Rng): Patient {
  const born = Date.UTC(1935, 0, 1) + Math.floor(rnd() * (Date.UTC(2005, 0, 1) - Date.UTC(1935, 0, 1)));
  const d = new Date(born);
  const serial = Math.floor(rnd() * 10_000);
  const sex = serial % 2 === 1 ? 'M' : 'F';
  return {
    cpr: `${pad(d.getUTCDate())}${pad(d.getUTCMonth() + 1)}${pad(d.getUTCFullYear() % 100)}${pad(serial, 4)}`,
    surname: pick(rnd, SURNAMES),
    given: pick(rnd, sex === 'M' ? GIVEN_MALE : GIVEN_FEMALE),
    birth: `${d.getUTCFullYear()}${pad(d.getUTCMonth() + 1)}${pad(d.getUTCDate())}`,
    sex,
  };
}

interface DeviceState {
  readonly device: SimulatedDevice;
  readonly rnd: Rng;
  readonly patient: Patient;
  /** Messages sent by this device. */
  count: number;
  /** Time of the previous message (epoch ms), for the drift step. */
  last: number;
  readonly monitor: MonitorState | null;
  readonly pump: PumpState | null;
}

interface MonitorState {
  readonly hr: Drift;
  readonly rr: Drift;
  readonly spo2: Drift;
  readonly temp: Drift;
  readonly etco2: Drift;
  readonly sysBase: number;
  readonly diaRatio: number;
  nibp: { sys: number; dia: number; mean: number; time: number };
}

interface PumpState {
  drug: (typeof DRUGS)[number];
  rate: number;
  vtbi: number;
  delivered: number;
  /** Next titration (rate change), epoch ms. */
  nextTitration: number;
}

function newMonitor(rnd: Rng, start: number, nibpIntervalMs: number): MonitorState {
  const m: MonitorState = {
    hr: new Drift(uniform(rnd, 62, 95), 4, 35, 180),
    rr: new Drift(uniform(rnd, 12, 20), 1.5, 4, 45),
    spo2: new Drift(uniform(rnd, 94, 99), 1, 80, 100),
    temp: new Drift(uniform(rnd, 36.4, 37.6), 0.15, 34, 41.5),
    etco2: new Drift(uniform(rnd, 34, 42), 1.5, 15, 70),
    sysBase: uniform(rnd, 105, 140),
    diaRatio: uniform(rnd, 0.55, 0.68),
    nibp: { sys: 0, dia: 0, mean: 0, time: 0 },
  };
  // The last cuff measurement happened some time before the simulation started.
  measureNibp(m, rnd, start - Math.floor(rnd() * nibpIntervalMs));
  return m;
}

function measureNibp(m: MonitorState, rnd: Rng, time: number): void {
  const sys = Math.round(Math.min(240, Math.max(60, m.sysBase + 6 * gaussian(rnd))));
  const dia = Math.round(Math.min(140, Math.max(30, sys * m.diaRatio + 3 * gaussian(rnd))));
  m.nibp = { sys, dia, mean: Math.round(dia + (sys - dia) / 3), time: Math.floor(time / 1000) * 1000 };
}

function newPump(rnd: Rng, start: number): PumpState {
  const drug = pick(rnd, DRUGS);
  return {
    drug,
    rate: roundTo(uniform(rnd, drug.rate[0], drug.rate[1]), 1),
    vtbi: drug.volume,
    delivered: roundTo(uniform(rnd, 0, drug.volume * 0.8), 1),
    nextTitration: start + uniform(rnd, 5, 30) * 60_000,
  };
}

function stepPump(p: PumpState, rnd: Rng, time: number, dtSeconds: number): void {
  p.delivered += (p.rate * Math.min(Math.max(dtSeconds, 0), 3600)) / 3600;
  if (p.delivered >= p.vtbi) {
    // Container empty: the nurse hangs a new one of the same infusion.
    p.delivered = 0;
  }
  if (time >= p.nextTitration) {
    const [lo, hi] = p.drug.rate;
    p.rate = roundTo(Math.min(hi, Math.max(lo, p.rate * uniform(rnd, 0.85, 1.15))), 1);
    p.nextTitration = time + uniform(rnd, 5, 30) * 60_000;
  }
}

const roundTo = (x: number, decimals: number) => Number(x.toFixed(decimals));

// ── message building ────────────────────────────────────────────────────────

const MSH21 = 'IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO';
const CPR_AUTHORITY = '&1.2.208.176.1.2&ISO';

function unitField(unit: Unit | null, style: Pcd01UnitStyle): string {
  if (unit === null) return '';
  const mdc = `${unit.mdc}^${unit.refid}^MDC`;
  const ucum = `${unit.ucum}^${unit.ucum}^UCUM`;
  return style === 'mdc' ? mdc : style === 'ucum' ? ucum : `${mdc}^${ucum}`;
}

/** An NM value with at most `decimals` decimals, without trailing zeros (`5`, `0.004`, `36.8`). */
function formatValue(value: number, decimals: number): string {
  return decimals === 0 ? String(Math.round(value)) : String(Number(value.toFixed(decimals)));
}

interface BuildContext {
  readonly state: DeviceState;
  readonly time: number;
  readonly controlId: string;
  readonly charsetField: string;
  readonly offset: number;
  readonly units: Pcd01UnitStyle;
  readonly fault: Pcd01Fault | null;
  readonly oversizeBytes: number;
}

/** Values of this message's metrics, by key (numbers for NM, text for ST/CWE). */
function monitorValues(m: MonitorState, rnd: Rng, time: number, dt: number, nibpIntervalMs: number): Record<MonitorMetric, number> {
  const hr = m.hr.step(rnd, dt);
  if (time - m.nibp.time >= nibpIntervalMs) measureNibp(m, rnd, time);
  return {
    hr,
    pr: Math.min(180, Math.max(35, hr + gaussian(rnd))),
    rr: m.rr.step(rnd, dt),
    spo2: m.spo2.step(rnd, dt),
    temp: m.temp.step(rnd, dt),
    etco2: m.etco2.step(rnd, dt),
    sys: m.nibp.sys,
    dia: m.nibp.dia,
    mean: m.nibp.mean,
  };
}

function pumpValues(p: PumpState): Record<PumpMetric, number | string> {
  const remain = Math.max(0, p.vtbi - p.delivered);
  return {
    status: '^pump-status-infusing',
    flowNow: p.rate,
    drug: p.drug.name,
    rate: p.rate,
    conc: p.drug.mgPerMl,
    vtbi: p.vtbi,
    remain,
    delivered: p.delivered,
    timeLeft: p.rate > 0 ? (remain / p.rate) * 60 : 0,
  };
}

/** Builds the segments of one ORU^R01 (without the fault-specific encoding). */
function buildSegments(
  ctx: BuildContext,
  rows: readonly (DeviceRow | MetricRow<string>)[],
  values: Readonly<Record<string, number | string>>,
  badRow: number,
): string[] {
  const { state, time, controlId } = ctx;
  const { device, patient } = state;
  const eui = device.eui64;
  const ts = formatHl7Time(time, ctx.offset);
  const equipment = `${eui}^^${eui}^EUI-64`; // PCD-01: OBX-18 EI with the EUI-64
  const app = device.kind === 'monitor' ? 'MDI_SIM_MONITOR' : 'MDI_SIM_PUMP';
  const mds = device.kind === 'monitor' ? MONITOR_MDS : PUMP_MDS;
  const nibpTime = state.monitor === null ? ts : formatHl7Time(state.monitor.nibp.time, ctx.offset);

  const segments = [
    // PCD-01: MSH-3 names the sending device by EUI-64; MSH-15/16 AL/NE (original-mode ACK
    // always); MSH-18 the charset; MSH-21 the PCD-01 profile.
    `MSH|^~\\&|${app}^${eui}^EUI-64|MDI_SIM|||${ts}||ORU^R01^ORU_R01|${controlId}|P|2.6|||AL|NE||${ctx.charsetField}|da^Danish^ISO639||${MSH21}`,
    // PID-3 CX: ID ^ check digit ^ scheme ^ assigning authority (HD with the CPR OID) ^ type NNDNK.
    `PID|||${patient.cpr}^^^${CPR_AUTHORITY}^NNDNK||${escapeHl7(patient.surname)}^${escapeHl7(patient.given)}^^^^^L||${patient.birth}|${patient.sex}`,
    `PV1||I|${device.location}`,
    `OBR|1|${controlId}^${app}^${eui}^EUI-64|${controlId}^${app}^${eui}^EUI-64|${mds.code}^${mds.refid}^MDC|||${ts}`,
  ];
  let n = 0;
  for (const r of rows) {
    n++;
    if (r.row === 'device') {
      // Containment rows: no value, OBX-11 X; the MDS row names the equipment.
      segments.push(`OBX|${n}||${r.code}^${r.refid}^MDC|${r.path}|||||||X${r === mds ? `|||||||${equipment}` : ''}`);
      continue;
    }
    const raw = values[r.key];
    let value: string;
    let flag = '';
    if (typeof raw === 'number') {
      value = formatValue(raw, r.decimals);
      if (r.limits !== null) {
        const v = Number(value);
        flag = v < r.limits[0] ? 'L' : v > r.limits[1] ? 'H' : '';
      }
    } else {
      value = r.type === 'ST' ? escapeHl7(raw ?? '') : (raw ?? '');
    }
    if (n === badRow) value = 'abc';
    const limits = r.limits === null ? '' : `${r.limits[0]}-${r.limits[1]}`;
    // NIBP rows carry the time of the cuff measurement, not of the message.
    const obsTime = r.key === 'sys' || r.key === 'dia' || r.key === 'mean' ? nibpTime : ts;
    segments.push(
      `OBX|${n}|${r.type}|${r.code}^${r.refid}^MDC|${r.path}|${value}|${unitField(r.unit, ctx.units)}|${limits}|${flag}|||R|||${obsTime}||||${equipment}`,
    );
  }
  if (ctx.fault === 'unknown-code') {
    n++;
    segments.push(
      `OBX|${n}|NM|${UNKNOWN_MDC_CODE}^MDC_SIM_UNKNOWN_METRIC^MDC|1.0.0.1|42|${unitField(U.DIMLESS, ctx.units)}||||||R|||${ts}||||${equipment}`,
    );
  }
  if (ctx.fault === 'oversize') {
    // A pleth waveform (NA, numeric array) long enough to pass the limit: what really makes
    // monitor messages huge.
    n++;
    const prefix = `OBX|${n}|NA|150452^MDC_PULS_OXIM_PLETH^MDC|1.2.1.3|`;
    const suffix = `|${unitField(U.DIMLESS, ctx.units)}||||||R|||${ts}||||${equipment}`;
    // Raw ADC counts, always 4 digits: with '^' 5 bytes a sample, so the size is certain.
    const sampleCount = Math.ceil(ctx.oversizeBytes / 5) + 1;
    const samples = new Array<string>(sampleCount);
    for (let i = 0; i < sampleCount; i++) samples[i] = String(2048 + Math.round(900 * Math.sin(i / 8)));
    segments.push(prefix + samples.join('^') + suffix);
  }
  return segments;
}

// ── generator ───────────────────────────────────────────────────────────────

/** Default oversize target: just over the gateway's default MLLP limit. */
const DEFAULT_OVERSIZE_BYTES = DEFAULT_MAX_MESSAGE_BYTES + 64 * 1024;

/**
 * Creates a deterministic PCD-01 message generator. With the same options (including `seed`
 * and `startTime`, and no real clock) it produces the same bytes. Each device has its own
 * PRNG, so a device's messages do not depend on the order devices are asked in; random faults
 * come from one stream shared by all devices, in call order.
 * @throws RangeError on an out-of-range option (the message names the option).
 */
export function createPcd01Generator(options: Pcd01GeneratorOptions = {}): Pcd01Generator {
  const deviceCount = checkInt('devices', options.devices ?? 1, 1, 100_000);
  const profile = checkOneOf('profile', options.profile ?? 'mixed', PCD01_PROFILES);
  const charset = checkOneOf('charset', options.charset ?? 'utf8', ['utf8', 'latin1'] as const);
  const units = checkOneOf('units', options.units ?? 'mdc', ['mdc', 'ucum', 'both'] as const);
  const seed = (options.seed ?? Math.floor(Math.random() * 2 ** 32)) >>> 0;
  const startTime = Math.floor((options.startTime ?? Date.now()) / 1000) * 1000;
  const intervalMs = checkInt('intervalMs', options.intervalMs ?? 1000, 1, 86_400_000);
  const nibpIntervalMs = checkInt('nibpIntervalMs', options.nibpIntervalMs ?? 300_000, 1000, 86_400_000);
  const faults = (options.faults ?? []).map((f) => checkOneOf('faults', f, PCD01_FAULTS));
  const faultRate = faults.length === 0 ? 0 : (options.faultRate ?? 0.01);
  if (!(faultRate >= 0 && faultRate <= 1)) throw new RangeError(`"faultRate" must be from 0 to 1, got ${faultRate}`);
  const schedule = options.faultSchedule ?? {};
  for (const f of Object.values(schedule)) checkOneOf('faultSchedule', f, PCD01_FAULTS);
  const oversizeBytes = checkInt('oversizeBytes', options.oversizeBytes ?? DEFAULT_OVERSIZE_BYTES, 1024, 256 * 1024 * 1024);
  const clock = options.now;
  const fixedOffset =
    options.utcOffsetMinutes === undefined ? undefined : checkInt('utcOffsetMinutes', options.utcOffsetMinutes, -720, 840);
  const faultRnd = mulberry32(mixSeed(seed, 0x7fffffff));
  // Run tag in MSH-10: keeps control ids unique across runs (the gateway remembers recent ones
  // to answer retransmissions; a new run must not look like one).
  const runTag = Math.floor(startTime / 1000).toString(36).toUpperCase();

  // Devices, beds and patients. In `mixed`, every 4th device is a pump at the bed of the
  // monitor before it (and so shares its patient).
  const euiBase = mixSeed(seed, 0x5eed) & 0xffffff;
  const states: DeviceState[] = [];
  let room = 0;
  let bedPatient: Patient | null = null;
  for (let i = 0; i < deviceCount; i++) {
    const rnd = mulberry32(mixSeed(seed, i));
    const kind = profile === 'pump' || (profile === 'mixed' && i % 4 === 3) ? 'pump' : 'monitor';
    const sharesBed = kind === 'pump' && profile === 'mixed' && bedPatient !== null;
    if (!sharesBed) room++;
    const patient: Patient = sharesBed && bedPatient !== null ? bedPatient : fakePatient(rnd);
    bedPatient = patient;
    // EUI-64 from a locally administered MAC-48 (first octet 0x02), so never a real vendor's OUI.
    const low = ((euiBase + i) & 0xffffff).toString(16).toUpperCase().padStart(6, '0');
    const device: SimulatedDevice = {
      index: i,
      kind,
      eui64: `${kind === 'monitor' ? '02A0C0' : '02A0C1'}FFFE${low}`,
      location: `ICU^${room}^1`,
    };
    states.push({
      device,
      rnd,
      patient,
      count: 0,
      last: clock?.() ?? startTime,
      monitor: kind === 'monitor' ? newMonitor(rnd, startTime, nibpIntervalMs) : null,
      pump: kind === 'pump' ? newPump(rnd, startTime) : null,
    });
  }

  let seq = 0;
  let roundRobin = 0;

  function faultFor(n: number): Pcd01Fault | null {
    const scheduled = schedule[n];
    if (scheduled !== undefined) return scheduled;
    if (faultRate === 0) return null;
    return faultRnd() < faultRate ? pick(faultRnd, faults) : null;
  }

  function nextMessage(deviceIndex?: number): Pcd01Message {
    const index = deviceIndex ?? roundRobin;
    if (deviceIndex === undefined) roundRobin = (roundRobin + 1) % deviceCount;
    const state = states[checkInt('device', index, 0, deviceCount - 1)] as DeviceState;
    const n = seq++;
    const time = clock !== undefined ? clock() : startTime + state.count * intervalMs;
    const dt = state.count === 0 ? 0 : (time - state.last) / 1000;
    state.last = time;
    const deviceSeq = state.count++;
    const fault = faultFor(n);
    const controlId = `${state.device.eui64.slice(-6)}${runTag}${pad(deviceSeq, 8)}`;

    let rows: readonly (DeviceRow | MetricRow<string>)[];
    let values: Record<string, number | string>;
    if (state.monitor !== null) {
      rows = profile === 'obx20' ? MONITOR_TREE : MONITOR_FLAT;
      values = monitorValues(state.monitor, state.rnd, time, dt, nibpIntervalMs);
    } else {
      const pump = state.pump as PumpState;
      stepPump(pump, state.rnd, time, dt);
      rows = PUMP_TREE;
      values = pumpValues(pump);
    }
    let badRow = -1;
    if (fault === 'bad-value') {
      const numeric = rows.flatMap((r, i) => (r.row === 'metric' && r.type === 'NM' ? [i + 1] : []));
      badRow = pick(faultRnd, numeric);
    }
    // wrong-charset: declare UTF-8, send latin1 (a device set to 8859/1 whose interface
    // template still says UTF-8: the æøå in PID-5 arrive as invalid UTF-8).
    const encoding = fault === 'wrong-charset' ? 'latin1' : charset;
    const charsetField = fault === 'wrong-charset' || charset === 'utf8' ? 'UNICODE UTF-8' : '8859/1';
    const offset = fixedOffset ?? COPENHAGEN.offsetAt(time);
    const ctx: BuildContext = { state, time, controlId, charsetField, offset, units, fault, oversizeBytes };
    const text = `${buildSegments(ctx, rows, values, badRow).join('\r')}\r`;
    const bytes = Buffer.from(text, encoding);
    return { seq: n, device: index, deviceId: state.device.eui64, controlId, time, fault, bytes, ...wireFor(bytes, fault, faultRnd) };
  }

  return {
    devices: states.map((s) => s.device),
    next: () => nextMessage().bytes,
    nextMessage,
  };
}

/** The bytes on the wire for a message: its MLLP frame, or the faulted version of it. */
function wireFor(bytes: Buffer, fault: Pcd01Fault | null, rnd: Rng): { wire: Buffer; expectAck: boolean } {
  if (fault === 'truncated') {
    // The sender died mid-frame and starts over with its next message: no end block, no ACK.
    const cut = Math.max(1, Math.floor(bytes.length * uniform(rnd, 0.25, 0.75)));
    return { wire: Buffer.concat([Buffer.from([0x0b]), bytes.subarray(0, cut)]), expectAck: false };
  }
  const frame = encodeFrame(bytes);
  if (fault === 'garbage') {
    // Line noise / a misdirected serial device: printable junk, newlines, binary; never VT or FS
    // (those would frame it). Starts with a visible byte so it is not taken for a stray CR/LF.
    const n = 8 + Math.floor(rnd() * 200);
    const junk = Buffer.allocUnsafe(n);
    junk[0] = 0x21 + Math.floor(rnd() * 90);
    for (let i = 1; i < n; i++) {
      let b = Math.floor(rnd() * 256);
      if (b === 0x0b || b === 0x1c) b = 0x3f;
      junk[i] = b;
    }
    return { wire: Buffer.concat([junk, frame]), expectAck: true };
  }
  return { wire: frame, expectAck: true };
}

function checkInt(name: string, value: number, min: number, max: number): number {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(`"${name}" must be an integer from ${min} to ${max}, got ${String(value)}`);
  }
  return value;
}

function checkOneOf<T extends string>(name: string, value: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(value)) {
    throw new RangeError(`"${name}" must be one of ${allowed.join(', ')}, got ${JSON.stringify(value)}`);
  }
  return value as T;
}

/**
 * Parses a fault list as the CLI takes it: `bad-value,garbage` or `all`.
 * @throws RangeError naming the unknown fault.
 */
export function parseFaultList(text: string): Pcd01Fault[] {
  const items = text.split(',').map((s) => s.trim()).filter((s) => s !== '');
  if (items.length === 1 && items[0] === 'all') return [...PCD01_FAULTS];
  return items.map((s) => checkOneOf('faults', s, PCD01_FAULTS));
}

// ── ACK reading ─────────────────────────────────────────────────────────────

/** MSA-1 and MSA-2 of an ACK. */
export interface MsaFields {
  /** MSA-1 acknowledgment code as sent (`AA`, `AE`, `AR`, or enhanced-mode `CA`/`CE`/`CR`). */
  readonly code: string;
  /** MSA-2: the MSH-10 being acknowledged. */
  readonly controlId: string;
}

/**
 * Reads MSA-1/MSA-2 from an ACK frame: a deliberately tiny reader (the simulator must not trust
 * the gateway's own HL7 code). The field separator is MSH-1; segments end with CR (LF accepted).
 * Returns null when there is no MSA segment.
 */
export function readMsa(frame: Buffer): MsaFields | null {
  const text = frame.toString('latin1'); // control ids and codes are ASCII
  const sep = text.startsWith('MSH') && text.length > 3 ? text[3] : '|';
  let at = text.startsWith(`MSA${sep}`) ? 0 : -1;
  if (at < 0) {
    const m = /[\r\n]MSA/.exec(text);
    if (m === null) return null;
    at = m.index + 1;
  }
  const end = text.slice(at).search(/[\r\n]/);
  const fields = (end < 0 ? text.slice(at) : text.slice(at, at + end)).split(sep as string);
  return { code: (fields[1] ?? '').trim(), controlId: (fields[2] ?? '').trim() };
}

// ── latency histogram ───────────────────────────────────────────────────────

/**
 * Latency histogram in fixed memory (log-linear buckets, < 1 % relative error), so a run of
 * millions of messages does not keep every sample. Values in microseconds.
 */
class Histogram {
  /** 128 sub-buckets per power of two; values below 256 µs are exact. */
  static readonly #SUB = 128;
  readonly #counts = new Float64Array(256 + 32 * Histogram.#SUB);
  count = 0;
  max = 0;
  sum = 0;

  record(us: number): void {
    const v = Math.max(0, Math.round(us));
    const i = Histogram.#index(v);
    this.#counts[i] = (this.#counts[i] as number) + 1;
    this.count++;
    this.sum += v;
    if (v > this.max) this.max = v;
  }

  static #index(v: number): number {
    if (v < 256) return v;
    const exp = Math.min(31, Math.floor(Math.log2(v))) - 7; // ≥ 1
    return 256 + (exp - 1) * Histogram.#SUB + Math.min(Histogram.#SUB - 1, Math.floor(v / 2 ** exp) - Histogram.#SUB);
  }

  static #value(i: number): number {
    if (i < 256) return i;
    const exp = Math.floor((i - 256) / Histogram.#SUB) + 1;
    const sub = (i - 256) % Histogram.#SUB;
    return (Histogram.#SUB + sub + 0.5) * 2 ** exp; // bucket middle
  }

  /** The q-quantile (0..1), µs; 0 when empty. */
  quantile(q: number): number {
    if (this.count === 0) return 0;
    const rank = Math.max(1, Math.ceil(q * this.count));
    let seen = 0;
    for (let i = 0; i < this.#counts.length; i++) {
      seen += this.#counts[i] as number;
      if (seen >= rank) return Math.min(Histogram.#value(i), this.max);
    }
    return this.max;
  }
}

// ── the sender ──────────────────────────────────────────────────────────────

/**
 * Options of `runPcd01Simulation`: the generator's options (its clock is the real one here)
 * plus the transport. Defaults, also in `PCD01_SIMULATION_DEFAULTS`: host 127.0.0.1, port 2575,
 * devices 10, one connection per device, rate 1 msg/s per device, window 1, ACK timeout 10 s,
 * connect timeout 5 s, reconnect backoff 500 ms doubling to 30 s, 3 attempts per message.
 * Give at least one of `count`, `durationMs` or `signal`.
 */
export interface Pcd01SimulationOptions extends Omit<Pcd01GeneratorOptions, 'now' | 'startTime' | 'intervalMs'> {
  /** Gateway host. Default `127.0.0.1`. */
  readonly host?: string;
  /** Gateway MLLP port. Default 2575. */
  readonly port?: number;
  /** Simulated devices. Default 10. */
  readonly devices?: number;
  /** TCP connections; devices are spread over them round robin. Default: one per device. */
  readonly connections?: number;
  /** Messages per second per device; 0 = as fast as the window allows. Default 1. */
  readonly rate?: number;
  /**
   * Unacknowledged messages allowed per connection. Default 1: wait for each ACK, as real
   * B. Braun and Mindray gateways do.
   */
  readonly window?: number;
  /** Stop after this many messages in total (over all devices). */
  readonly count?: number;
  /** Stop sending after this many ms (in-flight messages then get up to `ackTimeoutMs`). */
  readonly durationMs?: number;
  /** Stops the run at once when aborted (in-flight messages are not waited for). */
  readonly signal?: AbortSignal;
  /** Time to wait for an ACK, ms; then the message counts as a timeout (not resent). Default 10 000. */
  readonly ackTimeoutMs?: number;
  /** Time to wait for a TCP connection, ms. Default 5000. */
  readonly connectTimeoutMs?: number;
  /** First reconnect delay, ms; doubles per failure, with jitter. Default 500. */
  readonly reconnectDelayMs?: number;
  /** Reconnect delay cap, ms. Default 30 000. */
  readonly reconnectMaxDelayMs?: number;
  /**
   * Times one message may be sent: messages in flight when the connection drops are resent on
   * the next connection (same MSH-10, like a real device's spool) until this many sends.
   * Default 3.
   */
  readonly maxAttempts?: number;
  /** Called every `progressIntervalMs` with the report so far. */
  readonly onProgress?: (report: Pcd01SimulationReport) => void;
  /** Progress period, ms. Default 1000. */
  readonly progressIntervalMs?: number;
}

/** How long a finished connection waits for the gateway to close its side before a reset. */
const CLOSE_GRACE_MS = 2000;

/** The defaults of `runPcd01Simulation` (and of the `mdi simulate pcd01` CLI). */
export const PCD01_SIMULATION_DEFAULTS = {
  host: '127.0.0.1',
  port: 2575,
  devices: 10,
  rate: 1,
  window: 1,
  profile: 'mixed',
  charset: 'utf8',
  units: 'mdc',
  ackTimeoutMs: 10_000,
  connectTimeoutMs: 5_000,
  reconnectDelayMs: 500,
  reconnectMaxDelayMs: 30_000,
  maxAttempts: 3,
  faultRate: 0.01,
  progressIntervalMs: 1000,
} as const;

/** ACK latency summary, milliseconds (from the last byte written to the ACK's arrival). */
export interface LatencySummary {
  readonly count: number;
  readonly p50: number;
  readonly p95: number;
  readonly p99: number;
  readonly max: number;
  readonly mean: number;
}

/** What a simulation run did. */
export interface Pcd01SimulationReport {
  readonly target: string;
  readonly devices: number;
  readonly connections: number;
  /** Frames written, resends included. */
  readonly sent: number;
  /** Of `sent`: resends after a reconnect. */
  readonly resent: number;
  /** ACKs matched to a message, by MSA-1 (CA/CE/CR counted as AA/AE/AR). */
  readonly aa: number;
  readonly ae: number;
  readonly ar: number;
  /** Messages whose ACK did not come within `ackTimeoutMs`. */
  readonly timeouts: number;
  /** ACKs for no message in flight (late after a timeout, or duplicates). */
  readonly unmatchedAcks: number;
  /** Frames from the gateway that are not a readable ACK, or MLLP errors on the ACK stream. */
  readonly badAcks: number;
  /** Connection failures: refused, reset, timed out, closed by the gateway with messages in flight. */
  readonly errors: number;
  /** Successful connections after the first one of each connection slot. */
  readonly reconnects: number;
  /** Messages abandoned after `maxAttempts` sends, or in flight when the run stopped. */
  readonly unacknowledged: number;
  /** Faults injected, by kind. */
  readonly faults: Readonly<Record<Pcd01Fault, number>>;
  readonly elapsedMs: number;
  /** Acknowledged messages (AA + AE + AR) per second of the run. */
  readonly msgsPerSecond: number;
  readonly latencyMs: LatencySummary;
}

interface InFlight {
  readonly message: Pcd01Message;
  sentAt: number;
  attempts: number;
}

interface Totals {
  sent: number;
  resent: number;
  aa: number;
  ae: number;
  ar: number;
  timeouts: number;
  unmatchedAcks: number;
  badAcks: number;
  errors: number;
  reconnects: number;
  unacknowledged: number;
  faults: Record<Pcd01Fault, number>;
}

/**
 * Plays the simulated devices against a gateway's MLLP listener and reports what happened.
 * Resolves when `count` messages are done (acknowledged, timed out or abandoned), `durationMs`
 * has passed and in-flight messages are settled, or `signal` aborts. It never rejects for a
 * gateway problem (refused, reset, silence): those are counted and retried. Every socket and
 * timer is closed before it resolves.
 * @throws RangeError on invalid options, before anything is opened.
 */
export async function runPcd01Simulation(options: Pcd01SimulationOptions): Promise<Pcd01SimulationReport> {
  const d = PCD01_SIMULATION_DEFAULTS;
  const host = options.host ?? d.host;
  const port = checkInt('port', options.port ?? d.port, 1, 65535);
  const devices = checkInt('devices', options.devices ?? d.devices, 1, 100_000);
  const connections = checkInt('connections', options.connections ?? devices, 1, devices);
  const rate = options.rate ?? d.rate;
  if (!(rate >= 0 && rate <= 100_000)) throw new RangeError(`"rate" must be from 0 to 100000, got ${rate}`);
  const windowSize = checkInt('window', options.window ?? d.window, 1, 10_000);
  const count = options.count === undefined ? Infinity : checkInt('count', options.count, 0, Number.MAX_SAFE_INTEGER);
  const durationMs =
    options.durationMs === undefined ? Infinity : checkInt('durationMs', Math.round(options.durationMs), 0, 2 ** 31 - 1);
  const ackTimeoutMs = checkInt('ackTimeoutMs', options.ackTimeoutMs ?? d.ackTimeoutMs, 1, 2 ** 31 - 1);
  const connectTimeoutMs = checkInt('connectTimeoutMs', options.connectTimeoutMs ?? d.connectTimeoutMs, 1, 2 ** 31 - 1);
  const backoffMin = checkInt('reconnectDelayMs', options.reconnectDelayMs ?? d.reconnectDelayMs, 1, 2 ** 31 - 1);
  const backoffMax = checkInt('reconnectMaxDelayMs', options.reconnectMaxDelayMs ?? d.reconnectMaxDelayMs, backoffMin, 2 ** 31 - 1);
  const maxAttempts = checkInt('maxAttempts', options.maxAttempts ?? d.maxAttempts, 1, 1000);
  const progressIntervalMs = checkInt('progressIntervalMs', options.progressIntervalMs ?? d.progressIntervalMs, 10, 2 ** 31 - 1);
  if (count === Infinity && durationMs === Infinity && options.signal === undefined) {
    throw new RangeError('give "count", "durationMs" or "signal": the simulation would never stop');
  }
  const generator = createPcd01Generator({ ...options, devices, now: Date.now });
  const jitter = mulberry32(mixSeed(options.seed ?? 0, 0xb0ff));

  const totals: Totals = {
    sent: 0,
    resent: 0,
    aa: 0,
    ae: 0,
    ar: 0,
    timeouts: 0,
    unmatchedAcks: 0,
    badAcks: 0,
    errors: 0,
    reconnects: 0,
    unacknowledged: 0,
    faults: Object.fromEntries(PCD01_FAULTS.map((f) => [f, 0])) as Record<Pcd01Fault, number>,
  };
  const latency = new Histogram();
  const started = performance.now();
  let budget = count; // new messages still to send, over all connections
  let draining = false; // no new messages; settle what is in flight
  let aborted = false; // stop now
  const lanes: Lane[] = [];
  const wakeAll = () => {
    for (const lane of lanes) lane.wake();
  };

  const report = (): Pcd01SimulationReport => {
    const elapsedMs = performance.now() - started;
    const acked = totals.aa + totals.ae + totals.ar;
    return {
      target: `${host}:${port}`,
      devices,
      connections,
      ...totals,
      faults: { ...totals.faults },
      elapsedMs,
      msgsPerSecond: elapsedMs > 0 ? (acked * 1000) / elapsedMs : 0,
      latencyMs: {
        count: latency.count,
        p50: latency.quantile(0.5) / 1000,
        p95: latency.quantile(0.95) / 1000,
        p99: latency.quantile(0.99) / 1000,
        max: latency.max / 1000,
        mean: latency.count === 0 ? 0 : latency.sum / latency.count / 1000,
      },
    };
  };

  /**
   * One TCP connection slot and the devices it carries. Event-driven: `wake()` sends what the
   * window, the schedule and the budget allow, and arms one timer for the next due send or
   * ACK deadline.
   */
  class Lane {
    /**
     * The lane's devices in the order of their next due time. All share one interval, so taking
     * them round robin keeps that order: the next device to send is always `#devices[#next]`
     * (O(1) per message, however many devices a connection carries).
     */
    readonly #devices: { index: number; due: number }[];
    #next = 0;
    readonly #inFlight = new Map<string, InFlight>();
    /** Messages to resend on the next connection (they were in flight when it dropped). */
    #resend: InFlight[] = [];
    #socket: Socket | null = null;
    /** A connection attempt in progress (destroyed on abort). */
    #connecting: Socket | null = null;
    #writable = false;
    #timer: NodeJS.Timeout | null = null;
    #sleep: { timer: NodeJS.Timeout; resolve: () => void } | null = null;

    constructor(deviceIndexes: number[]) {
      const now = performance.now();
      const interval = rate > 0 ? 1000 / rate : 0;
      // Devices start at random phases, as real ones do, instead of all in the same millisecond.
      this.#devices = deviceIndexes
        .map((index) => ({ index, due: now + jitter() * interval }))
        .sort((a, b) => a.due - b.due);
    }

    /** Settled: nothing to send or wait for. */
    get done(): boolean {
      return aborted || ((budget <= 0 || draining) && this.#inFlight.size === 0 && this.#resend.length === 0);
    }

    async run(): Promise<void> {
      let failures = 0;
      let connectedOnce = false;
      while (!this.done) {
        const socket = await this.#connect();
        if (socket === null) {
          if (aborted) break;
          totals.errors++;
          if (draining) break; // do not keep knocking to settle a run that is over
          const delay = Math.min(backoffMax, backoffMin * 2 ** Math.min(failures++, 30));
          await this.#pause(delay * (0.5 + jitter() / 2));
          continue;
        }
        failures = 0;
        if (connectedOnce) totals.reconnects++;
        connectedOnce = true;
        await this.#session(socket);
      }
      this.#clearTimer();
      // Whatever is left will not be acknowledged by this run.
      totals.unacknowledged += this.#inFlight.size + this.#resend.length;
      this.#inFlight.clear();
      this.#resend = [];
    }

    /** Wakes the lane: after an ACK, a timeout, a budget change or a stop. */
    wake(): void {
      if (this.#sleep !== null) {
        clearTimeout(this.#sleep.timer);
        this.#sleep.resolve();
        this.#sleep = null;
      }
      if (this.#socket === null) return;
      if (aborted) {
        this.#socket.destroy();
        return;
      }
      this.#pump();
    }

    #connect(): Promise<Socket | null> {
      if (aborted) return Promise.resolve(null);
      return new Promise((resolve) => {
        const socket = connect({ host, port, noDelay: true });
        this.#connecting = socket;
        // Keep an 'error' listener for the socket's whole life: an unhandled one would crash.
        socket.on('error', () => {});
        const timer = setTimeout(() => socket.destroy(), connectTimeoutMs);
        const settle = (ok: boolean) => {
          clearTimeout(timer);
          this.#connecting = null;
          socket.removeListener('connect', onConnect);
          socket.removeListener('error', onError);
          socket.removeListener('close', onClose);
          if (!ok) socket.destroy();
          resolve(ok ? socket : null);
        };
        const onConnect = () => settle(!aborted);
        const onError = () => settle(false);
        const onClose = () => settle(false);
        socket.once('connect', onConnect);
        socket.once('error', onError);
        socket.once('close', onClose);
      });
    }

    #pause(ms: number): Promise<void> {
      if (aborted) return Promise.resolve();
      return new Promise((resolve) => {
        this.#sleep = { timer: setTimeout(() => ((this.#sleep = null), resolve()), ms), resolve };
      });
    }

    /** Runs one connection until it closes (by the gateway, an error, or us when done). */
    #session(socket: Socket): Promise<void> {
      return new Promise((resolve) => {
        this.#socket = socket;
        this.#writable = true;
        const decoder = new MllpDecoder({
          maxMessageBytes: 64 * 1024, // ACKs are small: a huge frame from the gateway is an error
          onFrame: (frame) => this.#onAck(frame),
          onError: () => totals.badAcks++,
        });
        socket.on('data', (chunk: Buffer) => decoder.push(chunk));
        socket.on('drain', () => {
          this.#writable = true;
          this.#pump();
        });
        // 'error' is always followed by 'close', where the loss is counted.
        socket.on('close', () => {
          decoder.end();
          this.#socket = null;
          this.#clearTimer();
          const lost = this.#inFlight.size;
          if (!aborted && (lost > 0 || (!this.done && !draining))) totals.errors++;
          // Spool: resend what got no ACK, in order, unless it has been tried enough.
          const again = [...this.#inFlight.values()].filter((f) => {
            if (f.attempts < maxAttempts) return true;
            totals.unacknowledged++;
            return false;
          });
          this.#inFlight.clear();
          // Spooled messages go first on the next connection, in their order.
          this.#resend = [...again, ...this.#resend];
          resolve();
        });
        this.#pump();
      });
    }

    /** Sends what may be sent now; arms the timer for what comes later. */
    #pump(): void {
      const socket = this.#socket;
      if (socket === null) return;
      if (aborted) {
        socket.destroy();
        return;
      }
      const now = performance.now();
      this.#expire(now);
      while (this.#writable && this.#inFlight.size < windowSize) {
        const item = this.#resend.shift() ?? this.#take(now);
        if (item === null) break;
        if (item.attempts > 0) totals.resent++;
        item.attempts++;
        item.sentAt = performance.now();
        totals.sent++;
        if (item.message.expectAck) this.#inFlight.set(item.message.controlId, item);
        this.#writable = socket.write(item.message.wire);
      }
      if (this.done) {
        if (!socket.writableEnded) {
          // Graceful: the gateway sees FIN after the last ACKed message. A gateway that never
          // closes its side gets a bounded wait, then a reset.
          socket.end();
          this.#clearTimer();
          this.#timer = setTimeout(() => socket.destroy(), CLOSE_GRACE_MS);
        }
        return;
      }
      this.#arm(now);
    }

    /** The next new message, if the budget and the schedule allow one now. */
    #take(now: number): InFlight | null {
      if (budget <= 0 || draining) return null;
      const dv = this.#devices[this.#next] as { index: number; due: number };
      if (rate > 0) {
        if (dv.due > now) return null;
        const interval = 1000 / rate;
        // Keep the device's cadence; after a stall (window full, reconnect) do not burst to
        // catch up more than one interval.
        dv.due = Math.max(dv.due + interval, now - interval);
      }
      this.#next = (this.#next + 1) % this.#devices.length;
      budget--;
      if (budget <= 0) queueMicrotask(wakeAll); // let idle lanes notice the run is complete
      const message = generator.nextMessage(dv.index);
      if (message.fault !== null) totals.faults[message.fault]++;
      return { message, sentAt: 0, attempts: 0 };
    }

    /** Counts ACKs that did not come in time; their messages are not resent. */
    #expire(now: number): void {
      for (const [id, f] of this.#inFlight) {
        if (now - f.sentAt < ackTimeoutMs) break; // insertion order = send order
        this.#inFlight.delete(id);
        totals.timeouts++;
      }
    }

    #arm(now: number): void {
      let at = Infinity;
      const oldest = this.#inFlight.values().next();
      if (!oldest.done) at = oldest.value.sentAt + ackTimeoutMs;
      if (rate > 0 && budget > 0 && !draining && this.#inFlight.size < windowSize && this.#writable) {
        at = Math.min(at, (this.#devices[this.#next] as { due: number }).due);
      }
      this.#clearTimer();
      if (at === Infinity) return;
      this.#timer = setTimeout(() => {
        this.#timer = null;
        this.#pump();
      }, Math.max(0, Math.ceil(at - now)));
    }

    #clearTimer(): void {
      if (this.#timer !== null) clearTimeout(this.#timer);
      this.#timer = null;
    }

    #onAck(frame: Buffer): void {
      const msa = readMsa(frame);
      if (msa === null) {
        totals.badAcks++;
        return;
      }
      const f = this.#inFlight.get(msa.controlId);
      if (f === undefined) {
        totals.unmatchedAcks++;
        return;
      }
      switch (msa.code) {
        case 'AA':
        case 'CA':
          totals.aa++;
          break;
        case 'AE':
        case 'CE':
          totals.ae++;
          break;
        case 'AR':
        case 'CR':
          totals.ar++;
          break;
        default:
          totals.badAcks++;
          return; // keep waiting: maybe a proper ACK follows, else it times out
      }
      this.#inFlight.delete(msa.controlId);
      latency.record((performance.now() - f.sentAt) * 1000);
      this.#pump();
    }

    /** Closes the connection now (abort). */
    destroy(): void {
      this.#connecting?.destroy();
      this.#socket?.destroy();
      this.wake();
    }
  }

  for (let c = 0; c < connections; c++) {
    const mine: number[] = [];
    for (let i = c; i < devices; i += connections) mine.push(i);
    lanes.push(new Lane(mine));
  }

  const onAbort = () => {
    aborted = true;
    for (const lane of lanes) lane.destroy();
  };
  if (options.signal?.aborted) aborted = true;
  options.signal?.addEventListener('abort', onAbort, { once: true });
  const durationTimer =
    durationMs === Infinity
      ? null
      : setTimeout(() => {
          draining = true;
          wakeAll();
        }, durationMs);
  const progressTimer =
    options.onProgress === undefined ? null : setInterval(() => options.onProgress?.(report()), progressIntervalMs);
  try {
    await Promise.all(lanes.map((lane) => lane.run()));
  } finally {
    if (durationTimer !== null) clearTimeout(durationTimer);
    if (progressTimer !== null) clearInterval(progressTimer);
    options.signal?.removeEventListener('abort', onAbort);
  }
  return report();
}

// ── report ──────────────────────────────────────────────────────────────────

const ms = (x: number) => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));

/** Formats a report as a few readable lines (for the CLI). */
export function formatPcd01Report(r: Pcd01SimulationReport): string {
  const faults = PCD01_FAULTS.filter((f) => r.faults[f] > 0).map((f) => `${f} ${r.faults[f]}`);
  const l = r.latencyMs;
  const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;
  return [
    `PCD-01 simulation → ${r.target}: ${plural(r.devices, 'device')} on ${plural(r.connections, 'connection')}, ` +
      `${(r.elapsedMs / 1000).toFixed(1)} s`,
    `  sent        ${r.sent}${r.resent > 0 ? ` (${r.resent} resent)` : ''}${faults.length > 0 ? `; faults injected: ${faults.join(', ')}` : ''}`,
    `  ACKs        AA ${r.aa}  AE ${r.ae}  AR ${r.ar}  timeouts ${r.timeouts}  unmatched ${r.unmatchedAcks}  unreadable ${r.badAcks}`,
    `  connection  errors ${r.errors}  reconnects ${r.reconnects}  unacknowledged ${r.unacknowledged}`,
    `  throughput  ${r.msgsPerSecond.toFixed(1)} msgs/s acknowledged`,
    l.count === 0
      ? '  latency     no ACKs'
      : `  latency     p50 ${ms(l.p50)} ms  p95 ${ms(l.p95)} ms  p99 ${ms(l.p99)} ms  max ${ms(l.max)} ms  (n=${l.count})`,
  ].join('\n');
}
