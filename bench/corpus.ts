/**
 * The benchmark corpus for the HL7 codec: our own generated 20-OBX PCD-01 messages (a
 * multiparameter monitor, values and times varying per message) plus, when `../shared` is
 * present, every ORU message of the public corpus (`../shared/corpus/public/*.hl7`, read where it
 * lies, LF → CR as its SOURCES.md says). Or, for a ward's worth of senders, the simulator's
 * messages from many devices (`loadDevicesCorpus`).
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createPcd01Generator } from '../simulators/pcd01.js';

/** A set of messages to decode, each a separate buffer as an MLLP listener would hand it over. */
export interface BenchCorpus {
  readonly messages: readonly Buffer[];
  /** Total bytes of `messages`. */
  readonly bytes: number;
  readonly generated: number;
  readonly publicOru: number;
  /** One line saying what the corpus holds. */
  readonly description: string;
}

const here = dirname(fileURLToPath(import.meta.url));

/** Where the shared public corpus lies relative to the repository (`../shared/corpus/public`). */
export const PUBLIC_CORPUS_DIR = resolve(here, '..', '..', 'shared', 'corpus', 'public');

// Monitor metrics as a Philips/Mindray-style PCD-01 sender reports them: code, refid, VMD.CHAN
// containment, unit code, unit refid, a typical value and its spread.
const METRICS: readonly (readonly [number, string, string, number, string, number, number])[] = [
  [147842, 'MDC_ECG_HEART_RATE', '1.2.1.1', 264864, 'MDC_DIM_BEAT_PER_MIN', 78, 12],
  [148065, 'MDC_ECG_V_P_C_CNT', '1.2.1.2', 264864, 'MDC_DIM_BEAT_PER_MIN', 0, 2],
  [147232, 'MDC_ECG_TIME_PD_QT_GL', '1.2.1.14', 264338, 'MDC_DIM_MILLI_SEC', 360, 20],
  [147236, 'MDC_ECG_TIME_PD_QTc', '1.2.1.15', 264338, 'MDC_DIM_MILLI_SEC', 416, 20],
  [151562, 'MDC_RESP_RATE', '1.2.1.19', 264928, 'MDC_DIM_RESP_PER_MIN', 16, 6],
  [150456, 'MDC_PULS_OXIM_SAT_O2', '1.3.1.1', 262688, 'MDC_DIM_PERCENT', 97, 3],
  [149530, 'MDC_PULS_OXIM_PULS_RATE', '1.3.1.2', 264864, 'MDC_DIM_BEAT_PER_MIN', 77, 12],
  [150448, 'MDC_PULS_OXIM_PERF_REL', '1.3.1.3', 262656, 'MDC_DIM_DIMLESS', 3.9, 1.5],
  [150021, 'MDC_PRESS_BLD_NONINV_SYS', '1.1.1.5', 266016, 'MDC_DIM_MMHG', 121, 15],
  [150022, 'MDC_PRESS_BLD_NONINV_DIA', '1.1.1.6', 266016, 'MDC_DIM_MMHG', 78, 10],
  [150023, 'MDC_PRESS_BLD_NONINV_MEAN', '1.1.1.7', 266016, 'MDC_DIM_MMHG', 92, 10],
  [149546, 'MDC_PULS_RATE_NON_INV', '1.1.1.8', 264864, 'MDC_DIM_BEAT_PER_MIN', 76, 12],
  [150033, 'MDC_PRESS_BLD_ART_SYS', '1.4.1.1', 266016, 'MDC_DIM_MMHG', 118, 15],
  [150034, 'MDC_PRESS_BLD_ART_DIA', '1.4.1.2', 266016, 'MDC_DIM_MMHG', 72, 10],
  [150035, 'MDC_PRESS_BLD_ART_MEAN', '1.4.1.3', 266016, 'MDC_DIM_MMHG', 88, 10],
  [150344, 'MDC_TEMP', '1.5.1.1', 268192, 'MDC_DIM_DEGC', 37.2, 0.8],
  [151712, 'MDC_CONC_AWAY_CO2_EXP', '1.6.1.1', 266016, 'MDC_DIM_MMHG', 38, 5],
];

const pad2 = (n: number): string => String(n).padStart(2, '0');

/**
 * One generated PCD-01 message with 20 OBX rows: MDS, VMD and channel rows (device tree with
 * EUI-64 equipment ids) and 17 metrics. `i` varies the values, the control id and the time
 * (one message per second from 2026-11-21 10:00:00+01:00). Fake patient (CPR 0101901234).
 */
