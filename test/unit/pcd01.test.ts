import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ErrorCode } from '../../src/errors.js';
import { AckCode, Hl7Message, buildAck } from '../../src/codec/hl7.js';
import { formatIsoTime } from '../../src/codec/hl7-time.js';
import { clearPcd01Caches, decodePcd01, decodePcd01Message, type Pcd01Options, type Pcd01Result } from '../../src/codec/pcd01.js';
import { CPR_SYSTEM, Quality, measurement, qualityNames, type Measurement } from '../../src/model/measurement.js';

const fixture = (name: string): Buffer => readFileSync(new URL(`../fixtures/hl7/${name}`, import.meta.url));

const MSH = 'MSH|^~\\&|MON^0012A1FFFE00B2C3^EUI-64|ICU|||20261121101455+0100||ORU^R01^ORU_R01|T-1|P|2.6';
const OBR = 'OBR|1|||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|||20261121101450+0100';

function decode(segments: string[], options?: Pcd01Options, eol = '\r'): Pcd01Result {
  return decodePcd01(Buffer.from(segments.join(eol) + eol, 'utf8'), options);
}

/** An OBX segment from its fields by number (HL7 numbering; OBX-1 defaults to `setId`). */
function obx(fields: Record<number, string>, setId = 1): string {
  const last = Math.max(1, ...Object.keys(fields).map(Number));
  const parts = ['OBX'];
  for (let n = 1; n <= last; n++) parts.push(fields[n] ?? (n === 1 ? String(setId) : ''));
  return parts.join('|');
}

/** One OBX row in a standard message. */
function row(obx: string, options?: Pcd01Options): Pcd01Result {
  return decode([MSH, OBR, obx], options);
}

/** A Measurement as a compact, readable record (time as ISO text, flags by name). */
function view(m: Measurement) {
  return {
    deviceId: m.deviceId,
    code: m.code,
    refid: m.refid,
    system: m.system,
    value: m.value,
    text: m.text,
    unit: m.unit,
    time: formatIsoTime(m.time, m.tzOffset),
    flags: qualityNames(m.flags),
    containment: m.containment,
    patient: m.patient,
    location: m.location,
  };
}

describe('decodePcd01: a UTF-8 multiparameter monitor message (our fixture)', () => {
  const r = decodePcd01(fixture('pcd01-monitor-utf8.hl7'));
  const cpr = { system: CPR_SYSTEM, value: '0101901234' };
  const base = { refid: '', system: 'MDC', text: null, flags: [], patient: cpr, location: 'ITA/12/3' };

  it('reads the header', () => {
    expect(r.fatal).toBeNull();
    expect(r.problems).toEqual([]);
    expect(r.header).toMatchObject({
      sendingApplication: 'MDI_SIM_MONITOR^0012A1FFFE00B2C3^EUI-64',
      sendingFacility: 'RH_ITA',
      eui64: '0012A1FFFE00B2C3',
      messageTime: { ms: Date.UTC(2026, 10, 21, 9, 14, 55), tzOffset: 60 },
      messageCode: 'ORU',
      trigger: 'R01',
      messageStructure: 'ORU_R01',
      controlId: 'UTF8-0001',
      processingId: 'P',
      version: '2.6',
      charset: 'UNICODE UTF-8',
      profile: 'IHE_PCD_001',
      encoding: 'utf8',
      rawControlId: 'UTF8-0001',
    });
  });

  it('turns every row with a value into a Measurement and skips the MDS/VMD/CHAN rows', () => {
    expect(r.measurements.map(view)).toEqual([
      { ...base, deviceId: 'ECG-MOD-7', code: '147842', refid: 'MDC_ECG_HEART_RATE', value: 80, unit: 'MDC_DIM_BEAT_PER_MIN', time: '2026-11-21T10:14:55+01:00', containment: '1.2.1.1' },
      { ...base, deviceId: '0012A1FFFE00B2C3', code: '150456', refid: 'MDC_PULS_OXIM_SAT_O2', value: 97.5, unit: '%', time: '2026-11-21T10:14:55+01:00', containment: '1.3.1.1' },
      {
        ...base,
        deviceId: '0012A1FFFE00B2C3',
        code: '150021',
        refid: 'MDC_PRESS_BLD_NONINV_SYS',
        value: 167,
        unit: 'mm[Hg]',
        time: '2026-11-21T10:13:00+01:00',
        flags: ['NOT_FINAL', 'DEMO', 'ABNORMAL'],
        containment: '1.1.1.5',
      },
      {
        ...base,
        deviceId: 'ECG-MOD-7',
        code: '151562',
        refid: 'MDC_RESP_RATE',
        value: Number.NaN,
        text: 'NaN',
        unit: 'MDC_DIM_RESP_PER_MIN',
        time: '2026-11-21T10:14:55+01:00',
        flags: ['INVALID'],
        containment: '1.2.1.19',
      },
      // No OBX-14: OBR-7.
      { ...base, deviceId: '0012A1FFFE00B2C3', code: '150344', refid: 'MDC_TEMP', value: 37.2, unit: 'Cel', time: '2026-11-21T10:14:50+01:00', containment: '1.5.1.1' },
      {
        ...base,
        deviceId: 'ECG-MOD-7',
        code: '184327',
        refid: 'MDC_ECG_STAT_RHY',
        value: Number.NaN,
        text: 'Sinusrytme&regelmæssig^stabil | ok \\ A',
        unit: '',
        time: '2026-11-21T10:14:55+01:00',
        containment: '1.2.1.21',
      },
      {
        ...base,
        deviceId: '0012A1FFFE00B2C3',
        code: '150452',
        refid: 'MDC_PULS_OXIM_PLETH',
        value: Number.NaN,
        text: '12^34^56',
        unit: 'MDC_DIM_DIMLESS',
        time: '2026-11-21T10:14:55+01:00',
        containment: '1.3.1.2',
      },
      { ...base, deviceId: 'ScaleX', code: '68063', refid: 'MDC_ATTR_PT_WEIGHT', value: 72.4, unit: 'kg', time: '2026-11-21T10:14:55+01:00', containment: '1.0.0.1' },
      // OBX-14 without offset: the sender's offset from MSH-7; OBX-11 X with a value is final.
      { ...base, deviceId: '0012A1FFFE00B2C3', code: '149546', refid: 'MDC_PULS_RATE_NON_INV', value: 66, unit: 'bpm', time: '2026-11-21T10:13:00+01:00', containment: '1.1.1.8' },
    ]);
    expect(r.rejectedRows).toEqual([]);
  });

  it('builds Measurements with the shape of measurement()', () => {
    const shape = Object.keys(measurement(r.measurements[0]!));
    for (const m of r.measurements) expect(Object.keys(m)).toEqual(shape);
    // One PatientId object per patient group, shared by its rows.
    expect(new Set(r.measurements.map((m) => m.patient)).size).toBe(1);
  });

  it('answers it with an ACK built from the header', () => {
    const ack = buildAck(r.header, AckCode.AA, r.problems, { controlId: 'A1', now: Date.UTC(2026, 10, 21, 9, 15) });
    const back = Hl7Message.parse(ack);
    expect(back.header!.get(9)).toBe('ACK');
    expect(back.header!.get(9, 2)).toBe('R01');
    expect(back.header!.get(18)).toBe('UNICODE UTF-8');
    expect(back.firstSegment('MSA')!.get(2)).toBe('UTF8-0001');
  });
});

