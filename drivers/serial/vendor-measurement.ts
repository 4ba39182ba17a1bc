import type { VendorCode } from '../../src/mappings.js';
import { measurement, type Measurement } from '../../src/model/measurement.js';

/**
 * A serial device's reading as a Measurement: under its MDC code when the vendor table
 * (mappings/vendors/<vendor>.csv) maps it, else under the vendor's own code and system, so an
 * unmapped code is stored as sent rather than dropped. Serial devices carry no containment,
 * patient or location: those come from the registry.
 */
export function vendorMeasurement(
  system: string,
  deviceId: string,
  vendorCode: string,
  def: VendorCode | undefined,
  value: number,
  text: string | null,
  time: number,
  tzOffset: number,
  flags: number,
): Measurement {
  const mdc = def?.mdc ?? null;
  return measurement({
    deviceId,
    code: mdc ? String(mdc.cf) : vendorCode,
    system: mdc ? 'MDC' : system,
    refid: mdc ? mdc.refid : '',
    value,
    text,
    unit: def?.unit ?? '',
    time,
    tzOffset,
    flags,
    containment: '',
    patient: null,
    location: null,
  });
}
