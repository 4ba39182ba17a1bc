import { describe, expect, it } from 'vitest';
import { vendorCodesFor } from '../../drivers/serial/index.js';
import { decodeMasimoLine, masimoDeadLetters, MasimoSession, masimoExceptionNames } from '../../drivers/serial/masimo.js';
import type { SessionIo } from '../../drivers/serial/session.js';
import { zoneOffsets } from '../../src/codec/hl7-time.js';
import { ErrorCode } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { loadMappings } from '../../src/mappings.js';
import { Quality, type Measurement } from '../../src/model/measurement.js';
import { Normalizer } from '../../src/pipeline/normalize.js';
import { masimoLine } from '../../simulators/masimo.js';
import { masimoCorpusLines } from '../helpers/serial-corpus.js';
import { SHARED_ABSENT_NOTE } from '../helpers/shared.js';

const ctx = { deviceId: 'spo2-1', zone: zoneOffsets('Europe/Copenhagen'), codes: vendorCodesFor('masimo') };
const decode = (line: string) => decodeMasimoLine(line, ctx);
const byCode = (ms: Measurement[], code: string) => ms.find((m) => m.code === code);

describe('Masimo ASCII 1 decoder: the public samples', () => {
  const corpus = masimoCorpusLines();
  const note = corpus ? 'public corpus' : SHARED_ABSENT_NOTE;

  it.skipIf(!corpus)(`decodes every sample line without a problem (${note})`, () => {
    for (const { file, lines } of corpus!) {
      for (const line of lines) {
        const d = decode(line);
        expect(d.fatal, `${file}: ${line}`).toBeNull();
        expect(d.readings.length, line).toBeGreaterThan(0);
        // Never a number where the device said "no value" or the sensor failed.
        for (const m of d.readings) if (m.flags & Quality.INVALID) expect(Number.isNaN(m.value), line).toBe(true);
      }
    }
  });

  it.skipIf(!corpus)(`reads the datacapture lines by key, dashes and exceptions included (${note})`, () => {
    const [first, second, third] = corpus![0]!.lines.map(decode) as [ReturnType<typeof decode>, ReturnType<typeof decode>, ReturnType<typeof decode>];
    // Line 1: Rad-8 with no sensor (EXC=000001): dashes, invalid.
    expect(byCode(first.readings, '150456')).toMatchObject({ flags: Quality.INVALID });
    expect(Number.isNaN(byCode(first.readings, '150456')!.value)).toBe(true);
    expect(first.identity).toEqual({ serial: '0000093112' });
    expect(byCode(first.states, 'EXC')!.text).toBe('no-sensor');
    // Line 2: Radical-7, SpO2 98 %, pulse 123, PI 0.55; EXC 0C00 = low signal IQ + SET mode.
    expect(byCode(second.readings, '150456')).toMatchObject({ value: 98, unit: '%', refid: 'MDC_PULS_OXIM_SAT_O2', flags: Quality.QUESTIONABLE });
    expect(byCode(second.readings, '149530')).toMatchObject({ value: 123, unit: '/min' });
    expect(byCode(second.readings, '150448')).toMatchObject({ value: 0.55 });
    expect(byCode(second.readings, 'SPHB')).toMatchObject({ system: 'MASIMO', unit: 'g/dL', flags: Quality.INVALID | Quality.QUESTIONABLE });
    expect(second.identity).toEqual({}); // SN=---------- is no serial number
    expect(byCode(second.states, 'EXC')!.text).toBe('low-signal-iq,set-mode');
    // Line 3: all dashes (trailing space kept in the source).
    expect(third.readings.every((m) => Number.isNaN(m.value))).toBe(true);
  });

  it.skipIf(!corpus)(`reads the Rad-8 trend lines: zeros are no value, OffPat/Search invalidate (${note})`, () => {
    const trend = corpus![1]!.lines.map(decode);
    const spo2 = trend.map((d) => byCode(d.readings, '150456')!);
    expect(spo2.map((m) => (Number.isNaN(m.value) ? null : m.value))).toEqual([null, null, 97, 96, 98, null, null, 96]);
    expect(spo2.map((m) => m.flags)).toEqual([
      Quality.INVALID,
      Quality.INVALID | Quality.QUESTIONABLE,
      0,
      Quality.QUESTIONABLE,
      0,
      Quality.INVALID,
      Quality.INVALID,
      0,
    ]);
    expect(byCode(trend[2]!.readings, '149530')!.value).toBe(69); // PR= in the trend format
    expect(byCode(trend[1]!.states, 'EXC')!.text).toBe('pulse-search,sensor-off,set-mode');
  });
});

