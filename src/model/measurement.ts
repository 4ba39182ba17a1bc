/**
 * A Measurement is what a driver decoded, still in the device's vocabulary: the code, unit
 * and value exactly as the device sent them. Drivers produce them; the pipeline turns them
 * into Observations. Every Measurement has the same shape (same keys, same order) so the
 * hot path stays monomorphic; build them with `measurement()`.
 */

/** Quality flags, a bit set. Stored as an integer; rendered as names by `qualityNames()`. */
export const Quality = {
  /** OBX-11 or device status says the value is not final (preliminary, corrected, …). */
  NOT_FINAL: 1 << 0,
  /** The device marked the value invalid or absent (sentinel, `INV`, sensor off). */
  INVALID: 1 << 1,
  /** The device flagged the value questionable (`QUES`, low signal quality). */
  QUESTIONABLE: 1 << 2,
  /** Demo or test mode (`DEMO`, `TEST`): never chart. */
  DEMO: 1 << 3,
  /** Outside the physiological alarm limits (`L`, `H`, `LL`, `HH`, `A`). */
  ABNORMAL: 1 << 4,
  /** Outside the plausibility range for the metric (set by the pipeline). */
  IMPLAUSIBLE: 1 << 5,
  /** Early indication (`EARLY`). */
  EARLY: 1 << 6,
  /** The OBX-3 reference id disagrees with the numeric code (kept on the numeric code). */
  CODE_MISMATCH: 1 << 7,
  /** The device clock disagrees with arrival time beyond the configured limit. */
  CLOCK_DRIFT: 1 << 8,
  /** The PID of the message disagrees with the patient bound to the bed. */
  PATIENT_MISMATCH: 1 << 9,
  /** The unit sent is not the canonical unit of the metric and could not be converted. */
  UNIT_MISMATCH: 1 << 10,
  /**
   * The device is not an approved, active registry device (unknown, waiting for approval, or
   * retired): stored, never charted.
   */
  UNREGISTERED: 1 << 11,
} as const;
export type QualityFlag = keyof typeof Quality;

const QUALITY_ENTRIES = Object.entries(Quality) as [QualityFlag, number][];

/** Names of the flags set in `flags`, in bit order. */
export function qualityNames(flags: number): QualityFlag[] {
  const out: QualityFlag[] = [];
  if (flags === 0) return out;
  for (const [name, bit] of QUALITY_ENTRIES) if (flags & bit) out.push(name);
  return out;
}

/** A patient identifier as the device or ADT sent it. Personal data: never log `value`. */
export interface PatientId {
  /** Identifier system: `urn:oid:1.2.208.176.1.2` for a Danish CPR number, else as sent. */
  readonly system: string;
  readonly value: string;
}

/** The OID of the Danish CPR register, as used in HL7 v2 CX-4 and FHIR Identifier.system. */
export const CPR_SYSTEM = 'urn:oid:1.2.208.176.1.2';

export interface Measurement {
  /** Device id: OBX-18 / MSH-3 EUI-64, or the registered id of a serial/MQTT device. */
  readonly deviceId: string;
  /** Code as sent. For MDC this is the numeric context-free code as text (`"147842"`). */
  readonly code: string;
  /** Coding system of `code`: `MDC`, or a vendor system (`99MNDRY`, `MASIMO`, …); `''` if none. */
  readonly system: string;
  /** Reference id as sent (`MDC_ECG_HEART_RATE`), `''` when the sender gave none. */
  readonly refid: string;
  /** Numeric value; NaN when the value is not a number (see `text`). */
  readonly value: number;
  /** Non-numeric value (ST/CWE rows, enumerations), else null. */
  readonly text: string | null;
  /** Unit as sent: a UCUM code, an MDC unit refid (`MDC_DIM_MMHG`) or free text; `''` if none. */
  readonly unit: string;
  /** Reading time, epoch milliseconds (device time, not arrival time). */
  readonly time: number;
  /** UTC offset of the reading time in minutes, as sent or from the configured zone. */
  readonly tzOffset: number;
  /** Quality bit set (see `Quality`). */
  readonly flags: number;
  /** Containment path (PCD-01 OBX-4 `MDS.VMD.CHAN.METRIC`), `''` when not applicable. */
  readonly containment: string;
  /** Patient identity carried by the message (PID-3), if any. Personal data. */
  readonly patient: PatientId | null;
  /** Location carried by the message (PV1-3, `ward^room^bed` as `ward/room/bed`), if any. */
  readonly location: string | null;
}

/** Builds a Measurement with every key present and in the same order (monomorphic). */
export function measurement(m: Measurement): Measurement {
  return {
    deviceId: m.deviceId,
    code: m.code,
    system: m.system,
    refid: m.refid,
    value: m.value,
    text: m.text,
    unit: m.unit,
    time: m.time,
    tzOffset: m.tzOffset,
    flags: m.flags,
    containment: m.containment,
    patient: m.patient,
    location: m.location,
  };
}
