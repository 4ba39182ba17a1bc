import type { DriverContext, IngestBatch } from '../driver.js';
import type { Logger } from '../log.js';
import type { CommitResult, Store } from '../store/store.js';
import type { Normalizer } from './normalize.js';

/**
 * The path every driver's input takes: normalize → commit. One instance serves all drivers,
 * so their commits share the store's group commit.
 */
export class Ingest {
  private observations = 0;
  private deadLetters = 0;
  private duplicates = 0;

  constructor(
    private readonly normalizer: Normalizer,
    private readonly store: Store,
  ) {}

  async submit(batch: IngestBatch): Promise<CommitResult> {
    const { observations, rejects } = this.normalizer.normalizeBatch(batch.measurements, batch.message?.controlId ?? null);
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
