/**
 * FHIR R4 REST semantics of the EPJ stand-in, independent of sockets: one call in, one answer
 * out. `@medplum/fhir-router` does routing, search, conditional create/update and Bundle
 * processing; this class adds what a real server does around it and the router does not:
 *
 * - validation of every incoming resource, direct or in a Bundle entry (400 / 422 with an
 *   OperationOutcome; in a batch only the bad entry fails, in a transaction the whole Bundle);
 * - transactions that are atomic: the router, given `config.transactions`, refuses any
 *   transaction with a conditional entry and more than 8 entries ("requires strict isolation")
 *   and, on `MemoryRepository`, never rolls back. We run the entries through the router's
 *   batch engine inside an {@link EpjRepository} transaction and roll back if any entry failed;
 * - resolution of conditional references (`Patient?identifier=…`) in written resources;
 * - HTTP details: 201 vs 200, `Location` / `ETag` / `Last-Modified`, `Prefer: return=…`,
 *   search paging links and `fullUrl`s, 201 for an update that created, strict search
 *   parameters (an unknown parameter is a 400, not a silently empty or unfiltered result).
 *
 * Requests are served one at a time (a promise queue). That is what makes conditional create
 * atomic here — the search and the create of one request cannot interleave with another's — and
 * it keeps the transaction journal private to one request. An in-memory stand-in has no use for
 * more concurrency.
 */
import {
  getStatus,
  isResourceType,
  getSearchParameter,
  parseSearchRequest,
} from '@medplum/core';
import { FhirRouter } from '@medplum/fhir-router';
import type { HttpMethod } from '@medplum/fhir-router';
import type {
  Bundle,
  BundleEntry,
  BundleEntryResponse,
  CapabilityStatement,
  OperationOutcome,
  OperationOutcomeIssue,
  Resource,
} from '@medplum/fhirtypes';
import type { IncomingHttpHeaders } from 'node:http';
import type { Logger } from 'pino';
import type { EpjFaults } from './faults.js';
import { errorOutcome, issue, normalizeOutcome, outcomeOf, prefixExpressions, redactCpr } from './outcome.js';
import type { EpjRepository } from './repository.js';
import type { StatsCounter } from './stats.js';
import { isJsonObject } from './validation.js';
import type { EpjValidator, ValidationVerdict } from './validation.js';

/** A FHIR request as the HTTP layer hands it over. */
export interface FhirHttpRequest {
  /** Upper-case HTTP method. */
  readonly method: string;
  /** Path below the FHIR base, e.g. `''`, `/Observation`, `/Observation/123/_history/2`. */
  readonly path: string;
  /** Query string without the `?` (may be empty). */
  readonly query: string;
  readonly headers: IncomingHttpHeaders;
  /** Parsed JSON body, the fields of a form body (`_search`), or undefined. */
  readonly body: unknown;
}

/** The answer to a {@link FhirHttpRequest}. */
export interface FhirHttpResponse {
  readonly status: number;
  readonly headers: Readonly<Record<string, string>>;
  /** A FHIR resource (or OperationOutcome); undefined for an empty body. */
  readonly body?: Resource;
  /** Short description of what happened, for the access log (never patient data). */
  readonly note?: string;
}

/** Collaborators of {@link FhirService}. */
export interface FhirServiceOptions {
  readonly validator: EpjValidator;
  readonly repository: EpjRepository;
  readonly stats: StatsCounter;
  /** The public FHIR base URL (`http://127.0.0.1:PORT/fhir`), for Location, fullUrl and links. */
  readonly baseUrl: () => string;
  readonly faults: () => EpjFaults;
  readonly log: Logger;
}

/** Search result parameters the stand-in implements (all others are refused, see `search`). */
const RESULT_PARAMETERS = new Set(['_count', '_offset', '_sort', '_summary', '_total', '_format', '_pretty']);
/** Result parameters a real server has and this one does not; refused rather than ignored. */
const UNSUPPORTED_PARAMETERS = new Set(['_include', '_revinclude', '_elements', '_has', '_contained', '_containedType', '_list', '_query', '_filter', '_text', '_content']);
/** Page size when `_count` is absent (what HAPI and the medplum server use). */
const DEFAULT_PAGE_SIZE = 20;
/** Largest page; bounds the work one search can cause. */
const MAX_PAGE_SIZE = 1000;
/** `Patient?identifier=…`: a conditional reference (R4 http.html#trules). */
const CONDITIONAL_REFERENCE = /^[A-Z][A-Za-z]+\?/;
const FHIR_JSON = 'application/fhir+json; charset=utf-8';

type Json = Record<string, unknown>;
type Prefer = 'minimal' | 'representation' | 'OperationOutcome';

/** An early answer: a refusal found before the router ran. */
interface Refusal {
  readonly status: number;
  readonly outcome: OperationOutcome;
}

