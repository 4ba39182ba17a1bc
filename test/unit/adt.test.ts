import { Buffer } from 'node:buffer';
import { describe, expect, it } from 'vitest';
import { decodeAdt } from '../../src/codec/adt.js';
import { decodePcd01 } from '../../src/codec/pcd01.js';
import { ErrorCode } from '../../src/errors.js';
import { CPR_SYSTEM } from '../../src/model/measurement.js';

const CPR = '0101004321';

interface Parts {
  msh9?: string;
  msh7?: string;
  evn?: string;
  pid?: string;
  pv1?: string;
  charset?: string;
}

/** An ADT message written out by hand (the test does not trust the simulator's builder). */
function adt(p: Parts = {}): Buffer {
  const lines = [
    `MSH|^~\\&|EPJ|RH|MDI|RH|${p.msh7 ?? '20261121101500+0100'}||${p.msh9 ?? 'ADT^A01^ADT_A01'}|CTRL-1|P|2.6|||AL|NE||${p.charset ?? ''}`,
    p.evn ?? 'EVN|A01|20261121101500|||op1|20261121101000',
    p.pid ?? `PID|1||123456^^^RH^MR~${CPR}^^^CPR&1.2.208.176.1.2&ISO^NNDNK||Hansen^Jens||19000101|M`,
    p.pv1 ?? 'PV1|1|I|ICU^12^1|||ICU^11^2|||||||||||||V-77',
  ];
  return Buffer.from(lines.filter((l) => l !== '').join('\r'), 'latin1');
}

const T_EVN6 = Date.UTC(2026, 10, 21, 9, 10, 0); // 10:10 +01:00

