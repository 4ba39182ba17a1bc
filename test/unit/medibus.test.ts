import { describe, expect, it } from 'vitest';
import { encodeMedibusFrame, MedibusFramer, type MedibusFrame } from '../../drivers/serial/framers.js';
import { vendorCodesFor } from '../../drivers/serial/index.js';
import { decodeMedibusResponse, medibusDeadLetter, MedibusSession } from '../../drivers/serial/medibus.js';
import type { SessionIo } from '../../drivers/serial/session.js';
import { zoneOffsets } from '../../src/codec/hl7-time.js';
import { ErrorCode } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { loadMappings } from '../../src/mappings.js';
import { Quality, type Measurement } from '../../src/model/measurement.js';
import { Normalizer } from '../../src/pipeline/normalize.js';
import { medibusValue } from '../../simulators/medibus.js';
import { medibusCorpusFrames } from '../helpers/serial-corpus.js';
import { SHARED_ABSENT_NOTE } from '../helpers/shared.js';

const ctx = { deviceId: 'vent-1', time: Date.UTC(2026, 0, 1, 12), tzOffset: 60, codes: vendorCodesFor('medibus') };
const response = (code: number, data: string): MedibusFrame => ({ kind: 'response', code, data: Buffer.from(data, 'latin1'), offset: 0, length: data.length + 5 });

describe('MEDIBUS response decoder', () => {
  const corpus = medibusCorpusFrames();

  it.skipIf(!corpus)(`decodes the specification's data response: SpO2 98 %, pulse 70 (${corpus ? 'public corpus' : SHARED_ABSENT_NOTE})`, () => {
    const frames: MedibusFrame[] = [];
    const framer = new MedibusFramer({ onFrame: (f) => frames.push(f), onReject: () => expect.fail('no frame is refused') });
    for (const f of corpus!) framer.push(f);
    const decoded = frames.map((f) => decodeMedibusResponse(f, ctx));
    const all = decoded.flatMap((d) => d.measurements);
    expect(all.map((m) => [m.refid, m.value, m.unit])).toEqual([
      ['MDC_PULS_OXIM_SAT_O2', 98, '%'],
      ['MDC_PULS_OXIM_PULS_RATE', 70, '/min'],
    ]);
    expect(decoded.flatMap((d) => d.problems)).toEqual([]);
  });

  it('maps code page 1 codes to MDC and keeps the others under MEDIBUS', () => {
    const d = decodeMedibusResponse(response(0x24, `78${medibusValue(5)}88${medibusValue(450)}B5--- C9 123`), ctx);
    expect(d.measurements.map((m) => [m.system, m.code, m.refid, m.value, m.unit])).toEqual([
      ['MDC', '151976', 'MDC_VENT_PRESS_AWAY_END_EXP_POS', 5, 'mbar'],
      ['MDC', '151980', 'MDC_VENT_VOL_TIDAL', 450, 'mL'],
      ['MEDIBUS', 'cp1:B5', '', Number.NaN, '/min'],
      ['MEDIBUS', 'cp1:C9', '', 123, ''],
    ]);
    expect(d.measurements[2]!.flags).toBe(Quality.INVALID);
    expect(d.measurements.every((m) => m.time === ctx.time && m.tzOffset === 60)).toBe(true);
  });

  it('reads code page 2 and values with sign and decimals', () => {
    const d = decodeMedibusResponse(response(0x2b, '21-0.5221234'), ctx);
    expect(d.measurements.map((m) => [m.code, m.value])).toEqual([
      ['cp2:21', -0.5],
      ['cp2:22', 1234],
    ]);
  });

  it('reports a value that is not a number and a broken item, keeping the rest', () => {
    const d = decodeMedibusResponse(response(0x24, 'EB 9x ZZ 70 E1 70 E1'), ctx);
    expect(d.measurements.map((m) => m.refid)).toEqual(['MDC_PULS_OXIM_PULS_RATE']);
    expect(d.problems.map((p) => [p.code, p.location])).toEqual([
      [ErrorCode.MEDIBUS_BAD_DATA, 'cp1:EB'],
      [ErrorCode.MEDIBUS_BAD_DATA, 'cp1 item 2'],
      [ErrorCode.MEDIBUS_BAD_DATA, 'cp1 item 4'],
    ]);
    const letter = medibusDeadLetter(response(0x24, 'EB 9x '), d.problems[0]!);
    expect(letter.raw).toEqual(encodeMedibusFrame('response', 0x24, 'EB 9x '));
  });

  it('reads current alarms: priority, code, 12-character phrase', () => {
    const d = decodeMedibusResponse(response(0x27, `51DPaw high    32AApnea       `), ctx);
    expect(d.alarms).toEqual([
      { codepage: 1, code: '1D', priority: 5, phrase: 'Paw high' },
      { codepage: 1, code: '2A', priority: 3, phrase: 'Apnea' },
    ]);
    expect(decodeMedibusResponse(response(0x27, 'x1DPaw high    '), ctx).problems[0]!.code).toBe(ErrorCode.MEDIBUS_BAD_DATA);
  });

  it('reads the device identification (and accepts an empty one)', () => {
    expect(decodeMedibusResponse(response(0x52, `8417'Evita4'04.03      `), ctx).identity).toEqual({ idNumber: '8417', model: 'Evita4', revision: '04.03' });
    expect(decodeMedibusResponse(response(0x52, ''), ctx)).toMatchObject({ identity: {}, problems: [] });
    expect(decodeMedibusResponse(response(0x52, 'garbage'), ctx).problems).toHaveLength(1);
  });
});

