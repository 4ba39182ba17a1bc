/**
 * Charting into the EPJ over FHIR R4: the store → outbox → EPJ loop.
 *
 * ```ts
 * const charting = createFhirForwarder({ settings: config.fhir, baseUrl, store, log });
 * await charting.start();        // resumes whatever a previous run left in the outbox
 * charting.status();             // depth, oldest age, delivered/s, last error, EPJ reachable
 * charting.deliveryState(42);    // what became of stored reading 42
 * charting.reattributed({ device, from, to, reason }); // a corrected binding: void + re-issue
 * await charting.stop();         // in-flight requests are aborted and their entries re-queued
 * ```
 *
 * One pass of the loop (every `outbox.pollMs`, at once while there is a backlog): read new
 * readings from the store into the outbox (charting policy), close the intervals that are over,
 * then claim due entries and send them, up to `concurrency` Bundles in flight. A failure that
 * concerns the EPJ as a whole (down, 5xx, 429, auth) pauses all sending with exponential
 * backoff (or the EPJ's `Retry-After`) and drops to one Bundle in flight until one succeeds.
 */
import { logTime, type Logger } from '../../log.js';
import type { AttributionChange } from '../../registry/types.js';
import { ChartingPolicy } from './charting.js';
import type { FhirSettings } from './config.js';
import { createAuthProvider } from './auth.js';
import { Corrections, type CorrectionCounts, type CorrectionReport, type VoidEntry } from './corrections.js';
import { FhirErrorCode } from './errors.js';
import { FhirForwarder, type DeliveryFailure, type SubjectMode } from './forwarder.js';
import { HttpClient } from './http.js';
import {
  NO_BINDINGS,
  Outbox,
  type BindingLookup,
  type ClaimedEntry,
  type DeliveryState,
  type EntryResult,
  type OutboxEntryView,
  type OutboxState,
  type OutboxStore,
} from './outbox.js';
import { backoffDelay } from './retry.js';
import { VoidSender } from './voids.js';

export { FhirSettings } from './config.js';
export { FhirErrorCode } from './errors.js';
export { OutboxAction, OutboxState, NO_BINDINGS, OUTBOX_CURSOR } from './outbox.js';
export type { CorrectionCounts } from './corrections.js';
export type { BindingLookup, DeliveryState, OutboxEntryView, OutboxStore } from './outbox.js';
export type { SubjectMode } from './forwarder.js';

export interface FhirForwarderOptions {
  /** The parsed `fhir` settings. */
  readonly settings: FhirSettings;
  /** The EPJ base URL in use: `settings.baseUrl`, or the embedded stand-in's. */
  readonly baseUrl: string;
  /** The store the outbox feeds from and keeps its tables in. */
  readonly store: OutboxStore;
  readonly log: Logger;
  /** Device→patient bindings for `charting.unbound: hold` (the registry, when there is one). */
  readonly bindings?: BindingLookup;
  /**
   * The EPJ forgets everything when it restarts (the in-memory stand-in): Devices remembered
   * from an earlier run are created again.
   */
  readonly ephemeralEpj?: boolean;
  /** Overrides `settings.subject` (the gateway passes `create` for the stand-in). */
  readonly subject?: SubjectMode;
  /** Clock (epoch ms); tests pass a fake one. */
  readonly clock?: () => number;
}

/** What `GET /api/outbox` shows. No patient data. */
export interface OutboxStatus {
  readonly epj: {
    readonly baseUrl: string;
    /** null until the first attempt; false after a network failure; true once anything answered. */
    readonly reachable: boolean | null;
    /** Last time the EPJ answered anything (ISO 8601). */
    readonly lastContact: string | null;
    /** Sending is paused until then (backoff or Retry-After), ISO 8601. */
    readonly pausedUntil: string | null;
    readonly consecutiveFailures: number;
  };
  /** Entries waiting for the EPJ (queued + sending). */
  readonly depth: number;
  readonly states: { readonly open: number; readonly held: number; readonly queued: number; readonly sending: number; readonly rejected: number; readonly skipped: number };
  /** Age of the oldest entry waiting for the EPJ, ms; null when none waits. */
  readonly oldestAgeMs: number | null;
  /** Confirmed entries per second over the last minute. */
  readonly deliveredPerSecond: number;
  readonly confirmedSinceStart: number;
  /** Readings that arrived after their interval had closed (stored, not charted). */
  readonly lateReadings: number;
  /** Repeats of an already charted reading (monitors resend the last NIBP in every message). */
  readonly repeatedReadings: number;
  readonly lastError: { readonly at: string; readonly code: string; readonly message: string; readonly status: number | null } | null;
  /** Binding corrections: jobs pending, voids waiting, voided and re-issued since start. */
  readonly corrections: CorrectionCounts;
}