describe('decodeAdt', () => {
  it('reads an A01: CPR, bed key, prior bed, visit, EVN-6 time with MSH-7\'s offset', () => {
    const r = decodeAdt(adt());
    expect(r.fatal).toBeNull();
    expect(r.event).toEqual({
      type: 'A01',
      patient: { system: CPR_SYSTEM, value: CPR },
      bed: 'ICU/12/1',
      priorBed: 'ICU/11/2',
      time: T_EVN6,
      visit: 'V-77',
      sender: 'EPJ',
      controlId: 'CTRL-1',
    });
    expect(r.header).toMatchObject({ trigger: 'A01', rawControlId: 'CTRL-1', messageCode: 'ADT' });
  });

  it('gives the same bed key and patient as a PCD-01 message with the same PID/PV1', () => {
    const oru = Buffer.from(
      [
        'MSH|^~\\&|GW^0011223344556677^EUI-64|RH|||20261121101500+0100||ORU^R01^ORU_R01|M1|P|2.6',
        `PID|1||123456^^^RH^MR~${CPR}^^^CPR&1.2.208.176.1.2&ISO^NNDNK`,
        'PV1|1|I|ICU^12^1',
        'OBR|1|||182777000^monitoring^SCT|||20261121101500+0100',
        'OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|80|^MDC_DIM_BEAT_PER_MIN^MDC|||||R',
      ].join('\r'),
    );
    const m = decodePcd01(oru).measurements[0]!;
    const e = decodeAdt(adt()).event!;
    expect([e.patient, e.bed]).toEqual([m.patient, m.location]);
  });

  it('accepts every supported event and structure spelling; CPR by type NNDNK only', () => {
    for (const [msh9, type] of [
      ['ADT^A04^ADT_A01', 'A04'],
      ['ADT^A08^ADT_A01', 'A08'],
      ['ADT^A13^ADT_A01', 'A13'],
      ['ADT^A02^ADT_A02', 'A02'],
      ['ADT^A03', 'A03'],
      ['ADT^A11^ADT_A09', 'A11'],
      ['ADT^A12^ADT_A12', 'A12'],
    ] as const) {
      const r = decodeAdt(adt({ msh9, pid: `PID|1||${CPR}^^^^NNDNK` }));
      expect(r.fatal, msh9).toBeNull();
      expect(r.event!.type).toBe(type);
      expect(r.event!.patient.value).toBe(CPR);
    }
  });

  it('takes the event from EVN-1 when MSH-9.2 is empty (older senders)', () => {
    expect(decodeAdt(adt({ msh9: 'ADT', evn: 'EVN|A02|20261121100500' })).event).toMatchObject({ type: 'A02', bed: 'ICU/12/1' });
    expect(decodeAdt(adt({ msh9: 'ADT', evn: 'EVN||20261121100500' })).fatal).toMatchObject({ location: 'MSH-9', hl7Code: '201' });
  });

  it('time: EVN-6, else EVN-2, else MSH-7; a bad EVN-6 is a warning; none valid is fatal', () => {
    expect(decodeAdt(adt({ evn: 'EVN|A01|20261121100500' })).event!.time).toBe(Date.UTC(2026, 10, 21, 9, 5, 0));
    expect(decodeAdt(adt({ evn: '' })).event!.time).toBe(Date.UTC(2026, 10, 21, 9, 15, 0));
    const bad = decodeAdt(adt({ evn: 'EVN|A01|20261121100500|||op|2026-11-21' }));
    expect(bad.event!.time).toBe(Date.UTC(2026, 10, 21, 9, 5, 0));
    expect(bad.problems.map((p) => [p.code, p.location, p.severity])).toContainEqual([ErrorCode.HL7_BAD_TIME, 'EVN-6', 'W']);
    const none = decodeAdt(adt({ evn: 'EVN|A01|garbage', msh7: 'yesterday' }));
    expect(none.fatal).toMatchObject({ code: ErrorCode.HL7_BAD_TIME });
    expect(none.event).toBeNull();
  });

  it('a time without an offset is in the configured zone when MSH-7 has none either', () => {
    const r = decodeAdt(adt({ msh7: '20261121101500', evn: 'EVN|A01||||op|20260701120000' }), { timezone: 'Europe/Copenhagen' });
    expect(r.event!.time).toBe(Date.UTC(2026, 6, 1, 10, 0, 0)); // CEST
    const utc = decodeAdt(adt({ msh7: '20261121101500', evn: 'EVN|A01||||op|20260701120000' }), { timezone: 'UTC' });
    expect(utc.event!.time).toBe(Date.UTC(2026, 6, 1, 12, 0, 0));
  });

  it('PV1-3 is required for A01/A02/A04 and PV1-6 for A12; not for A03/A11', () => {
    for (const msh9 of ['ADT^A01', 'ADT^A02', 'ADT^A04']) {
      const r = decodeAdt(adt({ msh9, pv1: 'PV1|1|I' }));
      expect(r.fatal, msh9).toMatchObject({ code: ErrorCode.HL7_MISSING_FIELD, location: 'PV1-3', hl7Code: '101' });
      expect(decodeAdt(adt({ msh9, pv1: '' })).fatal).toMatchObject({ code: ErrorCode.HL7_MISSING_SEGMENT, location: 'PV1' });
    }
    expect(decodeAdt(adt({ msh9: 'ADT^A12', pv1: 'PV1|1|I|ICU^12^1' })).fatal).toMatchObject({ location: 'PV1-6' });
    expect(decodeAdt(adt({ msh9: 'ADT^A03', pv1: 'PV1|1|I' })).event).toMatchObject({ type: 'A03', bed: null });
    expect(decodeAdt(adt({ msh9: 'ADT^A11', pv1: '' })).event).toMatchObject({ type: 'A11', bed: null });
  });

  it('refuses what is not a supported ADT, without the CPR in any message', () => {
    const cases: [Buffer, string, string, string][] = [
      [adt({ msh9: 'ORU^R01' }), ErrorCode.HL7_UNSUPPORTED_MESSAGE, 'MSH-9', '200'],
      [adt({ msh9: 'ADT^A31' }), ErrorCode.HL7_UNSUPPORTED_MESSAGE, 'MSH-9', '201'],
      [adt({ msh9: '' }), ErrorCode.HL7_MISSING_FIELD, 'MSH-9', '101'],
      [adt({ pid: '' }), ErrorCode.HL7_MISSING_SEGMENT, 'PID', '100'],
      [adt({ pid: 'PID|1||' }), ErrorCode.HL7_MISSING_FIELD, 'PID-3', '101'],
      [adt({ pid: `PID|1||${CPR}^^^RH^MR` }), ErrorCode.HL7_MISSING_FIELD, 'PID-3', '101'],
    ];
    for (const [bytes, code, location, hl7Code] of cases) {
      const r = decodeAdt(bytes);
      expect(r.fatal, location).toMatchObject({ code, location, hl7Code });
      expect(r.event).toBeNull();
      expect(JSON.stringify(r.fatal)).not.toContain(CPR);
    }
  });

  it('survives truncated messages and garbage', () => {
    const whole = adt();
    for (let n = 0; n < whole.length; n += 7) {
      const r = decodeAdt(whole.subarray(0, n));
      expect(r.event === null).toBe(r.fatal !== null);
      if (r.fatal !== null) expect(JSON.stringify(r.fatal)).not.toContain(CPR);
    }
    expect(decodeAdt(Buffer.from('')).fatal).not.toBeNull();
    expect(decodeAdt(Buffer.from('hello world\r\n')).fatal).toMatchObject({ code: ErrorCode.HL7_NO_MSH });
    const noise = Buffer.alloc(4096);
    let x = 7;
    for (let i = 0; i < noise.length; i++) noise[i] = x = (x * 1103515245 + 12345) & 0xff;
    expect(decodeAdt(noise).event).toBeNull();
    expect(decodeAdt(Buffer.concat([Buffer.from('MSH|^~\\&|'), noise])).event).toBeNull();
  });

  it('reads a Latin-1 message with Danish names (names are not used; the CPR is)', () => {
    const r = decodeAdt(adt({ charset: '8859/1', pid: `PID|1||${CPR}^^^CPR&1.2.208.176.1.2&ISO||Ærø^Søren Åge||19000101|M`, pv1: 'PV1|1|I|Børn^2^1' }));
    expect(r.fatal).toBeNull();
    expect(r.event!.bed).toBe('Børn/2/1');
    expect(r.event!.patient.value).toBe(CPR);
    expect(r.header!.encoding).toBe('latin1');
  });
});
