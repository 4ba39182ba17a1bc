import { describe, expect, it } from 'vitest';
import { ErrorCode } from '../../src/errors.js';
import { loadMappings } from '../../src/mappings.js';
import { measurement, Quality, type Measurement } from '../../src/model/measurement.js';
import { Normalizer } from '../../src/pipeline/normalize.js';

const base: Measurement = measurement({
  deviceId: '0012A0FFFE3B7C01',
  code: '147842',
  system: 'MDC',
  refid: 'MDC_ECG_HEART_RATE',
  value: 88,
  text: null,
  unit: 'MDC_DIM_BEAT_PER_MIN',
  time: Date.UTC(2026, 10, 21, 9, 14, 55),
  tzOffset: 60,
  flags: 0,
  containment: '1.2.1.1',
  patient: null,
  location: 'ICU/12/1',
});

const n = new Normalizer(loadMappings());
const one = (over: Partial<Measurement>) => n.normalize(measurement({ ...base, ...over }));

describe('normalize', () => {
  it('maps MDC code and unit to LOINC and UCUM', () => {
    const o = one({});
    expect(o).toMatchObject({ code: 147842, metric: 'MDC_ECG_HEART_RATE', loinc: '8867-4', unit: '/min', value: 88, flags: 0 });
  });

  it('accepts units as MDC code, UCUM and free text', () => {
    expect(one({ unit: '264864' }).unit).toBe('/min');
    expect(one({ unit: '/min' }).unit).toBe('/min');
    expect(one({ unit: 'bpm' }).unit).toBe('/min');
  });

  it('converts a known other unit to the canonical one (°F thermometer)', () => {
    const o = one({ code: '150364', refid: 'MDC_TEMP_BODY', unit: 'MDC_DIM_FAHR', value: 98.6 });
    expect(o.unit).toBe('Cel');
    expect(o.value).toBeCloseTo(37, 5);
    expect(o.loinc).toBe('8310-5');
  });

  it('flags a unit it cannot convert, and keeps the value as sent', () => {
    const o = one({ unit: 'furlong' });
    expect(o.flags & Quality.UNIT_MISMATCH).toBeTruthy();
    expect(o.unit).toBe('furlong');
    expect(o.value).toBe(88);
  });

  it('keys on the numeric code and flags a refid that names another metric', () => {
    // Comen NC5 sends 149522^MDC_PULS_RATE; 149522 is MDC_BLD_PULS_RATE_INV.
    const o = one({ code: '149522', refid: 'MDC_PULS_RATE' });
    expect(o.metric).toBe('MDC_BLD_PULS_RATE_INV');
    expect(o.flags & Quality.CODE_MISMATCH).toBeTruthy();
    expect(one({ refid: 'MDC_ECG_CARD_BEAT_RATE' }).flags).toBe(0); // an alias, not a mismatch
  });

  it('stores unknown and private codes with their code and no LOINC', () => {
    const unknown = one({ code: '684800', refid: 'MDC_EVT_SOMETHING', unit: '' });
    expect(unknown).toMatchObject({ code: 684800, metric: 'MDC_EVT_SOMETHING', loinc: null, system: 'MDC' });
    const vendor = one({ code: '2001', system: '99COMEN', refid: '', unit: '' });
    expect(vendor).toMatchObject({ code: null, system: '99COMEN', metric: '99COMEN:2001', vendorCode: '2001', loinc: null });
  });

  it('flags implausible values without dropping them', () => {
    const o = one({ value: 900 });
    expect(o.flags & Quality.IMPLAUSIBLE).toBeTruthy();
    expect(o.value).toBe(900);
  });

  it('turns a reading without a valid time into a dead letter, keeping the rest', () => {
    const batch = n.normalizeBatch([base, measurement({ ...base, time: Number.NaN })], 'MSG1');
    expect(batch.observations).toHaveLength(1);
    expect(batch.rejects).toHaveLength(1);
    expect(batch.rejects[0]).toMatchObject({ code: ErrorCode.HL7_BAD_TIME, controlId: 'MSG1' });
  });

  it('gives the same Observations from a fresh Normalizer and from one that has seen the kinds before', () => {
    // Kinds that share a code (other unit, refid, system), text and numeric readings of one kind,
    // conversions and plausibility: the cached forms and the row-order guess must not matter.
    const kinds: Partial<Measurement>[] = [
      {},
      { value: 900 },
      { unit: 'bpm', value: 61 },
      { unit: 'furlong' },
      { unit: '' },
      { unit: '', text: 'asystole', value: Number.NaN },
      { refid: 'MDC_PULS_RATE' },
      { refid: 'MDC_ECG_CARD_BEAT_RATE' },
      { code: '149522', refid: 'MDC_PULS_RATE' },
      { code: '150364', refid: 'MDC_TEMP_BODY', unit: 'MDC_DIM_FAHR', value: 98.6 },
      { code: '150364', refid: 'MDC_TEMP_BODY', unit: 'MDC_DIM_FAHR', value: 150 },
      { code: '0', refid: 'MDC_ECG_HEART_RATE' },
      { code: '147842', system: '99COMEN', refid: '' },
      { code: '684800', refid: 'MDC_EVT_SOMETHING', unit: '' },
      { code: '2001', system: '', refid: '' },
    ];
    const readings = kinds.map((over) => measurement({ ...base, ...over }));
    const fresh = readings.map((m) => new Normalizer(loadMappings()).normalize(m));
    const seasoned = new Normalizer(loadMappings());
    for (let round = 0; round < 3; round++) {
      expect(readings.map((m) => seasoned.normalize(m)), `round ${round}`).toEqual(fresh);
      expect([...readings].reverse().map((m) => seasoned.normalize(m)), `round ${round} reversed`).toEqual([...fresh].reverse());
    }
  });

  it('builds every Observation with the same keys in the same order', () => {
    const shapes = new Set(
      [one({}), one({ unit: 'furlong' }), one({ code: '2001', system: '99COMEN' }), one({ text: 'x', value: Number.NaN })].map((o) =>
        Object.keys(o).join(','),
      ),
    );
    expect(shapes.size).toBe(1);
  });
});