/** The charting service: the outbox and its sender. */
export interface FhirCharting {
  /** Recovers entries a crash left `sending` and starts the loop. Idempotent. */
  start(): Promise<void>;
  /** Stops the loop; aborts requests in flight and puts their entries back. Idempotent. */
  stop(): Promise<void>;
  status(): OutboxStatus;
  /** What became of one stored reading (by store id). */
  deliveryState(observationId: number): DeliveryState;
  /** Outbox entries, newest first, optionally of one state (dead letters: `rejected`). */
  entries(state: OutboxState | undefined, limit: number): OutboxEntryView[];
  /** One outbox entry. */
  entry(id: number): OutboxEntryView | null;
  /** Runs a pass now instead of at the next poll (tests, benches). */
  poke(): void;
  /**
   * The store's readings of `change.device` in [from, to) were re-attributed (a corrected
   * binding): what was charted for them follows — voided (entered-in-error) in the EPJ and
   * re-issued for the patient the store names now, or re-attributed before it is sent.
   * Call it after the store update has committed. Durable when it returns (a job in the
   * outbox DB); the work runs in the charting loop, also across restarts and EPJ outages.
   * Safe inside the caller's transaction on the store's database (it only inserts a row).
   */
  reattributed(change: AttributionChange): void;
}

/** A claimed batch: creates (conditional creates of Observations) or voids (entered-in-error). */
type Claimed = { readonly action: 'create'; readonly batch: ClaimedEntry[] } | { readonly action: 'void'; readonly batch: VoidEntry[] };

/** One-second slots of confirmations for delivered/s (a minute of history). */
const RATE_SLOTS = 60;
/** Housekeeping (expiry, pruning, re-count) runs this often, ms. */
const MAINTAIN_EVERY_MS = 30_000;
/** Longest wait for the start probe before sending anyway (an EPJ slow to answer metadata), ms. */
const PROBE_GATE_MS = 5_000;
/** How long `stop()` waits for aborted requests to come back before giving up on them, ms. */
const STOP_WAIT_MS = 5_000;

/**
 * Creates the charting service. Reads key/CA files and builds the HTTP client now; starts
 * nothing until `start()`.
 * @throws {Error} when a configured file (CA, key, token) cannot be read or a key cannot sign.
 */
export function createFhirForwarder(options: FhirForwarderOptions): FhirCharting {
  return new Charting(options);
}

class Charting implements FhirCharting {
  private readonly s: FhirSettings;
  private readonly clock: () => number;
  private readonly log: Logger;
  private readonly outbox: Outbox;
  private readonly http: HttpClient;
  private readonly forwarder: FhirForwarder;
  private readonly corrections: Corrections;
  private readonly voids: VoidSender;
  private readonly bindings: BindingLookup;
  private readonly baseUrl: string;
  private timer: NodeJS.Timeout | null = null;
  private maintainTimer: NodeJS.Timeout | null = null;
  private started = false;
  private stopping = false;
  private inflight = new Set<Promise<void>>();
  private inflightEntries = new Map<number, ClaimedEntry>();
  private abort = new AbortController();
  private pausedUntil = 0;
  private failures = 0;
  private reachable: boolean | null = null;
  private lastContact: number | null = null;
  private lastError: OutboxStatus['lastError'] = null;
  private readonly rate = new Array<number>(RATE_SLOTS).fill(0);
  private rateSecond = 0;
  private readonly startedAt: number;
  private passQueued = false;
  /** When a failing correction job was last logged (errors repeat every pass). */
  private correctionErrorLogged = 0;
  private probing = false;

