import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { MllpDecoder, type MllpError } from '../../src/codec/mllp.js';
import { ErrorCode } from '../../src/errors.js';
import {
  createPcd01Generator,
  formatPcd01Report,
  parseFaultList,
  PCD01_FAULTS,
  PCD01_SIMULATION_DEFAULTS,
  readMsa,
  runPcd01Simulation,
  UNKNOWN_MDC_CODE,
  type Pcd01GeneratorOptions,
  type Pcd01SimulationReport,
} from '../../simulators/pcd01.js';

const START = Date.UTC(2025, 10, 21, 9, 0, 0); // a winter morning: CET, +0100
const base: Pcd01GeneratorOptions = { seed: 7, startTime: START };

/** A deliberately plain HL7 reader for the assertions: segments by CR, fields by '|'. */
function segments(bytes: Buffer, encoding: BufferEncoding = 'utf8'): string[][] {
  return bytes
    .toString(encoding)
    .split('\r')
    .filter((s) => s !== '')
    .map((s) => s.split('|'));
}
/** Field n (1-based, HL7 numbering; MSH-1 is the separator itself). */
function field(seg: string[], n: number): string {
  return (seg[0] === 'MSH' ? seg[n - 1] : seg[n]) ?? '';
}
const find = (segs: string[][], name: string) => segs.filter((s) => s[0] === name);

/** The MDC/UCUM table beside the repo, keyed by cf code; null in a fresh clone. */
function unitTable(): Map<string, { unitCode: string; unitRefid: string; ucum: string; refid: string }> | null {
  const path = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'shared', 'corpus', 'mdc-loinc-ucum.csv');
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    return null;
  }
  const rows = text.trim().split('\n').slice(1);
  const table = new Map<string, { unitCode: string; unitRefid: string; ucum: string; refid: string }>();
  for (const line of rows) {
    const cells = [...line.matchAll(/("([^"]*)"|[^,]*)(,|$)/g)].map((m) => m[2] ?? m[1] ?? '');
    const [refid, , , cf, , unitRefid, unitCode, ucum] = cells;
    table.set(cf ?? '', { refid: refid ?? '', unitRefid: unitRefid ?? '', unitCode: unitCode ?? '', ucum: ucum ?? '' });
  }
  return table;
}
const TABLE = unitTable();

describe('PCD-01 generator: determinism', () => {
  it('gives the same bytes for the same seed and start time', () => {
    const a = createPcd01Generator({ ...base, devices: 5 });
    const b = createPcd01Generator({ ...base, devices: 5 });
    for (let i = 0; i < 200; i++) expect(a.next().equals(b.next())).toBe(true);
  });

  it('gives other values for another seed', () => {
    const a = createPcd01Generator({ ...base, devices: 3 });
    const b = createPcd01Generator({ ...base, seed: 8, devices: 3 });
    expect(a.next().equals(b.next())).toBe(false);
  });

  it("keeps each device's messages the same whatever order devices are asked in", () => {
    const a = createPcd01Generator({ ...base, devices: 3 });
    const b = createPcd01Generator({ ...base, devices: 3 });
    const fromA = [0, 1, 2, 0, 1, 2].map((d) => a.nextMessage(d).bytes.toString());
    const fromB = [2, 2, 1, 0, 1, 0].map((d) => ({ d, text: b.nextMessage(d).bytes.toString() }));
    const perDevice = (d: number) => fromB.filter((x) => x.d === d).map((x) => x.text);
    expect(perDevice(0)).toEqual([fromA[0], fromA[3]]);
    expect(perDevice(2)).toEqual([fromA[2], fromA[5]]);
  });

  it('steps a virtual clock per device, and reads a real one when given', () => {
    const g = createPcd01Generator({ ...base, devices: 2, intervalMs: 5000 });
    expect([0, 1, 0, 0].map((d) => g.nextMessage(d).time)).toEqual([START, START, START + 5000, START + 10_000]);
    let now = START + 123;
    const real = createPcd01Generator({ ...base, now: () => now });
    expect(real.nextMessage().time).toBe(START + 123);
    now += 1000;
    const m = real.nextMessage();
    expect(m.time).toBe(START + 1123);
    expect(field(find(segments(m.bytes), 'MSH')[0] ?? [], 7)).toBe('20251121100001.123+0100');
  });
});

