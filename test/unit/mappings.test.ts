import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ErrorCode, GatewayError } from '../../src/errors.js';
import { loadMappings } from '../../src/mappings.js';
import { MAPPINGS_DIR } from '../../src/paths.js';
import { sharedPath } from '../helpers/shared.js';

function copyWith(file: string, edit: (text: string) => string): string {
  const dir = mkdtempSync(join(tmpdir(), 'mdi-mappings-'));
  cpSync(MAPPINGS_DIR, dir, { recursive: true });
  writeFileSync(join(dir, file), edit(readFileSync(join(dir, file), 'utf8')));
  return dir;
}

function loadError(dir: string): GatewayError {
  try {
    loadMappings(dir);
  } catch (err) {
    if (err instanceof GatewayError) return err;
    throw err;
  }
  throw new Error('expected the tables to be refused');
}

describe('mappings', () => {
  const m = loadMappings();

  it('loads the MDC → LOINC/UCUM table', () => {
    const hr = m.metricByCode.get(147842)!;
    expect(hr.refid).toBe('MDC_ECG_HEART_RATE');
    expect(hr.loinc).toBe('8867-4');
    expect(hr.ucum).toBe('/min');
    expect(m.metricByRefid.get('MDC_ECG_CARD_BEAT_RATE')).toBe(hr);
    expect(m.metricByCode.get(150456)!.loinc).toBe('59408-5');
    expect(m.metricByCode.get(157784)!.loinc).toBeNull();
    expect(m.ucumByUnit.get('MDC_DIM_MMHG')).toBe('mm[Hg]');
    expect(m.ucumByUnit.get('266016')).toBe('mm[Hg]');
    expect(m.ucumByUnit.get('bpm')).toBe('/min');
    expect(Object.isFrozen(hr)).toBe(true);
  });

  it('keeps every context-free code consistent with partition and term code', () => {
    for (const def of m.metricByCode.values()) {
      expect(def.cf).toBeGreaterThan(65536);
      expect(def.refid).toMatch(/^MDC_/);
    }
  });

  it('agrees with the team table it was built from', () => {
    const csv = sharedPath('corpus/mdc-loinc-ucum.csv');
    if (!csv) return; // ../shared absent (a fresh clone): nothing to compare with
    const lines = readFileSync(csv, 'utf8').trim().split('\n').slice(1);
    expect(m.metricByCode.size).toBe(lines.length);
    for (const line of lines) {
      const [refid, , , cf] = line.split(',');
      expect(m.metricByCode.get(Number(cf))?.refid, line).toBe(refid);
    }
  });

  it('refuses a bad row with file, line and reason', () => {
    const badCode = loadError(copyWith('metrics.csv', (t) => t.replace('147842,', 'x147842,')));
    expect(badCode.code).toBe(ErrorCode.MAPPING_BAD_ROW);
    expect(badCode.message).toMatch(/metrics\.csv line 2: cf_code "x147842"/);
    const badUnit = loadError(copyWith('metrics.csv', (t) => t.replace('147842,MDC_ECG_HEART_RATE,MDC_ECG_CARD_BEAT_RATE,/min', '147842,MDC_ECG_HEART_RATE,MDC_ECG_CARD_BEAT_RATE,furlong')));
    expect(badUnit.message).toMatch(/ucum "furlong" is not in units\.csv/);
    const dup = loadError(copyWith('metrics.csv', (t) => `${t}147842,MDC_X,,/min,,,,\n`));
    expect(dup.message).toMatch(/cf_code 147842 appears twice/);
    const header = loadError(copyWith('units.csv', (t) => t.replace('mdc_code', 'code')));
    expect(header.message).toMatch(/units\.csv line 1: the header/);
  });
});
