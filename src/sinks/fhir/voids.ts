/**
 * The HTTP side of a correction: sets Observations charted for the wrong patient to
 * `entered-in-error` (R4: the way to withdraw a result; nothing is deleted from the record).
 *
 * Per void entry: find the Observation (`GET Observation/<id>` when the create told us its id,
 * else a search by its identifier: every match is ours and wrong), then `PUT` it back with
 * `status: entered-in-error` and `If-Match` on the version read, so an edit made in the EPJ in
 * between is never overwritten blindly (412/409 → read again and retry). 404/410 on read: the
 * Observation is gone, nothing to void. An Observation already entered-in-error is done (a
 * void re-sent after a crash).
 *
 * Failures are judged as for creates (retry.ts): 5xx/408/429 and network trouble concern the EPJ
 * as a whole (the delivery stops, everything waits with backoff); 401 refreshes the token once;
 * 403 is an access problem (everything waits); any other 4xx refuses this void for good (dead
 * letter with the EPJ's OperationOutcome).
 */
import type { Bundle, Observation as FhirObservation, OperationOutcome } from '@medplum/fhirtypes';
import type { Logger } from '../../log.js';
import type { AuthProvider } from './auth.js';
import type { VoidEntry } from './corrections.js';
import { FhirErrorCode } from './errors.js';
import { epjRequest, FHIR_JSON, Halt, issueCodes, outcomeOf, parseJson, summarize, typeAndId, type DeliveryReport } from './forwarder.js';
import type { HttpClient, HttpResponse } from './http.js';
import type { EntryResult } from './outbox.js';
import { backoffDelay, bundleVerdict, parseRetryAfter, Verdict, type BackoffSettings } from './retry.js';

/** Read-and-PUT rounds per Observation when the EPJ keeps answering 412/409 (someone edits it). */
const MAX_CONFLICTS = 3;
/** Matches read per identifier search: more than a few means something else is wrong. */
const SEARCH_COUNT = 10;

export interface VoidSenderOptions {
  readonly baseUrl: string;
  readonly http: HttpClient;
  readonly auth: AuthProvider;
  readonly identifierSystem: string;
  readonly retry: BackoffSettings;
  readonly clock: () => number;
  readonly log: Logger;
  readonly random?: () => number;
}

/** The outcome for one Observation: done (voided or gone), or refused for good. */
type Voided =
  | { readonly kind: 'done'; readonly status: number }
  | { readonly kind: 'refused'; readonly status: number; readonly outcome: OperationOutcome | undefined; readonly what: string }
  /** Still changing after MAX_CONFLICTS read-and-PUT rounds: try again later. */
  | { readonly kind: 'conflict' };

export class VoidSender {
  private readonly random: () => number;

  constructor(private readonly o: VoidSenderOptions) {
    this.random = o.random ?? Math.random;
  }

  /** Voids one by one (they are rare). Never rejects; a failure of the EPJ stops the rest. */
  async deliver(entries: readonly VoidEntry[], signal?: AbortSignal): Promise<DeliveryReport> {
    const results: EntryResult[] = [];
    let reached: boolean = false as boolean;
    const onAnswer = () => (reached = true);
    for (let i = 0; i < entries.length; i++) {
      const entry = entries[i]!;
      try {
        results.push(await this.voidEntry(entry, signal, onAnswer));
      } catch (err) {
        const failure =
          err instanceof Halt
            ? err.failure
            : { code: FhirErrorCode.BAD_RESPONSE, message: 'void failed unexpectedly', retryAfterMs: null, reached };
        if (!(err instanceof Halt)) this.o.log.error({ err, entry: entry.id }, 'void failed unexpectedly; it will be retried');
        return { results, unsettled: entries.slice(i), failure, reached: reached || failure.reached };
      }
    }
    return { results, unsettled: [], failure: null, reached };
  }

  private async voidEntry(entry: VoidEntry, signal: AbortSignal | undefined, onAnswer: () => void): Promise<EntryResult> {
    const found = entry.target.fhirId !== null ? [entry.target.fhirId] : await this.search(entry.target.identifier, signal, onAnswer);
    if (!Array.isArray(found)) return this.refused(entry, found);
    const ids = found;
    let status = 200;
    for (const id of ids) {
      const r = await this.voidObservation(id, signal, onAnswer);
      if (r.kind === 'conflict') {
        return {
          id: entry.id,
          kind: 'retry',
          nextAttempt: this.o.clock() + backoffDelay(entry.attempts, this.o.retry, this.random),
          code: FhirErrorCode.UNAVAILABLE,
          message: `the Observation changed ${MAX_CONFLICTS} times while being voided (412/409)`,
          status: 412,
        };
      }
      if (r.kind === 'refused') return this.refused(entry, r);
      status = r.status;
    }
    // Nothing found is fine too: nothing of ours is left charted for the wrong patient.
    return { id: entry.id, kind: 'confirmed', fhirId: ids[0] ?? null, status: ids.length === 0 ? 404 : status };
  }

  /** A void the EPJ refuses for good: a dead letter with its OperationOutcome. */
  private refused(entry: VoidEntry, r: { status: number; outcome: OperationOutcome | undefined; what: string }): EntryResult {
    const message = `${r.what}: ${summarize(r.status, r.outcome)}`;
    this.o.log.warn(
      { entry: entry.id, identifier: entry.identifier, code: FhirErrorCode.REJECTED, status: r.status, issue: issueCodes(r.outcome)[0] },
      'void refused by the EPJ (dead letter)',
    );
    return { id: entry.id, kind: 'rejected', code: FhirErrorCode.REJECTED, message, status: r.status, ...(r.outcome ? { outcome: r.outcome } : {}) };
  }

