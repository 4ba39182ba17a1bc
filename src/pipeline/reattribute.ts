import type Database from 'better-sqlite3';
import { logTime, type Logger } from '../log.js';
import type { PatientId } from '../model/measurement.js';
import type { Attribution, AttributionChange, DeviceRecord } from '../registry/types.js';

const SCHEMA = `
-- Re-attribution work: a binding changed for past time, so the stored readings of that device
-- and interval must be given to the patient bound now, and what was charted corrected. Durable,
-- so a restart finishes what a crash interrupted. after_id is the progress (store id order).
CREATE TABLE IF NOT EXISTS reattribution_jobs (
  id INTEGER PRIMARY KEY,
  device TEXT NOT NULL,
  from_time INTEGER NOT NULL,
  to_time INTEGER NOT NULL,
  reason TEXT NOT NULL,
  after_id INTEGER NOT NULL DEFAULT 0,
  changed_devices TEXT NOT NULL DEFAULT '[]',
  created INTEGER NOT NULL
);
`;

/** What the re-attribution needs of the store (SqliteStore). */
export interface ReattributeStore {
  database(): Database.Database;
  /** Resolves once every reading submitted so far is committed (or failed). */
  settled(): Promise<void>;
  /** Runs a write when it need not wait for the store's write lock. */
  exclusive<T>(fn: () => T): Promise<T>;
  reattribute(
    devices: readonly string[],
    from: number,
    to: number,
    resolve: (time: number) => { readonly patient: PatientId | null; readonly location: string | null | undefined },
    afterId: number,
    limit: number,
  ): { changed: number; changedDevices: string[]; lastId: number; done: boolean };
}

export interface ReattributeDeps {
  readonly store: ReattributeStore;
  readonly devices: { get(idOrEui64: string): DeviceRecord | null };
  readonly bindings: { attribution(deviceId: string, time: number): Attribution };
  /** The charting service, when charting is on: told which readings changed patient. */
  readonly charting: () => { reattributed(change: AttributionChange): void } | null;
  readonly log: Logger;
}

interface JobRow {
  id: number;
  device: string;
  from_time: number;
  to_time: number;
  reason: string;
  after_id: number;
  changed_devices: string;
}

/** Readings re-attributed per transaction: bounds how long one slice holds the event loop. */
const SLICE = 2000;

/**
 * Applies `AttributionChange`s to what is already stored: every reading of the device in the
 * interval gets the patient bound at its time now (or none), then the charting service is told,
 * so it voids (entered-in-error) and re-issues what the EPJ already has. Work runs in slices
 * between other events; progress and the end (the charting job) commit with the readings they
 * describe, so a crash repeats nothing and loses nothing.
 *
 * A reading that is bound to nobody after the change has no patient: the PID its message may
 * have carried is not kept apart from the attribution, so it is not restored.
 */
export class Reattributor {
  private readonly db: Database.Database;
  private readonly s;
  private running = false;
  /** Work was asked for since the loop last looked. */
  private kicked = false;
  private stopped = true;
  private current: Promise<void> | null = null;
  private done = 0;

  constructor(private readonly deps: ReattributeDeps) {
    this.db = deps.store.database();
    this.db.exec(SCHEMA);
    this.s = {
      insert: this.db.prepare('INSERT INTO reattribution_jobs (device, from_time, to_time, reason, created) VALUES (?, ?, ?, ?, ?)'),
      next: this.db.prepare('SELECT * FROM reattribution_jobs ORDER BY id LIMIT 1'),
      progress: this.db.prepare('UPDATE reattribution_jobs SET after_id = ?, changed_devices = ? WHERE id = ?'),
      remove: this.db.prepare('DELETE FROM reattribution_jobs WHERE id = ?'),
      count: this.db.prepare('SELECT count(*) FROM reattribution_jobs').pluck(),
    };
  }

  /** Resumes jobs a previous run left. */
  start(): void {
    this.stopped = false;
    this.kick();
  }

  /** Finishes the slice in progress; the rest waits for the next start. */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.current;
  }

  /** Records a change (durable) and runs it soon. Listener of `Bindings.onAttributionChange`. */
  enqueue(change: AttributionChange): void {
    // Open ends (±Infinity) as the widest integers SQLite compares exactly.
    const from = Math.max(change.from, Number.MIN_SAFE_INTEGER);
    const to = Math.min(change.to, Number.MAX_SAFE_INTEGER);
    this.s.insert.run(change.device, from, to, change.reason, Date.now());
    this.kick();
  }

  /** Jobs waiting or in progress, and jobs finished since start. */
  status(): { pending: number; done: number } {
    return { pending: this.s.count.get() as number, done: this.done };
  }

  /** Runs every pending job to the end now (tests). */
  async drain(): Promise<void> {
    while (await this.nextSlice()) await new Promise<void>((resolve) => setImmediate(resolve));
  }

  private kick(): void {
    this.kicked = true;
    if (this.running || this.stopped) return;
    this.running = true;
    this.current = (async () => {
      try {
        // A job enqueued while the loop was finishing is not missed: it kicked again.
        while (this.kicked && !this.stopped) {
          this.kicked = false;
          while (!this.stopped && (await this.nextSlice())) await new Promise<void>((resolve) => setImmediate(resolve));
        }
      } catch (err) {
        this.deps.log.error({ err }, 're-attribution failed; retried at the next change or start');
      } finally {
        this.running = false;
      }
    })();
  }

  /**
   * One slice of the oldest job, once the readings accepted so far are committed: a job must
   * see those accepted before its change, or they would keep the attribution it corrected.
   */
  private async nextSlice(): Promise<boolean> {
    if (this.s.next.get() === undefined) return false;
    // Asked after the job exists: covers every reading submitted before its change.
    await this.deps.store.settled();
    return this.deps.store.exclusive(() => this.step());
  }

  /** One slice of the oldest job. @returns whether there may be more work. */
  private step(): boolean {
    const job = this.s.next.get() as JobRow | undefined;
    if (job === undefined) return false;
    const { devices, bindings, store } = this.deps;
    const record = devices.get(job.device);
    const registryId = record?.id ?? job.device;
    // Readings carry the id the device sent: its registered id, or its EUI-64 (any case).
    const ids = [...new Set([job.device, registryId, ...(record?.eui64 ? [record.eui64, record.eui64.toLowerCase()] : [])])];
    const resolve = (time: number) => {
      const a = bindings.attribution(registryId, time);
      return a.bed !== null || a.patient !== null ? { patient: a.patient, location: a.bed ?? undefined } : { patient: null, location: undefined };
    };
    this.db.transaction(() => {
      const r = store.reattribute(ids, job.from_time, job.to_time, resolve, job.after_id, SLICE);
      const changed = new Set<string>([...(JSON.parse(job.changed_devices) as string[]), ...r.changedDevices]);
      if (!r.done) {
        this.s.progress.run(r.lastId, JSON.stringify([...changed]), job.id);
        return;
      }
      const charting = this.deps.charting();
      if (charting !== null) {
        for (const device of changed) charting.reattributed({ device, from: job.from_time, to: job.to_time, reason: job.reason });
      }
      this.s.remove.run(job.id);
      this.done++;
      this.deps.log.info(
        { device: job.device, from: logTime(job.from_time), to: logTime(job.to_time), reason: job.reason, changedDevices: changed.size },
        'readings re-attributed',
      );
    })();
    return true;
  }
}