/** FHIR request handler of the EPJ stand-in. */
export class FhirService {
  private readonly router = new FhirRouter();
  private readonly opts: FhirServiceOptions;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(options: FhirServiceOptions) {
    this.opts = options;
  }

  /**
   * Serves one FHIR request. Never rejects: unexpected failures become a 500 OperationOutcome
   * (code `exception`), which is what the gateway must treat as retryable.
   */
  handle(req: FhirHttpRequest): Promise<FhirHttpResponse> {
    const run = this.queue.then(() => this.dispatch(req));
    this.queue = run.catch(() => undefined);
    return run.catch((err: unknown) => {
      this.opts.log.error({ err: redactCpr((err as Error)?.message ?? String(err)) }, 'EPJ stand-in failed on a request');
      return answer(500, errorOutcome('exception', 'Internal error in the EPJ stand-in'));
    });
  }

  private async dispatch(req: FhirHttpRequest): Promise<FhirHttpResponse> {
    const method = req.method === 'HEAD' ? 'GET' : req.method;
    const segments = req.path.split('/').filter(Boolean).map(decodeURIComponent);
    const [type, second, third, fourth] = segments;
    if (type === undefined) {
      if (method === 'POST') {
        return this.bundle(req);
      }
      return answer(405, errorOutcome('not-supported', 'Only Bundle POST (batch/transaction) is supported at the base URL'));
    }
    if (type === 'metadata' && segments.length === 1 && method === 'GET') {
      return { status: 200, headers: { 'content-type': FHIR_JSON }, body: this.capabilityStatement() };
    }
    if (!isResourceType(type)) {
      return answer(404, errorOutcome('not-supported', `Resource type "${type}" is not supported`));
    }
    switch (method) {
      case 'GET':
        if (segments.length === 1) {
          return this.search(type, new URLSearchParams(req.query));
        }
        if (segments.length === 2 && second !== '_search') {
          return this.read(`${type}/${second}`, req);
        }
        if (segments.length === 3 && third === '_history') {
          return this.read(`${type}/${second}/_history`, req);
        }
        if (segments.length === 4 && third === '_history') {
          return this.read(`${type}/${second}/_history/${fourth}`, req);
        }
        break;
      case 'POST':
        if (segments.length === 1) {
          return this.create(type, req);
        }
        if (segments.length === 2 && second === '_search') {
          const params = new URLSearchParams(req.query);
          if (isJsonObject(req.body)) {
            for (const [k, v] of Object.entries(req.body)) {
              for (const value of Array.isArray(v) ? v : [v]) {
                params.append(k, String(value));
              }
            }
          }
          return this.search(type, params);
        }
        break;
      case 'PUT':
        if (segments.length === 2 && second) {
          return this.update(type, second, req);
        }
        if (segments.length === 1) {
          return this.conditionalUpdate(type, req);
        }
        break;
      case 'DELETE':
        if (segments.length === 2 || (segments.length === 1 && req.query)) {
          return this.remove(segments.length === 2 ? `${type}/${second}` : `${type}?${req.query}`, type, req.query);
        }
        break;
      case 'PATCH':
        return answer(405, errorOutcome('not-supported', 'PATCH is not supported by the EPJ stand-in'));
      default:
        break;
    }
    return answer(405, errorOutcome('not-supported', `${method} is not supported on this path`));
  }

  // ---------------------------------------------------------------------------------------------
  // Reads and search

  private async read(url: string, req: FhirHttpRequest): Promise<FhirHttpResponse> {
    const r = await this.route('GET', url, undefined, {});
    if (r.status >= 400 || !r.resource) {
      return answer(r.status, normalizeOutcome(r.outcome));
    }
    if (r.resource.resourceType === 'Bundle') {
      return { status: 200, headers: { 'content-type': FHIR_JSON }, body: this.decorateHistory(r.resource) };
    }
    return this.resourceAnswer(200, r.resource, r.outcome, preferOf(req), false);
  }

