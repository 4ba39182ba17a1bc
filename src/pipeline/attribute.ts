/**
 * The enrich stage: who a reading belongs to, decided at the reading's time (not its arrival).
 *
 * For each Measurement:
 * - the registry record of its device: unknown, unapproved or retired devices are flagged
 *   UNREGISTERED (stored, never charted; with `registry.unregistered: chart`, unknown and
 *   unapproved ones are charted by the PID their message carries, retired ones never);
 * - the device's binding at the reading time: bound to a bed, the patient is the bed's
 *   occupant then (or nobody); bound to a patient, that patient. A PID in the message that
 *   names someone else flags the reading PATIENT_MISMATCH — it is attributed to the bound
 *   patient and kept out of the chart, never silently charted to either;
 * - not bound at all: the PID the message carries, if any (a sending system that does its own
 *   association), and the location it carries;
 * - the device's clock: off by more than `clockDriftLimitMs` from arrival time (its estimate
 *   from device health, which a replay of old readings does not move; or a reading stamped in
 *   the future) flags the reading CLOCK_DRIFT, because attribution by time is then unreliable.
 *   Before the device has an estimate, old readings are not judged: the first data after a
 *   restart may well be a monitor's backlog.
 */
import { Quality, type Measurement, type PatientId } from '../model/measurement.js';
import { DeviceStatus, type Attribution, type DeviceRecord } from '../registry/types.js';

export interface AttributeSettings {
  /** `registry.unregistered`. */
  readonly unregistered: 'store' | 'chart';
  /** 0: no clock check. */
  readonly clockDriftLimitMs: number;
}

export interface AttributeDeps {
  readonly devices: { get(idOrEui64: string): DeviceRecord | null };
  readonly bindings: { attribution(deviceId: string, time: number): Attribution };
  /** The device's estimated clock offset (arrival minus reading time, ms), or null when unknown. */
  readonly clockOffsetMs: (deviceId: string) => number | null;
}

/** What the stage decided for one reading. One object, reused for every reading: read it at once. */
export interface AttributionResult {
  patient: PatientId | null;
  location: string | null;
  /** Flags to add to the reading's own. */
  flags: number;
}

/** Per-batch state: the batch's arrival time and the device looked up last. */
export interface BatchAttribution {
  /** Decides for `m`; the returned object is overwritten by the next call. */
  attribute(m: Measurement): AttributionResult;
  /** Device ids of this batch that the registry does not know (to be recorded as unregistered). */
  readonly unknownDevices: ReadonlySet<string>;
}

const NO_UNKNOWN: ReadonlySet<string> = new Set();

export class Attributor {
  constructor(
    private readonly deps: AttributeDeps,
    private readonly settings: AttributeSettings,
  ) {}

  /** State for one batch that arrived at `received`. */
  forBatch(received: number): BatchAttribution {
    const { deps, settings } = this;
    const out: AttributionResult = { patient: null, location: null, flags: 0 };
    let unknown: Set<string> | null = null;
    // Readings of one message nearly always share a device: look it up once per run of them.
    let lastId: string | null = null;
    let record: DeviceRecord | null = null;
    let drifting = false;
    const limit = settings.clockDriftLimitMs;
    return {
      get unknownDevices() {
        return unknown ?? NO_UNKNOWN;
      },
      attribute(m: Measurement): AttributionResult {
        if (m.deviceId !== lastId) {
          lastId = m.deviceId;
          record = deps.devices.get(m.deviceId);
          if (record === null) (unknown ??= new Set()).add(m.deviceId);
          const offset = limit > 0 ? deps.clockOffsetMs(m.deviceId) : null;
          drifting = offset !== null && Math.abs(offset) > limit;
        }
        let flags = 0;
        if (record === null || record.status !== DeviceStatus.ACTIVE) {
          if (settings.unregistered === 'store' || (record !== null && record.status === DeviceStatus.RETIRED)) {
            flags |= Quality.UNREGISTERED;
          }
        }
        if (drifting || (limit > 0 && m.time > received + limit)) flags |= Quality.CLOCK_DRIFT;
        const a = record === null ? null : deps.bindings.attribution(record.id, m.time);
        if (a !== null && (a.bed !== null || a.patient !== null)) {
          out.patient = a.patient;
          out.location = a.bed ?? m.location;
          if (m.patient !== null && a.patient !== null && !samePatient(m.patient, a.patient)) flags |= Quality.PATIENT_MISMATCH;
        } else {
          out.patient = m.patient;
          out.location = m.location;
        }
        out.flags = flags;
        return out;
      },
    };
  }
}

function samePatient(a: PatientId, b: PatientId): boolean {
  return a.value === b.value && a.system === b.system;
}
