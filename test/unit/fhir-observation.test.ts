import type { Observation as FhirObservation } from '@medplum/fhirtypes';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadValidator, type EpjValidator } from '../../simulators/epj/index.js';
import { loadMappings } from '../../src/mappings.js';
import { Quality } from '../../src/model/measurement.js';
import { deviceKey, eui64, fhirDateTime, observationIdentifier, uuidv5 } from '../../src/sinks/fhir/identity.js';
import {
  buildDevice,
  buildObservation,
  chartRole,
  itemIdentifier,
  type ChartItem,
  type ObservationBuildOptions,
} from '../../src/sinks/fhir/observation.js';
import { HEART_RATE, NIBP_PANEL, OBSERVATION_ID_SYSTEM, PUMP_TRANSACTION, SPO2, golden } from '../helpers/epj-golden.js';
import { GOLDEN_TIME, reading } from '../helpers/fhir-harness.js';

const NAMESPACE = '3f2b6d1e-0c4a-4e7b-9d2a-6c1f0e9b8a70';
const OPTIONS: ObservationBuildOptions = {
  identifierSystem: OBSERVATION_ID_SYSTEM,
  identifierNamespace: NAMESPACE,
  status: 'final',
  subject: { reference: 'Patient/pat-123' },
  device: { reference: 'Device/dev-1' },
};

function single(o: ReturnType<typeof reading>, id = 1): ChartItem {
  return { kind: 'single', readings: [{ id, observation: o }] };
}

function build(item: ChartItem, options: ObservationBuildOptions = OPTIONS): FhirObservation {
  const result = buildObservation(item, options);
  if (!result.ok) throw new Error(result.reason);
  return result.resource;
}

/**
 * The golden example with the documented differences applied (see observation.ts): only the
 * R4 profile is claimed, `device` is the MDS Device, no encounter, no alarm-limit referenceRange
 * (the normalized Observation does not carry OBX-7).
 */
function expected(example: Readonly<FhirObservation>): FhirObservation {
  const g = golden(example) as FhirObservation;
  g.meta!.profile = g.meta!.profile!.filter((p) => p.startsWith('http://hl7.org/fhir/StructureDefinition/'));
  delete g.encounter;
  delete g.referenceRange;
  g.device = { reference: 'Device/dev-1' };
  return g;
}

describe('identity', () => {
  it('computes RFC 4122 UUIDv5 (test vector: www.example.com in the DNS namespace)', () => {
    expect(uuidv5('6ba7b810-9dad-11d1-80b4-00c04fd430c8', 'www.example.com')).toBe('2ed6657d-e927-568b-95e1-2665a8aea6a2');
  });

  it('reproduces the identifiers of the golden examples (fhir-mapping.md §3)', () => {
    expect(observationIdentifier(NAMESPACE, '0123456789abcdef', '1.1.1.1', 147842, GOLDEN_TIME)).toBe(HEART_RATE.identifier![0]!.value);
    expect(observationIdentifier(NAMESPACE, '01-23-45-67-89-AB-CD-EF', '1.2.1.1', 150456, GOLDEN_TIME)).toBe(SPO2.identifier![0]!.value);
    expect(observationIdentifier(NAMESPACE, '0123456789ABCDEF', '1.3.1.1', 150020, GOLDEN_TIME - 30_000)).toBe(
      NIBP_PANEL.identifier![0]!.value,
    );
    const pump = PUMP_TRANSACTION.entry!.at(-1)!.resource as FhirObservation;
    expect(observationIdentifier(NAMESPACE, '001A010000000001', '1.1.1.1', 157784, GOLDEN_TIME)).toBe(pump.identifier![0]!.value);
  });

  it('keys on the instant, not the wall clock: the same reading at +01:00 and +02:00 has one identifier', () => {
    const a = itemIdentifier(single(reading('hr', { tzOffset: 60 })), NAMESPACE);
    const b = itemIdentifier(single(reading('hr', { tzOffset: 120 })), NAMESPACE);
    expect(a).toBe(b);
    expect(itemIdentifier(single(reading('hr', { time: GOLDEN_TIME + 1 })), NAMESPACE)).not.toBe(a);
    // The value is not part of the key (note §4.2): a corrected resend meets the first copy.
    expect(itemIdentifier(single(reading('hr', { value: 80 })), NAMESPACE)).toBe(a);
  });

  it('normalizes EUI-64 device ids to the PoCD form and leaves other ids alone', () => {
    expect(eui64('001a010000000001')).toBe('00-1A-01-00-00-00-00-01');
    expect(eui64('00-1a-01-00-00-00-00-01')).toBe('00-1A-01-00-00-00-00-01');
    expect(eui64('bed-7-monitor')).toBeNull();
    expect(deviceKey('bed-7-monitor')).toBe('bed-7-monitor');
  });

  it('formats dateTime with the offset, milliseconds only when present', () => {
    expect(fhirDateTime(GOLDEN_TIME, 60)).toBe('2025-03-12T10:15:00+01:00');
    expect(fhirDateTime(Date.UTC(2025, 6, 1, 22, 30, 0, 5), 120)).toBe('2025-07-02T00:30:00.005+02:00');
    expect(fhirDateTime(Date.UTC(2025, 0, 1, 2, 0), -330)).toBe('2024-12-31T20:30:00-05:30');
  });
});

