/**
 * HL7 v2 date/time (DTM, and component 1 of the older TS) ⇄ epoch milliseconds with a UTC offset.
 *
 * A DTM without an offset is local time of the sender; the gateway resolves it with a
 * `TimeZoneRule`: a configured IANA zone (default `Europe/Copenhagen`, `ZoneOffsets`) or a fixed
 * offset (`fixedOffset`, e.g. the sender's own offset from MSH-7). Zone offsets come from `Intl`
 * once per UTC hour and are cached, so the steady state never calls `Intl`.
 *
 * HL7 v2.6 2.A.22 DTM: `YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]`.
 */

/** The zone used for DTM values that carry no offset, unless configured otherwise. */
export const DEFAULT_TIME_ZONE = 'Europe/Copenhagen';

/** A point in time as an HL7 sender stated it: epoch milliseconds and the UTC offset in minutes. */
export interface Hl7Time {
  /** Epoch milliseconds (UTC), whole milliseconds (finer digits are truncated). */
  readonly ms: number;
  /** Offset from UTC in minutes (east positive): as sent, or from the configured zone. */
  readonly tzOffset: number;
}

/** Mutable form of `Hl7Time`, filled in place by `parseHl7TimeBytes` so hot loops allocate nothing. */
export interface Hl7TimeOut {
  ms: number;
  tzOffset: number;
}

const MS_PER_MINUTE = 60_000;
const MS_PER_HOUR = 3_600_000;
const MS_PER_DAY = 86_400_000;

// Hours cached per zone before the cache is dropped and rebuilt; device clocks cluster around
// "now", so this only bounds memory against a sender that spreads times over centuries.
const MAX_CACHED_HOURS = 8192;

/**
 * How wall-clock times without an offset map to instants: an IANA zone (`ZoneOffsets`) or a
 * fixed offset (`fixedOffset`).
 */
export interface TimeZoneRule {
  /** Offset from UTC in minutes (east positive) at the instant `utcMs`. */
  offsetAt(utcMs: number): number;
  /** The instant of the wall-clock time `localMs` (a local time written as if it were UTC). */
  localToUtc(localMs: number): number;
}

class FixedOffset implements TimeZoneRule {
  constructor(private readonly minutes: number) {}
  offsetAt(): number {
    return this.minutes;
  }
  localToUtc(localMs: number): number {
    return localMs - this.minutes * MS_PER_MINUTE;
  }
}

const fixedOffsets = new Map<number, TimeZoneRule>();

/** A rule with one constant offset (minutes east of UTC), e.g. the sender's offset from MSH-7. */
export function fixedOffset(minutes: number): TimeZoneRule {
  let rule = fixedOffsets.get(minutes);
  if (rule === undefined) {
    rule = new FixedOffset(minutes);
    // Offsets are a small set (whole quarter hours in practice); bound anyway.
    if (fixedOffsets.size < 256) fixedOffsets.set(minutes, rule);
  }
  return rule;
}

/**
 * UTC offsets of one IANA zone, computed with `Intl` once per UTC hour and cached.
 *
 * `offsetAt(utcMs)` is exact also within an hour that contains a transition (the transition
 * second is found once by bisection and cached). `localToUtc(localMs)` maps a wall-clock time
 * to an instant the way `java.time.ZonedDateTime.ofLocal` does: in an overlap (autumn) it takes
 * the earlier instant (the offset before the transition); in a gap (spring) it moves the wall
 * time forward by the length of the gap.
 */
export class ZoneOffsets implements TimeZoneRule {
  /** The IANA zone name. */
  readonly zone: string;
  private readonly format: Intl.DateTimeFormat;
  // UTC hour → offset (minutes) for hours without a transition.
  private readonly steadyHours = new Map<number, number>();
  // UTC hour → [offset before, transition ms, offset after] for hours with a transition.
  private readonly transitionHours = new Map<number, readonly [number, number, number]>();
  // Local (wall-clock) hour → offset for hours that resolve to one offset throughout.
  private readonly localHours = new Map<number, number>();
  private lastUtcHour = Number.NaN;
  private lastUtcOffset = 0;
  private lastLocalHour = Number.NaN;
  private lastLocalOffset = 0;

  /** @throws RangeError when `zone` is not a zone `Intl` knows (a configuration error, checked at startup). */
  constructor(zone: string = DEFAULT_TIME_ZONE) {
    this.zone = zone;
    this.format = new Intl.DateTimeFormat('en-US', {
      timeZone: zone,
      hourCycle: 'h23',
      era: 'short',
      year: 'numeric',
      month: 'numeric',
      day: 'numeric',
      hour: 'numeric',
      minute: 'numeric',
      second: 'numeric',
    });
  }