  private async search(type: string, params: URLSearchParams): Promise<FhirHttpResponse> {
    const problem = checkSearchParameters(type, params, true);
    if (problem) {
      return answer(problem.status, problem.outcome);
    }
    const format = params.get('_format');
    if (format && !/json/i.test(format)) {
      return answer(406, errorOutcome('not-supported', 'Only JSON is supported (_format)'));
    }
    if (!params.has('_count') && params.get('_summary') !== 'count') {
      params.set('_count', String(DEFAULT_PAGE_SIZE));
    }
    normalizeBareReferences(type, params);
    const r = await this.route('GET', `${type}?${params.toString()}`, undefined, {});
    if (r.status >= 400 || r.resource?.resourceType !== 'Bundle') {
      return answer(r.status >= 400 ? r.status : 500, normalizeOutcome(r.outcome));
    }
    const bundle = r.resource;
    const base = this.opts.baseUrl();
    for (const entry of bundle.entry ?? []) {
      if (entry.resource?.id) {
        entry.fullUrl = `${base}/${entry.resource.resourceType}/${entry.resource.id}`;
      }
    }
    const count = Number(params.get('_count') ?? DEFAULT_PAGE_SIZE);
    const offset = Number(params.get('_offset') ?? 0);
    bundle.link = [{ relation: 'self', url: `${base}/${type}?${params.toString()}` }];
    if (count > 0 && bundle.total !== undefined && offset + count < bundle.total) {
      const next = new URLSearchParams(params);
      next.set('_offset', String(offset + count));
      bundle.link.push({ relation: 'next', url: `${base}/${type}?${next.toString()}` });
    }
    return { status: 200, headers: { 'content-type': FHIR_JSON }, body: bundle };
  }

  // ---------------------------------------------------------------------------------------------
  // Writes

  private async create(type: string, req: FhirHttpRequest): Promise<FhirHttpResponse> {
    const refused = this.screen(type, req.body, type);
    if (refused) {
      return answer(refused.status, refused.outcome);
    }
    const resource = stripServerFields(req.body as Json);
    const headers: IncomingHttpHeaders = {};
    const ifNoneExist = singleHeader(req.headers['if-none-exist']);
    if (ifNoneExist !== undefined) {
      const normalized = normalizeIfNoneExist(type, ifNoneExist);
      if ('status' in normalized) {
        return answer(normalized.status, normalized.outcome);
      }
      headers['if-none-exist'] = normalized.query;
    }
    const unresolved = await this.resolveConditionalReferences(resource, type);
    if (unresolved) {
      return answer(unresolved.status, unresolved.outcome);
    }
    const r = await this.route('POST', type, resource, headers);
    if (r.status >= 400 || !r.resource) {
      return answer(r.status, normalizeOutcome(r.outcome));
    }
    if (r.status === 201) {
      this.opts.stats.resourcesCreated += 1;
    } else if (ifNoneExist !== undefined) {
      this.opts.stats.duplicatesAvoided += 1;
    }
    return this.resourceAnswer(r.status, r.resource, r.outcome, preferOf(req), true);
  }

  private async update(type: string, id: string, req: FhirHttpRequest): Promise<FhirHttpResponse> {
    const refused = this.screen(type, req.body, type);
    if (refused) {
      return answer(refused.status, refused.outcome);
    }
    const resource = { ...(req.body as Json) };
    const unresolved = await this.resolveConditionalReferences(resource, type);
    if (unresolved) {
      return answer(unresolved.status, unresolved.outcome);
    }
    const existed = await this.exists(type, id);
    const headers: IncomingHttpHeaders = {};
    const ifMatch = singleHeader(req.headers['if-match']);
    if (ifMatch !== undefined) {
      headers['if-match'] = ifMatch;
    }
    const r = await this.route('PUT', `${type}/${encodeURIComponent(id)}`, resource, headers);
    if (r.status >= 400 || !r.resource) {
      return answer(r.status, normalizeOutcome(r.outcome));
    }
    // R4 http.html#update: "201 Created" when the update created the resource.
    const status = existed ? 200 : 201;
    if (status === 201) {
      this.opts.stats.resourcesCreated += 1;
    } else {
      this.opts.stats.resourcesUpdated += 1;
    }
    return this.resourceAnswer(status, r.resource, r.outcome, preferOf(req), true);
  }

  private async conditionalUpdate(type: string, req: FhirHttpRequest): Promise<FhirHttpResponse> {
    const params = new URLSearchParams(req.query);
    if ([...params.keys()].length === 0) {
      return answer(400, errorOutcome('invalid', 'PUT on a resource type needs search criteria (conditional update)'));
    }
    const problem = checkSearchParameters(type, params, false);
    if (problem) {
      return answer(problem.status, problem.outcome);
    }
    const refused = this.screen(type, req.body, type);
    if (refused) {
      return answer(refused.status, refused.outcome);
    }
    const resource = stripServerFields(req.body as Json, false);
    const unresolved = await this.resolveConditionalReferences(resource, type);
    if (unresolved) {
      return answer(unresolved.status, unresolved.outcome);
    }
    const r = await this.route('PUT', `${type}?${params.toString()}`, resource, {});
    if (r.status >= 400 || !r.resource) {
      return answer(r.status, normalizeOutcome(r.outcome));
    }
    if (r.status === 201) {
      this.opts.stats.resourcesCreated += 1;
    } else {
      this.opts.stats.resourcesUpdated += 1;
    }
    return this.resourceAnswer(r.status, r.resource, r.outcome, preferOf(req), true);
  }

