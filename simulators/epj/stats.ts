/**
 * Counters of the EPJ stand-in, read by tests (`stats()`) and operators (`GET /admin/stats`).
 */

/** A snapshot of the stand-in's counters since start or the last reset. */
export interface EpjStats {
  /** When counting started (ISO 8601). */
  readonly since: string;
  /** Time to load and index the FHIR definitions at first start in this process, ms. */
  readonly definitionsLoadMs: number;
  /** Time from `startEpj()` to listening, ms (includes definitions on first start). */
  readonly startupMs: number;
  /** FHIR requests received (including those answered by a fault). Admin calls are not counted. */
  readonly requests: number;
  /** FHIR responses by HTTP status (`"201": 3`). Dropped requests have no status. */
  readonly responsesByStatus: Readonly<Record<string, number>>;
  /** Resources created (201), directly or in a Bundle entry. */
  readonly resourcesCreated: number;
  /** Resources updated (200 on PUT). */
  readonly resourcesUpdated: number;
  /** Conditional creates that matched an existing resource (200, nothing written). */
  readonly duplicatesAvoided: number;
  /** Resources refused: failed validation (400/422) or refused by the `rejectAll` fault. */
  readonly rejections: number;
  /** Requests answered 429 by the `throttle` fault. */
  readonly throttled: number;
  /** Requests answered 500/503 by the `errorRate` fault. */
  readonly injectedErrors: number;
  /** Requests processed and then left unanswered by the `dropRate` fault. */
  readonly dropped: number;
  /** Times the server went down (stopped listening) by the `down` fault. */
  readonly outages: number;
  /** Resources currently stored, by type. */
  readonly stored: Readonly<Record<string, number>>;
}

/** Mutable counters behind {@link EpjStats}. */
export class StatsCounter {
  since = new Date();
  requests = 0;
  responsesByStatus: Record<string, number> = {};
  resourcesCreated = 0;
  resourcesUpdated = 0;
  duplicatesAvoided = 0;
  rejections = 0;
  throttled = 0;
  injectedErrors = 0;
  dropped = 0;
  outages = 0;

  /** Counts one answered FHIR request. */
  response(status: number): void {
    const k = String(status);
    this.responsesByStatus[k] = (this.responsesByStatus[k] ?? 0) + 1;
  }

  /** Zeroes every counter. */
  reset(): void {
    this.since = new Date();
    this.requests = 0;
    this.responsesByStatus = {};
    this.resourcesCreated = 0;
    this.resourcesUpdated = 0;
    this.duplicatesAvoided = 0;
    this.rejections = 0;
    this.throttled = 0;
    this.injectedErrors = 0;
    this.dropped = 0;
    this.outages = 0;
  }

  snapshot(extra: { definitionsLoadMs: number; startupMs: number; stored: Record<string, number> }): EpjStats {
    return {
      since: this.since.toISOString(),
      definitionsLoadMs: Math.round(extra.definitionsLoadMs),
      startupMs: Math.round(extra.startupMs),
      requests: this.requests,
      responsesByStatus: { ...this.responsesByStatus },
      resourcesCreated: this.resourcesCreated,
      resourcesUpdated: this.resourcesUpdated,
      duplicatesAvoided: this.duplicatesAvoided,
      rejections: this.rejections,
      throttled: this.throttled,
      injectedErrors: this.injectedErrors,
      dropped: this.dropped,
      outages: this.outages,
      stored: extra.stored,
    };
  }
}
