import { formatIsoTime } from '../codec/hl7-time.js';
import { qualityNames, type PatientId, type QualityFlag } from '../model/measurement.js';
import type { Observation } from '../model/observation.js';

/**
 * The public JSON form of an Observation: the `/api/observations` item and the line that
 * `mdi inspect --json` prints. Patient identity appears only as a pseudonym, never in clear.
 */
export interface ObservationItem {
  time: string;
  device: string;
  code: number | null;
  metric: string;
  value: number | null;
  unit: string;
  loinc: string | null;
  text: string | null;
  system: string;
  vendorCode: string;
  flags: QualityFlag[];
  containment: string;
  location: string | null;
  patient: string | null;
}

export function observationItem(o: Observation, pseudonym: (p: PatientId) => string): ObservationItem {
  return {
    time: formatIsoTime(o.time, o.tzOffset),
    device: o.deviceId,
    code: o.code,
    metric: o.metric,
    value: Number.isFinite(o.value) ? o.value : null,
    unit: o.unit,
    loinc: o.loinc,
    text: o.text,
    system: o.system,
    vendorCode: o.vendorCode,
    flags: qualityNames(o.flags),
    containment: o.containment,
    location: o.location,
    patient: o.patient === null ? null : pseudonym(o.patient),
  };
}