  private async remove(url: string, type: string, query: string): Promise<FhirHttpResponse> {
    if (url.includes('?')) {
      const problem = checkSearchParameters(type, new URLSearchParams(query), false);
      if (problem) {
        return answer(problem.status, problem.outcome);
      }
    }
    const r = await this.route('DELETE', url, undefined, {});
    return answer(r.status, normalizeOutcome(r.outcome));
  }

  // ---------------------------------------------------------------------------------------------
  // Bundles

  private async bundle(req: FhirHttpRequest): Promise<FhirHttpResponse> {
    const body = req.body;
    if (!isJsonObject(body) || body.resourceType !== 'Bundle') {
      return answer(400, errorOutcome('invalid', 'POST to the base URL takes a Bundle'));
    }
    if (body.type !== 'batch' && body.type !== 'transaction') {
      return answer(400, errorOutcome('invalid', 'Only batch and transaction Bundles can be processed', 'Bundle.type'));
    }
    const transaction = body.type === 'transaction';
    const entries: Json[] = Array.isArray(body.entry) ? body.entry.map((e) => (isJsonObject(e) ? e : {})) : [];
    // The Bundle itself (without its entries' resources, validated one by one below).
    const shell = this.opts.validator.validate({ ...body, entry: entries.map(({ resource: _r, ...rest }) => rest) });
    if (!shell.valid) {
      return answer(shell.status, shell.outcome);
    }
    if (entries.length === 0) {
      return { status: 200, headers: { 'content-type': FHIR_JSON }, body: { resourceType: 'Bundle', type: `${body.type}-response` } as Bundle };
    }
    const refusals: (Refusal | undefined)[] = entries.map((entry, i) => this.screenEntry(entry, i));
    if (transaction) {
      return this.transaction(body, entries, refusals, req);
    }
    return this.batch(body, entries, refusals, req);
  }

  private async transaction(
    body: Json,
    entries: Json[],
    refusals: (Refusal | undefined)[],
    req: FhirHttpRequest,
  ): Promise<FhirHttpResponse> {
    const fullUrls = entries.map((e) => e.fullUrl).filter((u): u is string => typeof u === 'string');
    const duplicate = fullUrls.find((u, i) => fullUrls.indexOf(u) !== i);
    if (duplicate !== undefined) {
      return answer(400, errorOutcome('invalid', 'Duplicate fullUrl in transaction (bdl-7)', 'Bundle.entry.fullUrl'));
    }
    const refused = refusals.flatMap((r, i) => (r ? [{ r, i }] : []));
    if (refused.length > 0) {
      // R4 http.html#transaction: a transaction fails as a whole; report every bad entry at once
      // so the sender can fix them all, with the status of the first.
      const issues: OperationOutcomeIssue[] = refused.flatMap(({ r, i }) => entryIssues(r.outcome, entries[i], i));
      return answer(refused[0]?.r.status ?? 400, outcomeOf(issues));
    }
    const repo = this.opts.repository;
    repo.begin();
    let outcome: { commit: boolean; response: FhirHttpResponse };
    try {
      outcome = await this.runTransaction(body, entries, req);
    } catch (err) {
      repo.rollback();
      throw err;
    }
    if (outcome.commit) {
      repo.commit();
    } else {
      repo.rollback();
    }
    return outcome.response;
  }

  /** The body of a transaction, inside an open repository transaction; says whether to commit. */
  private async runTransaction(
    body: Json,
    entries: Json[],
    req: FhirHttpRequest,
  ): Promise<{ commit: boolean; response: FhirHttpResponse }> {
    const prepared: Json[] = [];
    const existedBefore: boolean[] = [];
    for (let i = 0; i < entries.length; i++) {
      const p = await this.prepareEntry(entries[i] ?? {}, i);
      if ('status' in p) {
        return { commit: false, response: answer(p.status, outcomeOf(entryIssues(p.outcome, entries[i], i))) };
      }
      prepared.push(p.entry);
      existedBefore.push(p.existed);
    }
    // Type stays "transaction" but no `config.transactions`: the router then processes the
    // entries in transaction order (DELETE, POST, PUT, GET) with urn:uuid rewriting, without its
    // 8-entry limit, and reports per entry; atomicity is ours (begin/commit/rollback).
    const r = await this.route('POST', '', { ...body, entry: prepared }, {});
    const result = r.resource;
    if (r.status >= 400 || result?.resourceType !== 'Bundle') {
      return { commit: false, response: answer(r.status >= 400 ? r.status : 500, normalizeOutcome(r.outcome)) };
    }
    const responses = result.entry ?? [];
    const failed = responses.findIndex((e) => !isSuccess(e.response?.status));
    if (failed >= 0) {
      const response = responses[failed]?.response;
      const status = Number.parseInt(response?.status ?? '400', 10) || 400;
      const outcome = response?.outcome ?? errorOutcome('processing', 'Entry failed');
      return { commit: false, response: answer(status, outcomeOf(entryIssues(outcome, entries[failed], failed))) };
    }
    const decorated = this.decorateResponses(entries, responses, existedBefore, preferOf(req));
    return {
      commit: true,
      response: {
        status: 200,
        headers: { 'content-type': FHIR_JSON },
        body: { resourceType: 'Bundle', type: 'transaction-response', entry: decorated },
      },
    };
  }