describe('PCD-01 generator: message shape', () => {
  const EUI = /^[0-9A-F]{16}$/;
  const DTM = /^\d{14}(\.\d{1,4})?[+-]\d{4}$/;

  for (const [profile, obxCount] of [
    ['monitor', 10],
    ['obx20', 20],
    ['pump', 13],
  ] as const) {
    it(`${profile}: MSH/PID/PV1/OBR/OBX with the PCD-01 fields (${obxCount} OBX)`, () => {
      const g = createPcd01Generator({ ...base, devices: 3, profile });
      const ids = new Set<string>();
      for (let i = 0; i < 30; i++) {
        const m = g.nextMessage();
        const segs = segments(m.bytes);
        expect(segs.map((s) => s[0]).slice(0, 4)).toEqual(['MSH', 'PID', 'PV1', 'OBR']);
        const msh = segs[0] as string[];
        expect(msh[1]).toBe('^~\\&');
        const [app, eui, euiType] = field(msh, 3).split('^');
        expect(app).toMatch(/^MDI_SIM_(MONITOR|PUMP)$/);
        expect(eui).toMatch(EUI);
        expect(eui).toBe(m.deviceId);
        expect(euiType).toBe('EUI-64');
        expect(field(msh, 7)).toMatch(DTM);
        expect(field(msh, 9)).toBe('ORU^R01^ORU_R01');
        expect(field(msh, 10)).toBe(m.controlId);
        ids.add(m.controlId);
        expect([field(msh, 11), field(msh, 12), field(msh, 15), field(msh, 16)]).toEqual(['P', '2.6', 'AL', 'NE']);
        expect(field(msh, 18)).toBe('UNICODE UTF-8');
        expect(field(msh, 21)).toBe('IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO');

        const pid = find(segs, 'PID')[0] as string[];
        const [cpr, , , authority, idType] = field(pid, 3).split('^');
        expect(cpr).toMatch(/^(0[1-9]|[12]\d|3[01])(0[1-9]|1[0-2])\d{2}\d{4}$/);
        expect(authority).toBe('&1.2.208.176.1.2&ISO'); // CX-4: the CPR register's OID
        expect(idType).toBe('NNDNK');
        expect(field(pid, 5)).toMatch(/[æøåÆØÅ]/);
        // PID-7 agrees with the CPR's date part (DDMMYY).
        const born = field(pid, 7);
        expect([born.slice(6, 8), born.slice(4, 6), born.slice(2, 4)].join('')).toBe(cpr?.slice(0, 6));
        expect(field(find(segs, 'PV1')[0] as string[], 3)).toMatch(/^ICU\^\d+\^1$/);
        expect(field(find(segs, 'OBR')[0] as string[], 7)).toBe(field(msh, 7));

        const obx = find(segs, 'OBX');
        expect(obx).toHaveLength(obxCount);
        obx.forEach((o, i) => {
          expect(field(o, 1)).toBe(String(i + 1));
          expect(field(o, 3)).toMatch(/^\d+\^MDC_[A-Z0-9_]+\^MDC$/);
          expect(field(o, 4)).toMatch(/^1\.\d+\.\d+\.\d+$/);
        });
        // Containment: the MDS row first, with the device's EUI-64 in OBX-18.
        expect(field(obx[0] as string[], 4)).toBe('1.0.0.0');
        expect(field(obx[0] as string[], 11)).toBe('X');
        expect(field(obx[0] as string[], 18)).toBe(`${eui}^^${eui}^EUI-64`);
        const paths = new Set(obx.map((o) => field(o, 4)));
        for (const o of obx) {
          const [mds, vmd, chan, metric] = field(o, 4).split('.');
          if (field(o, 11) === 'X') {
            expect(field(o, 2)).toBe('');
            expect(field(o, 5)).toBe('');
            continue;
          }
          expect(metric).not.toBe('0');
          expect(field(o, 11)).toBe('R');
          expect(field(o, 14)).toMatch(DTM);
          expect(field(o, 18)).toBe(`${eui}^^${eui}^EUI-64`);
          if (profile !== 'monitor') {
            // The whole tree is there: the metric's VMD and channel rows come with it.
            expect(paths.has(`${mds}.${vmd}.0.0`)).toBe(true);
            expect(paths.has(`${mds}.${vmd}.${chan}.0`)).toBe(true);
          }
          if (field(o, 2) === 'NM') expect(Number.isFinite(Number(field(o, 5)))).toBe(true);
        }
      }
      expect(ids.size).toBe(30);
    });
  }

  it.runIf(TABLE !== null)('uses the codes and units of mdc-loinc-ucum.csv (MDC, UCUM and both styles)', () => {
    const table = TABLE as NonNullable<typeof TABLE>;
    let checked = 0;
    for (const units of ['mdc', 'ucum', 'both'] as const) {
      for (const profile of ['obx20', 'pump'] as const) {
        const g = createPcd01Generator({ ...base, profile, units });
        for (const o of find(segments(g.next()), 'OBX')) {
          if (field(o, 2) !== 'NM') continue;
          const [code, refid] = field(o, 3).split('^');
          const row = table.get(code ?? '');
          expect(row, `OBX-3 ${code} is in the table`).toBeDefined();
          if (row === undefined) continue;
          expect(refid).toBe(row.refid);
          const mdc = `${row.unitCode}^${row.unitRefid}^MDC`;
          const ucum = `${row.ucum}^${row.ucum}^UCUM`;
          expect(field(o, 6)).toBe(units === 'mdc' ? mdc : units === 'ucum' ? ucum : `${mdc}^${ucum}`);
          checked++;
        }
      }
    }
    expect(checked).toBe(3 * (9 + 7));
  });

  it('lets values drift slowly within physiological bounds; NIBP every 5 minutes', () => {
    const g = createPcd01Generator({ ...base, profile: 'monitor' });
    const values = (m: Buffer) =>
      Object.fromEntries(find(segments(m), 'OBX').slice(1).map((o) => [field(o, 3).split('^')[1], [Number(field(o, 5)), field(o, 14)]])) as Record<
        string,
        [number, string]
      >;
    let prev = values(g.next());
    const nibpTimes = new Set<string>();
    for (let i = 0; i < 3600; i++) {
      const v = values(g.next());
      const hr = v.MDC_ECG_HEART_RATE?.[0] ?? NaN;
      expect(hr).toBeGreaterThanOrEqual(35);
      expect(hr).toBeLessThanOrEqual(180);
      expect(Math.abs(hr - (prev.MDC_ECG_HEART_RATE?.[0] ?? NaN))).toBeLessThanOrEqual(4);
      expect(v.MDC_PULS_OXIM_SAT_O2?.[0]).toBeLessThanOrEqual(100);
      expect(v.MDC_PULS_OXIM_SAT_O2?.[0]).toBeGreaterThanOrEqual(80);
      const t = v.MDC_TEMP_BODY?.[0] ?? NaN;
      expect(Math.abs(t - (prev.MDC_TEMP_BODY?.[0] ?? NaN))).toBeLessThanOrEqual(0.2);
      const [sys, dia, mean] = [v.MDC_PRESS_BLD_NONINV_SYS, v.MDC_PRESS_BLD_NONINV_DIA, v.MDC_PRESS_BLD_NONINV_MEAN];
      expect((sys?.[0] ?? 0) > (mean?.[0] ?? 0) && (mean?.[0] ?? 0) > (dia?.[0] ?? 0)).toBe(true);
      nibpTimes.add(sys?.[1] ?? '');
      prev = v;
    }
    // An hour of 1 Hz messages holds 12 or 13 cuff measurements (the first was before the start).
    expect(nibpTimes.size).toBeGreaterThanOrEqual(12);
    expect(nibpTimes.size).toBeLessThanOrEqual(13);
  });

  it('pumps count volume infused at the programmed rate', () => {
    const g = createPcd01Generator({ ...base, profile: 'pump', intervalMs: 60_000 });
    const read = () => {
      const obx = find(segments(g.next()), 'OBX');
      const byRef = (r: string) => obx.find((o) => field(o, 3).includes(r)) as string[];
      return {
        rate: Number(field(byRef('^MDC_FLOW_FLUID_PUMP^'), 5)),
        vtbi: Number(field(byRef('MDC_VOL_FLUID_TBI^'), 5)),
        remain: Number(field(byRef('MDC_VOL_FLUID_TBI_REMAIN'), 5)),
        delivered: Number(field(byRef('MDC_VOL_FLUID_DELIV_TOTAL'), 5)),
        drug: field(byRef('MDC_DRUG_NAME_LABEL'), 5),
      };
    };
    const a = read();
    const b = read();
    expect(a.drug).not.toBe('');
    expect(a.remain).toBeCloseTo(a.vtbi - a.delivered, 0);
    if (b.delivered > a.delivered) expect(b.delivered - a.delivered).toBeCloseTo(b.rate / 60, 0);
  });
});

