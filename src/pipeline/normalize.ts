import { ErrorCode } from '../errors.js';
import type { MetricDef, Mappings, UnitConversion } from '../mappings.js';
import type { DeadLetterInput } from '../model/dead-letter.js';
import { Quality, type Measurement, type PatientId } from '../model/measurement.js';
import type { Observation } from '../model/observation.js';
import type { BatchAttribution } from './attribute.js';

/** What one batch of Measurements became: routed Observations and dead letters. */
export interface NormalizedBatch {
  readonly observations: Observation[];
  readonly rejects: DeadLetterInput[];
}

const NO_METRIC: MetricDef | null = null;

// Bound on the normal forms one Normalizer keeps: a sender inventing codes or units cannot grow
// the cache without limit (beyond it, new kinds of reading are normalized without caching).
const MAX_FORMS = 10_000;
// … and on the kinds one code may come in (units, refids, systems), which it searches in turn.
const MAX_KINDS_PER_CODE = 16;

/**
 * What every reading of one kind (the same code, system, refid and unit as sent) normalizes to:
 * all of its Observation that does not depend on the value.
 */
interface NormalForm {
  // The kind, as the Measurement carries it.
  readonly vendorCode: string;
  readonly vendorSystem: string;
  readonly refid: string;
  readonly vendorUnit: string;
  // Observation.code, .system, .metric, .loinc and .unit.
  readonly code: number | null;
  readonly system: string;
  readonly metric: string;
  readonly loinc: string | null;
  readonly unit: string;
  /** From the unit sent to the canonical one, or null when the value is kept as sent. */
  readonly conversion: UnitConversion | null;
  /** Flags every reading of the kind gets (CODE_MISMATCH; UNIT_MISMATCH for a unit it cannot convert). */
  readonly flags: number;
  /** Flags added when the reading has no text (UNIT_MISMATCH: a metric with a unit, sent without one). */
  readonly numericFlags: number;
  /** Plausibility range in `unit`; NaN bounds when the value is not judged (unknown metric or unit). */
  readonly min: number;
  readonly max: number;
  /** The form of the reading that followed this kind last time. */
  next: NormalForm | null;
}

/**
 * Measurement → Observation: IEEE 11073 MDC code, LOINC, UCUM unit, plausibility.
 * Pure and allocation-light: one Observation per Measurement. What a reading normalizes to
 * depends on its value only through the conversion and the plausibility check, so the rest (its
 * "normal form") is worked out once per kind of reading and cached. Devices repeat their rows in
 * the same order, so each form remembers the one that came next: the steady state checks that
 * guess with four string comparisons (the decoder hands out the same string objects) instead of
 * looking anything up. Unknown and private codes are kept with their code and system and no
 * LOINC; they are not errors.
 */
export class Normalizer {
  // Code as sent → the forms of the kinds of reading with that code (usually one).
  private readonly formsByCode = new Map<string, NormalForm[]>();
  private formCount = 0;
  private lastForm: NormalForm | null = null;

  constructor(private readonly mappings: Mappings) {}

  /**
   * Normalizes a batch; a Measurement that cannot be an Observation becomes a dead letter.
   * With `attribution` (the enrich stage), patient, location and the flags it adds come from it
   * instead of from the Measurement: one Observation per reading, built once.
   */
  normalizeBatch(batch: readonly Measurement[], controlId: string | null = null, attribution?: BatchAttribution): NormalizedBatch {
    const observations: Observation[] = [];
    let rejects: DeadLetterInput[] | undefined;
    for (let i = 0; i < batch.length; i++) {
      const m = batch[i]!;
      // A reading without a usable time cannot be attributed to a patient or charted.
      if (!Number.isFinite(m.time)) {
        (rejects ??= []).push(reject(m, controlId, ErrorCode.HL7_BAD_TIME, 'reading has no valid time'));
        continue;
      }
      if (attribution === undefined) {
        observations.push(this.normalize(m, m.patient, m.location, 0));
      } else {
        const a = attribution.attribute(m);
        observations.push(this.normalize(m, a.patient, a.location, a.flags));
      }
    }
    return { observations, rejects: rejects ?? [] };
  }

  normalize(m: Measurement, patient: PatientId | null = m.patient, location: string | null = m.location, extraFlags = 0): Observation {
    const form = this.formOf(m);
    const conversion = form.conversion;
    const value = conversion === null ? m.value : m.value * conversion.scale + conversion.offset;
    let flags = m.flags | extraFlags | form.flags;
    if (m.text === null) flags |= form.numericFlags;
    if (value < form.min || value > form.max) flags |= Quality.IMPLAUSIBLE;
    return {
      time: m.time,
      tzOffset: m.tzOffset,
      deviceId: m.deviceId,
      code: form.code,
      system: form.system,
      vendorCode: m.code,
      metric: form.metric,
      value,
      text: m.text,
      unit: form.unit,
      loinc: form.loinc,
      flags,
      containment: m.containment,
      patient,
      location,
    };
  }