describe('decodePcd01: character sets and line endings', () => {
  it('reads an ISO-8859-1 message with CRLF endings: Danish text survives', () => {
    const bytes = fixture('pcd01-monitor-latin1.hl7');
    expect(bytes.includes(Buffer.from('\r\n'))).toBe(true);
    expect(bytes.includes(0xd8)).toBe(true);
    const r = decodePcd01(bytes);
    expect(r.problems).toEqual([]);
    expect(r.header!.charset).toBe('8859/1');
    expect(r.measurements.map(view)).toEqual([
      {
        deviceId: 'MDI_SIM_MONITOR',
        code: '147842',
        refid: 'MDC_ECG_HEART_RATE',
        system: 'MDC',
        value: 72,
        text: null,
        unit: '/min',
        time: '2026-01-15T08:29:55+01:00',
        flags: [],
        containment: '1.2.1.1',
        patient: { system: CPR_SYSTEM, value: '0101901234' },
        location: 'Afsnit Ø/Stue 4/Seng 2',
      },
      expect.objectContaining({ code: '0', refid: 'MDCX_NOTE', text: 'Målt på venstre arm, kølig hud', location: 'Afsnit Ø/Stue 4/Seng 2' }),
    ]);
  });

  it('reads a v2.7 message with five encoding characters', () => {
    const r = decodePcd01(fixture('pcd01-v27-five-delimiters.hl7'));
    expect(r.fatal).toBeNull();
    expect(r.header!.delimiters.truncation).toBe('#');
    expect(r.measurements.map((m) => [m.deviceId, m.code, m.value, m.text, m.unit, m.patient])).toEqual([
      ['0012210000000042', '157784', 12.5, null, 'mL/h', null],
      ['0012210000000042', '184514', Number.NaN, 'Noradrenalin 40 µg/mL #1', '', null],
    ]);
  });

  it('reads custom delimiters and decodes escapes with them', () => {
    const r = decodePcd01(fixture('pcd01-custom-delimiters.hl7'));
    expect(r.measurements.map((m) => [m.code, m.refid, m.value, m.text, m.unit])).toEqual([
      ['147842', 'MDC_ECG_HEART_RATE', 81, null, 'MDC_DIM_BEAT_PER_MIN'],
      ['0', 'MDCX_NOTE', Number.NaN, 'a!b*c&d~e$f^g|h\\i', ''],
    ]);
  });

  it('reports an unknown charset as a warning and still decodes', () => {
    const r = decodePcd01(fixture('pcd01-unknown-charset.hl7'));
    expect(r.measurements[0]!.text).toBe('Søvnig, rolig');
    expect(r.problems).toEqual([expect.objectContaining({ code: ErrorCode.HL7_BAD_CHARSET, severity: 'W', location: 'MSH-18' })]);
  });

  it('joins a capture that broke MSH-10 over two lines', () => {
    const r = decodePcd01(fixture('pcd01-wrapped-msh10.hl7'));
    expect(r.header!.controlId).toBe('639070847165381484276804');
    expect(r.header!.charset).toBe('ASCII');
    expect(r.measurements.map((m) => [m.deviceId, m.code, m.value, m.unit])).toEqual([['I51559', '158014', 0, 'mL/h']]);
    expect(r.problems).toEqual([expect.objectContaining({ code: ErrorCode.HL7_WRAPPED_SEGMENT, severity: 'W', location: 'MSH' })]);
  });
});