describe('PCD-01 generator: charsets', () => {
  const name = (bytes: Buffer) => {
    const pid = bytes.indexOf('\rPID|');
    return bytes.subarray(pid, bytes.indexOf('\r', pid + 1));
  };

  it('encodes UTF-8 when MSH-18 says UNICODE UTF-8', () => {
    const m = createPcd01Generator({ ...base, charset: 'utf8' }).next();
    expect(m.toString('latin1')).toContain('|UNICODE UTF-8|');
    const pid = name(m);
    expect(pid.some((b) => b === 0xc3)).toBe(true); // lead byte of æ/ø/å in UTF-8
    expect(() => new TextDecoder('utf-8', { fatal: true }).decode(m)).not.toThrow();
  });

  it('encodes ISO 8859-1 when MSH-18 says 8859/1: ø is the single byte 0xF8', () => {
    const g = createPcd01Generator({ ...base, charset: 'latin1', devices: 8 });
    const all = Buffer.concat(Array.from({ length: 8 }, () => g.next()));
    expect(all.toString('latin1')).toContain('|8859/1|');
    expect(all.includes(0xc3)).toBe(false);
    expect(all.some((b) => b === 0xf8 || b === 0xe6 || b === 0xe5)).toBe(true);
    const utf8 = createPcd01Generator({ ...base, charset: 'utf8', devices: 8 });
    const same = Buffer.concat(Array.from({ length: 8 }, () => utf8.next()));
    // The same text either way: only the encoding and MSH-18 differ.
    expect(all.toString('latin1').replaceAll('|8859/1|', '|UNICODE UTF-8|')).toBe(same.toString('utf8'));
    expect(Buffer.from('ø', 'latin1')).toEqual(Buffer.from([0xf8]));
    expect(Buffer.from('ø', 'utf8')).toEqual(Buffer.from([0xc3, 0xb8]));
  });
});

