/**
 * The charting policy: which readings go into the patient chart, grouped how, how often. Pure:
 * a decision depends only on the reading and the settings. The store always keeps everything;
 * this only decides what the EPJ sees.
 *
 * A charted reading belongs to a *series* (one device channel's metric for one patient; the
 * parts of a blood-pressure measurement share one series) and to an *interval* of its series
 * (`intervalSeconds`, per location). The outbox keeps one chart entry per series and interval,
 * and picks the reading that represents the interval (`latest` or `median`).
 */
import { Quality, type PatientId } from '../../model/measurement.js';
import type { Observation } from '../../model/observation.js';
import type { ChartingSettings } from './config.js';
import { chartRole, type BpPart, type ChartRole } from './observation.js';

/**
 * Quality flags that keep a reading out of the chart (it stays in the store):
 * DEMO (never chart test data), INVALID (the device said so), IMPLAUSIBLE (outside the
 * plausibility range), UNIT_MISMATCH (not in the metric's UCUM unit: would be refused by the
 * profile), PATIENT_MISMATCH (PID disagrees with the bed's patient: charting it could put a
 * value into the wrong patient's record; `charting.patientMismatch: chart` lifts this one),
 * UNREGISTERED (no approved registry device: nobody vouches for its binding), CLOCK_DRIFT (the
 * device clock is off, so the patient bound "at the reading's time" may be the wrong one).
 */
export const NOT_CHARTED_FLAGS =
  Quality.DEMO |
  Quality.INVALID |
  Quality.IMPLAUSIBLE |
  Quality.UNIT_MISMATCH |
  Quality.PATIENT_MISMATCH |
  Quality.UNREGISTERED |
  Quality.CLOCK_DRIFT;

/** Which reading represents an interval. */
export const ValueChoice = { LATEST: 'latest', MEDIAN: 'median' } as const;
export type ValueChoice = (typeof ValueChoice)[keyof typeof ValueChoice];

/** The policy's answer for one reading. */
export type ChartDecision =
  | { readonly chart: false; readonly reason: string }
  | {
      readonly chart: true;
      readonly role: ChartRole;
      /** `single` entry, or a part of a `bp` panel. */
      readonly kind: 'single' | 'bp';
      readonly part: BpPart | null;
      /** Identifies the series: device, channel/containment, chart code, patient pseudonym. */
      readonly series: string;
      /** Interval start (epoch ms); the reading time itself when the interval is 0. */
      readonly bucketStart: number;
      /** Interval end (exclusive, epoch ms); equals `bucketStart` when the interval is 0. */
      readonly bucketEnd: number;
      readonly value: ValueChoice;
      /** No patient: wait for a binding (`unbound: hold`). */
      readonly hold: boolean;
      /** The value a `median` interval ranks readings by (BP: the part's own value). */
      readonly rank: number;
    };

/** Patients whose pseudonym is kept in memory (memory only, never written anywhere). */
const PSEUDONYM_CACHE_MAX = 10_000;

interface CompiledRule {
  readonly pattern: RegExp;
  readonly intervalMs: number | undefined;
  readonly value: ValueChoice | undefined;
}

/** `ICU/*` → /^ICU\/.*$/: `*` is any run of characters, everything else literal. */
function globToRegExp(glob: string): RegExp {
  const escaped = glob.split('*').map((s) => s.replace(/[.+?^${}()|[\]\\/]/g, '\\$&'));
  return new RegExp(`^${escaped.join('.*')}$`);
}

/** A compiled charting policy. Construct once per configuration. */
export class ChartingPolicy {
  private readonly listed: ReadonlySet<string>;
  private readonly excluded: ReadonlySet<string>;
  private readonly rules: readonly CompiledRule[];
  private readonly intervalMs: number;
  private readonly excludedFlags: number;

  /** Pseudonyms by `system|value` (an HMAC per reading would cost more than the rest of the decision). */
  private readonly pseudonyms = new Map<string, string>();