describe('decodePcd01: bad rows and bad messages', () => {
  it('rejects a non-numeric NM row with a per-row problem; the other rows stay good', () => {
    const bytes = fixture('pcd01-bad-nm.hl7');
    const r = decodePcd01(bytes);
    expect(r.fatal).toBeNull();
    expect(r.measurements.map((m) => [m.code, m.value])).toEqual([
      ['147842', 80],
      ['150456', 97],
      ['151562', 16],
    ]);
    expect(r.problems).toEqual([
      expect.objectContaining({ code: ErrorCode.HL7_BAD_VALUE, hl7Code: '102', location: 'OBX[4]-5', severity: 'E' }),
      expect.objectContaining({ code: ErrorCode.HL7_BAD_VALUE, hl7Code: '102', location: 'OBX[5]-5', severity: 'E' }),
    ]);
    expect(r.rejectedRows.map((x) => [x.obx, x.raw.toString('latin1'), x.problem.location])).toEqual([
      [4, 'OBX|4|NM|150344^MDC_TEMP^MDC|1.5.1.1|abc|268192^MDC_DIM_DEGC^MDC|||||R', 'OBX[4]-5'],
      [5, 'OBX|5|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC|1.1.1.5|1,5|266016^MDC_DIM_MMHG^MDC|||||R', 'OBX[5]-5'],
    ]);
    // The messages name the place and the code, not the value.
    expect(r.problems[0]!.message).toContain('150344^MDC_TEMP^MDC');
    expect(r.problems[0]!.message).not.toContain('abc');
    expect(r.problems[1]!.message).not.toContain('1,5');
    // The rejected bytes are a copy: reusing the frame buffer does not change them.
    bytes.fill(0x20);
    expect(r.rejectedRows[0]!.raw.toString('latin1')).toContain('abc');
  });

  it('answers a message without OBX with a fatal problem', () => {
    const r = decodePcd01(fixture('pcd01-no-obx.hl7'));
    expect(r.header!.controlId).toBe('NO-OBX-1');
    expect(r.measurements).toEqual([]);
    expect(r.fatal).toEqual(expect.objectContaining({ code: ErrorCode.HL7_MISSING_SEGMENT, hl7Code: '100', location: 'OBX', severity: 'E' }));
  });

  it('refuses a message that is not an ORU (table 0357 code 200)', () => {
    const r = decodePcd01(fixture('adt-a01.hl7'));
    expect(r.fatal).toEqual(expect.objectContaining({ code: ErrorCode.HL7_UNSUPPORTED_MESSAGE, hl7Code: '200', location: 'MSH-9' }));
    expect(r.header!.messageCode).toBe('ADT');
    expect(r.measurements).toEqual([]);
    const ack = Hl7Message.parse(buildAck(r.header, AckCode.AR, [r.fatal!]));
    expect(ack.firstSegment('MSA')!.get(1)).toBe('AR');
    expect(ack.firstSegment('MSA')!.get(2)).toBe('ADT-1');
    expect(ack.firstSegment('ERR')!.get(3)).toBe('200');
  });

  it('accepts ORU R01/R40/R42 and refuses other ORU triggers (code 201)', () => {
    for (const type of ['ORU^R01', 'ORU^R40^ORU_R40', 'ORU^R42^ORU_R01']) {
      expect(decode([MSH.replace('ORU^R01^ORU_R01', type), OBR, 'OBX|1|NM|1^A^MDC|1.1.1.1|5']).fatal).toBeNull();
    }
    const r = decode([MSH.replace('ORU^R01^ORU_R01', 'ORU^W01'), OBR, 'OBX|1|NM|1^A^MDC|1.1.1.1|5']);
    expect(r.fatal).toEqual(expect.objectContaining({ code: ErrorCode.HL7_UNSUPPORTED_MESSAGE, hl7Code: '201' }));
    const empty = decode([MSH.replace('ORU^R01^ORU_R01', ''), OBR]);
    expect(empty.fatal).toEqual(expect.objectContaining({ code: ErrorCode.HL7_MISSING_FIELD, hl7Code: '101', location: 'MSH-9' }));
  });

  it('answers input without MSH with no header and a fatal problem', () => {
    const r = decodePcd01(Buffer.from('PID|||0101901234^^^^NNDNK\rOBX|1|NM|1^A^MDC||5\r'));
    expect(r.header).toBeNull();
    expect(r.fatal).toEqual(expect.objectContaining({ code: ErrorCode.HL7_NO_MSH, hl7Code: '100' }));
    const ack = Hl7Message.parse(buildAck(r.header, AckCode.AE, [r.fatal!]));
    expect(ack.firstSegment('MSA')!.get(1)).toBe('AR');
    expect(ack.firstSegment('MSA')!.get(2)).toBe('');
  });

  it('warns about an empty MSH-10 and MSH-7, and an OBX before any OBR', () => {
    const r = decode([MSH.replace('|T-1|', '||').replace('20261121101455+0100', ''), obx({ 2: 'NM', 3: '1^A^MDC', 4: '1.1.1.1', 5: '5', 14: '20261121101455+0100' })]);
    expect(r.measurements).toHaveLength(1);
    expect(r.problems.map((p) => [p.location, p.severity])).toEqual([
      ['MSH-7', 'W'],
      ['MSH-10', 'W'],
      ['OBX[1]', 'W'],
    ]);
  });

  it('rejects a row with a value but no OBX-3 (Osypka Aesculon style)', () => {
    const r = row(obx({ 2: 'NM', 5: '100', 6: '%', 11: 'R', 14: '20171221145413' }));
    expect(r.measurements).toEqual([]);
    expect(r.rejectedRows[0]!.problem).toEqual(expect.objectContaining({ code: ErrorCode.HL7_MISSING_FIELD, hl7Code: '101', location: 'OBX[1]-3' }));
  });

  it('keeps a row that names only the refid (the pipeline can map it)', () => {
    const r = row('OBX|1|NM|^MDC_ECG_HEART_RATE^MDC|1.2.1.1|70');
    expect(r.measurements.map((m) => [m.code, m.refid, m.system, m.value])).toEqual([['', 'MDC_ECG_HEART_RATE', 'MDC', 70]]);
  });
});

