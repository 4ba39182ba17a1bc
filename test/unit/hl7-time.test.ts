import { describe, expect, it } from 'vitest';
import {
  DEFAULT_TIME_ZONE,
  ZoneOffsets,
  daysFromCivil,
  fixedOffset,
  formatHl7Time,
  formatIsoTime,
  hl7TimeHasOffset,
  parseHl7Time,
  parseHl7TimeBytes,
  zoneOffsets,
  type Hl7TimeOut,
  type TimeZoneRule,
} from '../../src/codec/hl7-time.js';

const cph = zoneOffsets('Europe/Copenhagen');
const iso = (text: string, zone: TimeZoneRule = cph): string | null => {
  const t = parseHl7Time(text, zone);
  return t === null ? null : formatIsoTime(t.ms, t.tzOffset);
};

describe('parseHl7Time: explicit offsets', () => {
  it('reads a full DTM with offset', () => {
    const t = parseHl7Time('20261121101455+0100')!;
    expect(t.ms).toBe(Date.UTC(2026, 10, 21, 9, 14, 55));
    expect(t.tzOffset).toBe(60);
  });

  it('reads negative and zero offsets, and offsets with minutes', () => {
    expect(parseHl7Time('20120111150457-0600')).toEqual({ ms: Date.UTC(2012, 0, 11, 21, 4, 57), tzOffset: -360 });
    expect(parseHl7Time('20150122182658+0000')).toEqual({ ms: Date.UTC(2015, 0, 22, 18, 26, 58), tzOffset: 0 });
    expect(parseHl7Time('20260101000000+0545')).toEqual({ ms: Date.UTC(2025, 11, 31, 18, 15), tzOffset: 345 });
  });

  it('keeps milliseconds and truncates finer fractions (Comen sends four digits)', () => {
    expect(parseHl7Time('20260726231332.1106+0800')).toEqual({ ms: Date.UTC(2026, 6, 26, 15, 13, 32, 110), tzOffset: 480 });
    expect(parseHl7Time('20261121101455.5+0100')!.ms % 1000).toBe(500);
    expect(parseHl7Time('20261121101455.123456+0100')!.ms % 1000).toBe(123);
  });

  it('accepts a leap second and surrounding spaces', () => {
    expect(parseHl7Time('20161231235960+0000')!.ms).toBe(Date.UTC(2017, 0, 1, 0, 0, 0));
    expect(parseHl7Time('  20261121101455+0100 ')!.ms).toBe(Date.UTC(2026, 10, 21, 9, 14, 55));
  });
});

describe('parseHl7Time: reduced precision', () => {
  it('starts the period in the zone', () => {
    expect(iso('2026')).toBe('2026-01-01T00:00:00+01:00');
    expect(iso('202607')).toBe('2026-07-01T00:00:00+02:00');
    expect(iso('20260726')).toBe('2026-07-26T00:00:00+02:00');
    expect(iso('2026072623')).toBe('2026-07-26T23:00:00+02:00');
    expect(iso('202607262314')).toBe('2026-07-26T23:14:00+02:00');
  });
});

describe('parseHl7Time: local times in Europe/Copenhagen', () => {
  it('uses CET in winter and CEST in summer', () => {
    expect(iso('20261121101455')).toBe('2026-11-21T10:14:55+01:00');
    expect(iso('20260615120000')).toBe('2026-06-15T12:00:00+02:00');
  });

  it('moves a wall time inside the spring gap forward by the gap (02:30 → 03:30 CEST)', () => {
    // 2026-03-29 02:00 CET does not exist: clocks jump to 03:00 CEST.
    expect(iso('20260329023000')).toBe('2026-03-29T03:30:00+02:00');
    expect(iso('20260329015959')).toBe('2026-03-29T01:59:59+01:00');
    expect(iso('20260329030000')).toBe('2026-03-29T03:00:00+02:00');
  });

  it('takes the earlier instant in the autumn overlap (02:30 happens twice)', () => {
    const t = parseHl7Time('20261025023000', cph)!;
    expect(t.tzOffset).toBe(120);
    expect(t.ms).toBe(Date.UTC(2026, 9, 25, 0, 30));
    expect(iso('20261025033000')).toBe('2026-10-25T03:30:00+01:00');
    expect(iso('20261025015959')).toBe('2026-10-25T01:59:59+02:00');
  });

  it('reports the offset in force at the transition instant exactly', () => {
    // The CEST → CET switch is at 01:00:00 UTC.
    expect(cph.offsetAt(Date.UTC(2026, 9, 25, 0, 59, 59))).toBe(120);
    expect(cph.offsetAt(Date.UTC(2026, 9, 25, 1, 0, 0))).toBe(60);
    expect(cph.offsetAt(Date.UTC(2026, 2, 29, 0, 59, 59, 999))).toBe(60);
    expect(cph.offsetAt(Date.UTC(2026, 2, 29, 1, 0, 0))).toBe(120);
  });

  it('handles zones with other rules (New York, Kathmandu +05:45)', () => {
    const ny = zoneOffsets('America/New_York');
    expect(iso('20261101013000', ny)).toBe('2026-11-01T01:30:00-04:00');
    expect(iso('20260308023000', ny)).toBe('2026-03-08T03:30:00-04:00');
    expect(iso('20260101120000', zoneOffsets('Asia/Kathmandu'))).toBe('2026-01-01T12:00:00+05:45');
  });

  it('uses a fixed offset rule when given one (a sender offset from MSH-7)', () => {
    expect(iso('20260726231331', fixedOffset(480))).toBe('2026-07-26T23:13:31+08:00');
    expect(fixedOffset(480)).toBe(fixedOffset(480));
  });

  it('defaults to Europe/Copenhagen', () => {
    expect(DEFAULT_TIME_ZONE).toBe('Europe/Copenhagen');
    expect(formatIsoTime(parseHl7Time('20260101120000')!.ms, 60)).toBe('2026-01-01T12:00:00+01:00');
  });

  it('does not call Intl again once an hour is cached', () => {
    const zone = new ZoneOffsets('Europe/Copenhagen');
    const formatter = (zone as unknown as { format: Intl.DateTimeFormat }).format;
    let calls = 0;
    const original = formatter.formatToParts.bind(formatter);
    formatter.formatToParts = (date?: Date | number) => {
      calls++;
      return original(date);
    };
    const out: Hl7TimeOut = { ms: 0, tzOffset: 0 };
    const bytes = Buffer.from('20261121101455');
    expect(parseHl7TimeBytes(bytes, 0, bytes.length, zone, out)).toBe(true);
    const warm = calls;
    for (let s = 0; s < 1000; s++) {
      const b = Buffer.from(`2026112110${String(Math.floor(s / 60) % 60).padStart(2, '0')}${String(s % 60).padStart(2, '0')}`);
      parseHl7TimeBytes(b, 0, b.length, zone, out);
    }
    expect(warm).toBeGreaterThan(0);
    expect(calls).toBe(warm);
  });
});