  // The normal form of m's kind: the one that followed the previous reading's last time when
  // it fits, else from the cache (built on first sight).
  private formOf(m: Measurement): NormalForm {
    const last = this.lastForm;
    const guess = last === null ? null : last.next;
    const form = guess !== null && isFormOf(guess, m) ? guess : this.cachedForm(m);
    if (last !== null && guess !== form) last.next = form;
    this.lastForm = form;
    return form;
  }

  private cachedForm(m: Measurement): NormalForm {
    const kinds = this.formsByCode.get(m.code);
    if (kinds !== undefined) {
      for (let i = 0; i < kinds.length; i++) if (isFormOf(kinds[i]!, m)) return kinds[i]!;
    }
    const form = this.buildForm(m);
    if (this.formCount < MAX_FORMS && (kinds === undefined || kinds.length < MAX_KINDS_PER_CODE)) {
      if (kinds === undefined) this.formsByCode.set(m.code, [form]);
      else kinds.push(form);
      this.formCount++;
    }
    return form;
  }

  private buildForm(m: Measurement): NormalForm {
    const mappings = this.mappings;
    const def = this.metricFor(m);
    let flags = 0;
    let numericFlags = 0;
    // Key on the numeric code; a refid that names a different known metric is a sender bug
    // (Comen sends 149522^MDC_PULS_RATE) that must be visible, not silently trusted.
    if (def !== null && m.refid !== '' && m.refid !== def.refid) {
      const named = mappings.metricByRefid.get(m.refid);
      if (named !== undefined && named !== def) flags |= Quality.CODE_MISMATCH;
    }

    let unit = m.unit === '' ? '' : (mappings.ucumByUnit.get(m.unit) ?? m.unit);
    let conversion: UnitConversion | null = null;
    if (def !== null) {
      if (unit === '') {
        if (def.ucum !== '1') numericFlags |= Quality.UNIT_MISMATCH;
      } else if (unit !== def.ucum) {
        conversion = mappings.conversions.get(`${unit}>${def.ucum}`) ?? null;
        if (conversion !== null) unit = def.ucum;
        else flags |= Quality.UNIT_MISMATCH;
      }
    }
    // Plausibility is checked in the canonical unit only; a value in an unknown unit is
    // already flagged and must not be judged against the wrong scale.
    const judged = def !== null && unit === def.ucum;

    const isMdc = def !== null || m.system === 'MDC';
    return {
      vendorCode: m.code,
      vendorSystem: m.system,
      refid: m.refid,
      vendorUnit: m.unit,
      code: def !== null ? def.cf : isMdc ? toCode(m.code) : null,
      system: def !== null ? 'MDC' : m.system,
      metric: def !== null ? def.refid : m.refid !== '' ? m.refid : m.system !== '' ? `${m.system}:${m.code}` : m.code,
      loinc: def !== null ? def.loinc : null,
      unit,
      conversion,
      flags,
      numericFlags,
      min: judged ? def.min : Number.NaN,
      max: judged ? def.max : Number.NaN,
      next: null,
    };
  }

  private metricFor(m: Measurement): MetricDef | null {
    if (m.system !== 'MDC' && m.system !== '') {
      // Private systems (99MNDRY, MASIMO, …) may reuse numbers that mean something else in MDC.
      return NO_METRIC;
    }
    const cf = toCode(m.code);
    const def = cf !== null ? this.mappings.metricByCode.get(cf) : undefined;
    if (def !== undefined) return def;
    // `0^MDCX_…` style rows carry no numeric code; fall back to a known reference id.
    return m.refid !== '' ? (this.mappings.metricByRefid.get(m.refid) ?? NO_METRIC) : NO_METRIC;
  }
}

// The strings are usually the very same objects (the decoder's row templates hand them out),
// which makes each comparison a pointer check.
function isFormOf(form: NormalForm, m: Measurement): boolean {
  return form.vendorCode === m.code && form.vendorUnit === m.unit && form.refid === m.refid && form.vendorSystem === m.system;
}

function toCode(text: string): number | null {
  if (text === '' || text.length > 10) return null;
  const n = Number(text);
  return Number.isInteger(n) && n > 0 && n <= 0xffffffff ? n : null;
}

function reject(m: Measurement, controlId: string | null, code: ErrorCode, reason: string): DeadLetterInput {
  const raw = Buffer.from(JSON.stringify(m), 'utf8');
  return { code, reason: `${reason} (code ${m.system || 'MDC'} ${m.code})`, location: m.containment, controlId, raw };
}