  constructor(private readonly options: FhirForwarderOptions) {
    this.s = options.settings;
    this.clock = options.clock ?? Date.now;
    this.log = options.log.child({ component: 'fhir' });
    this.baseUrl = options.baseUrl.replace(/\/+$/, '');
    this.bindings = options.bindings ?? NO_BINDINGS;
    const policy = new ChartingPolicy(this.s.charting, (p) => options.store.pseudonym(p));
    this.outbox = new Outbox(options.store, policy, {
      identifierNamespace: this.s.identifierNamespace,
      closeDelayMs: this.s.charting.closeDelaySeconds * 1000,
      holdMs: this.s.charting.holdMinutes * 60_000,
      feedBatch: this.s.outbox.feedBatch,
      maxRows: this.s.outbox.maxRows,
    });
    this.http = new HttpClient({
      ...(this.s.caFile !== undefined ? { caFile: this.s.caFile } : {}),
      connectTimeoutMs: this.s.timeouts.connectMs,
      requestTimeoutMs: this.s.timeouts.requestMs,
      maxSockets: this.s.concurrency + 1,
    });
    // One token for creates and voids.
    const auth = createAuthProvider(this.s.auth, this.http, this.clock);
    this.forwarder = new FhirForwarder({
      baseUrl: this.baseUrl,
      http: this.http,
      auth,
      subject: options.subject ?? this.s.subject ?? 'conditional',
      identifierSystem: this.s.identifierSystem,
      identifierNamespace: this.s.identifierNamespace,
      observationStatus: this.s.observationStatus,
      deviceIdentifierSystem: this.s.deviceIdentifierSystem,
      retry: this.s.retry,
      outbox: this.outbox,
      endpoint: this.baseUrl,
      patientKey: (p) => options.store.pseudonym(p),
      clock: this.clock,
      log: this.log,
    });
    this.corrections = new Corrections(options.store, this.outbox, {
      identifierNamespace: this.s.identifierNamespace,
      unbound: this.s.charting.unbound,
      holdMs: this.s.charting.holdMinutes * 60_000,
      policy,
      keepMs: Math.min(this.s.outbox.keepConfirmedHours, this.s.outbox.keepRejectedHours) * 3_600_000,
    });
    this.voids = new VoidSender({
      baseUrl: this.baseUrl,
      http: this.http,
      auth,
      identifierSystem: this.s.identifierSystem,
      retry: this.s.retry,
      clock: this.clock,
      log: this.log,
    });
    this.startedAt = this.clock();
  }