describe('decodePcd01: OBX-5 values', () => {
  const one = (obx: string): Measurement => {
    const r = row(obx);
    expect(r.rejectedRows).toEqual([]);
    expect(r.measurements).toHaveLength(1);
    return r.measurements[0]!;
  };

  it.each([
    ['NM', '80', 80, null],
    ['NM', '-3.25', -3.25, null],
    ['NM', ' 37.0 ', 37, null],
    ['NM', '80^bpm', 80, null],
    ['SN', '^120', 120, null],
    ['SN', '=^120', 120, null],
    ['SN', '<^5', Number.NaN, '<^5'],
    ['SN', '^10^-^20', Number.NaN, '^10^-^20'],
    ['ST', 'Sinus rhythm', Number.NaN, 'Sinus rhythm'],
    ['CWE', '197334^MDC_EVT_VOL_INFUS_NEAR_COMP^MDC', Number.NaN, '197334^MDC_EVT_VOL_INFUS_NEAR_COMP^MDC'],
    ['CWE', '^pump-status-infusing', Number.NaN, '^pump-status-infusing'],
    ['DTM', '20091028123702', Number.NaN, '20091028123702'],
    ['NA', '12^123^24', Number.NaN, '12^123^24'],
    ['', '42', 42, null],
    ['', '8417848^MDC_CTXT_GLU_SAMPLELOCATION_FINGER^MDC', Number.NaN, '8417848^MDC_CTXT_GLU_SAMPLELOCATION_FINGER^MDC'],
    ['ST', 'first~second', Number.NaN, 'first'],
  ])('OBX-2 %j, OBX-5 %j → value %s, text %j', (type, value, expected, text) => {
    const m = one(`OBX|1|${type}|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.3.1.1|${value}|%^%^UCUM`);
    expect(m.value).toBe(expected);
    expect(m.text).toBe(text);
  });

  it.each([
    [8388607, 'NaN'],
    [8388608, 'NRes'],
    [8388606, '+INF'],
    [8388610, '-INF'],
    [8388609, 'reserved'],
  ])('IEEE 11073-20601 special value %i → NaN, INVALID, text %j', (special, name) => {
    const m = one(`OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.3.1.1|${special}|%^%^UCUM`);
    expect(m.value).toBeNaN();
    expect(m.text).toBe(name);
    expect(m.flags & Quality.INVALID).toBe(Quality.INVALID);
  });

  it('keeps 8388605 and 8388611 as numbers', () => {
    expect(one('OBX|1|NM|1^A^MDC|1.1.1.1|8388605').value).toBe(8388605);
    expect(one('OBX|1|NM|1^A^MDC|1.1.1.1|8388611').value).toBe(8388611);
  });

  it('skips rows without a value, including the explicit null ""', () => {
    for (const v of ['', '""', '   ']) expect(row(`OBX|1|NM|1^A^MDC|1.1.1.1|${v}|%`).measurements).toEqual([]);
    expect(row('OBX|1|NM|1^A^MDC|1.1.1.1|""|%').problems).toEqual([]);
  });

  it('rejects NM values that are not plain decimal numbers', () => {
    for (const v of ['abc', '1,926', '0x10', 'Infinity', '12a', '-']) {
      const r = row(`OBX|1|NM|1^A^MDC|1.1.1.1|${v}`);
      expect(r.measurements, v).toEqual([]);
      expect(r.rejectedRows[0]!.problem.code).toBe(ErrorCode.HL7_BAD_VALUE);
    }
  });
});

describe('decodePcd01: OBX-6 units', () => {
  it.each([
    ['266016^MDC_DIM_MMHG^MDC', 'MDC_DIM_MMHG'],
    ['266016^^MDC', '266016'],
    ['mm[Hg]^mm[Hg]^UCUM', 'mm[Hg]'],
    ['265266^MDC_DIM_MILLI_L_PER_HR^MDC^mL/h^mL/h^UCUM', 'mL/h'],
    ['kg^kg^UCUM^263875^MDC_DIM_KILO_G^MDC', 'kg'],
    ['mmHg^Unit', 'mmHg'],
    ['bpm', 'bpm'],
    ['^beats/min', 'beats/min'],
    ['{beat}/min^{beat}/min^UCUM', '{beat}/min'],
    ['', ''],
  ])('%j → %j', (unit, expected) => {
    expect(row(`OBX|1|NM|1^A^MDC|1.1.1.1|5|${unit}`).measurements[0]!.unit).toBe(expected);
  });
});

describe('decodePcd01: OBX-8 flags and OBX-11 status', () => {
  it.each([
    ['L', ['ABNORMAL']],
    ['HH', ['ABNORMAL']],
    ['AA', ['ABNORMAL']],
    ['<', ['ABNORMAL']],
    ['N', []],
    ['DEMO', ['DEMO']],
    ['TEST', ['DEMO']],
    ['QUES', ['QUESTIONABLE']],
    ['INV', ['INVALID']],
    ['EARLY~QUES', ['QUESTIONABLE', 'EARLY']],
    ['L~PM~SP', ['ABNORMAL']],
    ['H~DEMO', ['DEMO', 'ABNORMAL']],
  ])('OBX-8 %j → %j', (flags, names) => {
    expect(qualityNames(row(`OBX|1|NM|1^A^MDC|1.1.1.1|5|%|90-100|${flags}|||R`).measurements[0]!.flags)).toEqual(names);
  });

  it.each([
    ['R', []],
    ['F', []],
    ['U', []],
    ['', []],
    ['X', []],
    ['P', ['NOT_FINAL']],
    ['C', ['NOT_FINAL']],
    ['S', ['NOT_FINAL']],
    ['I', ['NOT_FINAL']],
    ['D', ['INVALID']],
    ['W', ['INVALID']],
    ['N', ['INVALID']],
    ['ZZ', ['NOT_FINAL']],
  ])('OBX-11 %j → %j', (status, names) => {
    expect(qualityNames(row(obx({ 2: 'NM', 3: '1^A^MDC', 4: '1.1.1.1', 5: '5', 6: '%', 11: status })).measurements[0]!.flags)).toEqual(names);
  });

  it('marks everything of a training message (MSH-11 T) as DEMO', () => {
    const r = decode([MSH.replace('|P|2.6', '|T|2.6'), OBR, 'OBX|1|NM|1^A^MDC|1.1.1.1|5']);
    expect(qualityNames(r.measurements[0]!.flags)).toEqual(['DEMO']);
  });
});

