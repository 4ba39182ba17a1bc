import type { MessageIdentity } from '../driver.js';
import type { DeadLetter, DeadLetterInput } from '../model/dead-letter.js';
import type { PatientId } from '../model/measurement.js';
import type { Observation } from '../model/observation.js';

/**
 * What one piece of input became, committed atomically: its Observations, its dead letters,
 * and (for messages with an id, such as HL7 MSH-10) the record that makes a retransmit a no-op.
 */
export interface CommitUnit {
  /** Arrival time, epoch ms. */
  readonly received: number;
  /** Where it came from: `mllp 10.1.2.3:5123`, `serial /dev/ttyUSB0`. */
  readonly source: string;
  /** The message identity for duplicate detection, or null when the input has none. */
  readonly message: MessageIdentity | null;
  readonly observations: readonly Observation[];
  readonly deadLetters: readonly DeadLetterInput[];
}

export interface CommitResult {
  readonly stored: number;
  readonly deadLetters: number;
  /** The message was committed before (a retransmit); nothing was stored this time. */
  readonly duplicate: boolean;
  /** For a duplicate: how many readings the first copy stored. */
  readonly previouslyStored: number;
}

export interface ObservationQuery {
  readonly device?: string;
  /** MDC reference id (`MDC_ECG_HEART_RATE`) or numeric MDC code (`147842`). */
  readonly metric?: string;
  /** Epoch ms, inclusive. */
  readonly since?: number;
  /** Epoch ms, exclusive. */
  readonly until?: number;
  readonly limit: number;
  readonly order?: 'asc' | 'desc';
}

export interface DeadLetterQuery {
  readonly since?: number;
  readonly code?: string;
  readonly limit: number;
}

export interface StoredObservation {
  readonly id: number;
  readonly received: number;
  readonly observation: Observation;
}

/**
 * The embedded store: the commit point of the gateway. `commit` resolves only after the unit
 * is durable; it rejects with MDI_ERR_STORE_FAILED when nothing of it was stored.
 */
export interface Store {
  commit(unit: CommitUnit): Promise<CommitResult>;
  queryObservations(query: ObservationQuery): StoredObservation[];
  listDeadLetters(query: DeadLetterQuery): DeadLetter[];
  deadLetterRaw(id: number): Buffer | null;
  counts(): { observations: number; deadLetters: number };
  observationsAfter(afterId: number, limit: number): StoredObservation[];
  cursor(name: string): number;
  setCursor(name: string, position: number): void;
  /** Runs `fn` (a write of this thread's own) when it cannot wait for the store's write lock. */
  exclusive<T>(fn: () => T): Promise<T>;
  pseudonym(patient: PatientId): string;
  close(): Promise<void>;
}