  private async batch(
    body: Json,
    entries: Json[],
    refusals: (Refusal | undefined)[],
    req: FhirHttpRequest,
  ): Promise<FhirHttpResponse> {
    const responses: BundleEntry[] = new Array<BundleEntry>(entries.length);
    const existedBefore: boolean[] = new Array<boolean>(entries.length).fill(false);
    const runnable: { index: number; entry: Json }[] = [];
    for (let i = 0; i < entries.length; i++) {
      const refusal = refusals[i];
      if (refusal) {
        responses[i] = { response: failedResponse(refusal.status, refusal.outcome) };
        continue;
      }
      const p = await this.prepareEntry(entries[i] ?? {}, i);
      if ('status' in p) {
        responses[i] = { response: failedResponse(p.status, p.outcome) };
        continue;
      }
      existedBefore[i] = p.existed;
      runnable.push({ index: i, entry: p.entry });
    }
    if (runnable.length > 0) {
      const r = await this.route('POST', '', { ...body, entry: runnable.map((x) => x.entry) }, {});
      const result = r.resource?.resourceType === 'Bundle' ? r.resource.entry ?? [] : [];
      runnable.forEach((x, k) => {
        responses[x.index] = result[k] ?? { response: failedResponse(r.status >= 400 ? r.status : 500, normalizeOutcome(r.outcome)) };
      });
    }
    const decorated = this.decorateResponses(entries, responses, existedBefore, preferOf(req));
    return { status: 200, headers: { 'content-type': FHIR_JSON }, body: { resourceType: 'Bundle', type: 'batch-response', entry: decorated } };
  }

  /** Structural and validation checks of one entry, before anything is written. */
  private screenEntry(entry: Json, index: number): Refusal | undefined {
    const request = entry.request;
    if (!isJsonObject(request) || typeof request.method !== 'string' || typeof request.url !== 'string') {
      return { status: 400, outcome: errorOutcome('required', 'Entry needs request.method and request.url', `Bundle.entry[${index}].request`) };
    }
    const method = request.method as HttpMethod;
    const route = this.router.find(method, request.url);
    if (!route || request.url.startsWith('$') || request.url.includes('/$')) {
      return { status: 400, outcome: errorOutcome('not-supported', `Unsupported request in entry: ${method}`, `Bundle.entry[${index}].request.url`) };
    }
    const urlType = request.url.split(/[/?]/)[0] ?? '';
    if (urlType && !isResourceType(urlType)) {
      return { status: 404, outcome: errorOutcome('not-supported', `Resource type "${urlType}" is not supported`, `Bundle.entry[${index}].request.url`) };
    }
    if (method === 'PATCH') {
      return { status: 405, outcome: errorOutcome('not-supported', 'PATCH is not supported by the EPJ stand-in') };
    }
    if (method === 'POST' || method === 'PUT') {
      return this.screen(urlType, entry.resource, urlType);
    }
    return undefined;
  }

  /**
   * Makes an entry ready for the router: copies it, strips server-owned fields, normalizes
   * `ifNoneExist`, resolves conditional references, and notes whether a `PUT Type/id` target
   * exists (so an update that creates can answer 201).
   */
  private async prepareEntry(entry: Json, index: number): Promise<{ entry: Json; existed: boolean } | Refusal> {
    const request = { ...(entry.request as Json) };
    const method = String(request.method);
    const url = String(request.url);
    const type = url.split(/[/?]/)[0] ?? '';
    const copy: Json = { ...entry, request };
    let existed = false;
    if (isJsonObject(entry.resource)) {
      const resource = method === 'POST' ? stripServerFields(entry.resource) : structuredClone(entry.resource);
      const unresolved = await this.resolveConditionalReferences(resource, type);
      if (unresolved) {
        return unresolved;
      }
      copy.resource = resource;
    }
    if (method === 'POST' && typeof request.ifNoneExist === 'string') {
      const normalized = normalizeIfNoneExist(type, request.ifNoneExist);
      if ('status' in normalized) {
        return { status: normalized.status, outcome: prefixAll(normalized.outcome, `Bundle.entry[${index}].request.ifNoneExist`) };
      }
      request.ifNoneExist = normalized.query;
    }
    if (url.includes('?') && (method === 'PUT' || method === 'DELETE')) {
      const problem = checkSearchParameters(type, new URLSearchParams(url.slice(url.indexOf('?') + 1)), false);
      if (problem) {
        return problem;
      }
    }
    if (method === 'PUT' && !url.includes('?')) {
      const [, id] = url.split('/');
      existed = id ? await this.exists(type, id) : false;
    }
    return { entry: copy, existed };
  }