describe('decodePcd01: times', () => {
  it('takes OBX-14, else OBR-7 of its group, else MSH-7', () => {
    const r = decode([
      MSH,
      'OBX|1|NM|1^A^MDC|1.1.1.1|1',
      'OBR|1|||x|||20261121101000+0100',
      'OBX|2|NM|1^A^MDC|1.1.1.2|2',
      obx({ 2: 'NM', 3: '1^A^MDC', 4: '1.1.1.3', 5: '3', 11: 'R', 14: '20261121100500+0100' }, 3),
      'OBR|2|||x',
      'OBX|4|NM|1^A^MDC|1.1.1.4|4',
    ]);
    expect(r.measurements.map((m) => formatIsoTime(m.time, m.tzOffset))).toEqual([
      '2026-11-21T10:14:55+01:00',
      '2026-11-21T10:10:00+01:00',
      '2026-11-21T10:05:00+01:00',
      '2026-11-21T10:14:55+01:00',
    ]);
  });

  it('uses only TS component 1 (degree of precision ignored)', () => {
    const m = row(obx({ 2: 'NM', 3: '1^A^MDC', 4: '1.1.1.1', 5: '5', 14: '20261121101200+0100^S' })).measurements[0]!;
    expect(formatIsoTime(m.time, m.tzOffset)).toBe('2026-11-21T10:12:00+01:00');
  });

  it('warns about an invalid OBX-14 and falls back to OBR-7', () => {
    const r = row(obx({ 2: 'NM', 3: '1^A^MDC', 4: '1.1.1.1', 5: '5', 14: '2026-11-21 10:12' }));
    expect(formatIsoTime(r.measurements[0]!.time, r.measurements[0]!.tzOffset)).toBe('2026-11-21T10:14:50+01:00');
    expect(r.problems).toEqual([expect.objectContaining({ code: ErrorCode.HL7_BAD_TIME, location: 'OBX[1]-14', severity: 'W' })]);
  });

  it('rejects a row without any usable time', () => {
    const r = decode([MSH.replace('20261121101455+0100', 'yesterday'), 'OBR|1', 'OBX|1|NM|1^A^MDC|1.1.1.1|5']);
    expect(r.measurements).toEqual([]);
    expect(r.rejectedRows[0]!.problem).toEqual(expect.objectContaining({ code: ErrorCode.HL7_BAD_TIME, location: 'OBX[1]-14' }));
  });

  it("reads local times in the sender's MSH-7 offset, or in the configured zone", () => {
    const segs = [MSH.replace('+0100', '+0800'), 'OBR|1|||x|||20260726231331', 'OBX|1|NM|1^A^MDC|1.1.1.1|5'];
    const sender = decode(segs).measurements[0]!;
    expect(formatIsoTime(sender.time, sender.tzOffset)).toBe('2026-07-26T23:13:31+08:00');
    const zone = decode(segs, { senderOffset: false }).measurements[0]!;
    expect(formatIsoTime(zone.time, zone.tzOffset)).toBe('2026-07-26T23:13:31+02:00');
    const ny = decode(segs, { senderOffset: false, timezone: 'America/New_York' }).measurements[0]!;
    expect(formatIsoTime(ny.time, ny.tzOffset)).toBe('2026-07-26T23:13:31-04:00');
    // MSH-7 without an offset: the configured zone.
    const local = decode([MSH.replace('20261121101455+0100', '20260726231332'), 'OBR|1|||x|||20260726231331', 'OBX|1|NM|1^A^MDC|1.1.1.1|5']);
    expect(formatIsoTime(local.measurements[0]!.time, local.measurements[0]!.tzOffset)).toBe('2026-07-26T23:13:31+02:00');
  });
});

