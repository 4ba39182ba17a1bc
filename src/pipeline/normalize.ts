import { ErrorCode } from '../errors.js';
import type { MetricDef, Mappings } from '../mappings.js';
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

/**
 * Measurement → Observation: IEEE 11073 MDC code, LOINC, UCUM unit, plausibility.
 * Pure and allocation-light: one Observation per Measurement, lookups in frozen Maps, and a
 * per-instance cache from the code text a device sent to its metric so steady-state traffic
 * never parses a code twice. Unknown and private codes are kept with their code and system
 * and no LOINC; they are not errors.
 */
export class Normalizer {
  private readonly metricByCodeText = new Map<string, MetricDef | null>();

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
    const mappings = this.mappings;
    const def = this.metricFor(m);
    let flags = m.flags | extraFlags;
    // Key on the numeric code; a refid that names a different known metric is a sender bug
    // (Comen sends 149522^MDC_PULS_RATE) that must be visible, not silently trusted.
    if (def !== null && m.refid !== '' && m.refid !== def.refid) {
      const named = mappings.metricByRefid.get(m.refid);
      if (named !== undefined && named !== def) flags |= Quality.CODE_MISMATCH;
    }

    let value = m.value;
    let unit = m.unit === '' ? '' : (mappings.ucumByUnit.get(m.unit) ?? m.unit);
    if (def !== null) {
      if (unit === '') {
        if (def.ucum !== '1' && m.text === null) flags |= Quality.UNIT_MISMATCH;
      } else if (unit !== def.ucum) {
        const conversion = mappings.conversions.get(`${unit}>${def.ucum}`);
        if (conversion !== undefined) {
          value = value * conversion.scale + conversion.offset;
          unit = def.ucum;
        } else {
          flags |= Quality.UNIT_MISMATCH;
        }
      }
      // Plausibility is checked in the canonical unit only; a value in an unknown unit is
      // already flagged and must not be judged against the wrong scale.
      if (unit === def.ucum && (value < def.min || value > def.max)) flags |= Quality.IMPLAUSIBLE;
    }

    const isMdc = def !== null || m.system === 'MDC';
    const cf = def !== null ? def.cf : isMdc ? toCode(m.code) : null;
    return {
      time: m.time,
      tzOffset: m.tzOffset,
      deviceId: m.deviceId,
      code: cf,
      system: def !== null ? 'MDC' : m.system,
      vendorCode: m.code,
      metric: def !== null ? def.refid : m.refid !== '' ? m.refid : m.system !== '' ? `${m.system}:${m.code}` : m.code,
      value,
      text: m.text,
      unit,
      loinc: def !== null ? def.loinc : null,
      flags,
      containment: m.containment,
      patient,
      location,
    };
  }

  private metricFor(m: Measurement): MetricDef | null {
    if (m.system !== 'MDC' && m.system !== '') {
      // Private systems (99MNDRY, MASIMO, …) may reuse numbers that mean something else in MDC.
      return NO_METRIC;
    }
    let def = this.metricByCodeText.get(m.code);
    if (def === undefined) {
      const cf = toCode(m.code);
      def = (cf !== null ? this.mappings.metricByCode.get(cf) : undefined) ?? NO_METRIC;
      // Bounded: a sender inventing codes cannot grow the cache without limit.
      if (this.metricByCodeText.size < 10_000) this.metricByCodeText.set(m.code, def);
    }
    if (def === null && m.refid !== '') {
      // `0^MDCX_…` style rows carry no numeric code; fall back to a known reference id.
      return this.mappings.metricByRefid.get(m.refid) ?? NO_METRIC;
    }
    return def;
  }
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
