import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseCsv, type CsvRow } from './csv.js';
import { ErrorCode, GatewayError } from './errors.js';
import { MAPPINGS_DIR } from './paths.js';

/** One IEEE 11073-10101 metric with its LOINC and canonical UCUM unit (mappings/metrics.csv). */
export interface MetricDef {
  /** Context-free code: partition × 65536 + term code. */
  readonly cf: number;
  readonly refid: string;
  readonly aliases: readonly string[];
  /** Canonical UCUM unit; values are converted to it when a conversion is known. */
  readonly ucum: string;
  readonly loinc: string | null;
  readonly loincDisplay: string | null;
  /** Plausibility range in `ucum`; NaN bounds mean "no limit". */
  readonly min: number;
  readonly max: number;
}

export interface UnitConversion {
  readonly scale: number;
  readonly offset: number;
}

/** The mapping tables, loaded once and never changed while the gateway runs. */
export interface Mappings {
  readonly metricByCode: ReadonlyMap<number, MetricDef>;
  /** Reference ids and their aliases → metric. */
  readonly metricByRefid: ReadonlyMap<string, MetricDef>;
  /** Every spelling of a unit we know (MDC refid, MDC code, UCUM code, device alias) → UCUM. */
  readonly ucumByUnit: ReadonlyMap<string, string>;
  /** `${fromUcum}>${toUcum}` → linear conversion. */
  readonly conversions: ReadonlyMap<string, UnitConversion>;
}

const LOINC = /^\d{1,7}-\d$/;
const REFID = /^MDC_[A-Za-z0-9_]+$/;

/**
 * Loads and checks mappings/*.csv. A bad row throws a GatewayError (MDI_ERR_MAPPING_BAD_ROW)
 * naming the file, line and problem: the gateway must not start on tables it cannot trust.
 */
export function loadMappings(dir: string = MAPPINGS_DIR): Mappings {
  const ucumByUnit = new Map<string, string>();
  const knownUcum = new Set<string>();
  for (const row of readTable(dir, 'units.csv', ['mdc_code', 'mdc_refid', 'ucum', 'aliases'])) {
    const [code, refid, ucum, aliases] = row.fields as [string, string, string, string];
    const at = `units.csv line ${row.line}`;
    if (!/^\d+$/.test(code)) fail(at, `mdc_code "${code}" is not a number`);
    if (!REFID.test(refid)) fail(at, `mdc_refid "${refid}" is not an MDC reference id`);
    if (!ucum) fail(at, 'ucum is empty');
    knownUcum.add(ucum);
    for (const key of [code, refid, ucum, ...splitList(aliases)]) {
      const existing = ucumByUnit.get(key);
      if (existing !== undefined && existing !== ucum) fail(at, `"${key}" already maps to ${existing}`);
      ucumByUnit.set(key, ucum);
    }
  }

  const metricByCode = new Map<number, MetricDef>();
  const metricByRefid = new Map<string, MetricDef>();
  const header = ['cf_code', 'refid', 'aliases', 'ucum', 'loinc', 'loinc_display', 'plausible_min', 'plausible_max'];
  for (const row of readTable(dir, 'metrics.csv', header)) {
    const [cfText, refid, aliases, ucum, loinc, display, minText, maxText] = row.fields as string[] as [
      string, string, string, string, string, string, string, string,
    ];
    const at = `metrics.csv line ${row.line}`;
    if (!/^\d+$/.test(cfText)) fail(at, `cf_code "${cfText}" is not a number`);
    const cf = Number(cfText);
    if (!REFID.test(refid)) fail(at, `refid "${refid}" is not an MDC reference id`);
    if (!knownUcum.has(ucum)) fail(at, `ucum "${ucum}" is not in units.csv`);
    if (loinc && !LOINC.test(loinc)) fail(at, `loinc "${loinc}" is not a LOINC code`);
    const min = minText === '' ? Number.NaN : Number(minText);
    const max = maxText === '' ? Number.NaN : Number(maxText);
    if ((minText !== '' && !Number.isFinite(min)) || (maxText !== '' && !Number.isFinite(max))) {
      fail(at, 'plausible_min/plausible_max must be numbers');
    }
    if (min >= max) fail(at, `plausible_min ${min} is not below plausible_max ${max}`);
    if (metricByCode.has(cf)) fail(at, `cf_code ${cf} appears twice`);
    const def: MetricDef = Object.freeze({
      cf,
      refid,
      aliases: Object.freeze(splitList(aliases)),
      ucum,
      loinc: loinc || null,
      loincDisplay: display || null,
      min,
      max,
    });
    metricByCode.set(cf, def);
    for (const name of [refid, ...def.aliases]) {
      if (metricByRefid.has(name)) fail(at, `reference id ${name} appears twice`);
      metricByRefid.set(name, def);
    }
  }

  const conversions = new Map<string, UnitConversion>();
  for (const row of readTable(dir, 'unit-conversions.csv', ['from', 'to', 'scale', 'offset'])) {
    const [from, to, scaleText, offsetText] = row.fields as [string, string, string, string];
    const at = `unit-conversions.csv line ${row.line}`;
    const scale = Number(scaleText);
    const offset = Number(offsetText);
    if (!from || !to) fail(at, 'from and to must be UCUM codes');
    if (!Number.isFinite(scale) || scale === 0 || !Number.isFinite(offset)) fail(at, 'scale and offset must be numbers, scale not 0');
    conversions.set(`${from}>${to}`, Object.freeze({ scale, offset }));
  }

  return Object.freeze({ metricByCode, metricByRefid, ucumByUnit, conversions });
}

