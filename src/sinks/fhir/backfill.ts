/**
 * Readings a binding correction made chartable that no chart entry ever took: they had no
 * patient (`charting.unbound: store` keeps such readings out of the outbox). Readings the policy
 * still refuses stay out (PATIENT_MISMATCH is kept by the re-attribution). Pure: groups them into
 * the chart entries the outbox would have made (series × interval, `latest` or `median`).
 */
import type { StoredObservation } from '../../store/store.js';
import type { ChartingPolicy } from './charting.js';
import { chartRole, type ChartItem, type ChartReading } from './observation.js';

/** One chart entry to add: its series and interval, and the readings that represent it. */
export interface FillEntry {
  readonly series: string;
  readonly bucket: number;
  readonly bucketEnd: number;
  readonly choice: string;
  readonly item: ChartItem;
}

/** The key a chart entry is found by: series (device channel, code, patient pseudonym) and interval. */
export function entryKey(series: string, bucket: number): string {
  return `${series}\u0000${bucket}`;
}

interface Group {
  series: string;
  bucket: number;
  bucketEnd: number;
  choice: string;
  kind: ChartItem['kind'];
  /** Reading time → part (`value`, `sys`, …) → reading; a later store id replaces (a resend). */
  times: Map<number, Map<string, { reading: ChartReading; rank: number }>>;
}

/**
 * The chart entries `readings` make under `policy`, leaving out readings the policy does not
 * chart or that have no patient, and entries whose key is in `covered`.
 */
export function fillEntries(readings: readonly StoredObservation[], policy: ChartingPolicy, covered: ReadonlySet<string>): FillEntry[] {
  const groups = new Map<string, Group>();
  for (const stored of readings) {
    const o = stored.observation;
    if (o.patient === null) continue;
    const d = policy.decide(o);
    if (!d.chart) continue;
    const key = entryKey(d.series, d.bucketStart);
    if (covered.has(key)) continue;
    let g = groups.get(key);
    if (g === undefined) {
      g = { series: d.series, bucket: d.bucketStart, bucketEnd: d.bucketEnd, choice: d.value, kind: d.kind, times: new Map() };
      groups.set(key, g);
    }
    const parts = g.times.get(o.time) ?? new Map<string, { reading: ChartReading; rank: number }>();
    const part = d.part ?? 'value';
    const prior = parts.get(part);
    if (prior === undefined || prior.reading.id < stored.id) parts.set(part, { reading: { id: stored.id, observation: o }, rank: d.rank });
    g.times.set(o.time, parts);
  }
  const out: FillEntry[] = [];
  for (const g of groups.values()) {
    const candidates = [...g.times.entries()].map(([time, parts]) => ({
      time,
      parts: [...parts.values()],
      // A BP measurement ranks by its systolic value (else whichever part it has), as the outbox does.
      rank: (parts.get('sys') ?? parts.get('value') ?? [...parts.values()][0]!).rank,
    }));
    let chosen;
    if (g.choice === 'median') {
      candidates.sort((a, b) => a.rank - b.rank || a.time - b.time);
      chosen = candidates[(candidates.length - 1) >> 1]!;
    } else {
      chosen = candidates.reduce((a, b) => (b.time > a.time ? b : a));
    }
    const readingsOfChoice = chosen.parts.map((p) => p.reading).sort((a, b) => partOrder(a) - partOrder(b));
    out.push({ series: g.series, bucket: g.bucket, bucketEnd: g.bucketEnd, choice: g.choice, item: { kind: g.kind, readings: readingsOfChoice } });
  }
  return out;
}

/** Stable order of BP parts in a payload (systolic, diastolic, mean). */
function partOrder(r: ChartReading): number {
  const role = chartRole(r.observation);
  if (role.kind !== 'bp') return 0;
  return role.part === 'sys' ? 0 : role.part === 'dia' ? 1 : 2;
}