describe('Masimo ASCII 1 decoder: own fixtures', () => {
  const good = '03/17/16 19:19:36 SN=0000093112 SPO2=098% BPM=072 PI=02.50 ALARM=0000 EXC=000800';

  it('takes the device clock as local time of the configured zone', () => {
    const winter = byCode(decode(good).readings, '150456')!;
    expect(new Date(winter.time).toISOString()).toBe('2016-03-17T18:19:36.000Z');
    expect(winter.tzOffset).toBe(60);
    const summer = byCode(decode(good.replace('03/17/16', '07/17/16')).readings, '150456')!;
    expect(new Date(summer.time).toISOString()).toBe('2016-07-17T17:19:36.000Z');
    expect(summer.tzOffset).toBe(120);
  });

  it('parses by key: order, case and extra keys do not matter', () => {
    const d = decode('03/17/16 19:19:36 EXC=000800 bpm=072 NEWKEY=12.5 SpO2=097 MODE=adult');
    expect(byCode(d.readings, '150456')!.value).toBe(97);
    expect(byCode(d.readings, '149530')!.value).toBe(72);
    expect(byCode(d.readings, 'NEWKEY')).toMatchObject({ system: 'MASIMO', value: 12.5 });
    expect(byCode(d.readings, 'MODE')).toMatchObject({ system: 'MASIMO', text: 'adult' });
  });

  it('refuses a damaged line whole, each for a clear reason', () => {
    const cases: [string, ErrorCode, RegExp][] = [
      [`${good.slice(0, 30)}\x9f${good.slice(31)}`, ErrorCode.MASIMO_GARBLED, /not printable ASCII/],
      ['SPO2=098% BPM=072 EXC=000800', ErrorCode.MASIMO_BAD_LINE, /MM\/DD\/YY/],
      ['13/45/16 19:19:36 SPO2=098% EXC=000800', ErrorCode.MASIMO_BAD_TIME, /not a valid date/],
      ['03/17/16 19:19:36 SN=0000093112 SPO2=09', ErrorCode.MASIMO_BAD_LINE, /cut short/],
      [`${good} 03/17/16 19:19:37 SPO2=097%`, ErrorCode.MASIMO_BAD_LINE, /not KEY=value/],
      [`${good} SPO2=097%`, ErrorCode.MASIMO_BAD_LINE, /twice/],
      ['03/17/16 19:19:36 SPO2=9x8% EXC=000800', ErrorCode.MASIMO_BAD_VALUE, /neither a number nor dashes/],
      ['03/17/16 19:19:36 SPO2=098% EXC=ZZ', ErrorCode.MASIMO_BAD_VALUE, /hex/],
    ];
    for (const [line, code, reason] of cases) {
      const d = decode(line);
      expect(d.fatal?.code, line).toBe(code);
      expect(d.fatal!.reason).toMatch(reason);
      expect(d.readings).toEqual([]);
      const letters = masimoDeadLetters(line, 1234, d);
      expect(letters[0]).toMatchObject({ code, location: 'line at byte 1234' });
      expect(letters[0]!.raw).toEqual(Buffer.from(line, 'latin1'));
    }
  });

  it('invalidates digits under a sensor exception; low perfusion only makes them questionable', () => {
    const off = decode(good.replace('EXC=000800', 'EXC=000820'));
    expect(byCode(off.readings, '150456')).toMatchObject({ flags: Quality.INVALID });
    expect(Number.isNaN(byCode(off.readings, '150456')!.value)).toBe(true);
    const low = decode(good.replace('EXC=000800', 'EXC=000804'));
    expect(byCode(low.readings, '150456')).toMatchObject({ value: 98, flags: Quality.QUESTIONABLE });
    expect(masimoExceptionNames(0x1820)).toBe('sensor-off,set-mode,0x1000');
  });

  it('flags an active alarm word as abnormal', () => {
    const d = decode(good.replace('ALARM=0000', 'ALARM=0003'));
    expect(byCode(d.states, 'ALARM')).toMatchObject({ text: '0003', flags: Quality.ABNORMAL });
    expect(Number.isNaN(byCode(d.states, 'ALARM')!.value)).toBe(true);
  });

  it('decodes every line the simulator writes', () => {
    for (let t = Date.UTC(2026, 0, 1); t < Date.UTC(2026, 0, 1) + 5000; t += 1000) {
      const line = masimoLine(t, { spo2: 97, bpm: 64, pi: 2.4, sphb: 13.1, spmet: 1.1, pvi: 12, exc: 0x800 }).trimEnd();
      const d = decode(line);
      expect(d.fatal).toBeNull();
      expect(byCode(d.readings, '150456')!.time).toBe(t);
    }
  });

  it('normalizes SpO2 and pulse to LOINC; PI keeps its % and is flagged against the dimensionless MDC unit', () => {
    const normalizer = new Normalizer(loadMappings());
    const { observations } = normalizer.normalizeBatch(decode(good).readings);
    expect(observations.find((o) => o.code === 150456)).toMatchObject({ loinc: '59408-5', unit: '%', value: 98, flags: 0 });
    expect(observations.find((o) => o.code === 149530)).toMatchObject({ loinc: '8867-4', unit: '/min', flags: 0 });
    expect(observations.find((o) => o.code === 150448)).toMatchObject({ unit: '%', flags: Quality.UNIT_MISMATCH });
  });
});

