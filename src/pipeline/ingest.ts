import type { DriverContext, IngestBatch } from '../driver.js';
import type { Logger } from '../log.js';
import type { Measurement } from '../model/measurement.js';
import type { CommitResult, Store } from '../store/store.js';
import type { Attributor } from './attribute.js';
import type { Normalizer } from './normalize.js';

/** What one committed batch says about one device (for device health). */
export interface DeviceBatchStats {
  readonly received: number;
  /** Newest reading time of the device in the batch (its clock-offset sample), or null. */
  readonly newestReadingTime: number | null;
  readonly readings: number;
  /** Parts of the batch refused as dead letters. */
  readonly rejects: number;
  readonly source: string;
}

/** The registry's part of the path: attribution before the commit, bookkeeping after it. */
export interface IngestRegistry {
  readonly attributor: Attributor;
  /** Records a device the registry did not know (it shows as `unregistered`). Must not throw. */
  noteUnregistered(deviceId: string, source: string, at: number): void;
  /** Device health: called once per device of every committed batch. Must not throw. */
  noteBatch(deviceId: string, stats: DeviceBatchStats): void;
}

/**
 * The path every driver's input takes: normalize and attribute (one pass) → commit → registry
 * bookkeeping. One instance serves all drivers, so their commits share the store's group commit.
 */
export class Ingest {
  private observations = 0;
  private deadLetters = 0;
  private duplicates = 0;

  constructor(
    private readonly normalizer: Normalizer,
    private readonly store: Store,
    private readonly registry: IngestRegistry | null = null,
  ) {}

  async submit(batch: IngestBatch): Promise<CommitResult> {
    const registry = this.registry;
    const attribution = registry === null ? undefined : registry.attributor.forBatch(batch.received);
    const { observations, rejects } = this.normalizer.normalizeBatch(batch.measurements, batch.message?.controlId ?? null, attribution);
    const deadLetters = rejects.length === 0 ? batch.rejects : [...batch.rejects, ...rejects];
    const result = await this.store.commit({
      received: batch.received,
      source: batch.source,
      message: batch.message,
      observations,
      deadLetters,
    });
    this.observations += result.stored;
    this.deadLetters += result.deadLetters;
    if (result.duplicate) this.duplicates++;
    if (registry !== null && attribution !== undefined) {
      for (const id of attribution.unknownDevices) registry.noteUnregistered(id, batch.source, batch.received);
      if (!result.duplicate) noteDevices(registry, batch, deadLetters.length);
    }
    return result;
  }

  /** A context for one driver. */
  contextFor(log: Logger, timezone: string): DriverContext {
    return { log, timezone, submit: (batch) => this.submit(batch) };
  }

  counters(): { observations: number; deadLetters: number; duplicates: number } {
    return { observations: this.observations, deadLetters: this.deadLetters, duplicates: this.duplicates };
  }
}

/** One `noteBatch` per device of the batch; its dead letters count against its first device. */
function noteDevices(registry: IngestRegistry, batch: IngestBatch, rejects: number): void {
  const ms = batch.measurements;
  if (ms.length === 0) return;
  const first = ms[0]!.deviceId;
  if (ms.every((m) => m.deviceId === first)) {
    registry.noteBatch(first, stats(batch, ms, first, rejects));
    return;
  }
  const ids = [...new Set(ms.map((m) => m.deviceId))];
  for (const id of ids) registry.noteBatch(id, stats(batch, ms, id, id === first ? rejects : 0));
}

function stats(batch: IngestBatch, ms: readonly Measurement[], deviceId: string, rejects: number): DeviceBatchStats {
  let readings = 0;
  let newest = Number.NEGATIVE_INFINITY;
  for (const m of ms) {
    if (m.deviceId !== deviceId) continue;
    readings++;
    if (m.time > newest) newest = m.time;
  }
  return { received: batch.received, newestReadingTime: Number.isFinite(newest) ? newest : null, readings, rejects, source: batch.source };
}