describe('decodePcd01: device ids (OBX-18 and the containment tree)', () => {
  const tree = [
    MSH,
    OBR,
    'OBX|1||69965^MDS^MDC|1.0.0.0|||||||X|||||||MDS-ID^^0012A1FFFE00B2C3^EUI-64',
    'OBX|2||69798^VMD^MDC|1.2.0.0|||||||X|||||||VMD-ID',
    'OBX|3||69799^CHAN^MDC|1.2.1.0|||||||X|||||||CHAN-ID',
    'OBX|4||69800^CHAN2^MDC|1.2.2.0|||||||X',
    'OBX|5|NM|1^A^MDC|1.2.1.1|1',
    'OBX|6|NM|1^A^MDC|1.2.2.1|2',
    'OBX|7|NM|1^A^MDC|1.3.1.1|3',
    obx({ 2: 'NM', 3: '1^A^MDC', 4: '1.2.1.2', 5: '4', 18: 'OWN-ID' }, 8),
    obx({ 2: 'NM', 3: '1^A^MDC', 4: '1.2.1.3', 5: '5', 18: '^^EI3-ONLY^EUI-64' }, 9),
    'OBX|10|NM|1^A^MDC|2.1.1.1|6',
    'OBX|11|NM|1^A^MDC||7',
    'OBX|12|NM|1^A^MDC|1.20.1.1|8',
  ];

  it('takes the row’s own OBX-18, else the nearest containing CHAN/VMD/MDS row’s, else MSH-3', () => {
    const r = decode(tree);
    expect(r.measurements.map((m) => [m.containment, m.deviceId])).toEqual([
      ['1.2.1.1', 'CHAN-ID'],
      ['1.2.2.1', 'VMD-ID'],
      ['1.3.1.1', 'MDS-ID'],
      ['1.2.1.2', 'OWN-ID'],
      ['1.2.1.3', 'EI3-ONLY'],
      ['2.1.1.1', '0012A1FFFE00B2C3'],
      ['', '0012A1FFFE00B2C3'],
      // "1.2" is a prefix of "1.20" as text, not as a path.
      ['1.20.1.1', 'MDS-ID'],
    ]);
  });

  it('falls back to MSH-3 text, then MSH-4, without an EUI-64', () => {
    expect(decode([MSH.replace('MON^0012A1FFFE00B2C3^EUI-64', 'iControl'), OBR, 'OBX|1|NM|1^A^MDC||1']).measurements[0]!.deviceId).toBe('iControl');
    expect(decode([MSH.replace('MON^0012A1FFFE00B2C3^EUI-64|ICU', '|KC575235977G'), OBR, 'OBX|1|NM|1^A^MDC||1']).measurements[0]!.deviceId).toBe('KC575235977G');
    // Dräger's malformed HD: EUI-64 in HD-1, type in HD-2.
    const r = decode([MSH.replace('MON^0012A1FFFE00B2C3^EUI-64', '0000000000000001^EUI-64'), OBR, 'OBX|1|NM|1^A^MDC||1']);
    expect(r.header!.eui64).toBe('0000000000000001');
  });

  it('does not carry device rows over to the next message', () => {
    decode(tree);
    expect(decode([MSH, OBR, 'OBX|1|NM|1^A^MDC|1.2.1.1|1']).measurements[0]!.deviceId).toBe('0012A1FFFE00B2C3');
  });
});

describe('decodePcd01: patient (PID-3) and location (PV1-3)', () => {
  const patientOf = (pid3: string) => decode([MSH, `PID|||${pid3}||Ærøskøbing^Søren`, OBR, 'OBX|1|NM|1^A^MDC||1']);

  it.each([
    ['0101901234^^^&1.2.208.176.1.2&ISO'],
    ['0101901234^^^1.2.208.176.1.2'],
    ['0101901234^^^&urn:oid:1.2.208.176.1.2'],
    ['0101901234^^^^NNDNK'],
    ['010190-1234^^^^NNDNK'],
    ['H1^^^RH^MR~0101901234^^^CPR&1.2.208.176.1.2&ISO^NNDNK'],
  ])('finds the CPR number in %j', (pid3) => {
    const r = patientOf(pid3);
    expect(r.measurements[0]!.patient).toEqual({ system: CPR_SYSTEM, value: '0101901234' });
    expect(r.problems).toEqual([]);
  });

  it('takes the first identifier with its assigning authority when there is no CPR', () => {
    expect(patientOf('HO2009001^^^^MR').measurements[0]!.patient).toEqual({ system: '', value: 'HO2009001' });
    expect(patientOf('12345^^^A^MR').measurements[0]!.patient).toEqual({ system: 'A', value: '12345' });
    expect(patientOf('111^^^Imaginary Hospital&1.3.4.565&ISO^PI').measurements[0]!.patient).toEqual({ system: 'urn:oid:1.3.4.565', value: '111' });
  });

  it.each([['Unknown Patient^Unknown Patient'], ['anaphylactic shock^^^^'], [''], ['0'], ['UKENDT'], ['""']])('has no patient for %j', (pid3) => {
    expect(patientOf(pid3).measurements[0]!.patient).toBeNull();
  });

  it('warns about a malformed CPR without putting the number in the message', () => {
    const r = patientOf('01019012^^^^NNDNK');
    expect(r.measurements[0]!.patient).toEqual({ system: CPR_SYSTEM, value: '01019012' });
    expect(r.problems).toEqual([expect.objectContaining({ code: ErrorCode.HL7_BAD_VALUE, location: 'PID-3', severity: 'W' })]);
    expect(JSON.stringify(r.problems)).not.toContain('01019012');
  });

  it('never puts a CPR number or a name into a problem, whatever goes wrong', () => {
    const r = decode([
      MSH.replace('|T-1|', '||'),
      'PID|||0101901234^^^^NNDNK||Ærøskøbing^Søren',
      'PV1||I|ITA^12^3',
      'OBR|1|||x|||nonsense',
      'OBX|1|NM|1^A^MDC|1.1.1.1|0101901234',
      obx({ 2: 'NM', 3: '1^A^MDC', 4: '1.1.1.2', 5: 'Søren', 14: 'bad' }, 2),
      'OBX|3|NM|||Ærøskøbing',
    ]);
    expect(r.problems.length).toBeGreaterThanOrEqual(4);
    const text = JSON.stringify(r.problems) + JSON.stringify(r.fatal);
    for (const secret of ['0101901234', 'Søren', 'Ærøskøbing']) expect(text).not.toContain(secret);
  });

  it('joins PV1-3 point of care/room/bed, skipping empty parts', () => {
    const loc = (pv13: string) => decode([MSH, `PV1||I|${pv13}`, OBR, 'OBX|1|NM|1^A^MDC||1']).measurements[0]!.location;
    expect(loc('ITA^12^3')).toBe('ITA/12/3');
    expect(loc('CU1^^Bed001^TAM')).toBe('CU1/Bed001');
    expect(loc('^^&24')).toBe('24');
    expect(loc('')).toBeNull();
  });

  it('follows the patient groups of a message with several PIDs', () => {
    const r = decode([
      MSH,
      'PID|||1111111118^^^^NNDNK',
      'PV1||I|A^1^1',
      OBR,
      'OBX|1|NM|1^A^MDC||1',
      'PID|||2222222226^^^^NNDNK',
      OBR,
      'OBX|2|NM|1^A^MDC||2',
    ]);
    expect(r.measurements.map((m) => [m.patient?.value, m.location])).toEqual([
      ['1111111118', 'A/1/1'],
      ['2222222226', null],
    ]);
  });
});