describe('buildObservation', () => {
  it('builds the golden heart rate', () => {
    expect(build(single(reading('hr')))).toEqual(expected(HEART_RATE));
  });

  it('builds the golden SpO2, charting the pulse-oximetry LOINC 59408-5 as 2708-6 (one LOINC coding)', () => {
    const resource = build(single(reading('spo2')));
    expect(resource).toEqual(expected(SPO2));
    expect(resource.code.coding!.filter((c) => c.system === 'http://loinc.org')).toHaveLength(1);
  });

  it('builds the golden NIBP panel from its three parts, keyed on the panel code', () => {
    const t = GOLDEN_TIME - 30_000;
    const item: ChartItem = {
      kind: 'bp',
      readings: [
        { id: 3, observation: reading('mean', { time: t }) },
        { id: 1, observation: reading('sys', { time: t }) },
        { id: 2, observation: reading('dia', { time: t }) },
      ],
    };
    expect(build(item)).toEqual(expected(NIBP_PANEL));
  });

  it('keeps a missing diastolic as a component with dataAbsentReason (bp profile, vs-3)', () => {
    const resource = build({ kind: 'bp', readings: [{ id: 1, observation: reading('sys') }] });
    expect(resource.component).toHaveLength(2);
    expect(resource.component![1]!.code.coding![0]!.code).toBe('8462-4');
    expect(resource.component![1]!.dataAbsentReason?.coding?.[0]?.code).toBe('unknown');
    expect(resource.component![1]!.valueQuantity).toBeUndefined();
  });

  it('charts arterial pressure as a bp panel with the arterial MDC codes', () => {
    const resource = build({
      kind: 'bp',
      readings: [
        { id: 1, observation: reading('artSys') },
        { id: 2, observation: reading('artDia') },
        { id: 3, observation: reading('artMean') },
      ],
    });
    expect(resource.code.coding).toEqual([
      { system: 'http://loinc.org', code: '85354-9', display: 'Blood pressure panel with all children optional' },
      { system: 'urn:iso:std:iso:11073:10101', code: '150032', display: 'MDC_PRESS_BLD_ART' },
    ]);
    expect(resource.code.text).toBe('ABP');
    expect(resource.component!.map((c) => c.code.coding![1]!.code)).toEqual(['150033', '150034', '150035']);
  });

  it('builds a plain Observation (no vital-signs category) for a listed metric without LOINC', () => {
    const resource = build(single(reading('pump', { deviceId: '001A010000000001' })));
    const golden = PUMP_TRANSACTION.entry!.at(-1)!.resource as FhirObservation;
    expect(resource.category).toBeUndefined();
    expect(resource.meta?.profile).toBeUndefined();
    expect(resource.code.coding).toEqual([{ system: 'urn:iso:std:iso:11073:10101', code: '157784', display: 'MDC_FLOW_FLUID_PUMP' }]);
    expect(resource.valueQuantity).toEqual(golden.valueQuantity);
    expect(resource.identifier).toEqual(golden.identifier);
    expect(resource.effectiveDateTime).toBe(golden.effectiveDateTime);
  });

  it('maps quality flags: not final → preliminary, questionable → UNCERTREL + interpretation', () => {
    const resource = build(single(reading('hr', { flags: Quality.NOT_FINAL | Quality.QUESTIONABLE | Quality.ABNORMAL })));
    expect(resource.status).toBe('preliminary');
    expect(resource.meta?.security?.[0]?.code).toBe('UNCERTREL');
    expect(resource.interpretation?.map((i) => i.coding?.[0]?.code)).toEqual(['A', 'questionable']);
  });

  it('refuses what would not validate, naming metric and unit (never patient data)', () => {
    const bad = buildObservation(single(reading('hr', { unit: 'kPa' })), OPTIONS);
    expect(bad).toEqual({ ok: false, reason: 'MDC_ECG_HEART_RATE: unit "kPa" is not allowed by the heartrate profile' });
    expect(buildObservation(single(reading('hr', { value: Number.NaN })), OPTIONS).ok).toBe(false);
    expect(buildObservation({ kind: 'bp', readings: [{ id: 1, observation: reading('mean') }] }, OPTIONS).ok).toBe(false);
    const noUnit = buildObservation(single(reading('temp', { flags: Quality.UNIT_MISMATCH, unit: 'degX' })), OPTIONS);
    expect(noUnit.ok).toBe(false);
    expect(JSON.stringify(noUnit)).not.toContain('0101701234');
  });

  it('rounds away the binary noise of unit conversions', () => {
    expect(build(single(reading('temp', { value: 36.599999999999994 }))).valueQuantity?.value).toBe(36.6);
  });
});

