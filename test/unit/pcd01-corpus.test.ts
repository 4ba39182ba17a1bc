/**
 * Every HL7 v2 message of the shared public corpus (`../shared/corpus/public/*.hl7`, read where
 * it lies, never copied): none crashes the reader, the decoder or the ACK builder; each ORU gives
 * the expected number of Measurements or a clear fatal problem; values are spot-checked.
 * Corpus conventions (its SOURCES.md): one message per block, blocks separated by an empty line,
 * segments separated by LF — converted to CR before decoding, as an MLLP listener would see them.
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ErrorCode } from '../../src/errors.js';
import { AckCode, Hl7Message, buildAck, splitExport } from '../../src/codec/hl7.js';
import { formatIsoTime } from '../../src/codec/hl7-time.js';
import { decodePcd01, type Pcd01Result } from '../../src/codec/pcd01.js';
import { Quality, qualityNames, type Measurement } from '../../src/model/measurement.js';

const CORPUS = fileURLToPath(new URL('../../../shared/corpus/public', import.meta.url));
const present = existsSync(CORPUS);

/** The messages of one corpus file, LF → CR, blank blocks dropped. */
function messages(file: string): Buffer[] {
  const text = readFileSync(join(CORPUS, file), 'latin1');
  return text
    .split('\n\n')
    .filter((block) => block.trim() !== '')
    .map((block) => Buffer.from(block.replace(/\n/g, '\r'), 'latin1'));
}

function decodeAll(file: string): Pcd01Result[] {
  return messages(file).map((m) => decodePcd01(m));
}

const iso = (m: Measurement): string => formatIsoTime(m.time, m.tzOffset);

/** Expected per message: a Measurement count, or the hl7Code of the fatal problem. */
const EXPECTED: Record<string, (number | string)[]> = {
  'bbraun-spaceplus-ihe-pcd-captures.hl7': [27, 8, 8, 8, 8, 27, 30, 17, 16, '200', 10],
  'comen-nc5-hl7-capture.hl7': [8, '200', '200'],
  'draeger-ihe-pcd-acm-reference-messages.hl7': [7, 8, '200', '200'],
  'ihe-pcd-tf2-rev9-appendix-examples.hl7': [10, 4, '200', '200', '200', '200', '200', 5, 5, 5, 4, 19],
  // Message 11 is IPF's own negative test (profile-invalid, syntactically fine): it decodes.
  'oehf-ipf-pcd01-continua-wan-testmessages.hl7': [3, 9, 7, '200', '200', 5, 2, 1, 10, 6, 10, '200'],
  'osypka-aesculon-icontrol-hl7-trace.hl7': [0],
};

const TITLE = present ? 'public corpus (../shared/corpus/public)' : 'public corpus: skipped because ../shared/corpus/public is absent';

