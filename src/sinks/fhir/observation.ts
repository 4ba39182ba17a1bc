/**
 * The pure resource builder: normalized readings → FHIR R4 Observation (and Device).
 * No I/O, no clock, no configuration lookups beyond its arguments.
 *
 * Target shape: research note `fhir-mapping.md` §0–§3 (the golden JSON in
 * `test/helpers/epj-golden.ts`), with three deliberate differences, all tested:
 * - `meta.profile` claims only the R4 vital-signs profile we satisfy; the PoCD profiles are not
 *   claimed, because we reference the MDS `Device` (the note's "flat" fallback), not a
 *   `DeviceMetric`, so PoCD NumericObservation (`device` 1..1 → DeviceMetric) is not met.
 * - `device` → `Device/<id>` (one Device per device id, created once by the forwarder).
 * - no `encounter`: the gateway does not know it (ADT is a later issue).
 */
import type {
  CodeableConcept,
  Coding,
  Device,
  Observation as FhirObservation,
  ObservationComponent,
  Patient,
  Quantity,
  Reference,
} from '@medplum/fhirtypes';
import { Quality } from '../../model/measurement.js';
import type { Observation } from '../../model/observation.js';
import { EUI64_SYSTEM, eui64, fhirDateTime, observationIdentifier } from './identity.js';

export const LOINC_SYSTEM = 'http://loinc.org';
export const MDC_SYSTEM = 'urn:iso:std:iso:11073:10101';
export const UCUM_SYSTEM = 'http://unitsofmeasure.org';
const CATEGORY_SYSTEM = 'http://terminology.hl7.org/CodeSystem/observation-category';
const OBSERVATION_VALUE_SYSTEM = 'http://terminology.hl7.org/CodeSystem/v3-ObservationValue';
const INTERPRETATION_SYSTEM = 'http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation';
const MEASUREMENT_STATUS_SYSTEM = 'http://terminology.hl7.org/CodeSystem/measurement-status';
const DATA_ABSENT_SYSTEM = 'http://terminology.hl7.org/CodeSystem/data-absent-reason';
const PROFILE_BASE = 'http://hl7.org/fhir/StructureDefinition/';

/** An R4 vital-signs child profile: its required LOINC coding and the UCUM codes it allows. */
export interface VitalSignProfile {
  readonly name: string;
  readonly url: string;
  readonly loinc: string;
  readonly display: string;
  /** `code.text`: the short label clinicians read. */
  readonly text: string;
  /** `valueQuantity.code` values the profile allows (fixed or required binding, note §1.3). */
  readonly units: readonly string[];
}

function profile(name: string, loinc: string, display: string, text: string, units: string[]): VitalSignProfile {
  return Object.freeze({ name, url: PROFILE_BASE + name, loinc, display, text, units: Object.freeze(units) });
}

/** The single-value R4 vital-signs profiles (note §1.3). */
export const VITAL_SIGN_PROFILES = Object.freeze({
  heartrate: profile('heartrate', '8867-4', 'Heart rate', 'HR', ['/min']),
  oxygensat: profile('oxygensat', '2708-6', 'Oxygen saturation in Arterial blood', 'SpO2', ['%']),
  resprate: profile('resprate', '9279-1', 'Respiratory rate', 'RR', ['/min']),
  bodytemp: profile('bodytemp', '8310-5', 'Body temperature', 'Temp', ['Cel', '[degF]']),
  bodyheight: profile('bodyheight', '8302-2', 'Body height', 'Height', ['cm', '[in_i]']),
  headcircum: profile('headcircum', '9843-4', 'Head Occipital-frontal circumference', 'Head circumference', ['cm', '[in_i]']),
  bodyweight: profile('bodyweight', '29463-7', 'Body weight', 'Weight', ['kg', 'g', '[lb_av]']),
  bmi: profile('bmi', '39156-5', 'Body mass index (BMI) [Ratio]', 'BMI', ['kg/m2']),
});

