import { createHash } from 'node:crypto';

/** PoCD MdsDevice EUI-64 identifier system (IEEE 11073-20101 MDC_ATTR_SYS_ID). */
export const EUI64_SYSTEM = 'urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680';

const EUI64_PLAIN = /^[0-9A-Fa-f]{16}$/;
const EUI64_HYPHENATED = /^[0-9A-Fa-f]{2}(?:-[0-9A-Fa-f]{2}){7}$/;

/**
 * A device id as an EUI-64 in the PoCD form (`00-1A-01-00-00-00-00-01`, upper case, hyphens),
 * or null when the id is not an EUI-64. PCD-01 OBX-18 carries 16 hex digits
 * (`001A010000000001^EUI-64`); research note §2.1: normalise.
 */
export function eui64(deviceId: string): string | null {
  if (EUI64_PLAIN.test(deviceId)) return deviceId.toUpperCase().match(/../g)!.join('-');
  if (EUI64_HYPHENATED.test(deviceId)) return deviceId.toUpperCase();
  return null;
}

/** The device part of an identifier name: the PoCD EUI-64 form when it is one, else the id as is. */
export function deviceKey(deviceId: string): string {
  return eui64(deviceId) ?? deviceId;
}

/**
 * RFC 4122 §4.3 name-based UUID, version 5 (SHA-1). Deterministic: the same namespace and name
 * always give the same UUID, which is what makes a resend a no-op at the EPJ.
 * @throws {RangeError} when `namespace` is not a UUID.
 */
export function uuidv5(namespace: string, name: string): string {
  const ns = namespace.replace(/-/g, '');
  if (!/^[0-9a-f]{32}$/i.test(ns)) throw new RangeError('namespace is not a UUID');
  const hash = createHash('sha1').update(Buffer.from(ns, 'hex')).update(name, 'utf8').digest();
  hash[6] = (hash[6]! & 0x0f) | 0x50; // version 5
  hash[8] = (hash[8]! & 0x3f) | 0x80; // RFC 4122 variant
  const hex = hash.subarray(0, 16).toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/**
 * The deterministic Observation identifier value (research note §3, §4.2, PHD-IG pattern):
 * UUIDv5 of `"<device EUI-64>|<OBX-4 containment>|<MDC code>|<effective time, UTC, ms>"`.
 * The value is left out on purpose, so a resend with a corrected value meets the first copy
 * instead of creating a second truth. The time is the instant in UTC, so the +01:00/+02:00
 * switch of Europe/Copenhagen never changes the key. `revision` > 0: a re-issue (see below).
 */
export function observationIdentifier(
  namespace: string,
  deviceId: string,
  containment: string,
  mdcCode: number,
  time: number,
  revision = 0,
): string {
  const name = `${deviceKey(deviceId)}|${containment}|${mdcCode}|${new Date(time).toISOString()}`;
  // Revision 0 is the first charting (the name as always). A re-issue after a correction
  // (wrong patient voided) needs an identifier of its own: with the first one, its conditional
  // create would match the voided resource and chart nothing.
  return uuidv5(namespace, revision > 0 ? `${name}|rev:${revision}` : name);
}

const pad = (n: number, width = 2) => String(n).padStart(width, '0');

/**
 * FHIR `dateTime` of `ms` as wall-clock time at `tzOffset` minutes, always with the offset
 * (R4: a dateTime with a time SHALL carry a zone): `2025-03-12T10:15:00+01:00`; milliseconds
 * only when nonzero.
 */
export function fhirDateTime(ms: number, tzOffset: number): string {
  const offset = Math.round(tzOffset);
  const d = new Date(Math.floor(ms) + offset * 60_000);
  const frac = d.getUTCMilliseconds() === 0 ? '' : `.${pad(d.getUTCMilliseconds(), 3)}`;
  const abs = Math.abs(offset);
  const zone = `${offset < 0 ? '-' : '+'}${pad(Math.floor(abs / 60))}:${pad(abs % 60)}`;
  return (
    `${pad(d.getUTCFullYear(), 4)}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}` +
    `T${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}${frac}${zone}`
  );
}