  /** Adds Location/ETag/Last-Modified to entry responses, counts outcomes, applies Prefer. */
  private decorateResponses(
    entries: readonly Json[],
    responses: readonly BundleEntry[],
    existedBefore: readonly boolean[],
    prefer: Prefer,
  ): BundleEntry[] {
    const stats = this.opts.stats;
    return responses.map((r, i) => {
      const request = isJsonObject(entries[i]?.request) ? (entries[i]?.request as Json) : {};
      const method = String(request.method ?? '');
      let status = Number.parseInt(r?.response?.status ?? '500', 10);
      const resource = r?.resource;
      if (!isSuccess(String(status))) {
        return { response: failedResponse(status, r?.response?.outcome ?? errorOutcome('processing', 'Entry failed')) };
      }
      if (method === 'PUT' && status === 200 && !String(request.url ?? '').includes('?') && !existedBefore[i]) {
        status = 201;
      }
      if (method === 'POST' || method === 'PUT') {
        if (status === 201) {
          stats.resourcesCreated += 1;
        } else if (method === 'POST' && request.ifNoneExist !== undefined) {
          stats.duplicatesAvoided += 1;
        } else if (method === 'PUT') {
          stats.resourcesUpdated += 1;
        }
      }
      const response: BundleEntryResponse = { status: String(status) };
      const versionId = resource?.meta?.versionId;
      if (resource?.id && versionId) {
        response.location = `${resource.resourceType}/${resource.id}/_history/${versionId}`;
        response.etag = `W/"${versionId}"`;
        if (resource.meta?.lastUpdated) {
          response.lastModified = resource.meta.lastUpdated;
        }
      }
      const out: BundleEntry = { response };
      if (resource?.id) {
        out.fullUrl = `${this.opts.baseUrl()}/${resource.resourceType}/${resource.id}`;
      }
      if (resource && prefer === 'representation') {
        out.resource = resource;
      }
      return out;
    });
  }

  // ---------------------------------------------------------------------------------------------
  // Helpers

  /**
   * The checks every written resource goes through, in a real server's order: is it a resource
   * of the right type, does the `rejectAll` fault refuse it, is it valid.
   */
  private screen(expectedType: string, body: unknown, pathType: string): Refusal | undefined {
    if (!isJsonObject(body)) {
      return this.refuse({ status: 400, outcome: errorOutcome('structure', 'A resource body is required') });
    }
    if (body.resourceType !== expectedType) {
      return this.refuse({
        status: 400,
        outcome: errorOutcome('invalid', `Resource type in body does not match the URL (${pathType})`, 'resourceType'),
      });
    }
    if (this.opts.faults().rejectAll) {
      return this.refuse({
        status: 422,
        outcome: errorOutcome('business-rule', 'Refused by the EPJ stand-in: the rejectAll fault is active'),
      });
    }
    const verdict: ValidationVerdict = this.opts.validator.validate(body);
    if (!verdict.valid) {
      this.opts.log.info(
        {
          resourceType: expectedType,
          status: verdict.status,
          // Codes and element paths only: diagnostics may quote values from the resource.
          issues: (verdict.outcome.issue ?? []).map((i) => `${i.code}@${i.expression?.[0] ?? ''}`),
        },
        'resource refused by validation',
      );
      return this.refuse({ status: verdict.status, outcome: verdict.outcome });
    }
    return undefined;
  }

  private refuse(r: Refusal): Refusal {
    this.opts.stats.rejections += 1;
    return r;
  }

  /**
   * Replaces conditional references (`{"reference": "Patient?identifier=…"}`) in `resource`
   * with literal ones, as R4 http.html#trules asks of a server. No match is a 404, several a
   * 412. Messages name the element, never the search value: it is typically a CPR number.
   */
  private async resolveConditionalReferences(resource: Json, root: string): Promise<Refusal | undefined> {
    const found: { holder: Json; path: string }[] = [];
    const walk = (node: unknown, path: string): void => {
      if (Array.isArray(node)) {
        node.forEach((v, i) => walk(v, `${path}[${i}]`));
      } else if (isJsonObject(node)) {
        if (typeof node.reference === 'string' && CONDITIONAL_REFERENCE.test(node.reference)) {
          found.push({ holder: node, path });
        }
        for (const [k, v] of Object.entries(node)) {
          if (k !== 'contained' && typeof v === 'object') {
            walk(v, `${path}.${k}`);
          }
        }
      }
    };
    walk(resource, root);
    for (const { holder, path } of found) {
      const reference = String(holder.reference);
      const q = reference.indexOf('?');
      const type = reference.slice(0, q);
      if (!isResourceType(type)) {
        return { status: 400, outcome: errorOutcome('invalid', `Conditional reference to unknown type "${type}"`, path) };
      }
      const params = new URLSearchParams(reference.slice(q + 1));
      const problem = checkSearchParameters(type, params, false);
      if (problem) {
        return { status: problem.status, outcome: prefixAll(problem.outcome, path) };
      }
      const search = parseSearchRequest(type, Object.fromEntries([...params.keys()].map((k) => [k, params.getAll(k)])));
      search.count = 2;
      const matches = await this.opts.repository.searchResources(search);
      if (matches.length === 0) {
        return { status: 404, outcome: errorOutcome('not-found', `Conditional reference matched no ${type}`, path) };
      }
      if (matches.length > 1) {
        return { status: 412, outcome: errorOutcome('multiple-matches', `Conditional reference matched several ${type} resources`, path) };
      }
      holder.reference = `${type}/${matches[0]?.id ?? ''}`;
    }
    return undefined;
  }