describe('decodePcd01: caches never change results', () => {
  it('gives the same result with cold caches, warm caches and the template fast path', () => {
    const files = ['pcd01-monitor-utf8.hl7', 'pcd01-monitor-latin1.hl7', 'pcd01-v27-five-delimiters.hl7', 'pcd01-bad-nm.hl7', 'pcd01-custom-delimiters.hl7', 'pcd01-wrapped-msh10.hl7'];
    for (const f of files) {
      clearPcd01Caches();
      const cold = decodePcd01(fixture(f));
      const warm = decodePcd01(fixture(f));
      const again = decodePcd01Message(Hl7Message.parse(fixture(f)));
      expect(warm, f).toEqual(cold);
      expect(again, f).toEqual(cold);
    }
  });

  it('does not let a template match a row whose value, time or tail differs', () => {
    clearPcd01Caches();
    const spo2 = { 2: 'NM', 3: '150456^MDC_PULS_OXIM_SAT_O2^MDC', 4: '1.3.1.1', 7: '90-100', 11: 'R' };
    const a = row(obx({ ...spo2, 5: '97', 6: '262688^MDC_DIM_PERCENT^MDC', 14: '20261121101455+0100' }));
    const b = row(obx({ ...spo2, 5: '88', 6: '262688^MDC_DIM_PERCENT^MDC', 8: 'L', 14: '20261121101456+0100' }));
    const c = row(obx({ ...spo2, 5: '88', 6: '%^%^UCUM', 8: 'L', 14: '20261121101456+0100', 18: 'DEV2' }));
    const d = row(obx({ ...spo2, 5: '88', 6: '%^%^UCUM', 8: 'L' }));
    expect([a, b, c, d].map((r) => view(r.measurements[0]!)).map((v) => [v.value, v.unit, v.flags, v.time, v.deviceId])).toEqual([
      [97, 'MDC_DIM_PERCENT', [], '2026-11-21T10:14:55+01:00', '0012A1FFFE00B2C3'],
      [88, 'MDC_DIM_PERCENT', ['ABNORMAL'], '2026-11-21T10:14:56+01:00', '0012A1FFFE00B2C3'],
      [88, '%', ['ABNORMAL'], '2026-11-21T10:14:56+01:00', 'DEV2'],
      [88, '%', ['ABNORMAL'], '2026-11-21T10:14:50+01:00', '0012A1FFFE00B2C3'],
    ]);
  });

  it('shares a row template between devices that differ in OBX-18 only, and gives each its own id', () => {
    const hr = { 2: 'NM', 3: '147842^MDC_ECG_HEART_RATE^MDC', 4: '1.2.1.1', 5: '80', 6: '264864^MDC_DIM_BEAT_PER_MIN^MDC', 11: 'R', 14: '20261121101455+0100' };
    const spo2 = { ...hr, 3: '150456^MDC_PULS_OXIM_SAT_O2^MDC', 4: '1.3.1.1', 5: '97', 6: '262688^MDC_DIM_PERCENT^MDC' };
    const message = (devices: string[]) =>
      Buffer.from([MSH, OBR, ...devices.flatMap((d, i) => [obx({ ...hr, 18: d }, 2 * i + 1), obx({ ...spo2, 18: d }, 2 * i + 2)])].join('\r'));
    const messages = [
      message(['02A0C0FFFE000001^^02A0C0FFFE000001^EUI-64']),
      message(['02A0C0FFFE000002^^02A0C0FFFE000002^EUI-64']),
      message(['02A0C0FFFE000002^^02A0C0FFFE000002^EUI-64', '02A0C0FFFE000001^^02A0C0FFFE000001^EUI-64', '']),
      message(['^^02A0C0FFFE000003^EUI-64', 'X|extra', '02A0C0FFFE000001']),
    ];
    const cold = messages.map((m) => {
      clearPcd01Caches();
      return decodePcd01(m);
    });
    expect(cold.map((r) => r.measurements.map((m) => m.deviceId))).toEqual([
      ['02A0C0FFFE000001', '02A0C0FFFE000001'],
      ['02A0C0FFFE000002', '02A0C0FFFE000002'],
      ['02A0C0FFFE000002', '02A0C0FFFE000002', '02A0C0FFFE000001', '02A0C0FFFE000001', '0012A1FFFE00B2C3', '0012A1FFFE00B2C3'],
      ['02A0C0FFFE000003', '02A0C0FFFE000003', 'X', 'X', '02A0C0FFFE000001', '02A0C0FFFE000001'],
    ]);
    for (let round = 0; round < 3; round++) {
      for (const [i, m] of messages.entries()) expect(decodePcd01(m), `round ${round} message ${i}`).toEqual(cold[i]);
    }
  });

  it('reads an OBX-14 equal to MSH-7 as it reads it when MSH-7 differs', () => {
    // The decoder takes such a row's time from MSH-7's without parsing it again.
    for (const offset of ['', '+0100', '-0500', '+0000']) {
      for (const options of [undefined, { senderOffset: false }, { timezone: 'America/New_York' }]) {
        const rows = (msh7: string) =>
          decode([MSH.replace('20261121101455+0100', msh7), OBR, obx({ 2: 'NM', 3: '147842^MDC_ECG_HEART_RATE^MDC', 4: '1.2.1.1', 5: '80', 14: `20260329023000${offset}` })], options);
        const same = rows(`20260329023000${offset}`).measurements[0]!;
        const other = rows(`20260329023001${offset}`).measurements[0]!;
        expect([same.time, same.tzOffset], `${offset} ${JSON.stringify(options)}`).toEqual([other.time, other.tzOffset]);
      }
    }
  });

  it('keeps the header of each of many senders that differ in the EUI-64 of MSH-3 only', () => {
    const hr = obx({ 2: 'NM', 3: '147842^MDC_ECG_HEART_RATE^MDC', 4: '1.2.1.1', 5: '80', 6: '264864^MDC_DIM_BEAT_PER_MIN^MDC', 11: 'R' });
    const messages = Array.from({ length: 40 }, (_, i) => {
      const eui = `02A0C0FFFE${String(i).padStart(6, '0')}`;
      const msh = MSH.replace('0012A1FFFE00B2C3', eui).replace('|T-1|', `|T-${i}|`).replace('|P|', i % 7 === 0 ? '|T|' : '|P|');
      return Buffer.from([msh, OBR, hr].join('\r'));
    });
    const cold = messages.map((m) => {
      clearPcd01Caches();
      return decodePcd01(m);
    });
    expect(cold.map((r) => [r.header?.eui64, r.header?.controlId, r.measurements[0]!.deviceId])[3]).toEqual(['02A0C0FFFE000003', 'T-3', '02A0C0FFFE000003']);
    for (let round = 0; round < 3; round++) {
      for (const [i, m] of messages.entries()) expect(decodePcd01(m), `round ${round} message ${i}`).toEqual(cold[i]);
    }
  });

  it('keeps apart more variants of one metric\'s row than a template set has ways', () => {
    // Same value type and code (so the same template set), different everything else.
    const variants: string[] = [];
    for (const status of ['R', 'F', 'X', 'C']) {
      for (const [flag, unit] of [['', '262688^MDC_DIM_PERCENT^MDC'], ['L', '262688^MDC_DIM_PERCENT^MDC'], ['', '%^%^UCUM'], ['H', '%^%^UCUM']]) {
        variants.push(obx({ 2: 'NM', 3: '150456^MDC_PULS_OXIM_SAT_O2^MDC', 4: `1.3.1.${variants.length + 1}`, 5: '97', 6: unit!, 8: flag!, 11: status, 14: '20261121101455+0100', 18: `DEV${variants.length % 3}` }));
      }
    }
    const messages = variants.map((_, i) => Buffer.from([MSH, OBR, ...variants.slice(i), ...variants.slice(0, i)].join('\r')));
    const cold = messages.map((m) => {
      clearPcd01Caches();
      return decodePcd01(m);
    });
    for (let round = 0; round < 3; round++) {
      for (const [i, m] of messages.entries()) expect(decodePcd01(m), `round ${round} message ${i}`).toEqual(cold[i]);
    }
  });

  it('finds row ends by template exactly where a full scan finds them (line ends, wraps, spaces, extra fields)', () => {
    const rows = [
      obx({ 2: 'NM', 3: '147842^MDC_ECG_HEART_RATE^MDC', 4: '1.2.1.1', 5: '80', 6: '264864^MDC_DIM_BEAT_PER_MIN^MDC', 11: 'R', 14: '20261121101455+0100' }, 1),
      obx({ 2: 'NM', 3: '150456^MDC_PULS_OXIM_SAT_O2^MDC', 4: '1.3.1.1', 5: '97', 6: '262688^MDC_DIM_PERCENT^MDC', 11: 'R' }, 2),
      obx({ 2: 'NM', 3: '150021^MDC_PRESS_BLD_NONINV_SYS^MDC', 4: '1.1.1.5', 5: '120', 6: '266016^MDC_DIM_MMHG^MDC', 11: 'R', 14: '20261121101455+0100', 18: 'NIBP-1' }, 3),
    ];
    const variants: string[][] = [
      rows,
      // A capture wrapped the first row inside its unit, and the third inside its time.
      [rows[0]!.replace('MDC_DIM_BEAT', 'MDC_DIM\nBEAT'), rows[1]!, rows[2]!.replace('101455+', '10\n1455+')],
      // Trailing spaces, extra fields after OBX-18, a value longer than before.
      [`${rows[0]!}  `, `${rows[1]!}|||||||||||extra`, rows[2]!.replace('|120|', '|120.25|')],
      // The value wrapped onto the next line.
      [rows[0]!, rows[1]!.replace('|97|', '|9\n7|'), rows[2]!],
    ];
    for (const eol of ['\r', '\n', '\r\n']) {
      for (const [v, variant] of variants.entries()) {
        const text = [MSH, OBR, ...variant].join(eol);
        const bytes = Buffer.from(eol === '\r' ? text : `${text}${eol}`);
        clearPcd01Caches();
        const cold = decodePcd01(bytes);
        decodePcd01(Buffer.from([MSH, OBR, ...rows].join('\r')));
        const warm = decodePcd01(bytes);
        expect(warm, `variant ${v} ${JSON.stringify(eol)}`).toEqual(cold);
        expect(cold.measurements.map((m) => m.value), `variant ${v}`).toEqual([80, 97, v === 2 ? 120.25 : 120]);
      }
    }
  });

  it('reads many rows with more than 18 fields and long rows', () => {
    const extra = '|x'.repeat(30);
    const r = row(obx({ 2: 'NM', 3: '1^A^MDC', 4: '1.1.1.1', 5: '5', 6: '%', 14: '20261121101455+0100', 18: 'DEV' }) + extra);
    expect(r.measurements[0]!.deviceId).toBe('DEV');
    const long = `OBX|1|ST|1^A^MDC|1.1.1.1|${'z'.repeat(10_000)}|%`;
    expect(row(long).measurements[0]!.text).toHaveLength(10_000);
  });
});