function readTable(dir: string, file: string, header: readonly string[]): CsvRow[] {
  let text: string;
  try {
    text = readFileSync(join(dir, file), 'utf8');
  } catch (err) {
    throw new GatewayError(ErrorCode.MAPPING_BAD_ROW, `${file}: cannot read: ${(err as Error).message}`);
  }
  const [head, ...rows] = parseCsv(text);
  if (!head || head.fields.join(',') !== header.join(',')) {
    fail(`${file} line 1`, `the header must be ${header.join(',')}`);
  }
  for (const row of rows) {
    if (row.fields.length !== header.length) {
      fail(`${file} line ${row.line}`, `has ${row.fields.length} fields, expected ${header.length}`);
    }
  }
  return rows;
}

function splitList(text: string): string[] {
  return text ? text.split('|').filter((s) => s !== '') : [];
}

function fail(at: string, problem: string): never {
  throw new GatewayError(ErrorCode.MAPPING_BAD_ROW, `mappings/${at}: ${problem}`);
}

/**
 * How one vendor code becomes a Measurement, from `mappings/vendors/<vendor>.csv`:
 * - `numeric`: a reading with a number (or NaN + INVALID when the device marks it absent);
 * - `text`: a reading with text (drug name);
 * - `state`: a status value, emitted when it changes (pump running, exception word);
 * - `alarm`: like `state`; the value 1 means the alarm is active (flagged ABNORMAL);
 * - `identity`: describes the device (serial number); shown in the driver status, not stored;
 * - `ignore`: known and deliberately dropped (reserved fields).
 */
export type VendorCodeKind = 'numeric' | 'text' | 'state' | 'alarm' | 'identity' | 'ignore';

const VENDOR_KINDS: readonly VendorCodeKind[] = ['numeric', 'text', 'state', 'alarm', 'identity', 'ignore'];

/** One row of a vendor table. */
export interface VendorCode {
  /** The code as the device sends it (`SPO2`, `cp1:EB`, `INRT`). */
  readonly code: string;
  readonly kind: VendorCodeKind;
  /** UCUM unit of the value as the device sends it; '' when dimensionless or unknown. */
  readonly unit: string;
  /** The IEEE 11073 metric it maps to, or null: then it is kept under the vendor's own system. */
  readonly mdc: { readonly cf: number; readonly refid: string } | null;
  /** For `state`/`alarm`: device value → text (`1` → `pump-status-infusing`). */
  readonly states: ReadonlyMap<string, string>;
  readonly description: string;
}

/** A vendor's code table, loaded once and frozen. */
export interface VendorCodes {
  readonly vendor: string;
  readonly byCode: ReadonlyMap<string, VendorCode>;
}

const VENDOR_HEADER = ['vendor_code', 'kind', 'unit', 'mdc_cf', 'mdc_refid', 'states', 'description'];

/**
 * Loads `mappings/vendors/<vendor>.csv` (vendor code → MDC). A bad row throws a GatewayError
 * (MDI_ERR_MAPPING_BAD_ROW) naming the file, line and problem, like `loadMappings`.
 */
export function loadVendorCodes(vendor: string, dir: string = MAPPINGS_DIR): VendorCodes {
  if (!/^[a-z0-9-]+$/.test(vendor)) fail(`vendors/${vendor}.csv`, 'a vendor name is lower-case letters, digits and dashes');
  const file = `vendors/${vendor}.csv`;
  const byCode = new Map<string, VendorCode>();
  for (const row of readTable(dir, file, VENDOR_HEADER)) {
    const [code, kind, unit, cfText, refid, statesText, description] = row.fields as [
      string, string, string, string, string, string, string,
    ];
    const at = `${file} line ${row.line}`;
    if (code === '') fail(at, 'vendor_code is empty');
    if (byCode.has(code)) fail(at, `vendor_code ${code} appears twice`);
    if (!VENDOR_KINDS.includes(kind as VendorCodeKind)) fail(at, `kind "${kind}" is not one of ${VENDOR_KINDS.join(', ')}`);
    let mdc: VendorCode['mdc'] = null;
    if (cfText !== '' || refid !== '') {
      if (!/^\d+$/.test(cfText) || Number(cfText) <= 65535) fail(at, `mdc_cf "${cfText}" is not a context-free MDC code`);
      if (!REFID.test(refid)) fail(at, `mdc_refid "${refid}" is not an MDC reference id`);
      mdc = Object.freeze({ cf: Number(cfText), refid });
    }
    const states = new Map<string, string>();
    for (const pair of splitList(statesText)) {
      const eq = pair.indexOf('=');
      if (eq <= 0 || eq === pair.length - 1) fail(at, `states entry "${pair}" is not value=text`);
      states.set(pair.slice(0, eq), pair.slice(eq + 1));
    }
    byCode.set(code, Object.freeze({ code, kind: kind as VendorCodeKind, unit, mdc, states, description }));
  }
  return Object.freeze({ vendor, byCode });
}
