/**
 * The retry policy as data (research note §4.4). Our writes are POSTs, and they are retried
 * *only* because every one is a conditional create on a deterministic identifier
 * (`ifNoneExist`): a resend of something the EPJ already stored answers 200 and writes nothing.
 * Without that, retrying a POST whose answer was lost would chart the reading twice.
 */

/** What to do about an answer (or the lack of one). */
export const Verdict = {
  /** Done: 200/201. */
  OK: 'ok',
  /** Try again later, with backoff (the EPJ or the network is having a bad moment). */
  RETRY: 'retry',
  /** This resource will never be accepted as it is: dead letter with the OperationOutcome. */
  REJECT: 'reject',
  /** Refresh the access token once and resend; if it happens again, it is an auth problem. */
  REAUTH: 'reauth',
  /** Our configuration or registration is wrong (403, wrong base URL): pause everything, keep the data. */
  HALT: 'halt',
  /** The Bundle is too large: split it and resend the halves. */
  SPLIT: 'split',
} as const;
export type Verdict = (typeof Verdict)[keyof typeof Verdict];

export const RETRY_POLICY = Object.freeze({
  /**
   * 408 request timeout, 429 throttled, 5xx server trouble: the request may or may not have
   * been processed — safe to resend because creates are conditional.
   */
  retryStatuses: Object.freeze([408, 429, 500, 502, 503, 504]),
  /** Any other 5xx is treated like these (a server error says nothing about our resource). */
  retryAll5xx: true,
  /** Statuses whose `Retry-After` we honour (RFC 9110 §10.2.3 allows it on 429 and 503). */
  retryAfterStatuses: Object.freeze([429, 503]),
  /**
   * OperationOutcome.issue.code values that mark a refusal as transient even on a 4xx (note
   * §4.4: the `transient` family).
   */
  transientIssueCodes: Object.freeze(['transient', 'lock-error', 'no-store', 'exception', 'timeout', 'incomplete', 'throttled']),
  /** 401: refresh the token and resend once. */
  reauthStatuses: Object.freeze([401]),
  /**
   * On the Bundle POST these say "not with this configuration" (forbidden scope, wrong base URL,
   * method/format not supported), not "this resource is bad": dead-lettering the whole queue
   * for them would throw away a day of charting over a typo. Pause and keep the data instead.
   */
  haltStatuses: Object.freeze([403, 404, 405, 406, 415]),
  /** 413: the Bundle is too large for the receiver; halve it. */
  splitStatuses: Object.freeze([413]),
  /** Backoff: delay = min(max, initial × factor^(failures−1)), then "equal jitter" (½ fixed + ½ random). */
  backoffFactor: 2,
});

/** Verdict on the HTTP status of a whole Bundle POST. */
export function bundleVerdict(status: number): Verdict {
  if (status >= 200 && status < 300) return Verdict.OK;
  if (RETRY_POLICY.retryStatuses.includes(status) || (RETRY_POLICY.retryAll5xx && status >= 500)) return Verdict.RETRY;
  if (RETRY_POLICY.reauthStatuses.includes(status)) return Verdict.REAUTH;
  if (RETRY_POLICY.haltStatuses.includes(status)) return Verdict.HALT;
  if (RETRY_POLICY.splitStatuses.includes(status)) return Verdict.SPLIT;
  // 400, 409, 412, 422, …: the receiver did not answer entry by entry; bisect to find the one.
  return Verdict.REJECT;
}

/**
 * Verdict on one batch-response entry (`entry.response.status` + `outcome`). Within a batch the
 * entries are independent: 4xx rejects only that entry (note §4.1), except for the transient
 * issue codes and the statuses that are about us rather than the resource.
 */
export function entryVerdict(status: number, issueCodes: readonly string[]): Verdict {
  if (status >= 200 && status < 300) return Verdict.OK;
  if (RETRY_POLICY.retryStatuses.includes(status) || (RETRY_POLICY.retryAll5xx && status >= 500)) return Verdict.RETRY;
  if (RETRY_POLICY.reauthStatuses.includes(status) || status === 403) return Verdict.HALT;
  if (issueCodes.length > 0 && issueCodes.every((c) => RETRY_POLICY.transientIssueCodes.includes(c))) return Verdict.RETRY;
  return Verdict.REJECT;
}

/** Backoff settings (config `fhir.retry`). */
export interface BackoffSettings {
  readonly initialDelayMs: number;
  readonly maxDelayMs: number;
  readonly maxRetryAfterMs: number;
}

/**
 * Delay before attempt `failures + 1` after `failures` consecutive failures (≥ 1): exponential,
 * capped, with equal jitter so that many gateways (or entries) coming back after one EPJ outage
 * do not all knock at the same millisecond, while the delay never drops below half the step.
 */
export function backoffDelay(failures: number, settings: BackoffSettings, random: () => number = Math.random): number {
  const exp = Math.min(settings.maxDelayMs, settings.initialDelayMs * RETRY_POLICY.backoffFactor ** Math.max(0, failures - 1));
  return Math.round(exp / 2 + random() * (exp / 2));
}

/**
 * `Retry-After` in ms (delay-seconds or an HTTP-date, RFC 9110 §10.2.3), clamped to
 * `maxRetryAfterMs`; null when absent or unreadable.
 */
export function parseRetryAfter(value: string | string[] | undefined, now: number, maxMs: number): number | null {
  const text = Array.isArray(value) ? value[0] : value;
  if (text === undefined || text.trim() === '') return null;
  let ms: number;
  if (/^\s*\d+\s*$/.test(text)) {
    ms = Number(text) * 1000;
  } else {
    const at = Date.parse(text);
    if (!Number.isFinite(at)) return null;
    ms = at - now;
  }
  return Math.max(0, Math.min(ms, maxMs));
}