describe('resources validate with @medplum (the stand-in validator, R4 + vital-signs profiles)', () => {
  let validator: EpjValidator;
  beforeAll(() => {
    validator = loadValidator();
  });

  function expectValid(resource: unknown): void {
    const verdict = validator.validate(resource);
    if (!verdict.valid) throw new Error(JSON.stringify(verdict.outcome.issue, null, 1));
  }

  it('every vital-sign metric of mappings/metrics.csv, in its canonical unit', () => {
    const mappings = loadMappings();
    let charted = 0;
    for (const def of mappings.metricByCode.values()) {
      const base = reading('hr', { code: def.cf, metric: def.refid, unit: def.ucum, loinc: def.loinc, value: Number.isFinite(def.min) ? (def.min + def.max) / 2 : 5 });
      const role = chartRole(base);
      if (role.kind === 'plain') {
        if (def.loinc === null) expectValid(build(single(base)));
        continue;
      }
      const item: ChartItem = role.kind === 'bp' ? { kind: 'bp', readings: [{ id: 1, observation: base }] } : single(base);
      if (role.kind === 'bp' && role.part === 'mean') continue; // a MAP alone is not a panel
      expectValid(build(item));
      charted++;
    }
    expect(charted).toBeGreaterThan(20);
  });

  it('the golden-equivalent HR, SpO2 and NIBP, and a Device', () => {
    expectValid(build(single(reading('hr'))));
    expectValid(build(single(reading('spo2'))));
    expectValid(
      build({
        kind: 'bp',
        readings: [
          { id: 1, observation: reading('sys') },
          { id: 2, observation: reading('dia') },
        ],
      }),
    );
    expectValid(buildDevice('0123456789ABCDEF', { deviceIdentifierSystem: 'https://mdi-gateway.example.dk/sid/device' }));
    expectValid(buildDevice('bed-7', { deviceIdentifierSystem: 'https://mdi-gateway.example.dk/sid/device' }));
  });

  it('the stand-in refuses a heart rate in the wrong unit (so the pre-check above matters)', () => {
    const resource = build(single(reading('hr')));
    resource.valueQuantity = { ...resource.valueQuantity, code: 'bpm', unit: 'bpm' };
    expect(validator.validate(resource).valid).toBe(false);
  });
});