  async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    this.stopping = false;
    this.abort = new AbortController();
    const recovered = this.outbox.recover();
    if (this.options.ephemeralEpj) this.outbox.forgetDevices(this.baseUrl);
    this.maintain();
    this.maintainTimer = setInterval(() => this.whenUnlocked(() => this.maintain()), MAINTAIN_EVERY_MS);
    this.maintainTimer.unref();
    this.log.info(
      { baseUrl: this.baseUrl, depth: this.outbox.depth(), recovered, subject: this.options.subject ?? this.s.subject ?? 'conditional' },
      'charting to the EPJ started',
    );
    this.probing = true;
    void this.probe().finally(() => {
      this.probing = false;
      this.schedule(0);
    });
    this.schedule(0);
  }

  /** One look at the EPJ at start, so `reachable` means something before the first Bundle. */
  private async probe(): Promise<void> {
    // Sending waits for the probe (its Retry-After counts), but never longer than this.
    let timer: NodeJS.Timeout | undefined;
    const gate = new Promise<null>((resolve) => (timer = setTimeout(() => resolve(null), PROBE_GATE_MS)));
    const result = await Promise.race([this.forwarder.probe(this.abort.signal), gate]);
    clearTimeout(timer);
    if (result === null) return;
    if (!this.started || this.reachable !== null) return; // a delivery already told us more
    this.reachable = result.reached;
    if (result.reached) this.lastContact = this.clock();
    // A throttled probe: the EPJ's Retry-After holds for the first Bundle too.
    if (result.retryAfterMs !== undefined) this.pausedUntil = Math.max(this.pausedUntil, this.clock() + result.retryAfterMs);
    if (!result.reached) {
      this.log.warn({ baseUrl: this.baseUrl, error: result.error }, 'EPJ not reachable at start; readings wait in the outbox');
    } else if (result.fhirVersion !== undefined && !result.fhirVersion.startsWith('4.0')) {
      // The resources are R4 (4.0.1); an R4B/R5 server may refuse or misread them.
      this.log.warn({ baseUrl: this.baseUrl, fhirVersion: result.fhirVersion }, 'the EPJ is not a FHIR R4 server');
    } else if (result.status !== undefined && result.status >= 400) {
      this.log.warn({ baseUrl: this.baseUrl, status: result.status }, 'the EPJ answered GET metadata with an error');
    }
  }

  async stop(): Promise<void> {
    if (!this.started) return;
    this.started = false;
    this.stopping = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.maintainTimer) clearInterval(this.maintainTimer);
    this.maintainTimer = null;
    this.abort.abort();
    // Aborted deliveries come back quickly with their entries unsettled; they are released.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.allSettled([...this.inflight]),
      new Promise<void>((resolve) => (timer = setTimeout(resolve, STOP_WAIT_MS))),
    ]);
    clearTimeout(timer);
    if (this.inflightEntries.size > 0) {
      // Still claimed: back to queued now; if we die before this, start() does the same.
      this.outbox.release([...this.inflightEntries.keys()], this.clock());
      this.inflightEntries.clear();
    }
    this.http.close();
    this.log.info({ depth: this.outbox.depth() }, 'charting to the EPJ stopped');
  }

  poke(): void {
    if (this.started) this.schedule(0);
  }

  reattributed(change: AttributionChange): void {
    const job = this.corrections.record(change, this.clock());
    if (job === null) return;
    this.log.info({ job, device: change.device, from: logTime(change.from), to: logTime(change.to) }, 'binding correction recorded for the chart');
    this.poke();
  }

  status(): OutboxStatus {
    const now = this.clock();
    const states = this.outbox.counts();
    const oldest = this.outbox.oldestPending();
    return {
      epj: {
        baseUrl: this.baseUrl,
        reachable: this.reachable,
        lastContact: this.lastContact === null ? null : new Date(this.lastContact).toISOString(),
        pausedUntil: this.pausedUntil > now ? new Date(this.pausedUntil).toISOString() : null,
        consecutiveFailures: this.failures,
      },
      depth: states.queued + states.sending,
      states,
      oldestAgeMs: oldest === null ? null : Math.max(0, now - oldest),
      deliveredPerSecond: this.deliveredPerSecond(now),
      confirmedSinceStart: this.outbox.confirmedSinceStart(),
      lateReadings: this.outbox.lateReadingCount(),
      repeatedReadings: this.outbox.repeatCount(),
      lastError: this.lastError,
      corrections: this.corrections.counts(),
    };
  }

  deliveryState(observationId: number): DeliveryState {
    return this.outbox.deliveryState(observationId);
  }

  entries(state: OutboxState | undefined, limit: number): OutboxEntryView[] {
    return this.outbox.list(state, limit);
  }

  entry(id: number): OutboxEntryView | null {
    return this.outbox.entry(id);
  }

  // ---------------------------------------------------------------------------------------------

  private schedule(ms: number): void {
    if (!this.started) return;
    if (ms <= 0) {
      // Coalesce: many completions in one turn run one pass.
      if (this.passQueued) return;
      this.passQueued = true;
      if (this.timer) clearTimeout(this.timer);
      this.timer = null;
      setImmediate(() => {
        this.passQueued = false;
        this.whenUnlocked(() => this.pass());
      });
      return;
    }
    if (this.passQueued) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      this.whenUnlocked(() => this.pass());
    }, ms);
  }

  /**
   * Runs outbox work (passes and housekeeping write the outbox tables) while the store's writer
   * thread holds no lock, so the event loop never stops to wait for it.
   */
  private whenUnlocked(work: () => void): void {
    this.options.store.exclusive(work).catch((err: unknown) => this.log.error({ err }, 'outbox work failed'));
  }

  /** One pass: feed, close, dispatch; then schedule the next. */
  private pass(): void {
    if (!this.started) return;
    const now = this.clock();
    let backlog = false;
    try {
      const fed = this.outbox.feed(now);
      backlog = !fed.caughtUp && !fed.full;
      this.outbox.close(now, this.bindings);
      // After closing (a just-closed entry is re-attributed in this pass), before sending. A
      // failing job is logged (once a minute) and tried again; sending goes on regardless.
      const reports = this.corrections.run(now, undefined, (job, err) => {
        if (now - this.correctionErrorLogged < 60_000) return;
        this.correctionErrorLogged = now;
        this.log.error({ err, job }, 'binding correction failed; retried at the next pass');
      });
      for (const report of reports) this.logCorrection(report);
      this.dispatch(now);
    } catch (err) {
      // A failing database is the store's problem to report; the outbox retries next poll.
      this.log.error({ err }, 'outbox pass failed');
      this.lastError = { at: new Date(now).toISOString(), code: FhirErrorCode.OUTBOX, message: `outbox: ${(err as Error).message}`, status: null };
    }
    const poll = this.s.outbox.pollMs;
    const untilResume = this.pausedUntil - now;
    this.schedule(backlog ? 0 : untilResume > 0 ? Math.min(poll, untilResume) : poll);
  }

  private dispatch(now: number): void {
    if (this.stopping || this.probing || now < this.pausedUntil) return;
    // While the EPJ is failing, one Bundle at a time probes it; full concurrency after a success.
    const limit = this.failures > 0 ? 1 : this.s.concurrency;
    // Voids first: a correction should not wait behind a backlog of new readings, and a
    // re-issue is only queued once its void is done.
    while (this.inflight.size < limit) {
      const voids = this.corrections.claimVoids(this.s.batchSize, now);
      if (voids.length === 0) break;
      this.track(voids, this.send({ action: 'void', batch: voids }));
    }
    while (this.inflight.size < limit) {
      const batch = this.outbox.claim(this.s.batchSize, now);
      if (batch.length === 0) return;
      this.track(batch, this.send({ action: 'create', batch }));
    }
  }

  private track(batch: readonly ClaimedEntry[], work: Promise<void>): void {
    for (const e of batch) this.inflightEntries.set(e.id, e);
    this.inflight.add(work);
    void work.finally(() => {
      this.inflight.delete(work);
      this.schedule(0);
    });
  }

  /** One line per correction job pass that did something; device and counts, no patient data. */
  private logCorrection(r: CorrectionReport): void {
    if (!r.done && r.voids + r.reattributed + r.merged + r.unbound + r.charted === 0) return; // still waiting, nothing new
    this.log.info(
      {
        job: r.job,
        device: r.device,
        from: logTime(r.from),
        to: logTime(r.to),
        reason: r.reason,
        voids: r.voids,
        reattributed: r.reattributed,
        merged: r.merged,
        unbound: r.unbound,
        charted: r.charted,
        waiting: r.waiting,
      },
      r.done ? 'binding correction applied to the chart' : 'binding correction partly applied; waiting for entries in flight',
    );
  }

  /** Delivers one claimed batch and records the outcome. Never rejects (it runs detached). */
  private async send(work: Claimed): Promise<void> {
    const batch: readonly ClaimedEntry[] = work.batch;
    try {
      await this.deliverAndSettle(work);
    } catch (err) {
      // Only our own database work can land here (deliver() never rejects). The entries stay
      // claimed in the database; put them back so they are not stuck until the next start.
      this.log.error({ err }, 'recording a delivery failed; its entries go back to the queue');
      this.lastError = { at: new Date().toISOString(), code: FhirErrorCode.OUTBOX, message: `outbox: ${(err as Error).message}`, status: null };
      try {
        this.outbox.release(
          batch.map((e) => e.id),
          this.clock(),
        );
      } catch {
        // The database is unusable; start() recovers `sending` entries on the next run.
      }
    } finally {
      for (const e of batch) this.inflightEntries.delete(e.id);
    }
  }

  private async deliverAndSettle(work: Claimed): Promise<void> {
    const report =
      work.action === 'void' ? await this.voids.deliver(work.batch, this.abort.signal) : await this.forwarder.deliver(work.batch, this.abort.signal);
    // A confirmed void queues its re-issue in the same transaction (corrections.ts). Settling
    // writes the outbox tables, so it waits until the store's writer holds no lock.
    const settle = (results: readonly EntryResult[], at: number, release: readonly number[] = []) =>
      this.options.store.exclusive(() => {
        if (work.action === 'void') this.corrections.settleVoids(results, at);
        else this.outbox.settle(results, at);
        if (release.length > 0) this.outbox.release(release, at);
      });
    const now = this.clock();
    if (report.reached) {
      this.lastContact = now;
    }
    const results: EntryResult[] = [...report.results];
    if (this.stopping) {
      await settle(
        results,
        now,
        report.unsettled.map((e) => e.id),
      );
    } else {
      if (report.failure !== null) {
        this.failures++;
        const delay = report.failure.retryAfterMs ?? backoffDelay(this.failures, this.s.retry);
        this.pausedUntil = Math.max(this.pausedUntil, now + delay);
        for (const e of report.unsettled) {
          results.push({
            id: e.id,
            kind: 'retry',
            nextAttempt: this.pausedUntil,
            code: report.failure.code,
            message: report.failure.message,
            ...(report.failure.status !== undefined ? { status: report.failure.status } : {}),
          });
        }
        this.noteError(report.failure, now);
        if (this.failures === 1 || this.failures % 10 === 0) {
          this.log.warn(
            { code: report.failure.code, status: report.failure.status, retryInMs: this.pausedUntil - now, failures: this.failures, depth: this.outbox.depth() },
            `EPJ delivery failed: ${report.failure.message}`,
          );
        }
      } else if (report.reached) {
        if (this.failures > 0) {
          this.log.info({ afterFailures: this.failures, depth: this.outbox.depth() }, 'EPJ delivery works again');
        }
        this.failures = 0;
        this.reachable = true;
      }
      await settle(results, now);
    }
    this.countDelivered(now, results.reduce((n, r) => n + (r.kind === 'confirmed' ? 1 : 0), 0));
  }

  private noteError(failure: DeliveryFailure, now: number): void {
    this.reachable = failure.reached;
    this.lastError = { at: new Date(now).toISOString(), code: failure.code, message: failure.message, status: failure.status ?? null };
  }

  private maintain(): void {
    try {
      const hour = 3_600_000;
      const { expired } = this.outbox.maintain(this.clock(), {
        maxAgeMs: this.s.outbox.maxAgeHours * hour,
        keepConfirmedMs: this.s.outbox.keepConfirmedHours * hour,
        keepRejectedMs: this.s.outbox.keepRejectedHours * hour,
      });
      if (expired > 0) this.log.warn({ expired, code: FhirErrorCode.EXPIRED }, 'chart entries expired undelivered (dead letters)');
    } catch (err) {
      this.log.error({ err }, 'outbox housekeeping failed');
    }
  }

  private countDelivered(now: number, n: number): void {
    const second = Math.floor(now / 1000);
    this.advanceRate(second);
    this.rate[second % RATE_SLOTS]! += n;
  }

  private advanceRate(second: number): void {
    if (this.rateSecond === 0) this.rateSecond = second;
    // Zero the slots of the seconds that passed without confirmations (at most the whole ring).
    for (let s = this.rateSecond + 1; s <= second && s <= this.rateSecond + RATE_SLOTS; s++) this.rate[s % RATE_SLOTS] = 0;
    this.rateSecond = Math.max(this.rateSecond, second);
  }

  private deliveredPerSecond(now: number): number {
    const second = Math.floor(now / 1000);
    this.advanceRate(second);
    const window = Math.min(RATE_SLOTS, Math.max(1, Math.ceil((now - this.startedAt) / 1000)));
    let sum = 0;
    for (let i = 0; i < window; i++) sum += this.rate[(second - i + RATE_SLOTS * 2) % RATE_SLOTS]!;
    return Math.round((sum / window) * 10) / 10;
  }
}