/**
 * LOINC code of a metric (mappings/metrics.csv) → the profile it is charted under. More
 * specific codes chart under the profile's code, because the profiles require that code and
 * dk-core allows one LOINC coding only (note §1.3, §5.1): SpO2 by pulse oximetry (59408-5)
 * → 2708-6; core/oral/rectal/axillary temperature → 8310-5. The MDC coding keeps the detail.
 */
const PROFILE_BY_LOINC: ReadonlyMap<string, VitalSignProfile> = new Map([
  ['8867-4', VITAL_SIGN_PROFILES.heartrate],
  ['2708-6', VITAL_SIGN_PROFILES.oxygensat],
  ['59408-5', VITAL_SIGN_PROFILES.oxygensat],
  ['9279-1', VITAL_SIGN_PROFILES.resprate],
  ['8310-5', VITAL_SIGN_PROFILES.bodytemp],
  ['8329-5', VITAL_SIGN_PROFILES.bodytemp],
  ['8331-1', VITAL_SIGN_PROFILES.bodytemp],
  ['8332-9', VITAL_SIGN_PROFILES.bodytemp],
  ['8328-7', VITAL_SIGN_PROFILES.bodytemp],
  ['8302-2', VITAL_SIGN_PROFILES.bodyheight],
  ['9843-4', VITAL_SIGN_PROFILES.headcircum],
  ['29463-7', VITAL_SIGN_PROFILES.bodyweight],
  ['39156-5', VITAL_SIGN_PROFILES.bmi],
]);

/** The `bp` profile (note §1.2): panel 85354-9 with systolic/diastolic (and mean) components. */
export const BP_PROFILE = Object.freeze({
  url: `${PROFILE_BASE}bp`,
  loinc: '85354-9',
  display: 'Blood pressure panel with all children optional',
  unit: 'mm[Hg]',
});

/** A component of a blood-pressure panel. */
export const BpPart = { SYS: 'sys', DIA: 'dia', MEAN: 'mean' } as const;
export type BpPart = (typeof BpPart)[keyof typeof BpPart];

/** Per part: LOINC, display, the MDC refid suffix, and the offset of its MDC code from the panel code. */
const BP_PARTS: readonly { part: BpPart; loinc: string; display: string; suffix: string; offset: number }[] = [
  // IEEE 11073-10101: a pressure compound's code is followed by its _SYS, _DIA and _MEAN facets
  // (150020 NIBP → 150021/150022/150023; 150032 ART → 150033/…; 150300 CUFF → 150301/…).
  { part: BpPart.SYS, loinc: '8480-6', display: 'Systolic blood pressure', suffix: '_SYS', offset: 1 },
  { part: BpPart.DIA, loinc: '8462-4', display: 'Diastolic blood pressure', suffix: '_DIA', offset: 2 },
  { part: BpPart.MEAN, loinc: '8478-0', display: 'Mean blood pressure', suffix: '_MEAN', offset: 3 },
];

/** How one reading can go into the chart. */
export type ChartRole =
  | { readonly kind: 'vital'; readonly profile: VitalSignProfile }
  | {
      readonly kind: 'bp';
      readonly part: BpPart;
      /** MDC code of the panel (compound) metric, e.g. 150020 MDC_PRESS_BLD_NONINV. */
      readonly panelCode: number;
      readonly panelRefid: string;
    }
  /** Charted only when the policy lists the metric: a plain Observation with the MDC code. */
  | { readonly kind: 'plain' };

/**
 * The chart role of a reading, from its LOINC code and MDC reference id. Blood pressure parts
 * (LOINC 8480-6/8462-4/8478-0 on an MDC `…_SYS/_DIA/_MEAN` metric) become `bp` panel parts,
 * whatever the pressure family (NIBP, arterial, cuff): the issue asks arterial pressure as a
 * `bp` panel too.
 */
export function chartRole(o: Observation): ChartRole {
  if (o.loinc !== null) {
    const vital = PROFILE_BY_LOINC.get(o.loinc);
    if (vital !== undefined) return { kind: 'vital', profile: vital };
    if (o.code !== null) {
      for (const p of BP_PARTS) {
        if (o.loinc === p.loinc && o.metric.endsWith(p.suffix)) {
          return {
            kind: 'bp',
            part: p.part,
            panelCode: o.code - p.offset,
            panelRefid: o.metric.slice(0, -p.suffix.length),
          };
        }
      }
    }
  }
  return { kind: 'plain' };
}