  /** Offset from UTC in minutes (east positive) of this zone at the instant `utcMs`. */
  offsetAt(utcMs: number): number {
    const hour = Math.floor(utcMs / MS_PER_HOUR);
    if (hour === this.lastUtcHour) return this.lastUtcOffset;
    const steady = this.steadyHours.get(hour);
    if (steady !== undefined) {
      this.lastUtcHour = hour;
      this.lastUtcOffset = steady;
      return steady;
    }
    const transition = this.transitionHours.get(hour);
    if (transition !== undefined) return utcMs < transition[1] ? transition[0] : transition[2];
    return this.fillHour(hour, utcMs);
  }

  /**
   * The instant (epoch ms) of the wall-clock time `localMs` (a local time written as if it were
   * UTC) in this zone; gaps and overlaps are resolved as described on the class. The offset in
   * force at the result is `offsetAt(result)`.
   */
  localToUtc(localMs: number): number {
    const hour = Math.floor(localMs / MS_PER_HOUR);
    if (hour === this.lastLocalHour) return localMs - this.lastLocalOffset * MS_PER_MINUTE;
    const cached = this.localHours.get(hour);
    if (cached !== undefined) {
      this.lastLocalHour = hour;
      this.lastLocalOffset = cached;
      return localMs - cached * MS_PER_MINUTE;
    }
    // Offsets a day before and a day after bracket any transition near this wall time
    // (|offset| <= 14 h, and no zone has two transitions within two days).
    const hourStart = hour * MS_PER_HOUR;
    const before = this.offsetAt(hourStart - MS_PER_DAY);
    const after = this.offsetAt(hourStart + MS_PER_HOUR + MS_PER_DAY);
    if (before === after) {
      if (this.localHours.size >= MAX_CACHED_HOURS) this.localHours.clear();
      this.localHours.set(hour, before);
      this.lastLocalHour = hour;
      this.lastLocalOffset = before;
      return localMs - before * MS_PER_MINUTE;
    }
    // Overlap: both offsets are valid, the pre-transition one gives the earlier instant.
    // Gap: neither is valid; the pre-transition offset moves the wall time forward by the gap.
    if (this.offsetAt(localMs - before * MS_PER_MINUTE) === before) return localMs - before * MS_PER_MINUTE;
    if (this.offsetAt(localMs - after * MS_PER_MINUTE) === after) return localMs - after * MS_PER_MINUTE;
    return localMs - before * MS_PER_MINUTE;
  }

  private fillHour(hour: number, utcMs: number): number {
    const start = hour * MS_PER_HOUR;
    const end = start + MS_PER_HOUR - 1000;
    const a = this.computeOffset(start);
    const b = this.computeOffset(end);
    if (this.steadyHours.size >= MAX_CACHED_HOURS) {
      this.steadyHours.clear();
      this.transitionHours.clear();
    }
    if (a === b) {
      this.steadyHours.set(hour, a);
      this.lastUtcHour = hour;
      this.lastUtcOffset = a;
      return a;
    }
    // Transitions happen on whole seconds: bisect the first second that has offset `b`.
    let lo = start;
    let hi = end;
    while (hi - lo > 1000) {
      const mid = lo + Math.floor((hi - lo) / 2000) * 1000;
      if (this.computeOffset(mid) === a) lo = mid;
      else hi = mid;
    }
    this.transitionHours.set(hour, [a, hi, b]);
    return utcMs < hi ? a : b;
  }

  private computeOffset(utcMs: number): number {
    const second = Math.floor(utcMs / 1000) * 1000;
    let year = 0;
    let month = 1;
    let day = 1;
    let hour = 0;
    let minute = 0;
    let sec = 0;
    let bc = false;
    for (const part of this.format.formatToParts(second)) {
      switch (part.type) {
        case 'year':
          year = Number(part.value);
          break;
        case 'month':
          month = Number(part.value);
          break;
        case 'day':
          day = Number(part.value);
          break;
        case 'hour':
          hour = Number(part.value);
          break;
        case 'minute':
          minute = Number(part.value);
          break;
        case 'second':
          sec = Number(part.value);
          break;
        case 'era':
          bc = part.value.startsWith('B');
          break;
        default:
          break;
      }
    }
    if (bc) year = 1 - year;
    const wall = daysFromCivil(year, month, day) * MS_PER_DAY + hour * MS_PER_HOUR + minute * MS_PER_MINUTE + sec * 1000;
    return Math.round((wall - second) / MS_PER_MINUTE);
  }
}

const zoneCache = new Map<string, ZoneOffsets>();

/**
 * The shared `ZoneOffsets` for `zone` (one cache per zone per process).
 * @throws RangeError when the zone is unknown (validate configuration with it at startup).
 */