  private async exists(type: string, id: string): Promise<boolean> {
    try {
      await this.opts.repository.readResource(type, id);
      return true;
    } catch {
      return false;
    }
  }

  private async route(
    method: HttpMethod,
    url: string,
    body: unknown,
    headers: IncomingHttpHeaders,
  ): Promise<{ status: number; outcome: OperationOutcome; resource: Resource | undefined }> {
    const [outcome, resource] = await this.router.handleRequest(
      { method, url, pathname: '', body, params: {}, query: {}, headers },
      this.opts.repository,
    );
    return { status: getStatus(outcome), outcome, resource };
  }

  private resourceAnswer(
    status: number,
    resource: Resource,
    outcome: OperationOutcome,
    prefer: Prefer,
    withLocation: boolean,
  ): FhirHttpResponse {
    const headers: Record<string, string> = { 'content-type': FHIR_JSON };
    const versionId = resource.meta?.versionId;
    if (versionId) {
      headers.etag = `W/"${versionId}"`;
    }
    if (resource.meta?.lastUpdated) {
      headers['last-modified'] = new Date(resource.meta.lastUpdated).toUTCString();
    }
    if (withLocation && resource.id && versionId) {
      headers.location = `${this.opts.baseUrl()}/${resource.resourceType}/${resource.id}/_history/${versionId}`;
    }
    switch (prefer) {
      case 'minimal':
        return { status, headers };
      case 'OperationOutcome':
        return { status, headers, body: normalizeOutcome(outcome) };
      default:
        return { status, headers, body: resource };
    }
  }

  private decorateHistory(bundle: Bundle): Bundle {
    const base = this.opts.baseUrl();
    for (const entry of bundle.entry ?? []) {
      if (entry.resource?.id) {
        entry.fullUrl = `${base}/${entry.resource.resourceType}/${entry.resource.id}`;
      }
    }
    return bundle;
  }

  private capabilityStatement(): CapabilityStatement {
    const interactions = ['read', 'vread', 'update', 'delete', 'history-instance', 'create', 'search-type'] as const;
    const types = ['Observation', 'Patient', 'Encounter', 'Device', 'DeviceMetric', 'Location'] as const;
    return {
      resourceType: 'CapabilityStatement',
      status: 'active',
      date: new Date().toISOString(),
      kind: 'instance',
      software: { name: 'mdi-gateway EPJ stand-in (@medplum/fhir-router 4.5.2)' },
      implementation: { description: 'In-memory FHIR R4 test server standing in for a hospital EPJ', url: this.opts.baseUrl() },
      fhirVersion: '4.0.1',
      format: ['application/fhir+json', 'json'],
      rest: [
        {
          mode: 'server',
          documentation: 'Every resource is validated against FHIR R4; Observations also against the R4 vital-signs profiles.',
          interaction: [{ code: 'transaction' }, { code: 'batch' }],
          resource: types.map((type) => ({
            type,
            ...(type === 'Observation'
              ? { supportedProfile: [...this.opts.validator.info.profiles] }
              : {}),
            interaction: interactions.map((code) => ({ code })),
            versioning: 'versioned',
            readHistory: true,
            updateCreate: true,
            conditionalCreate: true,
            conditionalUpdate: true,
            conditionalDelete: 'single',
            referencePolicy: ['literal', 'logical'],
          })),
        },
      ],
    };
  }
}