  /**
   * @param pseudonym Maps a patient to a stable pseudonym: the series key must separate
   *   patients without carrying their CPR number.
   */
  constructor(
    private readonly settings: ChartingSettings,
    private readonly pseudonym: (patient: PatientId) => string,
  ) {
    this.listed = new Set(settings.metrics);
    this.excluded = new Set(settings.exclude);
    this.intervalMs = settings.intervalSeconds * 1000;
    this.excludedFlags = settings.patientMismatch === 'chart' ? NOT_CHARTED_FLAGS & ~Quality.PATIENT_MISMATCH : NOT_CHARTED_FLAGS;
    this.rules = settings.locations.map((r) => ({
      pattern: globToRegExp(r.match),
      intervalMs: r.intervalSeconds === undefined ? undefined : r.intervalSeconds * 1000,
      value: r.value,
    }));
  }

  /** Interval (ms) and value choice for a location: the first matching rule, else the defaults. */
  ruleFor(location: string | null): { intervalMs: number; value: ValueChoice } {
    const where = location ?? '';
    for (const rule of this.rules) {
      if (rule.pattern.test(where)) {
        return { intervalMs: rule.intervalMs ?? this.intervalMs, value: rule.value ?? this.settings.value };
      }
    }
    return { intervalMs: this.intervalMs, value: this.settings.value };
  }

  /** Whether the metric of `o` is charted at all (before quality and patient checks). */
  private selects(o: Observation, role: ChartRole): boolean {
    const names = [o.metric, o.code === null ? '' : String(o.code)];
    if (role.kind === 'bp') names.push(role.panelRefid, String(role.panelCode));
    if (names.some((n) => n !== '' && this.excluded.has(n))) return false;
    if (role.kind !== 'plain' && this.settings.vitalSigns) return true;
    return names.some((n) => n !== '' && this.listed.has(n));
  }

  private pseudonymOf(patient: PatientId): string {
    const key = `${patient.system}|${patient.value}`;
    let p = this.pseudonyms.get(key);
    if (p === undefined) {
      // Bounded: a few thousand patients are in beds at once; past the bound, start over.
      if (this.pseudonyms.size >= PSEUDONYM_CACHE_MAX) this.pseudonyms.clear();
      p = this.pseudonym(patient);
      this.pseudonyms.set(key, p);
    }
    return p;
  }

  /** Decides for one reading. Reasons name the metric and rule, never patient data. */
  decide(o: Observation): ChartDecision {
    const role = chartRole(o);
    if (!this.selects(o, role)) return { chart: false, reason: `${o.metric} is not in the charting policy` };
    if (o.code === null) return { chart: false, reason: `${o.metric} has no MDC code` };
    if (o.flags & this.excludedFlags) return { chart: false, reason: 'quality flags exclude it from the chart' };
    if (!Number.isFinite(o.value)) return { chart: false, reason: 'no numeric value' };
    let patientKey = '';
    let hold = false;
    if (o.patient === null) {
      if (this.settings.unbound === 'store') return { chart: false, reason: 'no patient (charting.unbound: store)' };
      hold = true;
    } else {
      patientKey = this.pseudonymOf(o.patient);
    }
    const { intervalMs, value } = this.ruleFor(o.location);
    const bucketStart = intervalMs === 0 ? o.time : Math.floor(o.time / intervalMs) * intervalMs;
    const bucketEnd = intervalMs === 0 ? o.time : bucketStart + intervalMs;
    if (role.kind === 'bp') {
      // The parts of one measurement share a series: same device, same channel (containment
      // without its metric level), same panel code.
      const channel = o.containment.includes('.') ? o.containment.slice(0, o.containment.lastIndexOf('.')) : o.containment;
      return {
        chart: true,
        role,
        kind: 'bp',
        part: role.part,
        series: `${o.deviceId}|${channel}|${role.panelCode}|${patientKey}`,
        bucketStart,
        bucketEnd,
        value,
        hold,
        rank: o.value,
      };
    }
    return {
      chart: true,
      role,
      kind: 'single',
      part: null,
      series: `${o.deviceId}|${o.containment}|${o.code}|${patientKey}`,
      bucketStart,
      bucketEnd,
      value,
      hold,
      rank: o.value,
    };
  }
}