export function zoneOffsets(zone: string = DEFAULT_TIME_ZONE): ZoneOffsets {
  let z = zoneCache.get(zone);
  if (z === undefined) {
    z = new ZoneOffsets(zone);
    zoneCache.set(zone, z);
  }
  return z;
}

/**
 * Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
 * Plain arithmetic: no `Date` object, valid for any year.
 */
export function daysFromCivil(year: number, month: number, day: number): number {
  const y = month <= 2 ? year - 1 : year;
  const era = Math.floor(y / 400);
  const yoe = y - era * 400;
  const mp = month > 2 ? month - 3 : month + 9;
  const doy = Math.floor((153 * mp + 2) / 5) + day - 1;
  const doe = yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy;
  return era * 146097 + doe - 719468;
}

const DAYS_IN_MONTH = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

function daysInMonth(year: number, month: number): number {
  if (month === 2 && (year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0))) return 29;
  return DAYS_IN_MONTH[month - 1] ?? 31;
}

function twoDigits(bytes: Uint8Array, i: number): number {
  const a = (bytes[i] ?? 0) - 48;
  const b = (bytes[i + 1] ?? 0) - 48;
  if (a < 0 || a > 9 || b < 0 || b > 9) return -1;
  return a * 10 + b;
}

/**
 * Parses the DTM in `bytes[start, end)` into `out`. Leading and trailing spaces are ignored.
 * A value without an offset is resolved in `zone`. Returns false (and leaves `out` untouched)
 * when the text is not a valid DTM: wrong length or digits, an impossible calendar date or clock
 * time, an offset that is not `±HHMM` within ±14:00, or fractional seconds without seconds.
 * Fractions finer than a millisecond are truncated.
 */
export function parseHl7TimeBytes(
  bytes: Uint8Array,
  start: number,
  end: number,
  zone: TimeZoneRule,
  out: Hl7TimeOut,
): boolean {
  while (start < end && bytes[start] === 0x20) start++;
  while (end > start && bytes[end - 1] === 0x20) end--;
  // Date/time digits run up to the first '.', '+' or '-'.
  let digitsEnd = start;
  while (digitsEnd < end) {
    const c = bytes[digitsEnd]!;
    if (c < 0x30 || c > 0x39) break;
    digitsEnd++;
  }
  const n = digitsEnd - start;
  if (n !== 4 && n !== 6 && n !== 8 && n !== 10 && n !== 12 && n !== 14) return false;
  const year = twoDigits(bytes, start) * 100 + twoDigits(bytes, start + 2);
  let month = 1;
  let day = 1;
  let hour = 0;
  let minute = 0;
  let second = 0;
  if (n >= 6) {
    month = twoDigits(bytes, start + 4);
    if (month < 1 || month > 12) return false;
  }
  if (n >= 8) {
    day = twoDigits(bytes, start + 6);
    if (day < 1 || day > daysInMonth(year, month)) return false;
  }
  if (n >= 10) {
    hour = twoDigits(bytes, start + 8);
    if (hour < 0 || hour > 23) return false;
  }
  if (n >= 12) {
    minute = twoDigits(bytes, start + 10);
    if (minute < 0 || minute > 59) return false;
  }
  if (n >= 14) {
    // HL7 v2.6 2.A.22: a leap second (60) is allowed.
    second = twoDigits(bytes, start + 12);
    if (second < 0 || second > 60) return false;
  }
  let i = digitsEnd;
  let millis = 0;
  if (i < end && bytes[i] === 0x2e) {
    if (n !== 14) return false;
    i++;
    const fracStart = i;
    let scale = 100;
    while (i < end) {
      const d = bytes[i]! - 48;
      if (d < 0 || d > 9) break;
      if (scale >= 1) millis += d * scale;
      scale /= 10;
      i++;
    }
    // HL7 allows up to four fractional digits; accept up to nine (some senders send µs/ns).
    if (i === fracStart || i - fracStart > 9) return false;
    millis = Math.floor(millis);
  }
  const local = daysFromCivil(year, month, day) * MS_PER_DAY + hour * MS_PER_HOUR + minute * MS_PER_MINUTE + second * 1000 + millis;
  if (i === end) {
    const utc = zone.localToUtc(local);
    out.ms = utc;
    out.tzOffset = zone.offsetAt(utc);
    return true;
  }
  const sign = bytes[i];
  if ((sign !== 0x2b && sign !== 0x2d) || end - i !== 5) return false;
  const oh = twoDigits(bytes, i + 1);
  const om = twoDigits(bytes, i + 3);
  if (oh < 0 || oh > 14 || om < 0 || om > 59) return false;
  const offset = (sign === 0x2d ? -1 : 1) * (oh * 60 + om);
  out.ms = local - offset * MS_PER_MINUTE;
  out.tzOffset = offset;
  return true;
}