/** The R4 search parameters check: unknown or unsupported → 400 (HAPI's default behaviour). */
function checkSearchParameters(type: string, params: URLSearchParams, allowResultParameters: boolean): Refusal | undefined {
  for (const key of new Set(params.keys())) {
    const code = key.split(':')[0] ?? key;
    if (UNSUPPORTED_PARAMETERS.has(code) || key.includes('.')) {
      return { status: 400, outcome: errorOutcome('not-supported', `Search parameter "${key}" is not supported by the EPJ stand-in`) };
    }
    if (RESULT_PARAMETERS.has(code)) {
      if (!allowResultParameters) {
        return { status: 400, outcome: errorOutcome('invalid', `"${key}" is not allowed in search criteria here`) };
      }
      continue;
    }
    if (!getSearchParameter(type, code)) {
      return { status: 400, outcome: errorOutcome('not-supported', `Unknown search parameter "${code}" for ${type}`) };
    }
  }
  for (const name of ['_count', '_offset']) {
    const raw = params.get(name);
    if (raw !== null && !(/^\d+$/.test(raw) && Number(raw) <= (name === '_count' ? MAX_PAGE_SIZE : Number.MAX_SAFE_INTEGER))) {
      return { status: 400, outcome: errorOutcome('invalid', `${name} must be an integer${name === '_count' ? ` from 0 to ${MAX_PAGE_SIZE}` : ''}`) };
    }
  }
  return undefined;
}

/**
 * `patient=pat-123` means `patient=Patient/pat-123` when the parameter can only point at one
 * type (R4 search.html#reference); medplum's in-memory matcher compares whole reference strings,
 * so we spell the type out.
 */
function normalizeBareReferences(type: string, params: URLSearchParams): void {
  for (const key of new Set(params.keys())) {
    const param = getSearchParameter(type, key);
    if (param?.type !== 'reference' || param.target?.length !== 1) {
      continue;
    }
    const target = param.target[0];
    const values = params.getAll(key).map((v) =>
      v
        .split(',')
        .map((one) => (one && !one.includes('/') ? `${target}/${one}` : one))
        .join(','),
    );
    params.delete(key);
    values.forEach((v) => params.append(key, v));
  }
}

/**
 * R4: `If-None-Exist` / `ifNoneExist` hold the query part only. We also accept a leading
 * `Type?` (some clients send it), and refuse unknown parameters: an unknown parameter would
 * match nothing and silently turn every "conditional" create into a duplicate.
 */
function normalizeIfNoneExist(type: string, raw: string): { query: string } | Refusal {
  let query = raw.trim();
  if (query.startsWith(`${type}?`)) {
    query = query.slice(type.length + 1);
  } else if (query.startsWith('?')) {
    query = query.slice(1);
  }
  const params = new URLSearchParams(query);
  if ([...params.keys()].length === 0) {
    return { status: 400, outcome: errorOutcome('invalid', 'If-None-Exist is empty') };
  }
  const problem = checkSearchParameters(type, params, false);
  return problem ?? { query };
}

/** A copy of `resource` without what the server assigns on create (id, versionId, lastUpdated). */
function stripServerFields(resource: Json, dropId = true): Json {
  const copy = structuredClone(resource);
  if (dropId) {
    // R4 http.html#create: an id in a create is ignored by the server.
    delete copy.id;
  }
  if (isJsonObject(copy.meta)) {
    delete copy.meta.versionId;
    delete copy.meta.lastUpdated;
  }
  return copy;
}

function preferOf(req: FhirHttpRequest): Prefer {
  const prefer = singleHeader(req.headers.prefer) ?? '';
  const m = /return=(minimal|representation|OperationOutcome)/.exec(prefer);
  return (m?.[1] as Prefer | undefined) ?? 'representation';
}

function singleHeader(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

function isSuccess(status: string | undefined): boolean {
  const n = Number.parseInt(status ?? '', 10);
  return n >= 200 && n < 300;
}

function answer(status: number, outcome: OperationOutcome): FhirHttpResponse {
  return { status, headers: { 'content-type': FHIR_JSON }, body: outcome };
}

function failedResponse(status: number, outcome: OperationOutcome): BundleEntryResponse {
  return { status: String(status), outcome: normalizeOutcome(outcome) };
}

/** Issues of an entry's outcome, located inside the Bundle (`Bundle.entry[3].resource.status`). */
function entryIssues(outcome: OperationOutcome, entry: Json | undefined, index: number): OperationOutcomeIssue[] {
  const resource = entry && isJsonObject(entry.resource) ? entry.resource : undefined;
  const type = typeof resource?.resourceType === 'string' ? resource.resourceType : '';
  const located = type
    ? prefixExpressions(normalizeOutcome(outcome), type, `Bundle.entry[${index}].resource`)
    : normalizeOutcome(outcome);
  return (located.issue ?? []).map((i) =>
    i.expression ? i : issue(i.severity, i.code, i.diagnostics ?? '', `Bundle.entry[${index}]`),
  );
}

function prefixAll(outcome: OperationOutcome, expression: string): OperationOutcome {
  return outcomeOf((outcome.issue ?? []).map((i) => ({ ...i, expression: [expression] })));
}
