import type { PatientId } from './measurement.js';

/**
 * An Observation is a normalized reading: IEEE 11073 MDC code, LOINC where one exists, UCUM
 * unit. It is the unit that is routed and stored. Same shape for every instance (see
 * `normalize.ts`, which is the only place that builds them).
 */
export interface Observation {
  /** Reading time, epoch milliseconds. */
  readonly time: number;
  /** UTC offset of the reading in minutes, for rendering the time as the device meant it. */
  readonly tzOffset: number;
  readonly deviceId: string;
  /** MDC context-free code, or null for vendor/private codes. */
  readonly code: number | null;
  /** `MDC` or the vendor coding system the code came in. */
  readonly system: string;
  /** The code exactly as the device sent it. */
  readonly vendorCode: string;
  /** MDC reference id from the mapping table, else the sent refid, else `system:code`. */
  readonly metric: string;
  /** Numeric value in `unit`; NaN when there is none (text rows, invalid values). */
  readonly value: number;
  readonly text: string | null;
  /** UCUM code; the unit as sent when it could not be mapped (flagged UNIT_MISMATCH). */
  readonly unit: string;
  readonly loinc: string | null;
  /** Quality bit set (see `Quality`). */
  readonly flags: number;
  readonly containment: string;
  /** Patient identity. Personal data: never logged, masked in the API. */
  readonly patient: PatientId | null;
  readonly location: string | null;
}