describe('MasimoSession', () => {
  function session() {
    const submitted: Measurement[][] = [];
    const rejects: string[] = [];
    const counters: Record<string, number> = {};
    const io: SessionIo = {
      deviceId: 'spo2-s',
      zone: zoneOffsets('Europe/Copenhagen'),
      log: silentLogger(),
      write: () => undefined,
      submit: async (m, r) => {
        submitted.push([...m]);
        rejects.push(...r.map((x) => x.code));
        return true;
      },
      alive: () => undefined,
      problem: () => undefined,
      count: (name, by = 1) => {
        counters[name] = (counters[name] ?? 0) + by;
      },
      identify: () => undefined,
      now: () => Date.now(),
    };
    return { s: new MasimoSession(io, vendorCodesFor('masimo')), submitted, rejects, counters };
  }
  const line = (sec: number, exc = '000800') => `03/17/16 19:19:${String(sec).padStart(2, '0')} SPO2=098% BPM=072 PI=02.50 EXC=${exc}\r\n`;

  it('drops the first partial line, submits per chunk, and stores EXC only when it changes', () => {
    const { s, submitted, rejects } = session();
    s.onData(Buffer.from(`${line(1).slice(20)}${line(2)}${line(3)}`));
    s.onData(Buffer.from(line(4)));
    s.onData(Buffer.from(line(5, '000820')));
    expect(rejects).toEqual([]);
    expect(submitted.length).toBe(3);
    const exc = submitted.flat().filter((m) => m.code === 'EXC').map((m) => m.text);
    expect(exc).toEqual(['set-mode', 'sensor-off,set-mode']);
    expect(submitted.flat().filter((m) => m.code === '150456')).toHaveLength(4);
  });

  it('dead-letters a refused line and goes on', () => {
    const { s, submitted, rejects, counters } = session();
    s.onData(Buffer.from('\n'));
    s.onData(Buffer.from(`garbage line\r\n${line(2)}`));
    expect(rejects).toEqual([ErrorCode.MASIMO_BAD_LINE]);
    expect(submitted.flat().some((m) => m.code === '150456')).toBe(true);
    expect(counters.rejected).toBe(1);
  });
});