describe('PCD-01 generator: faults', () => {
  const schedule = Object.fromEntries(PCD01_FAULTS.map((f, i) => [i * 2 + 1, f]));
  const g = createPcd01Generator({ ...base, profile: 'monitor', faultSchedule: schedule, oversizeBytes: 64 * 1024 });
  const messages = Array.from({ length: PCD01_FAULTS.length * 2 + 1 }, () => g.nextMessage());
  const withFault = (f: string) => messages.find((m) => m.fault === f) as (typeof messages)[number];

  /** What the gateway's MLLP decoder makes of a wire. */
  function decode(wire: Buffer, maxMessageBytes = 32 * 1024) {
    const out: { frames: Buffer[]; errors: MllpError[] } = { frames: [], errors: [] };
    const d = new MllpDecoder({ maxMessageBytes, onFrame: (f) => out.frames.push(Buffer.from(f)), onError: (e) => out.errors.push(e) });
    d.push(wire);
    d.end();
    return out;
  }

  it('injects exactly the scheduled faults, and none elsewhere', () => {
    expect(messages.map((m) => m.fault)).toEqual([null, ...PCD01_FAULTS.flatMap((f) => [f, null])]);
  });

  it('bad-value: one NM row carries "abc"', () => {
    const bad = find(segments(withFault('bad-value').bytes), 'OBX').filter((o) => field(o, 5) === 'abc');
    expect(bad).toHaveLength(1);
    expect(field(bad[0] as string[], 2)).toBe('NM');
  });

  it('unknown-code: an extra OBX with an MDC code outside the table', () => {
    const obx = find(segments(withFault('unknown-code').bytes), 'OBX');
    expect(obx).toHaveLength(11);
    expect(field(obx[10] as string[], 3)).toBe(`${UNKNOWN_MDC_CODE}^MDC_SIM_UNKNOWN_METRIC^MDC`);
    if (TABLE !== null) expect(TABLE.has(String(UNKNOWN_MDC_CODE))).toBe(false);
  });

  it('wrong-charset: latin1 bytes in a message that declares UTF-8', () => {
    const m = withFault('wrong-charset').bytes;
    expect(m.toString('latin1')).toContain('|UNICODE UTF-8|');
    expect(() => new TextDecoder('utf-8', { fatal: true }).decode(m)).toThrow();
  });

  it('oversize: a waveform makes the message larger than the limit; the frame is reported with its MSH', () => {
    const m = withFault('oversize');
    expect(m.bytes.length).toBeGreaterThan(64 * 1024);
    expect(m.bytes.toString('latin1')).toContain('|NA|150452^MDC_PULS_OXIM_PLETH^MDC|');
    const { frames, errors } = decode(m.wire);
    expect(frames).toHaveLength(0);
    expect(errors.map((e) => e.code)).toEqual([ErrorCode.MLLP_FRAME_TOO_LARGE]);
    expect(errors[0]?.head.toString('latin1')).toContain(`|${m.controlId}|`);
  });

  it('garbage: junk before the frame is reported and the frame still arrives', () => {
    const m = withFault('garbage');
    expect(m.expectAck).toBe(true);
    const { frames, errors } = decode(m.wire);
    expect(errors.map((e) => e.code)).toEqual([ErrorCode.MLLP_GARBAGE]);
    expect(frames).toEqual([m.bytes]);
  });

  it('truncated: the frame is cut short, expects no ACK, and the next frame is intact', () => {
    const m = withFault('truncated');
    const next = messages[messages.indexOf(m) + 1] as (typeof messages)[number];
    expect(m.expectAck).toBe(false);
    const { frames, errors } = decode(Buffer.concat([m.wire, next.wire]));
    expect(errors.map((e) => [e.code, e.reason])).toEqual([[ErrorCode.MLLP_TRUNCATED, 'restarted']]);
    expect(frames).toEqual([next.bytes]);
  });

  it('injects random faults at about the requested rate', () => {
    const r = createPcd01Generator({ ...base, faults: ['bad-value', 'unknown-code'], faultRate: 0.1 });
    let faulted = 0;
    for (let i = 0; i < 2000; i++) if (r.nextMessage().fault !== null) faulted++;
    expect(faulted).toBeGreaterThan(140);
    expect(faulted).toBeLessThan(260);
  });

  it('parses fault lists as the CLI gives them', () => {
    expect(parseFaultList('garbage, truncated')).toEqual(['garbage', 'truncated']);
    expect(parseFaultList('all')).toEqual([...PCD01_FAULTS]);
    expect(() => parseFaultList('garbage,nonsense')).toThrow(/"faults" must be one of/);
  });
});

