import { describe, expect, it } from 'vitest';
import { loadMappings } from '../../src/mappings.js';
import { CPR_SYSTEM, measurement, Quality, type Measurement, type PatientId } from '../../src/model/measurement.js';
import { Attributor, type AttributeDeps } from '../../src/pipeline/attribute.js';
import { Normalizer } from '../../src/pipeline/normalize.js';
import { DeviceStatus, type Attribution, type DeviceRecord } from '../../src/registry/types.js';

const T0 = Date.UTC(2026, 10, 21, 9, 0, 0);
const MIN = 60_000;
const ANNA: PatientId = { system: CPR_SYSTEM, value: '0101001111' };
const BO: PatientId = { system: CPR_SYSTEM, value: '0202002222' };

function reading(over: Partial<Measurement> = {}): Measurement {
  return measurement({
    deviceId: '0012A0FFFE3B7C01',
    code: '147842',
    system: 'MDC',
    refid: 'MDC_ECG_HEART_RATE',
    value: 88,
    text: null,
    unit: '/min',
    time: T0,
    tzOffset: 60,
    flags: 0,
    containment: '1.2.1.1',
    patient: null,
    location: 'ICU/1/9',
    ...over,
  });
}

function device(id: string, status: DeviceRecord['status'] = DeviceStatus.ACTIVE): DeviceRecord {
  return { id, kind: 'monitor', vendor: null, model: null, serialNumber: null, eui64: id, transport: null, location: null, status, expectedIntervalSeconds: 60, created: 0, updated: 0 };
}

/** A registry of one device bound to bed ICU/1/3 from T0; Anna lies there until T0+10 min, then Bo. */
function deps(status: DeviceRecord['status'] | null = DeviceStatus.ACTIVE, offset: number | null = 0): AttributeDeps {
  const rec = status === null ? null : device('0012A0FFFE3B7C01', status);
  return {
    devices: { get: (id) => (rec !== null && id === rec.id ? rec : null) },
    bindings: {
      attribution(_id: string, time: number): Attribution {
        if (time < T0) return { device: rec, bed: null, patient: null, validFrom: -Infinity, validTo: T0 };
        const patient = time < T0 + 10 * MIN ? ANNA : BO;
        return { device: rec, bed: 'ICU/1/3', patient, validFrom: T0, validTo: Infinity };
      },
    },
    clockOffsetMs: () => offset,
  };
}

const normalizer = new Normalizer(loadMappings());
function run(d: AttributeDeps, ms: Measurement[], received = T0 + 20 * MIN, unregistered: 'store' | 'chart' = 'store') {
  const a = new Attributor(d, { unregistered, clockDriftLimitMs: 5 * MIN }).forBatch(received);
  const out = normalizer.normalizeBatch(ms, null, a);
  return { observations: out.observations, unknown: [...a.unknownDevices] };
}

describe('attribution at the reading time', () => {
  it('gives a reading the patient in the bed at its own time, not at arrival', () => {
    const { observations } = run(deps(), [reading({ time: T0 + 10 * MIN - 1 }), reading({ time: T0 + 10 * MIN }), reading({ time: T0 - 1 })]);
    expect(observations.map((o) => o.patient?.value ?? null)).toEqual([ANNA.value, BO.value, null]);
    expect(observations[0]!.location).toBe('ICU/1/3');
    // Unbound before T0: the location the message carried stays.
    expect(observations[2]!.location).toBe('ICU/1/9');
    expect(observations.every((o) => (o.flags & Quality.PATIENT_MISMATCH) === 0)).toBe(true);
  });

  it('flags a PID that disagrees with the bound patient and keeps the bound one', () => {
    const { observations } = run(deps(), [reading({ time: T0 + MIN, patient: BO }), reading({ time: T0 + MIN, patient: ANNA })]);
    expect(observations[0]!.patient).toEqual(ANNA);
    expect(observations[0]!.flags & Quality.PATIENT_MISMATCH).toBeTruthy();
    expect(observations[1]!.flags & Quality.PATIENT_MISMATCH).toBe(0);
  });

  it('uses the PID of the message when the device is bound to nothing', () => {
    const { observations } = run(deps(), [reading({ time: T0 - MIN, patient: BO })]);
    expect(observations[0]!.patient).toEqual(BO);
    expect(observations[0]!.flags).toBe(0);
  });

  it('flags readings of unknown, unapproved and retired devices and reports unknown ones', () => {
    const unknown = run(deps(null), [reading({ time: T0 + MIN, patient: BO })]);
    expect(unknown.observations[0]!.flags & Quality.UNREGISTERED).toBeTruthy();
    expect(unknown.observations[0]!.patient).toEqual(BO);
    expect(unknown.unknown).toEqual(['0012A0FFFE3B7C01']);
    expect(run(deps(DeviceStatus.UNREGISTERED), [reading()]).observations[0]!.flags & Quality.UNREGISTERED).toBeTruthy();
    expect(run(deps(DeviceStatus.ACTIVE), [reading()]).observations[0]!.flags & Quality.UNREGISTERED).toBe(0);
    // registry.unregistered: chart — unknown and unapproved devices chart, retired ones never.
    expect(run(deps(null), [reading()], T0 + MIN, 'chart').observations[0]!.flags & Quality.UNREGISTERED).toBe(0);
    expect(run(deps(DeviceStatus.RETIRED), [reading()], T0 + MIN, 'chart').observations[0]!.flags & Quality.UNREGISTERED).toBeTruthy();
  });

  it('flags clock drift from the estimate and readings from the future, not old readings without an estimate', () => {
    const at = T0 + 20 * MIN;
    const drift = (offset: number | null, time: number) => run(deps(DeviceStatus.ACTIVE, offset), [reading({ time })], at).observations[0]!.flags & Quality.CLOCK_DRIFT;
    expect(drift(10 * MIN, at)).toBeTruthy(); // the device is known to run 10 min behind
    expect(drift(-10 * MIN, at)).toBeTruthy(); // or ahead
    expect(drift(30_000, at - 30_000)).toBe(0);
    expect(drift(null, at - 30 * MIN)).toBe(0); // no estimate yet: may be a backlog
    expect(drift(null, at - MIN)).toBe(0);
    expect(drift(0, at + 6 * MIN)).toBeTruthy(); // stamped in the future beyond the limit
  });
});