  /**
   * Ids (`Observation/<id>`) of the Observations carrying our identifier, or the refusal of a
   * server that cannot search by identifier (that void is a dead letter; nothing else waits).
   */
  private async search(
    identifier: string,
    signal: AbortSignal | undefined,
    onAnswer: () => void,
  ): Promise<string[] | { status: number; outcome: OperationOutcome | undefined; what: string }> {
    const query = new URLSearchParams({ identifier: `${this.o.identifierSystem}|${identifier}`, _count: String(SEARCH_COUNT) });
    const res = await this.call('GET', `/Observation?${query.toString()}`, undefined, {}, signal);
    onAnswer();
    if (res.status !== 200) return this.judge(res, 'Observation search');
    const bundle = parseJson(res.body) as Bundle | undefined;
    if (bundle?.resourceType !== 'Bundle') {
      throw new Halt({ code: FhirErrorCode.BAD_RESPONSE, message: 'Observation search answer is not a Bundle', status: res.status, retryAfterMs: null, reached: true });
    }
    return (bundle.entry ?? [])
      .filter((e) => e.resource?.resourceType === 'Observation' && e.resource.id && (e.search?.mode ?? 'match') === 'match')
      .map((e) => `Observation/${e.resource!.id!}`);
  }

  /** Read, then PUT with `status: entered-in-error` and If-Match; again on a version conflict. */
  private async voidObservation(ref: string, signal: AbortSignal | undefined, onAnswer: () => void): Promise<Voided> {
    const path = `/${typeAndId(ref, 'Observation') ?? ref}`;
    for (let round = 0; round < MAX_CONFLICTS; round++) {
      const read = await this.call('GET', path, undefined, {}, signal);
      onAnswer();
      if (read.status === 404 || read.status === 410) return { kind: 'done', status: read.status };
      if (read.status !== 200) {
        const refused = this.judge(read, 'Observation read');
        return { kind: 'refused', ...refused };
      }
      const resource = parseJson(read.body) as FhirObservation | undefined;
      if (resource?.resourceType !== 'Observation') {
        throw new Halt({ code: FhirErrorCode.BAD_RESPONSE, message: 'Observation read answer is not an Observation', status: read.status, retryAfterMs: null, reached: true });
      }
      if (resource.status === 'entered-in-error') return { kind: 'done', status: 200 };
      const version = resource.meta?.versionId ?? etagVersion(read.headers.etag);
      const body: FhirObservation = { ...resource, status: 'entered-in-error' };
      const put = await this.call('PUT', path, JSON.stringify(body), version !== null ? { 'if-match': `W/"${version}"` } : {}, signal);
      onAnswer();
      if (put.status === 200 || put.status === 201) return { kind: 'done', status: put.status };
      if (put.status === 412 || put.status === 409) continue; // changed since read: read again
      if (put.status === 404 || put.status === 410) return { kind: 'done', status: put.status };
      return { kind: 'refused', ...this.judge(put, 'Observation update') };
    }
    return { kind: 'conflict' };
  }

  /** A non-2xx answer: throws for what concerns the EPJ as a whole, returns a refusal otherwise. */
  private judge(res: HttpResponse, what: string): { status: number; outcome: OperationOutcome | undefined; what: string } {
    const verdict = bundleVerdict(res.status);
    if (verdict === Verdict.RETRY || verdict === Verdict.REAUTH || res.status === 403) this.fail(res, what);
    return { status: res.status, outcome: outcomeOf(res), what };
  }

  private fail(res: HttpResponse, what: string): never {
    const verdict = bundleVerdict(res.status);
    const summary = `${what}: ${summarize(res.status, outcomeOf(res))}`;
    if (verdict === Verdict.RETRY) {
      const retryAfterMs = parseRetryAfter(res.headers['retry-after'], this.o.clock(), this.o.retry.maxRetryAfterMs);
      throw new Halt({ code: FhirErrorCode.UNAVAILABLE, message: summary, status: res.status, retryAfterMs, reached: true });
    }
    if (res.status === 401 || res.status === 403) {
      throw new Halt({ code: FhirErrorCode.AUTH, message: summary, status: res.status, retryAfterMs: null, reached: true });
    }
    throw new Halt({ code: FhirErrorCode.BAD_RESPONSE, message: summary, status: res.status, retryAfterMs: null, reached: true });
  }

  /** One request with auth (a body is FHIR JSON, answered minimally). */
  private call(
    method: 'GET' | 'PUT',
    path: string,
    body: string | undefined,
    headers: Record<string, string>,
    signal: AbortSignal | undefined,
  ): Promise<HttpResponse> {
    const bodyHeaders: Record<string, string> = body !== undefined ? { 'content-type': FHIR_JSON, prefer: 'return=minimal' } : {};
    return epjRequest(this.o, { method, path, ...(body !== undefined ? { body } : {}), headers: { ...bodyHeaders, ...headers } }, signal);
  }
}

/** `W/"3"` → `3`. */
function etagVersion(etag: string | undefined): string | null {
  const m = etag === undefined ? null : /^(?:W\/)?"([^"]+)"$/.exec(etag.trim());
  return m ? m[1]! : null;
}