/** One stored reading that goes into a chart entry. */
export interface ChartReading {
  /** Store id of the reading (observations.id). */
  readonly id: number;
  readonly observation: Observation;
}

/**
 * What one chart entry is made of: one reading (`single`), or the parts of one blood-pressure
 * measurement taken at the same time (`bp`, 1–3 readings, at most one per part).
 */
export interface ChartItem {
  readonly kind: 'single' | 'bp';
  readonly readings: readonly ChartReading[];
}

/** Settings the builder needs; the references are resolved by the forwarder. */
export interface ObservationBuildOptions {
  readonly identifierSystem: string;
  readonly identifierNamespace: string;
  /** Status of a reading the device did not mark as not final. */
  readonly status: 'final' | 'preliminary';
  /** `Patient/<id>` or a conditional reference `Patient?identifier=…`. */
  readonly subject: Reference<Patient>;
  /** `Device/<id>`; absent when the device is not (yet) known to the EPJ. */
  readonly device?: Reference<Device>;
  /** 0 (default): first charting; n > 0: the n-th re-issue after a correction. */
  readonly revision?: number;
}

export type BuildResult =
  | { readonly ok: true; readonly resource: FhirObservation; readonly identifier: string }
  | { readonly ok: false; readonly reason: string };

/** The reading whose metric names the chart entry: the single reading, or the first BP part. */
function headOf(item: ChartItem): Observation {
  const first = item.readings[0];
  if (first === undefined) throw new RangeError('a chart item has at least one reading');
  if (item.kind === 'single') return first.observation;
  return orderedParts(item)[0]!.reading.observation;
}

function orderedParts(item: ChartItem): { part: (typeof BP_PARTS)[number]; reading: ChartReading }[] {
  const out: { part: (typeof BP_PARTS)[number]; reading: ChartReading }[] = [];
  for (const part of BP_PARTS) {
    const reading = item.readings.find((r) => {
      const role = chartRole(r.observation);
      return role.kind === 'bp' && role.part === part.part;
    });
    if (reading !== undefined) out.push({ part, reading });
  }
  return out;
}

/**
 * The deterministic identifier value of a chart entry, or null when the entry has no MDC code
 * to key on (such readings are not charted). A BP panel is keyed on the panel code and the
 * containment of its first part, as in the golden NIBP example (`…|1.3.1.1|150020|…`).
 * `revision` > 0 only for a re-issue after a correction (a new identifier per revision).
 */
export function itemIdentifier(item: ChartItem, namespace: string, revision = 0): string | null {
  const head = headOf(item);
  if (item.kind === 'bp') {
    const role = chartRole(head);
    if (role.kind !== 'bp') return null;
    return observationIdentifier(namespace, head.deviceId, head.containment, role.panelCode, head.time, revision);
  }
  if (head.code === null) return null;
  return observationIdentifier(namespace, head.deviceId, head.containment, head.code, head.time, revision);
}

/** 12 significant digits: removes binary noise of unit conversions (36.599999999 → 36.6). */
function roundValue(value: number): number {
  return Number(value.toPrecision(12));
}

const UNIT_DISPLAY: Readonly<Record<string, string>> = { 'mm[Hg]': 'mmHg', Cel: 'Cel', '[degF]': '[degF]' };

function quantity(value: number, unit: string): Quantity {
  return { value: roundValue(value), unit: UNIT_DISPLAY[unit] ?? unit, system: UCUM_SYSTEM, code: unit };
}

function mdcCoding(code: number, refid: string): Coding {
  return { system: MDC_SYSTEM, code: String(code), display: refid };
}

/** PoCD measurement-status mapping (note §2.3): no questionable bits → RELIABLE. */
function security(flags: number): Coding[] {
  if (flags & Quality.QUESTIONABLE) {
    return [{ system: OBSERVATION_VALUE_SYSTEM, code: 'UNCERTREL', display: 'uncertain reliability' }];
  }
  return [{ system: OBSERVATION_VALUE_SYSTEM, code: 'RELIABLE', display: 'reliable' }];
}