describe('vendor tables against the MDC table', () => {
  const normalizer = new Normalizer(loadMappings());
  for (const protocol of ['masimo', 'medibus', 'bbraun'] as const) {
    it(`${protocol}: every mapped numeric code normalizes without a unit mismatch (Masimo PI excepted)`, () => {
      for (const def of vendorCodesFor(protocol).byCode.values()) {
        if (!def.mdc || def.kind !== 'numeric') continue;
        const m: Measurement = {
          deviceId: 'd', code: String(def.mdc.cf), system: 'MDC', refid: def.mdc.refid, value: 1, text: null, unit: def.unit,
          time: 0, tzOffset: 0, flags: 0, containment: '', patient: null, location: null,
        };
        const o = normalizer.normalize(m);
        if (protocol === 'masimo' && def.code === 'PI') continue; // % against a dimensionless metric (see masimo.csv)
        expect(o.flags & Quality.UNIT_MISMATCH, `${protocol} ${def.code} ${def.unit}`).toBe(0);
        expect(o.flags & Quality.CODE_MISMATCH, `${protocol} ${def.code}`).toBe(0);
      }
    });
  }

  it('converts MEDIBUS mbar to the canonical cm[H2O] of PEEP', () => {
    const d = decodeMedibusResponse(response(0x24, `78${medibusValue(10)}`), ctx);
    const o = normalizer.normalize(d.measurements[0]!);
    expect(o.unit).toBe('cm[H2O]');
    expect(o.value).toBeCloseTo(10.197, 3);
    expect(o.loinc).toBe('76248-4');
  });
});

describe('MedibusSession (in-process device)', () => {
  /** A device that answers every command at once; returns the session and what it did. */
  function run(answer: (code: number) => string | null) {
    const measurements: Measurement[] = [];
    const counters: Record<string, number> = {};
    const sent: number[] = [];
    let session: MedibusSession | null = null;
    const device = new MedibusFramer({
      onFrame: (f) => {
        if (f.kind !== 'command') return;
        sent.push(f.code);
        const data = answer(f.code);
        if (data !== null) queueMicrotask(() => session?.onData(encodeMedibusFrame('response', f.code, data)));
      },
      onReject: () => undefined,
    });
    const io: SessionIo = {
      deviceId: 'vent-s',
      zone: zoneOffsets('Europe/Copenhagen'),
      log: silentLogger(),
      write: (bytes) => device.push(bytes),
      submit: async (m) => {
        measurements.push(...m);
        return true;
      },
      alive: () => undefined,
      problem: () => undefined,
      count: (name, by = 1) => {
        counters[name] = (counters[name] ?? 0) + by;
      },
      identify: () => undefined,
      now: () => Date.now(),
    };
    session = new MedibusSession(io, vendorCodesFor('medibus'), { pollIntervalMs: 20, responseTimeoutMs: 100, keepAliveMs: 1000 });
    return { session, measurements, counters, sent };
  }

  it('starts with ICC, asks for the identification, then polls; one request at a time', async () => {
    const { session, sent } = run(() => '');
    await new Promise((r) => setTimeout(r, 80));
    session.onClose();
    expect(sent.slice(0, 6)).toEqual([0x51, 0x52, 0x24, 0x2b, 0x27, 0x2e]);
  });

  it('stores an alarm when it starts and when it ends, not every poll', async () => {
    let polls = 0;
    const { session, measurements } = run((code) => {
      if (code !== 0x27) return '';
      polls++;
      return polls >= 2 && polls <= 4 ? '51DPaw high    ' : '';
    });
    await new Promise((r) => setTimeout(r, 300));
    session.onClose();
    const alarms = measurements.filter((m) => m.code === 'alarm1:1D');
    expect(alarms.map((m) => [m.text, m.flags])).toEqual([
      ['Paw high', Quality.ABNORMAL],
      ['Paw high (ended)', 0],
    ]);
  });

  it('answers a command the device sends, even while a request of its own waits', async () => {
    const written: Buffer[] = [];
    const io: SessionIo = {
      deviceId: 'vent-c',
      zone: zoneOffsets('Europe/Copenhagen'),
      log: silentLogger(),
      write: (b) => written.push(Buffer.from(b)),
      submit: async () => true,
      alive: () => undefined,
      problem: () => undefined,
      count: () => undefined,
      identify: () => undefined,
      now: () => Date.now(),
    };
    const session = new MedibusSession(io, vendorCodesFor('medibus'), { responseTimeoutMs: 1000 });
    await new Promise((r) => setImmediate(r));
    // The session has sent ICC and waits for its echo; the device sends NOP and asks who we are.
    session.onData(encodeMedibusFrame('command', 0x30));
    session.onData(encodeMedibusFrame('command', 0x52));
    session.onClose();
    expect(written[0]).toEqual(encodeMedibusFrame('command', 0x51));
    expect(written[1]).toEqual(encodeMedibusFrame('response', 0x30));
    expect(written[2]!.subarray(0, 2)).toEqual(Buffer.from([0x01, 0x52]));
    expect(written[2]!.toString('latin1')).toContain("'mdi-gateway'");
  });

  it('sends ICC again after repeated timeouts', async () => {
    let iccs = 0;
    const { session, counters } = run((code) => {
      if (code === 0x51) iccs++;
      return code === 0x51 || code === 0x52 ? '' : null; // data requests are never answered
    });
    await new Promise((r) => setTimeout(r, 600));
    session.onClose();
    expect(iccs).toBeGreaterThanOrEqual(2);
    expect(counters.reinitializations).toBeGreaterThanOrEqual(1);
  });
});
