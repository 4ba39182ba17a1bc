/**
 * The HTTP side of charting: turns claimed outbox entries into FHIR `batch` Bundles of
 * conditional creates, sends them, and says what became of each entry. It keeps no queue of its
 * own; what it is given it settles (confirmed / retry / rejected) or hands back as unsettled
 * together with the failure that stopped it.
 *
 * Per Bundle (research note §4.1/§4.2):
 * 1. Devices not yet known to this EPJ: one batch of `POST Device` with `ifNoneExist` on the
 *    EUI-64/registered-id identifier; the ids are remembered in the outbox DB (created once).
 * 2. Subjects: a conditional reference (`Patient?identifier=urn:oid:1.2.208.176.1.2|…`), a
 *    looked-up `Patient/<id>` (POST `_search`, so the CPR number stays out of URLs and access
 *    logs), or — for test servers and the stand-in only — a conditionally created Patient.
 * 3. Observations: one batch of `POST Observation` with `ifNoneExist` on the deterministic
 *    identifier. Each `entry.response` is judged on its own: one refused resource becomes a
 *    dead letter and the rest go on. A server that refuses the whole Bundle for one bad entry
 *    (transaction-like behaviour, 400/422 on the Bundle) is bisected down to the culprit.
 */
import type {
  Bundle,
  BundleEntry,
  OperationOutcome,
  Patient,
  Reference,
  Resource,
} from '@medplum/fhirtypes';
import type { Logger } from '../../log.js';
import { scrubCpr } from '../../log.js';
import type { PatientId } from '../../model/measurement.js';
import type { AuthProvider } from './auth.js';
import { FhirError, FhirErrorCode } from './errors.js';
import type { HttpClient, HttpResponse } from './http.js';
import { buildDevice, buildObservation, deviceIdentifier, type ObservationBuildOptions } from './observation.js';
import type { ClaimedEntry, EntryResult, Outbox } from './outbox.js';
import { backoffDelay, bundleVerdict, entryVerdict, parseRetryAfter, Verdict, type BackoffSettings } from './retry.js';

export const FHIR_JSON = 'application/fhir+json';

/** How `Observation.subject` is made (config `fhir.subject`). */
export type SubjectMode = 'conditional' | 'resolved' | 'create';

export interface ForwarderOptions {
  /** FHIR base URL, without a trailing slash. */
  readonly baseUrl: string;
  readonly http: HttpClient;
  readonly auth: AuthProvider;
  readonly subject: SubjectMode;
  readonly identifierSystem: string;
  readonly identifierNamespace: string;
  readonly observationStatus: 'final' | 'preliminary';
  readonly deviceIdentifierSystem: string;
  readonly retry: BackoffSettings;
  /** Keeps the EPJ ids of created Devices (durable). */
  readonly outbox: Outbox;
  /** Key of this EPJ in the Device table (the base URL). */
  readonly endpoint: string;
  /** Pseudonym of a patient: the key of the in-memory Patient-id cache (no CPR kept as a key). */
  readonly patientKey: (patient: PatientId) => string;
  readonly clock: () => number;
  readonly log: Logger;
  readonly random?: () => number;
}

/** A failure about the EPJ or our access to it (not about one resource): everything waits. */
export interface DeliveryFailure {
  readonly code: FhirErrorCode;
  /** Short, without patient data. */
  readonly message: string;
  readonly status?: number;
  /** The EPJ's `Retry-After`, ms (clamped), when it sent one. */
  readonly retryAfterMs: number | null;
  /** Whether any HTTP answer came back (false: connection refused, DNS, timeout, TLS). */
  readonly reached: boolean;
}

/** What became of a set of claimed entries. */
export interface DeliveryReport {
  /** Entries settled by this delivery. */
  readonly results: EntryResult[];
  /** Entries left untouched because `failure` stopped the delivery; they must be retried. */
  readonly unsettled: ClaimedEntry[];
  readonly failure: DeliveryFailure | null;
  /** Whether the EPJ answered at all during this delivery. */
  readonly reached: boolean;
}

