import { describe, expect, it } from 'vitest';
import { Quality } from '../../src/model/measurement.js';
import { ChartingPolicy } from '../../src/sinks/fhir/charting.js';
import { ChartingSettings, FhirSettings, type ChartingSettings as ChartingSettingsType } from '../../src/sinks/fhir/config.js';
import { PATIENTS, reading } from '../helpers/fhir-harness.js';

const pseudonym = (p: { value: string }) => `pt-${p.value.length}-${p.value.slice(-2)}`;

function policy(input: Partial<Record<keyof ChartingSettingsType, unknown>> = {}): ChartingPolicy {
  return new ChartingPolicy(ChartingSettings.parse(input), pseudonym);
}

describe('charting policy', () => {
  it('defaults: every vital-sign metric, 1-minute interval, latest value, readings without patient stored only', () => {
    const defaults = FhirSettings.parse({}).charting;
    expect(defaults).toMatchObject({ vitalSigns: true, intervalSeconds: 60, value: 'latest', unbound: 'store', metrics: [] });
    const p = policy();
    for (const m of ['hr', 'spo2', 'rr', 'temp', 'sys', 'dia', 'mean', 'artSys'] as const) {
      expect(p.decide(reading(m)).chart, m).toBe(true);
    }
    expect(p.decide(reading('pump'))).toEqual({ chart: false, reason: 'MDC_FLOW_FLUID_PUMP is not in the charting policy' });
    expect(p.decide(reading('hr', { patient: null }))).toEqual({ chart: false, reason: 'no patient (charting.unbound: store)' });
  });

  it('charts metrics without LOINC only when listed (by refid or MDC code), and honours exclude', () => {
    expect(policy({ metrics: ['MDC_FLOW_FLUID_PUMP'] }).decide(reading('pump')).chart).toBe(true);
    expect(policy({ metrics: '157784, MDC_VOL_FLUID_TBI' }).decide(reading('pump')).chart).toBe(true);
    expect(policy({ exclude: ['MDC_ECG_HEART_RATE'] }).decide(reading('hr')).chart).toBe(false);
    // Excluding the panel excludes its parts.
    expect(policy({ exclude: ['MDC_PRESS_BLD_NONINV'] }).decide(reading('sys')).chart).toBe(false);
    expect(policy({ vitalSigns: false }).decide(reading('hr')).chart).toBe(false);
    expect(policy({ vitalSigns: false, metrics: ['MDC_ECG_HEART_RATE'] }).decide(reading('hr')).chart).toBe(true);
  });

  it('keeps demo, invalid, implausible, wrong-unit, patient-mismatch, unregistered and clock-drift readings out of the chart', () => {
    const p = policy();
    const excluded = [Quality.DEMO, Quality.INVALID, Quality.IMPLAUSIBLE, Quality.UNIT_MISMATCH, Quality.PATIENT_MISMATCH, Quality.UNREGISTERED, Quality.CLOCK_DRIFT];
    for (const flag of excluded) {
      expect(p.decide(reading('hr', { flags: flag })).chart).toBe(false);
    }
    for (const flag of [Quality.QUESTIONABLE, Quality.ABNORMAL, Quality.NOT_FINAL, Quality.EARLY]) {
      expect(p.decide(reading('hr', { flags: flag })).chart).toBe(true);
    }
    // charting.patientMismatch: chart lifts that one exclusion only.
    const lenient = policy({ patientMismatch: 'chart' });
    expect(lenient.decide(reading('hr', { flags: Quality.PATIENT_MISMATCH })).chart).toBe(true);
    expect(lenient.decide(reading('hr', { flags: Quality.UNREGISTERED })).chart).toBe(false);
    expect(p.decide(reading('hr', { value: Number.NaN, text: 'ASYSTOLE' })).chart).toBe(false);
  });

  it('chooses interval and value per location, first matching glob wins', () => {
    const p = policy({
      intervalSeconds: 300,
      locations: [
        { match: 'ICU/*', intervalSeconds: 60 },
        { match: 'WARD*', intervalSeconds: 900, value: 'median' },
        { match: 'NEO/1/*', intervalSeconds: 0 },
      ],
    });
    expect(p.ruleFor('ICU/1/07')).toEqual({ intervalMs: 60_000, value: 'latest' });
    expect(p.ruleFor('ICU2/1/07')).toEqual({ intervalMs: 300_000, value: 'latest' });
    expect(p.ruleFor('WARD3/2/1')).toEqual({ intervalMs: 900_000, value: 'median' });
    expect(p.ruleFor('NEO/1/3')).toEqual({ intervalMs: 0, value: 'latest' });
    expect(p.ruleFor(null)).toEqual({ intervalMs: 300_000, value: 'latest' });
    expect(p.ruleFor('a.b(c)')).toEqual({ intervalMs: 300_000, value: 'latest' });
  });

  it('puts a reading into its interval and series; BP parts share one series', () => {
    const p = policy({ intervalSeconds: 60 });
    const t = Date.UTC(2025, 2, 12, 9, 15, 42, 500);
    const hr = p.decide(reading('hr', { time: t }));
    if (!hr.chart) throw new Error('expected charted');
    expect(hr.bucketStart).toBe(Date.UTC(2025, 2, 12, 9, 15));
    expect(hr.bucketEnd).toBe(Date.UTC(2025, 2, 12, 9, 16));
    expect(hr.series).toBe(`0123456789ABCDEF|1.1.1.1|147842|${pseudonym(PATIENTS[0]!)}`);
    expect(hr.series).not.toContain(PATIENTS[0]!.value);
    const sys = p.decide(reading('sys', { time: t }));
    const dia = p.decide(reading('dia', { time: t }));
    if (!sys.chart || !dia.chart) throw new Error('expected charted');
    expect(sys.kind).toBe('bp');
    expect(sys.series).toBe(dia.series);
    expect(sys.series).toContain('|1.3.1|150020|');
    // Another patient on the same device is another series.
    const other = p.decide(reading('hr', { time: t, patient: PATIENTS[1]! }));
    expect(other.chart && other.series).not.toBe(hr.series);
    // Interval 0: the reading's own time.
    const every = policy({ intervalSeconds: 0 }).decide(reading('hr', { time: t }));
    expect(every.chart && [every.bucketStart, every.bucketEnd]).toEqual([t, t]);
  });

  it('holds readings without patient when asked to', () => {
    const d = policy({ unbound: 'hold', holdMinutes: 5 }).decide(reading('hr', { patient: null }));
    expect(d.chart && d.hold).toBe(true);
  });
});

describe('fhir settings', () => {
  it('are valid by default and refuse incomplete auth with the key named', () => {
    expect(FhirSettings.parse({}).auth.type).toBe('none');
    const bad = FhirSettings.safeParse({ auth: { type: 'client-credentials', tokenUrl: 'https://idp.example/token' } });
    expect(bad.success).toBe(false);
    const paths = bad.error!.issues.map((i) => i.path.join('.'));
    expect(paths).toEqual(expect.arrayContaining(['auth.clientId', 'auth.privateKeyFile', 'auth.keyId']));
    expect(FhirSettings.safeParse({ auth: { type: 'bearer' } }).success).toBe(false);
    expect(FhirSettings.safeParse({ baseUrl: 'https://user:pw@epj.example/fhir' }).success).toBe(false);
    expect(FhirSettings.safeParse({ identifierSystem: 'not a uri' }).success).toBe(false);
    expect(FhirSettings.safeParse({ charting: { intervalSecond: 60 } }).success).toBe(false);
  });
});