function interpretation(flags: number): CodeableConcept[] | undefined {
  const out: CodeableConcept[] = [];
  if (flags & Quality.ABNORMAL) out.push({ coding: [{ system: INTERPRETATION_SYSTEM, code: 'A', display: 'Abnormal' }] });
  if (flags & Quality.QUESTIONABLE) out.push({ coding: [{ system: MEASUREMENT_STATUS_SYSTEM, code: 'questionable' }] });
  if (flags & Quality.EARLY) out.push({ coding: [{ system: MEASUREMENT_STATUS_SYSTEM, code: 'early-indication' }] });
  return out.length > 0 ? out : undefined;
}

const VITAL_SIGNS_CATEGORY: CodeableConcept[] = [
  { coding: [{ system: CATEGORY_SYSTEM, code: 'vital-signs', display: 'Vital Signs' }] },
];

function usable(o: Observation): string | null {
  if (!Number.isFinite(o.value)) return 'the reading has no numeric value';
  if (o.code === null) return 'the metric has no MDC code';
  if (o.unit === '' || o.flags & Quality.UNIT_MISMATCH) return `unit "${o.unit}" is not a canonical UCUM unit`;
  return null;
}

/**
 * Builds the Observation of one chart entry. Refuses (ok: false, with a reason naming the
 * metric and unit, never patient data) what would not validate: a unit the profile does not
 * allow, a reading without a numeric value or MDC code, a BP panel without systolic and
 * diastolic. Such an entry is a local dead letter, not a poison message for the EPJ.
 */