describe('PCD-01 simulator: helpers', () => {
  it('reads MSA-1 and MSA-2 from an ACK, whatever the segment terminator', () => {
    expect(readMsa(Buffer.from('MSH|^~\\&|GW||||20250101||ACK^R01^ACK|9|P|2.6\rMSA|AA|ABC123\r'))).toEqual({ code: 'AA', controlId: 'ABC123' });
    expect(readMsa(Buffer.from('MSH|^~\\&|GW||||20250101||ACK|9|P|2.6\nMSA|AE|X1|bad value\nERR|||102'))).toEqual({ code: 'AE', controlId: 'X1' });
    expect(readMsa(Buffer.from('MSH#^~\\&#GW\rMSA#AR#Z9'))).toEqual({ code: 'AR', controlId: 'Z9' });
    expect(readMsa(Buffer.from('MSA|CA|7'))).toEqual({ code: 'CA', controlId: '7' });
    expect(readMsa(Buffer.from('MSH|^~\\&|GW\rERR|||207'))).toBeNull();
  });

  it('writes HL7 times with the Copenhagen offset, switching with summer time', () => {
    const springSwitch = Date.UTC(2025, 2, 30, 1, 0, 0); // last Sunday of March, 01:00 UTC
    const autumnSwitch = Date.UTC(2025, 9, 26, 1, 0, 0); // last Sunday of October
    const g = createPcd01Generator({ ...base, startTime: springSwitch - 1000 });
    expect(createPcd01Generator({ ...base, startTime: autumnSwitch - 1000 }).nextMessage().bytes.toString()).toContain('|20251026025959+0200|');
    expect(g.nextMessage().bytes.toString()).toContain('|20250330015959+0100|');
    expect(g.nextMessage().bytes.toString()).toContain('|20250330030000+0200|');
  });

  it('refuses bad options with the option name', () => {
    expect(() => createPcd01Generator({ devices: 0 })).toThrow(/"devices"/);
    expect(() => createPcd01Generator({ profile: 'ventilator' as never })).toThrow(/"profile" must be one of/);
    expect(() => createPcd01Generator({ faults: ['garbage'], faultRate: 2 })).toThrow(/"faultRate"/);
    expect(() => createPcd01Generator({ faultSchedule: { 1: 'meteor' as never } })).toThrow(/"faultSchedule"/);
    expect(() => createPcd01Generator({ devices: 2 }).nextMessage(2)).toThrow(/"device"/);
    return Promise.all([
      expect(runPcd01Simulation({ port: 1 })).rejects.toThrow(/"count", "durationMs" or "signal"/),
      expect(runPcd01Simulation({ port: 1, count: 1, window: 0 })).rejects.toThrow(/"window"/),
      expect(runPcd01Simulation({ port: 1, count: 1, devices: 2, connections: 3 })).rejects.toThrow(/"connections"/),
    ]);
  });

  it('formats a report as readable lines', () => {
    const r: Pcd01SimulationReport = {
      target: '127.0.0.1:2575',
      devices: 10,
      connections: 10,
      sent: 1200,
      resent: 2,
      aa: 1190,
      ae: 5,
      ar: 1,
      timeouts: 2,
      unmatchedAcks: 0,
      badAcks: 0,
      errors: 1,
      reconnects: 1,
      unacknowledged: 0,
      faults: { 'bad-value': 5, garbage: 0, truncated: 2, oversize: 1, 'wrong-charset': 0, 'unknown-code': 0 },
      elapsedMs: 10_000,
      msgsPerSecond: 119.6,
      latencyMs: { count: 1196, p50: 1.234, p95: 3.5, p99: 12.25, max: 140.2, mean: 1.5 },
    };
    const text = formatPcd01Report(r);
    expect(text).toContain('10 devices on 10 connections');
    expect(text).toContain('1200 (2 resent); faults injected: bad-value 5, truncated 2, oversize 1');
    expect(text).toContain('AA 1190  AE 5  AR 1  timeouts 2');
    expect(text).toContain('119.6 msgs/s');
    expect(text).toContain('p50 1.23 ms  p95 3.50 ms  p99 12.3 ms  max 140 ms  (n=1196)');
    expect(PCD01_SIMULATION_DEFAULTS).toMatchObject({ window: 1, rate: 1, port: 2575 });
  });
});