export function generatePcd01(i: number): Buffer {
  const t = new Date(Date.UTC(2026, 10, 21, 9, 0, 0) + i * 1000);
  const dtm = `${t.getUTCFullYear()}${pad2(t.getUTCMonth() + 1)}${pad2(t.getUTCDate())}${pad2(t.getUTCHours() + 1)}${pad2(t.getUTCMinutes())}${pad2(t.getUTCSeconds())}+0100`;
  const segs = [
    `MSH|^~\\&|MONITOR_GW^0012A1FFFE00B2C3^EUI-64|ICU|MDI|RH|${dtm}||ORU^R01^ORU_R01|MSG${100000 + i}|P|2.6|||AL|NE||UNICODE UTF-8|en^English^ISO639||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO`,
    'PID|||0101901234^^^&1.2.208.176.1.2&ISO^NNDNK||Testpatient^Søren||19900101|M',
    'PV1||I|ITA^12^3',
    `OBR|1|${i}^MONITOR_GW^0012A1FFFE00B2C3^EUI-64|${i}^MONITOR_GW^0012A1FFFE00B2C3^EUI-64|69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|||${dtm}`,
    'OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||0012A1FFFE00B2C3^^0012A1FFFE00B2C3^EUI-64',
    'OBX|2||69798^MDC_DEV_ECG_VMD^MDC|1.2.0.0|||||||X',
    'OBX|3||69799^MDC_DEV_ECG_CHAN^MDC|1.2.1.0|||||||X',
  ];
  let n = 4;
  for (const [k, [code, refid, containment, unitCode, unitRefid, mean, spread]] of METRICS.entries()) {
    const wobble = Math.sin(i * 0.37 + k * 1.3) * spread;
    const value = Number.isInteger(mean) ? Math.round(mean + wobble) : (mean + wobble).toFixed(1);
    segs.push(`OBX|${n++}|NM|${code}^${refid}^MDC|${containment}|${value}|${unitCode}^${unitRefid}^MDC|||||R|||${dtm}`);
  }
  return Buffer.from(`${segs.join('\r')}\r`, 'utf8');
}

/** The ORU messages (R01/R40/R42) of the public corpus, one buffer each; `[]` when it is absent. */
export function loadPublicOru(dir: string = PUBLIC_CORPUS_DIR): Buffer[] {
  if (!existsSync(dir)) return [];
  const out: Buffer[] = [];
  for (const file of readdirSync(dir).filter((f) => f.endsWith('.hl7')).sort()) {
    const text = readFileSync(join(dir, file), 'latin1');
    for (const block of text.split('\n\n')) {
      if (!/\|ORU\^R(01|40|42)/.test(block)) continue;
      // Framing bytes kept in a logged capture are dropped: every contender gets plain ER7.
      const er7 = block.replace(/[\x0b\x1c]/g, '').trim().replace(/\n/g, '\r');
      out.push(Buffer.from(`${er7}\r`, 'latin1'));
    }
  }
  return out;
}

/**
 * Builds the benchmark corpus: `generated` of our own messages plus the public ORU messages when
 * `../shared` is present (`includePublic`, default true).
 */
export function loadBenchCorpus(options: { generated?: number; includePublic?: boolean } = {}): BenchCorpus {
  const generated = options.generated ?? 200;
  const messages: Buffer[] = [];
  for (let i = 0; i < generated; i++) messages.push(generatePcd01(i));
  const pub = options.includePublic === false ? [] : loadPublicOru();
  messages.push(...pub);
  const bytes = messages.reduce((sum, m) => sum + m.length, 0);
  const description =
    pub.length > 0
      ? `${generated} generated 20-OBX PCD-01 messages + ${pub.length} public-corpus ORU messages (../shared/corpus/public), ${bytes} bytes`
      : `${generated} generated 20-OBX PCD-01 messages only (../shared/corpus/public absent), ${bytes} bytes`;
  return { messages, bytes, generated, publicOru: pub.length, description };
}

/**
 * `perDevice` messages from each of `devices` simulated monitors (simulators/pcd01.ts, 20 OBX
 * each with the device's EUI-64 in OBX-18), in the order a gateway receives them: one message of
 * every device, then the next round. Shows whether the decoder's caches hold a whole ward.
 */
export function loadDevicesCorpus(devices: number, perDevice = 2): BenchCorpus {
  const generator = createPcd01Generator({ devices, profile: 'obx20', seed: 1, startTime: Date.UTC(2026, 10, 21, 9) });
  const messages: Buffer[] = [];
  for (let i = 0; i < devices * perDevice; i++) messages.push(generator.next());
  const bytes = messages.reduce((sum, m) => sum + m.length, 0);
  const description = `${messages.length} simulated 20-OBX PCD-01 messages from ${devices} devices (simulators/pcd01.ts, round robin), ${bytes} bytes`;
  return { messages, bytes, generated: messages.length, publicOru: 0, description };
}