export function buildObservation(item: ChartItem, options: ObservationBuildOptions): BuildResult {
  const head = headOf(item);
  const identifier = itemIdentifier(item, options.identifierNamespace, options.revision ?? 0);
  if (identifier === null) return { ok: false, reason: `${head.metric}: no MDC code to key the entry on` };
  const flags = item.readings.reduce((f, r) => f | r.observation.flags, 0);
  const base = {
    resourceType: 'Observation' as const,
    meta: {} as NonNullable<FhirObservation['meta']>,
    identifier: [{ system: options.identifierSystem, value: identifier }],
    status: flags & Quality.NOT_FINAL ? ('preliminary' as const) : options.status,
  };

  if (item.kind === 'bp') {
    const parts = orderedParts(item);
    const role = chartRole(head);
    if (role.kind !== 'bp') return { ok: false, reason: `${head.metric}: not a blood-pressure part` };
    if (!parts.some((p) => p.part.part !== BpPart.MEAN)) {
      return { ok: false, reason: `${role.panelRefid}: a panel needs a systolic or diastolic value` };
    }
    const component: ObservationComponent[] = [];
    for (const part of BP_PARTS) {
      const found = parts.find((p) => p.part === part);
      const code: CodeableConcept = {
        coding: [
          { system: LOINC_SYSTEM, code: part.loinc, display: part.display },
          mdcCoding(role.panelCode + part.offset, role.panelRefid + part.suffix),
        ],
      };
      if (found === undefined) {
        // bp profile: SystolicBP and DiastolicBP are 1..1; a missing value is a component with
        // dataAbsentReason (vs-3), not a missing component (note §1.2). MAP is optional: omitted.
        if (part.part !== BpPart.MEAN) {
          component.push({ code, dataAbsentReason: { coding: [{ system: DATA_ABSENT_SYSTEM, code: 'unknown', display: 'Unknown' }] } });
        }
        continue;
      }
      const o = found.reading.observation;
      const problem = usable(o);
      if (problem !== null) return { ok: false, reason: `${o.metric}: ${problem}` };
      if (o.unit !== BP_PROFILE.unit) return { ok: false, reason: `${o.metric}: unit "${o.unit}" is not mm[Hg] (bp profile)` };
      component.push({ code, valueQuantity: quantity(o.value, o.unit) });
    }
    const resource: FhirObservation = {
      ...base,
      meta: { profile: [BP_PROFILE.url], security: security(flags) },
      category: VITAL_SIGNS_CATEGORY,
      code: {
        coding: [
          { system: LOINC_SYSTEM, code: BP_PROFILE.loinc, display: BP_PROFILE.display },
          mdcCoding(role.panelCode, role.panelRefid),
        ],
        text: bpText(role.panelRefid),
      },
      subject: options.subject,
      effectiveDateTime: fhirDateTime(head.time, head.tzOffset),
      ...optional('interpretation', interpretation(flags)),
      ...optional('device', options.device),
      component,
    };
    return { ok: true, resource, identifier };
  }

  const problem = usable(head);
  if (problem !== null) return { ok: false, reason: `${head.metric}: ${problem}` };
  const role = chartRole(head);
  const code = head.code as number;
  if (role.kind === 'vital') {
    const vital = role.profile;
    if (!vital.units.includes(head.unit)) {
      return { ok: false, reason: `${head.metric}: unit "${head.unit}" is not allowed by the ${vital.name} profile` };
    }
    const resource: FhirObservation = {
      ...base,
      meta: { profile: [vital.url], security: security(flags) },
      category: VITAL_SIGNS_CATEGORY,
      code: {
        // One coding per system (dk-core slices are 0..1): the profile's LOINC, the device's MDC.
        coding: [{ system: LOINC_SYSTEM, code: vital.loinc, display: vital.display }, mdcCoding(code, head.metric)],
        text: vital.text,
      },
      subject: options.subject,
      effectiveDateTime: fhirDateTime(head.time, head.tzOffset),
      valueQuantity: quantity(head.value, head.unit),
      ...optional('interpretation', interpretation(flags)),
      ...optional('device', options.device),
    };
    return { ok: true, resource, identifier };
  }

  // Not a vital sign (pump rates, volumes, …): no vital-signs category or profile; LOINC only
  // when the mapping has one (note §3.4: "add a LOINC code only if the receiving EPJ maps one").
  const coding: Coding[] = [];
  if (head.loinc !== null) coding.push({ system: LOINC_SYSTEM, code: head.loinc });
  coding.push(mdcCoding(code, head.metric));
  const resource: FhirObservation = {
    ...base,
    meta: { security: security(flags) },
    code: { coding, text: head.metric },
    subject: options.subject,
    effectiveDateTime: fhirDateTime(head.time, head.tzOffset),
    valueQuantity: quantity(head.value, head.unit),
    ...optional('interpretation', interpretation(flags)),
    ...optional('device', options.device),
  };
  return { ok: true, resource, identifier };
}

function bpText(panelRefid: string): string {
  if (panelRefid.includes('NONINV') || panelRefid.includes('CUFF')) return 'NIBP';
  if (panelRefid.includes('ART')) return 'ABP';
  return 'BP';
}

function optional<K extends string, V>(key: K, value: V | undefined): { [P in K]?: V } {
  return (value === undefined ? {} : { [key]: value }) as { [P in K]?: V };
}

/** Settings of {@link buildDevice}. */
export interface DeviceBuildOptions {
  /** System for device ids that are not EUI-64s. */
  readonly deviceIdentifierSystem: string;
}

/** The identifier the Device of `deviceId` is found by (PoCD EUI-64 slice when it is one). */
export function deviceIdentifier(deviceId: string, options: DeviceBuildOptions): { system: string; value: string } {
  const eui = eui64(deviceId);
  return eui !== null ? { system: EUI64_SYSTEM, value: eui } : { system: options.deviceIdentifierSystem, value: deviceId };
}

/**
 * The Device of a device id: identified by EUI-64 (PoCD MdsDevice slice) or by the registered
 * id. Kept minimal: type, vendor and model are unknown to the outbox (the device registry will
 * add them); no patient or location, which change over time and are not ours to keep current.
 */
export function buildDevice(deviceId: string, options: DeviceBuildOptions): Device {
  return {
    resourceType: 'Device',
    identifier: [deviceIdentifier(deviceId, options)],
    status: 'active',
    deviceName: [{ name: deviceId, type: 'user-friendly-name' }],
  };
}