describe.skipIf(!present)(TITLE, () => {
  it('has the files this test knows, and no other .hl7 files', () => {
    expect(readdirSync(CORPUS).filter((f) => f.endsWith('.hl7')).sort()).toEqual(Object.keys(EXPECTED).sort());
  });

  for (const [file, expected] of Object.entries(EXPECTED)) {
    it(`${file}: every message decodes as expected, never crashes, and gets a well-formed ACK`, () => {
      const all = messages(file);
      expect(all).toHaveLength(expected.length);
      // splitExport finds the same messages in the raw file.
      expect(splitExport(readFileSync(join(CORPUS, file)))).toHaveLength(expected.length);
      all.forEach((bytes, i) => {
        const r = decodePcd01(bytes);
        const want = expected[i]!;
        if (typeof want === 'number') {
          expect(r.fatal, `${file} #${i + 1}`).toBeNull();
          expect(r.measurements, `${file} #${i + 1}`).toHaveLength(want);
        } else {
          expect(r.fatal?.hl7Code, `${file} #${i + 1}`).toBe(want);
          expect(r.measurements).toEqual([]);
        }
        for (const m of r.measurements) {
          expect(Number.isFinite(m.time)).toBe(true);
          expect(m.deviceId).not.toBe('');
          expect(typeof m.value === 'number' && (m.text !== null || !Number.isNaN(m.value))).toBe(true);
        }
        const code = r.fatal !== null ? AckCode.AR : r.problems.some((p) => p.severity === 'E') ? AckCode.AE : AckCode.AA;
        const ack = Hl7Message.parse(buildAck(r.header, code, r.fatal ? [r.fatal, ...r.problems] : r.problems));
        expect(ack.fatal).toBeNull();
        expect(ack.firstSegment('MSA')!.get(1)).toBe(code);
        // MSA-2 echoes MSH-10 exactly as sent (LiveData's has a leading space).
        expect(ack.firstSegment('MSA')!.raw(2)).toBe(r.header?.rawControlId ?? '');
      });
    });
  }

  it('IHE TF-2 Philips monitor: heart rate 80 /min, code 147842 at 1.2.1.1, device from its VMD', () => {
    const r = decodeAll('ihe-pcd-tf2-rev9-appendix-examples.hl7')[0]!;
    expect(r.header!.charset).toBe('8859/1');
    const hr = r.measurements.find((m) => m.containment === '1.2.1.1')!;
    expect(hr).toEqual({
      deviceId: '0600dc750001',
      code: '147842',
      system: 'MDC',
      refid: 'MDC_ECG_CARD_BEAT_RATE',
      value: 80,
      text: null,
      unit: 'MDC_DIM_BEAT_PER_MIN',
      time: Date.UTC(2015, 0, 22, 18, 26, 56),
      tzOffset: 0,
      flags: 0,
      containment: '1.2.1.1',
      patient: { system: '', value: 'HO2009001' },
      location: 'HO Surgery/OR/1',
    });
    // NIBP rows have their own OBX-14 (local time; MSH-7 says the sender is at +00:00); OBX-11 X.
    const sys = r.measurements.find((m) => m.code === '150021')!;
    expect([sys.value, iso(sys), sys.flags]).toEqual([117, '2015-01-22T11:50:00+00:00', 0]);
    // The rhythm is an ST value.
    expect(r.measurements.find((m) => m.code === '184327')!.text).toBe('MDC_ECG_SINUS_RHY');
  });

  it('IHE TF-2 ACME gateway: UCUM units, OBX-18 equipment ids, EUI-64 in MSH-3', () => {
    const r = decodeAll('ihe-pcd-tf2-rev9-appendix-examples.hl7')[1]!;
    expect(r.header!.eui64).toBe('080019FFFE3ED02D');
    expect(r.measurements.map((m) => [m.code, m.value, m.unit, m.deviceId, iso(m)])).toEqual([
      ['150021', 111, 'mm[Hg]', '080019FFFE3ED02D172.16.172.135', '2011-06-02T04:58:42+00:00'],
      ['150022', 60, 'mm[Hg]', '080019FFFE3ED02D172.16.172.135', '2011-06-02T04:58:42+00:00'],
      ['150023', 80, 'mm[Hg]', '080019FFFE3ED02D172.16.172.135', '2011-06-02T04:58:42+00:00'],
      ['149546', 63, '{beat}/min', '080019FFFE3ED02D172.16.172.135', '2011-06-02T04:58:42+00:00'],
    ]);
  });

  it('IHE TF-2 Mindray low-SpO2 alarm: OBX-8 L~PM~SP, 5-level containment, refids carried', () => {
    const r = decodeAll('ihe-pcd-tf2-rev9-appendix-examples.hl7')[7]!;
    expect(r.header!.trigger).toBe('R40');
    const [alarm, spo2] = r.measurements;
    expect([alarm!.code, alarm!.text, qualityNames(alarm!.flags), alarm!.deviceId, alarm!.containment]).toEqual([
      '196670',
      'Low SpO2',
      ['ABNORMAL'],
      'F1519EFX',
      '1.3.1.150456.1',
    ]);
    expect([spo2!.code, spo2!.value, spo2!.unit, iso(spo2!)]).toEqual(['150456', 88, 'MDC_DIM_PERCENT', '2012-01-11T15:04:57-06:00']);
    // OBX-3 without a coding system.
    expect(r.measurements[4]!.refid).toBe('MDC_ATTR_ALARM_INACTIVATION_STATE');
    expect(r.measurements[4]!.system).toBe('');
  });

  it('IHE TF-2 LiveData advisory: padded codes ("MDC ") are trimmed; odd codes kept as sent', () => {
    const r = decodeAll('ihe-pcd-tf2-rev9-appendix-examples.hl7')[10]!;
    expect(r.measurements.map((m) => [m.code, m.system])).toEqual([
      ['0', 'MDC'],
      ['684800', 'MDC'],
      ['684810', 'MDC'],
      ['684820', 'MDC'],
    ]);
  });

  it('Comen NC5: key on the numeric code, carry the refid (149522 is sent as MDC_PULS_RATE)', () => {
    const r = decodeAll('comen-nc5-hl7-capture.hl7')[0]!;
    const pulse = r.measurements.find((m) => m.code === '149522')!;
    expect([pulse.refid, pulse.value, pulse.unit, iso(pulse), pulse.containment]).toEqual([
      'MDC_PULS_RATE',
      60,
      'MDC_DIM_BEAT_PER_MIN',
      '2026-07-26T23:13:31+08:00',
      '1.0.0.149522',
    ]);
    // The mapping table knows 149522 under another refid: the pipeline flags CODE_MISMATCH.
    const csv = readFileSync(join(CORPUS, '..', 'mdc-loinc-ucum.csv'), 'utf8');
    const line = csv.split('\n').find((l) => l.split(',')[3] === '149522');
    expect(line?.split(',')[0]).toBe('MDC_BLD_PULS_RATE_INV');
    expect(pulse.flags & Quality.CODE_MISMATCH).toBe(0);
    // Private rows with text in NM fields are rejected one by one; the rest is good.
    expect(r.rejectedRows.map((x) => [x.obx, x.problem.code, x.problem.location])).toEqual([
      [7, ErrorCode.HL7_BAD_VALUE, 'OBX[7]-5'],
      [8, ErrorCode.HL7_BAD_VALUE, 'OBX[8]-5'],
      [9, ErrorCode.HL7_BAD_VALUE, 'OBX[9]-5'],
      [10, ErrorCode.HL7_BAD_VALUE, 'OBX[10]-5'],
      [11, ErrorCode.HL7_BAD_VALUE, 'OBX[11]-5'],
    ]);
    expect(r.problems.every((p) => !p.message.includes('REDACTED') && !p.message.includes('MRN12123'))).toBe(true);
    // Rows without OBX-14 take OBR-7, read in the sender's offset (+08:00 from MSH-7).
    expect(iso(r.measurements.find((m) => m.code === '188740')!)).toBe('2026-07-26T23:13:31+08:00');
    expect(r.measurements[0]!.location).toBe('24');
    expect(r.measurements[0]!.deviceId).toBe('KC575235977G');
  });

  it('Osypka Aesculon (empty OBX-3, framing bytes kept): clear per-row problems, no Measurements', () => {
    const bytes = messages('osypka-aesculon-icontrol-hl7-trace.hl7')[0]!;
    expect(bytes[0]).toBe(0x0b);
    const r = decodePcd01(bytes);
    expect(r.fatal).toBeNull();
    expect(r.header!.version).toBe('2.3');
    expect(r.measurements).toEqual([]);
    expect(r.rejectedRows).toHaveLength(39);
    expect(new Set(r.rejectedRows.map((x) => `${x.problem.code} ${x.problem.hl7Code}`))).toEqual(new Set([`${ErrorCode.HL7_MISSING_FIELD} 101`]));
    expect(r.rejectedRows[17]!.problem.location).toBe('OBX[18]-3');
    // A v2.3 sender gets ERR-1 and MSA-3 as well; the ERR count is bounded.
    const ack = Hl7Message.parse(buildAck(r.header, AckCode.AE, r.problems));
    expect(ack.firstSegment('MSA')!.get(3)).toContain('OBX[1]-3');
    expect(ack.segments('ERR')).toHaveLength(39);
    expect(ack.firstSegment('ERR')!.get(1)).toBe('OBX');
  });

  it('B. Braun: MSH-10 split over two lines is joined; pump id from the MDS row; UCUM from mixed OBX-6', () => {
    const all = decodeAll('bbraun-spaceplus-ihe-pcd-captures.hl7');
    const live = all[10]!;
    expect(live.header!.controlId).toBe('639070847165381484276804');
    expect(live.problems).toEqual([expect.objectContaining({ code: ErrorCode.HL7_WRAPPED_SEGMENT, severity: 'W' })]);
    const ack = Hl7Message.parse(buildAck(live.header, AckCode.AA, []));
    expect(ack.firstSegment('MSA')!.get(2)).toBe('639070847165381484276804');
    expect(live.measurements.find((m) => m.code === '158014')).toMatchObject({ deviceId: 'I51559', value: 0, unit: 'mL/h', patient: null });

    const first = all[0]!;
    expect(first.header!.eui64).toBe('0012211839000001');
    expect(first.measurements.every((m) => m.deviceId === 'P2449')).toBe(true);
    expect(first.measurements.find((m) => m.code === '157784')).toMatchObject({ value: 18, unit: 'mL/h', refid: 'MDC_FLOW_FLUID_PUMP' });
    expect(first.measurements.find((m) => m.code === '157999')).toMatchObject({ value: 10000, unit: 'ug' });
    expect(first.measurements.find((m) => m.code === '184519')!.text).toBe('^pump-status-infusing');
    // A leading space in an SSID value is data, kept as sent.
    expect(all[8]!.measurements.find((m) => m.code === '69417')!.text).toBe(' BBraunPumps');
  });

  it('Dräger ACM: urn:uuid equipment ids on every row; the malformed MSH-3 EUI-64 is still found', () => {
    const [alarm] = decodeAll('draeger-ihe-pcd-acm-reference-messages.hl7');
    expect(alarm!.header!.eui64).toBe('0000000000000001');
    expect(alarm!.header!.processingId).toBe('D');
    expect(new Set(alarm!.measurements.map((m) => m.deviceId))).toEqual(new Set(['urn:uuid:f9bd67ba-10f9-11ea-bab1-0050b612afeb']));
    expect(alarm!.measurements[0]).toMatchObject({ code: '196916', text: 'CO2 Sensor unplugged', location: 'CU1/Bed001' });
    expect(alarm!.measurements[1]).toMatchObject({ code: '68480', value: 42, unit: '' });
  });

  it('Continua WAN (IPF): flags, statuses, methods; NA arrays as text; °F kept as MDC unit', () => {
    const all = decodeAll('oehf-ipf-pcd01-continua-wan-testmessages.hl7');
    const max = all[2]!;
    expect(max.measurements.map((m) => [m.code, m.value, qualityNames(m.flags)])).toEqual([
      ['528391', 80, ['DEMO']],
      ['150021', 140, ['NOT_FINAL', 'QUESTIONABLE']],
      ['150022', 70, ['INVALID', 'QUESTIONABLE', 'EARLY']],
      ['150023', 100, []],
      ['1500212', 120, ['NOT_FINAL']],
      ['1500212', 80, []],
      ['1500232', 100, []],
    ]);
    expect(max.measurements[1]!.deviceId).toBe('1305815835');
    expect(max.measurements[0]!.patient).toEqual({ system: 'urn:oid:1.3.4.565', value: '111222333444' });
    const pleth = all[6]!.measurements[1]!;
    expect([pleth.code, pleth.value, pleth.text]).toEqual(['150452', Number.NaN, '12^123^24^12^234^55^66^77^88^99']);
    expect(all[7]!.measurements[0]).toMatchObject({ code: '188424', value: 98.6, unit: 'MDC_DIM_FAHR' });
    // AwareGateway: no OBX-18, no device rows: the EUI-64 of MSH-3.
    expect(new Set(all[1]!.measurements.map((m) => m.deviceId))).toEqual(new Set(['080019FFFF4F6AC0']));
  });
});