/** Thrown inside a delivery to stop it: the failure concerns every entry. */
export class Halt extends Error {
  constructor(readonly failure: DeliveryFailure) {
    super(failure.message);
  }
}

/** One entry's answer inside a batch-response (or the verdict on a single-entry Bundle). */
interface EntryAnswer {
  readonly verdict: Verdict;
  readonly status: number;
  /** `Type/id` of the created or matched resource. */
  readonly id: string | null;
  readonly outcome: OperationOutcome | undefined;
  readonly retryAfterMs: number | null;
}

/** Positive Patient lookups kept in memory (bounded: a hospital has far fewer patients in beds). */
const PATIENT_CACHE_MAX = 10_000;
/** A Patient id is re-looked-up after an hour: merges and corrections in the EPJ change ids. */
const PATIENT_CACHE_TTL_MS = 60 * 60 * 1000;
/** In-memory Device ids (the DB keeps them all; this only saves a query per Bundle). */
const DEVICE_CACHE_MAX = 100_000;

/** Escapes what would break a search parameter value inside a URL query (`ifNoneExist`). */
function queryValue(text: string): string {
  return text.replace(/[%&#+=?\s]/g, (c) => encodeURIComponent(c));
}

export function identifierQuery(system: string, value: string): string {
  return `identifier=${queryValue(system)}|${queryValue(value)}`;
}

/** `Observation/abc/_history/1` or an absolute URL → `Observation/abc`. */
export function typeAndId(location: string | undefined, type: string): string | null {
  if (location === undefined) return null;
  const m = new RegExp(`(?:^|/)${type}/([A-Za-z0-9\\-.]{1,64})(?:/|$)`).exec(location);
  return m ? `${type}/${m[1]}` : null;
}

export function issueCodes(outcome: OperationOutcome | undefined): string[] {
  return (outcome?.issue ?? []).map((i) => i.code).filter((c): c is NonNullable<typeof c> => typeof c === 'string');
}

/** A one-line, patient-data-free summary of an OperationOutcome: `422 business-rule: …`. */
export function summarize(status: number, outcome: OperationOutcome | undefined): string {
  const first = outcome?.issue?.[0];
  const text = first?.diagnostics ?? first?.details?.text ?? '';
  return scrubCpr(`${status}${first?.code ? ` ${first.code}` : ''}${text ? `: ${text.slice(0, 300)}` : ''}`);
}

/** Sends claimed entries to one EPJ. Stateless between deliveries apart from caches. */
export class FhirForwarder {
  private readonly devices = new Map<string, string>();
  private readonly patients = new Map<string, { reference: string; until: number }>();
  private readonly random: () => number;

  constructor(private readonly o: ForwarderOptions) {
    this.random = o.random ?? Math.random;
  }

  /**
   * Delivers claimed entries. Never rejects: unexpected errors are reported as a failure of
   * the whole delivery (retried), network and server trouble as `failure`.
   */
  async deliver(entries: readonly ClaimedEntry[], signal?: AbortSignal): Promise<DeliveryReport> {
    const results: EntryResult[] = [];
    const settled = new Set<number>();
    // Set from callbacks: typed wide so TS does not narrow it to the literal `false`.
    let reached: boolean = false as boolean;
    const settle = (r: EntryResult) => {
      results.push(r);
      settled.add(r.id);
    };
    const unsettled = () => entries.filter((e) => !settled.has(e.id));
    try {
      const deviceRefs = await this.ensureDevices(entries, signal, () => (reached = true));
      const subjects = await this.subjects(entries, signal, () => (reached = true));
      const toSend: { entry: ClaimedEntry; request: BundleEntry }[] = [];
      for (const entry of entries) {
        const head = entry.item.readings[0]!.observation;
        const device = deviceRefs.get(head.deviceId);
        if (device !== undefined && 'refused' in device) {
          settle(this.rejected(entry, FhirErrorCode.REJECTED, `Device refused by the EPJ: ${device.refused}`, device.status, device.outcome));
          continue;
        }
        const subject = subjects.get(entry.id);
        if (subject === undefined || 'refused' in subject) {
          const why = subject === undefined ? 'no patient' : subject.refused;
          settle(this.rejected(entry, subject?.code ?? FhirErrorCode.PATIENT_UNKNOWN, why, subject?.status, subject?.outcome));
          continue;
        }
        const options: ObservationBuildOptions = {
          identifierSystem: this.o.identifierSystem,
          identifierNamespace: this.o.identifierNamespace,
          status: this.o.observationStatus,
          subject: subject.reference,
          ...(device !== undefined ? { device: { reference: device.reference } } : {}),
          ...(entry.revision > 0 ? { revision: entry.revision } : {}),
        };
        const built = buildObservation(entry.item, options);
        if (!built.ok) {
          settle(this.rejected(entry, FhirErrorCode.UNCHARTABLE, built.reason));
          continue;
        }
        toSend.push({
          entry,
          request: {
            fullUrl: `urn:uuid:${built.identifier}`,
            resource: built.resource,
            // Conditional create (R4 http.html#ccreate): a resend answers 200, never a duplicate.
            request: { method: 'POST', url: 'Observation', ifNoneExist: identifierQuery(this.o.identifierSystem, built.identifier) },
          },
        });
      }
      const answers = await this.sendEntries(
        toSend.map((t) => t.request),
        signal,
        () => (reached = true),
      );
      const now = this.o.clock();
      let retries = 0;
      let lastRetry: EntryAnswer | null = null;
      for (let i = 0; i < toSend.length; i++) {
        const t = toSend[i]!;
        const a = answers[i]!;
        if (a.verdict === Verdict.OK) {
          settle({ id: t.entry.id, kind: 'confirmed', fhirId: typeAndId(a.id ?? undefined, 'Observation'), status: a.status });
        } else if (a.verdict === Verdict.RETRY) {
          retries++;
          lastRetry = a;
          settle({
            id: t.entry.id,
            kind: 'retry',
            nextAttempt: now + backoffDelay(t.entry.attempts, this.o.retry, this.random),
            code: FhirErrorCode.UNAVAILABLE,
            message: summarize(a.status, a.outcome),
            status: a.status,
          });
        } else {
          settle(this.rejected(t.entry, FhirErrorCode.REJECTED, summarize(a.status, a.outcome), a.status, a.outcome));
        }
      }
      // Every entry back with a transient error: the EPJ is in trouble, not our resources.
      const failure: DeliveryFailure | null =
        lastRetry !== null && retries === toSend.length
          ? {
              code: FhirErrorCode.UNAVAILABLE,
              message: `every entry answered ${lastRetry.status}`,
              status: lastRetry.status,
              retryAfterMs: null,
              reached: true,
            }
          : null;
      return { results, unsettled: unsettled(), failure, reached };
    } catch (err) {
      if (err instanceof Halt) return { results, unsettled: unsettled(), failure: err.failure, reached: reached || err.failure.reached };
      this.o.log.error({ err }, 'FHIR delivery failed unexpectedly; the entries will be retried');
      return {
        results,
        unsettled: unsettled(),
        failure: { code: FhirErrorCode.BAD_RESPONSE, message: scrubCpr(String((err as Error)?.message ?? err)), retryAfterMs: null, reached },
        reached,
      };
    }
  }

  /**
   * Asks the EPJ for its CapabilityStatement (`GET metadata`): whether it answers, and its FHIR
   * version. Never rejects.
   */
  async probe(
    signal?: AbortSignal,
  ): Promise<{ reached: boolean; status?: number; fhirVersion?: string; retryAfterMs?: number; error?: string }> {
    try {
      const authorization = await this.o.auth.authorization(signal).catch(() => null);
      const res = await this.o.http.request({
        method: 'GET',
        url: `${this.o.baseUrl}/metadata`,
        headers: { accept: FHIR_JSON, ...(authorization !== null ? { authorization } : {}) },
        ...(signal ? { signal } : {}),
      });
      const body = parseJson(res.body) as { resourceType?: string; fhirVersion?: string } | undefined;
      const retryAfterMs = parseRetryAfter(res.headers['retry-after'], this.o.clock(), this.o.retry.maxRetryAfterMs);
      return {
        reached: true,
        status: res.status,
        ...(retryAfterMs !== null ? { retryAfterMs } : {}),
        ...(body?.resourceType === 'CapabilityStatement' && typeof body.fhirVersion === 'string' ? { fhirVersion: body.fhirVersion } : {}),
      };
    } catch (err) {
      return { reached: false, error: scrubCpr(String((err as Error)?.message ?? err)) };
    }
  }

  private rejected(entry: ClaimedEntry, code: FhirErrorCode, message: string, status?: number, outcome?: unknown): EntryResult {
    this.o.log.warn(
      { entry: entry.id, identifier: entry.identifier, code, status, issue: issueCodes(outcome as OperationOutcome | undefined)[0] },
      'chart entry rejected (dead letter)',
    );
    return {
      id: entry.id,
      kind: 'rejected',
      code,
      message,
      ...(status !== undefined ? { status } : {}),
      ...(outcome !== undefined ? { outcome } : {}),
    };
  }

  /** Ensures a Device per device id exists in the EPJ (created once, remembered durably). */
  private async ensureDevices(
    entries: readonly ClaimedEntry[],
    signal: AbortSignal | undefined,
    onAnswer: () => void,
  ): Promise<Map<string, { reference: string } | { refused: string; status: number; outcome: OperationOutcome | undefined }>> {
    const out = new Map<string, { reference: string } | { refused: string; status: number; outcome: OperationOutcome | undefined }>();
    const missing: string[] = [];
    for (const e of entries) {
      const device = e.item.readings[0]!.observation.deviceId;
      if (out.has(device) || missing.includes(device)) continue;
      const known = this.devices.get(device) ?? this.o.outbox.knownDevice(this.o.endpoint, device);
      if (known !== null) out.set(device, { reference: known });
      else missing.push(device);
    }
    if (missing.length === 0) return out;
    const requests: BundleEntry[] = missing.map((device) => {
      const id = deviceIdentifier(device, this.o);
      return {
        resource: buildDevice(device, this.o),
        request: { method: 'POST', url: 'Device', ifNoneExist: identifierQuery(id.system, id.value) },
      };
    });
    const answers = await this.sendEntries(requests, signal, onAnswer);
    const now = this.o.clock();
    missing.forEach((device, i) => {
      const a = answers[i]!;
      const reference = a.id === null ? null : typeAndId(a.id, 'Device');
      if (a.verdict === Verdict.OK && reference !== null) {
        this.o.outbox.rememberDevice(this.o.endpoint, device, reference, now);
        if (this.devices.size >= DEVICE_CACHE_MAX) this.devices.clear();
        this.devices.set(device, reference);
        out.set(device, { reference });
      } else if (a.verdict === Verdict.RETRY || a.verdict === Verdict.OK) {
        // OK without a usable location, or a transient refusal: try the whole delivery again later.
        throw new Halt({ code: FhirErrorCode.UNAVAILABLE, message: `Device create answered ${a.status}`, status: a.status, retryAfterMs: a.retryAfterMs, reached: true });
      } else {
        out.set(device, { refused: summarize(a.status, a.outcome), status: a.status, outcome: a.outcome });
      }
    });
    return out;
  }

  /** `Observation.subject` per entry, by the configured mode. */
  private async subjects(
    entries: readonly ClaimedEntry[],
    signal: AbortSignal | undefined,
    onAnswer: () => void,
  ): Promise<
    Map<number, { reference: Reference<Patient> } | { refused: string; code: FhirErrorCode; status?: number; outcome?: OperationOutcome }>
  > {
    const out = new Map<
      number,
      { reference: Reference<Patient> } | { refused: string; code: FhirErrorCode; status?: number; outcome?: OperationOutcome }
    >();
    const now = this.o.clock();
    const byPatient = new Map<string, { patient: PatientId; entries: ClaimedEntry[] }>();
    for (const e of entries) {
      const patient = e.item.readings[0]!.observation.patient;
      if (patient === null) continue; // no patient: left out, rejected by the caller
      if (this.o.subject === 'conditional') {
        // R4 http.html#trules: a conditional reference, resolved by the server.
        out.set(e.id, { reference: { reference: `Patient?${identifierQuery(patient.system, patient.value)}` } });
        continue;
      }
      const key = this.o.patientKey(patient);
      const cached = this.patients.get(key);
      if (cached !== undefined && cached.until > now) {
        out.set(e.id, { reference: { reference: cached.reference } });
        continue;
      }
      const group = byPatient.get(key) ?? { patient, entries: [] };
      group.entries.push(e);
      byPatient.set(key, group);
    }
    if (byPatient.size === 0) return out;
    const groups = [...byPatient.entries()];
    let found: (string | { refused: string; code: FhirErrorCode; status?: number; outcome?: OperationOutcome })[];
    if (this.o.subject === 'create') {
      const answers = await this.sendEntries(
        groups.map(([, g]) => ({
          resource: { resourceType: 'Patient', identifier: [{ use: 'official', system: g.patient.system, value: g.patient.value }] } satisfies Patient,
          request: { method: 'POST', url: 'Patient', ifNoneExist: identifierQuery(g.patient.system, g.patient.value) },
        })),
        signal,
        onAnswer,
      );
      found = answers.map((a) => {
        const reference = a.id === null ? null : typeAndId(a.id, 'Patient');
        if (a.verdict === Verdict.OK && reference !== null) return reference;
        if (a.verdict === Verdict.RETRY || a.verdict === Verdict.OK) {
          throw new Halt({ code: FhirErrorCode.UNAVAILABLE, message: `Patient create answered ${a.status}`, status: a.status, retryAfterMs: a.retryAfterMs, reached: true });
        }
        return { refused: `Patient refused by the EPJ: ${summarize(a.status, a.outcome)}`, code: FhirErrorCode.REJECTED, status: a.status, ...(a.outcome ? { outcome: a.outcome } : {}) };
      });
    } else {
      found = [];
      for (const [, g] of groups) found.push(await this.lookupPatient(g.patient, signal, onAnswer));
    }
    groups.forEach(([key, g], i) => {
      const result = found[i]!;
      if (typeof result === 'string') {
        if (this.patients.size >= PATIENT_CACHE_MAX) this.patients.clear();
        this.patients.set(key, { reference: result, until: now + PATIENT_CACHE_TTL_MS });
        for (const e of g.entries) out.set(e.id, { reference: { reference: result } });
      } else {
        for (const e of g.entries) out.set(e.id, result);
      }
    });
    return out;
  }

  /** `POST Patient/_search` with the identifier in the form body (keeps the CPR out of URLs). */
  private async lookupPatient(
    patient: PatientId,
    signal: AbortSignal | undefined,
    onAnswer: () => void,
  ): Promise<string | { refused: string; code: FhirErrorCode }> {
    const body = new URLSearchParams({ identifier: `${patient.system}|${patient.value}`, _count: '2' }).toString();
    const res = await this.call('POST', '/Patient/_search', body, 'application/x-www-form-urlencoded', signal);
    onAnswer();
    const verdict = bundleVerdict(res.status);
    if (verdict !== Verdict.OK) this.halt(res, verdict, 'Patient search');
    const bundle = parseJson(res.body) as Bundle | undefined;
    if (bundle?.resourceType !== 'Bundle') {
      throw new Halt({ code: FhirErrorCode.BAD_RESPONSE, message: 'Patient search answer is not a Bundle', status: res.status, retryAfterMs: null, reached: true });
    }
    const matches = (bundle.entry ?? []).filter((e) => e.resource?.resourceType === 'Patient' && (e.search?.mode ?? 'match') === 'match');
    if (matches.length === 1 && matches[0]!.resource?.id) return `Patient/${matches[0]!.resource.id}`;
    return {
      code: FhirErrorCode.PATIENT_UNKNOWN,
      refused: matches.length === 0 ? 'no Patient in the EPJ carries the patient identifier' : 'several Patients carry the patient identifier',
    };
  }

  /**
   * Sends request entries as `batch` Bundles and returns one answer per entry, in order.
   * A Bundle refused as a whole (400/422/… or 413) is split in halves until the refused entry
   * stands alone. Failures that concern everything (network, 5xx, 429, auth) throw {@link Halt}.
   */
  private async sendEntries(requests: readonly BundleEntry[], signal: AbortSignal | undefined, onAnswer: () => void): Promise<EntryAnswer[]> {
    if (requests.length === 0) return [];
    const bundle: Bundle = { resourceType: 'Bundle', type: 'batch', entry: [...requests] };
    const res = await this.call('POST', '', JSON.stringify(bundle), FHIR_JSON, signal);
    onAnswer();
    const verdict = bundleVerdict(res.status);
    if (verdict === Verdict.OK) {
      const answer = parseJson(res.body) as Bundle | undefined;
      const entries = answer?.resourceType === 'Bundle' && answer.type === 'batch-response' ? (answer.entry ?? []) : null;
      if (entries === null || entries.length !== requests.length) {
        // A 200 that is not our batch-response (a proxy's page, a server that ignored the batch):
        // nothing can be concluded about any entry.
        throw new Halt({ code: FhirErrorCode.BAD_RESPONSE, message: `answer to a batch of ${requests.length} is not a matching batch-response`, status: res.status, retryAfterMs: null, reached: true });
      }
      return entries.map((e) => {
        const status = Number.parseInt(e.response?.status ?? '', 10) || 0;
        const outcome = e.response?.outcome?.resourceType === 'OperationOutcome' ? (e.response.outcome as OperationOutcome) : undefined;
        const v = entryVerdict(status, issueCodes(outcome));
        // 401/403 on an entry is about our access, not the resource: stop, keep everything queued.
        if (v === Verdict.HALT) this.halt(res, Verdict.HALT, 'batch entry', status);
        const resource = e.resource as Resource | undefined;
        const location = e.response?.location ?? (resource?.id ? `${resource.resourceType}/${resource.id}` : undefined);
        return { verdict: v, status, id: location ?? null, outcome, retryAfterMs: null };
      });
    }
    if (verdict === Verdict.REJECT || verdict === Verdict.SPLIT) {
      if (requests.length === 1) {
        return [{ verdict: Verdict.REJECT, status: res.status, id: null, outcome: outcomeOf(res), retryAfterMs: null }];
      }
      const half = Math.ceil(requests.length / 2);
      const first = await this.sendEntries(requests.slice(0, half), signal, onAnswer);
      const second = await this.sendEntries(requests.slice(half), signal, onAnswer);
      return [...first, ...second];
    }
    this.halt(res, verdict, 'Bundle POST');
  }

  /** Throws the delivery-wide failure for a non-OK answer. */
  private halt(res: HttpResponse, verdict: Verdict, what: string, status = res.status): never {
    const retryAfterMs = parseRetryAfter(res.headers['retry-after'], this.o.clock(), this.o.retry.maxRetryAfterMs);
    const summary = summarize(status, outcomeOf(res));
    if (verdict === Verdict.RETRY) {
      throw new Halt({ code: FhirErrorCode.UNAVAILABLE, message: `${what}: ${summary}`, status, retryAfterMs, reached: true });
    }
    if (verdict === Verdict.REAUTH || status === 401 || status === 403) {
      throw new Halt({ code: FhirErrorCode.AUTH, message: `${what}: ${summary}`, status, retryAfterMs: null, reached: true });
    }
    if (verdict === Verdict.HALT) {
      throw new Halt({ code: FhirErrorCode.CONFIG, message: `${what}: ${summary}`, status, retryAfterMs: null, reached: true });
    }
    throw new Halt({ code: FhirErrorCode.BAD_RESPONSE, message: `${what}: ${summary}`, status, retryAfterMs: null, reached: true });
  }

  /** One POST to the EPJ (Bundles, Patient searches). */
  private call(method: 'POST', path: string, body: string, contentType: string, signal: AbortSignal | undefined): Promise<HttpResponse> {
    // Per-entry answers carry status and location; the echoed resources would only cost bandwidth.
    return epjRequest(this.o, { method, path, body, headers: { 'content-type': contentType, prefer: 'return=minimal' } }, signal);
  }
}

/** What a request to the EPJ needs: where it is, the HTTP client, the credentials. */
export interface EpjEndpoint {
  readonly baseUrl: string;
  readonly http: HttpClient;
  readonly auth: AuthProvider;
}

/**
 * One request to the EPJ with auth; a 401 refreshes the token and tries once more (note §4.4).
 * A failure to get a token or to reach the EPJ is thrown as a `Halt` (the whole delivery waits).
 */
export async function epjRequest(
  epj: EpjEndpoint,
  request: { readonly method: 'GET' | 'POST' | 'PUT'; readonly path: string; readonly body?: string; readonly headers: Record<string, string> },
  signal: AbortSignal | undefined,
): Promise<HttpResponse> {
  for (let attempt = 1; ; attempt++) {
    let authorization: string | null;
    try {
      authorization = await epj.auth.authorization(signal);
    } catch (err) {
      throw haltOf(err, 'token request');
    }
    let res: HttpResponse;
    try {
      res = await epj.http.request({
        method: request.method,
        url: `${epj.baseUrl}${request.path}`,
        headers: { accept: FHIR_JSON, ...request.headers, ...(authorization !== null ? { authorization } : {}) },
        ...(request.body !== undefined ? { body: request.body } : {}),
        ...(signal ? { signal } : {}),
      });
    } catch (err) {
      throw haltOf(err, 'EPJ request');
    }
    if (res.status === 401 && attempt === 1) {
      epj.auth.invalidate();
      continue;
    }
    return res;
  }
}

/** A failed request (network, token) as the failure of the whole delivery. */
export function haltOf(err: unknown, what: string): Halt {
  if (err instanceof FhirError) {
    const reached = err.code !== FhirErrorCode.NETWORK;
    return new Halt({
      code: err.code,
      message: scrubCpr(`${what}: ${err.message}`),
      ...(err.status !== undefined ? { status: err.status } : {}),
      retryAfterMs: null,
      reached,
    });
  }
  return new Halt({ code: FhirErrorCode.NETWORK, message: scrubCpr(`${what}: ${String((err as Error)?.message ?? err)}`), retryAfterMs: null, reached: false });
}

export function parseJson(body: Buffer): unknown {
  try {
    return JSON.parse(body.toString('utf8')) as unknown;
  } catch {
    return undefined;
  }
}

export function outcomeOf(res: HttpResponse): OperationOutcome | undefined {
  const body = parseJson(res.body) as Resource | undefined;
  return body?.resourceType === 'OperationOutcome' ? body : undefined;
}