/**
 * Parses an HL7 DTM string (see `parseHl7TimeBytes`); `null` when it is not a valid DTM.
 * Characters outside Latin-1 make it invalid.
 */
export function parseHl7Time(text: string, zone: TimeZoneRule = zoneOffsets()): Hl7Time | null {
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c > 0xff) return null;
    bytes[i] = c;
  }
  const out: Hl7TimeOut = { ms: 0, tzOffset: 0 };
  return parseHl7TimeBytes(bytes, 0, bytes.length, zone, out) ? out : null;
}

/** True when the DTM in `bytes[start, end)` ends in an explicit `±ZZZZ` offset. */
export function hl7TimeHasOffset(bytes: Uint8Array, start: number, end: number): boolean {
  while (end > start && bytes[end - 1] === 0x20) end--;
  const sign = end - start > 5 ? bytes[end - 5] : 0;
  return sign === 0x2b || sign === 0x2d;
}

function pad2(n: number): string {
  return n < 10 ? `0${n}` : `${n}`;
}

function pad3(n: number): string {
  return n < 10 ? `00${n}` : n < 100 ? `0${n}` : `${n}`;
}

function pad4(n: number): string {
  if (n >= 1000) return `${n}`;
  if (n >= 0) return n < 10 ? `000${n}` : n < 100 ? `00${n}` : `0${n}`;
  return `-${pad4(-n)}`;
}

interface CivilTime {
  year: number;
  month: number;
  day: number;
  hour: number;
  minute: number;
  second: number;
  millis: number;
}

// The inverse of daysFromCivil (H. Hinnant's `civil_from_days`), applied to a wall-clock ms.
function civil(wallMs: number): CivilTime {
  const days = Math.floor(wallMs / MS_PER_DAY);
  let rest = wallMs - days * MS_PER_DAY;
  const z = days + 719468;
  const era = Math.floor(z / 146097);
  const doe = z - era * 146097;
  const yoe = Math.floor((doe - Math.floor(doe / 1460) + Math.floor(doe / 36524) - Math.floor(doe / 146096)) / 365);
  const doy = doe - (365 * yoe + Math.floor(yoe / 4) - Math.floor(yoe / 100));
  const mp = Math.floor((5 * doy + 2) / 153);
  const day = doy - Math.floor((153 * mp + 2) / 5) + 1;
  const month = mp < 10 ? mp + 3 : mp - 9;
  const year = yoe + era * 400 + (month <= 2 ? 1 : 0);
  const hour = Math.floor(rest / MS_PER_HOUR);
  rest -= hour * MS_PER_HOUR;
  const minute = Math.floor(rest / MS_PER_MINUTE);
  rest -= minute * MS_PER_MINUTE;
  const second = Math.floor(rest / 1000);
  return { year, month, day, hour, minute, second, millis: Math.floor(rest - second * 1000) };
}

function offsetText(tzOffset: number, colon: boolean): string {
  const abs = Math.abs(tzOffset);
  const hh = pad2(Math.floor(abs / 60));
  const mm = pad2(abs % 60);
  return `${tzOffset < 0 ? '-' : '+'}${hh}${colon ? ':' : ''}${mm}`;
}

/**
 * ISO-8601 / FHIR `instant` text of `ms` as wall-clock time at `tzOffset` minutes, always with
 * the offset: `2026-11-21T10:14:55+01:00`; milliseconds (`.123`) only when nonzero.
 */
export function formatIsoTime(ms: number, tzOffset: number): string {
  const offset = Math.round(tzOffset);
  const t = civil(Math.floor(ms) + offset * MS_PER_MINUTE);
  const frac = t.millis === 0 ? '' : `.${pad3(t.millis)}`;
  return `${pad4(t.year)}-${pad2(t.month)}-${pad2(t.day)}T${pad2(t.hour)}:${pad2(t.minute)}:${pad2(t.second)}${frac}${offsetText(offset, true)}`;
}

/**
 * HL7 DTM text of `ms` at `tzOffset` minutes: `YYYYMMDDHHMMSS[.SSS]±ZZZZ` (milliseconds only
 * when nonzero), as used for MSH-7 of the ACKs the gateway sends.
 */
export function formatHl7Time(ms: number, tzOffset: number): string {
  const offset = Math.round(tzOffset);
  const t = civil(Math.floor(ms) + offset * MS_PER_MINUTE);
  const frac = t.millis === 0 ? '' : `.${pad3(t.millis)}`;
  return `${pad4(t.year)}${pad2(t.month)}${pad2(t.day)}${pad2(t.hour)}${pad2(t.minute)}${pad2(t.second)}${frac}${offsetText(offset, false)}`;
}