describe('parseHl7Time: invalid input', () => {
  it.each([
    [''],
    ['abc'],
    ['2026112'], // odd number of digits
    ['20261321'], // month 13
    ['20260230'], // 30 February
    ['20250229'], // not a leap year
    ['20261121246000'], // hour 24
    ['20261121106000'], // minute 60
    ['20261121101461'], // second 61
    ['20261121101455+01'], // offset without minutes
    ['20261121101455+1500'], // offset beyond ±14:00
    ['20261121101455+0160'],
    ['20080101123456- 0600'], // as printed in IHE TF-2 (stray space)
    ['20261121.5'], // fraction without seconds
    ['20261121101455.'], // empty fraction
    ['20261121101455Z'],
    ['2026-11-21T10:14:55'],
    ['Ærø'],
  ])('%j → null', (text) => {
    expect(parseHl7Time(text)).toBeNull();
  });

  it('accepts 29 February in a leap year', () => {
    expect(iso('20240229120000+0000')).toBe('2024-02-29T12:00:00+00:00');
  });

  it('leaves the output untouched on failure', () => {
    const out: Hl7TimeOut = { ms: 42, tzOffset: 7 };
    const bytes = Buffer.from('garbage');
    expect(parseHl7TimeBytes(bytes, 0, bytes.length, cph, out)).toBe(false);
    expect(out).toEqual({ ms: 42, tzOffset: 7 });
  });

  it('reads a range inside a larger buffer', () => {
    const bytes = Buffer.from('OBX|14|20261121101455+0100|x');
    const out: Hl7TimeOut = { ms: 0, tzOffset: 0 };
    expect(parseHl7TimeBytes(bytes, 7, 26, cph, out)).toBe(true);
    expect(formatIsoTime(out.ms, out.tzOffset)).toBe('2026-11-21T10:14:55+01:00');
  });
});

describe('hl7TimeHasOffset', () => {
  it('tells explicit offsets from local times', () => {
    const has = (t: string) => hl7TimeHasOffset(Buffer.from(t), 0, t.length);
    expect(has('20261121101455+0100')).toBe(true);
    expect(has('20261121101455-0600 ')).toBe(true);
    expect(has('20261121101455')).toBe(false);
    expect(has('2026')).toBe(false);
  });
});

describe('formatIsoTime / formatHl7Time', () => {
  it('writes ISO-8601 with the offset, milliseconds only when nonzero', () => {
    const ms = Date.UTC(2026, 10, 21, 9, 14, 55);
    expect(formatIsoTime(ms, 60)).toBe('2026-11-21T10:14:55+01:00');
    expect(formatIsoTime(ms + 7, 60)).toBe('2026-11-21T10:14:55.007+01:00');
    expect(formatIsoTime(ms, 0)).toBe('2026-11-21T09:14:55+00:00');
    expect(formatIsoTime(ms, -360)).toBe('2026-11-21T03:14:55-06:00');
    expect(formatIsoTime(ms, 345)).toBe('2026-11-21T14:59:55+05:45');
    expect(formatIsoTime(Date.UTC(2026, 11, 31, 23, 30), 60)).toBe('2027-01-01T00:30:00+01:00');
  });

  it('writes HL7 DTM with the offset', () => {
    const ms = Date.UTC(2026, 10, 21, 9, 14, 55);
    expect(formatHl7Time(ms, 60)).toBe('20261121101455+0100');
    expect(formatHl7Time(ms + 250, -330)).toBe('20261121034455.250-0530');
  });

  it('round-trips through parse for every hour of a year with transitions', () => {
    const start = Date.UTC(2026, 0, 1);
    for (let h = 0; h < 365 * 24; h += 7) {
      const ms = start + h * 3_600_000 + 1234;
      const offset = cph.offsetAt(ms);
      const back = parseHl7Time(formatHl7Time(ms, offset))!;
      expect(back).toEqual({ ms, tzOffset: offset });
    }
  });

  it('agrees with Date for the calendar arithmetic', () => {
    for (const [y, m, d] of [
      [1970, 1, 1],
      [2000, 2, 29],
      [2026, 11, 21],
      [1899, 12, 30],
      [2400, 3, 1],
    ] as const) {
      expect(daysFromCivil(y, m, d) * 86_400_000).toBe(Date.UTC(y, m - 1, d));
    }
  });
});
