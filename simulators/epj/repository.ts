/**
 * The EPJ stand-in's store: an in-memory {@link FhirRepository} for `@medplum/fhir-router`.
 *
 * It follows medplum's own `MemoryRepository` (same search matching via `@medplum/core`), and
 * fixes what that class lacks for a server that stands in for a hospital record:
 *
 * - Transactions: `MemoryRepository.withTransaction` just runs the callback, so a transaction
 *   that fails half-way leaves its first writes behind. Here writes inside a transaction are
 *   journalled and undone on failure ({@link EpjRepository.begin} / `commit` / `rollback`).
 * - Versions: `MemoryRepository` uses random UUIDs as `versionId`; real servers count
 *   (`ETag: W/"1"`, `W/"2"`, …), and so does this one.
 * - History: `MemoryRepository.readHistory` reverses the stored history array in place on every
 *   call (4.5.2), scrambling it; here history is kept oldest-first and copied on read.
 * - Deletes leave a tombstone, so a read after a delete answers 410 Gone as R4 asks.
 * - Ids can come from a seeded generator, so a run with a seed is reproducible.
 *
 * Concurrency: every method is safe only when calls are serialized. The HTTP layer runs one
 * FHIR request at a time (see `fhir-service.ts`), which is also what makes conditional create
 * atomic: the search and the create of one request cannot interleave with another request.
 */
import {
  badRequest,
  deepClone,
  evalFhirPath,
  getSearchParameter,
  gone,
  matchesSearchRequest,
  notFound,
  OperationOutcomeError,
  Operator,
  preconditionFailed,
  conflict,
} from '@medplum/core';
import type { SearchRequest, SortRule, WithId } from '@medplum/core';
import { FhirRepository } from '@medplum/fhir-router';
import type { CreateResourceOptions, UpdateResourceOptions } from '@medplum/fhir-router';
import type { Bundle, BundleEntry, Reference, Resource } from '@medplum/fhirtypes';
import { randomUUID } from 'node:crypto';

/** What the repository holds for one logical resource. */
interface Slot {
  /** Current version, or undefined after a delete (tombstone). */
  current: WithId<Resource> | undefined;
  /** Every version ever written, oldest first. */
  readonly history: WithId<Resource>[];
  /** Highest version number used, so a re-create after delete continues the count. */
  lastVersion: number;
}

/** Undo information for one slot touched inside a transaction. */
interface JournalEntry {
  readonly key: string;
  /** The slot as it was before the transaction touched it, or undefined if it did not exist. */
  readonly before: { current: WithId<Resource> | undefined; historyLength: number; lastVersion: number } | undefined;
}

/** Options for {@link EpjRepository}. */
export interface EpjRepositoryOptions {
  /** Produces resource ids; defaults to random UUIDs. */
  readonly generateId?: () => string;
  /** Clock for `meta.lastUpdated`; defaults to `Date.now`. */
  readonly now?: () => number;
}

/** In-memory FHIR repository with transactions, counted versions and tombstones. */
export class EpjRepository extends FhirRepository<undefined> {
  private readonly slots = new Map<string, Slot>();
  /**
   * `Type|system|value` (and `Type|*|value`) → keys of slots whose resource had that identifier
   * at some version. A superset: candidates are always checked against the search again. It
   * turns the conditional create the gateway sends for every Observation (`identifier=…`) from
   * a scan of every stored resource into a lookup, so the stand-in does not slow down as it
   * fills (bench/outbox.bench.ts).
   */
  private readonly identifierIndex = new Map<string, Set<string>>();
  private readonly idSource: () => string;
  private readonly now: () => number;
  private journal: JournalEntry[] | undefined;

  constructor(options: EpjRepositoryOptions = {}) {
    super();
    this.idSource = options.generateId ?? randomUUID;
    this.now = options.now ?? Date.now;
  }

  /** Removes every resource and all history. */
  clear(): void {
    this.slots.clear();
    this.identifierIndex.clear();
    this.journal = undefined;
  }

  /** Number of current (not deleted) resources per resource type. */
  countByType(): Record<string, number> {
    const counts: Record<string, number> = {};
    for (const slot of this.slots.values()) {
      if (slot.current) {
        counts[slot.current.resourceType] = (counts[slot.current.resourceType] ?? 0) + 1;
      }
    }
    return counts;
  }

  /** Starts journalling writes. Transactions do not nest: a second begin() is an error. */
  begin(): void {
    if (this.journal) {
      throw new Error('EpjRepository: a transaction is already open');
    }
    this.journal = [];
  }

  /** Keeps every write since {@link begin}. */
  commit(): void {
    this.journal = undefined;
  }

  /** Undoes every write since {@link begin}, newest first. */
  rollback(): void {
    const journal = this.journal ?? [];
    this.journal = undefined;
    for (const entry of [...journal].reverse()) {
      if (!entry.before) {
        this.slots.delete(entry.key);
        continue;
      }
      const slot = this.slots.get(entry.key);
      if (slot) {
        slot.current = entry.before.current;
        slot.history.length = entry.before.historyLength;
        slot.lastVersion = entry.before.lastVersion;
      }
    }
  }

  override setMode(): void {
    // One store; no reader/writer split.
  }

  override generateId(): string {
    return this.idSource();
  }

  override async createResource<T extends Resource>(resource: T, _options?: CreateResourceOptions): Promise<WithId<T>> {
    const id = resource.id ?? this.generateId();
    if (this.slots.get(key(resource.resourceType, id))?.current) {
      throw new OperationOutcomeError(conflict(`${resource.resourceType}/${id} already exists`));
    }
    return this.write({ ...resource, id });
  }

  override async updateResource<T extends Resource>(resource: T, options?: UpdateResourceOptions): Promise<WithId<T>> {
    if (!resource.id) {
      throw new OperationOutcomeError(badRequest('Missing id'));
    }
    if (options?.ifMatch !== undefined) {
      const current = this.slots.get(key(resource.resourceType, resource.id))?.current;
      if (!current) {
        throw new OperationOutcomeError(notFound);
      }
      if (current.meta?.versionId !== options.ifMatch) {
        throw new OperationOutcomeError(preconditionFailed);
      }
    }
    return this.write(resource as WithId<T>);
  }

  override async patchResource<T extends Resource>(): Promise<WithId<T>> {
    // The gateway never patches; a silent partial implementation would be worse than none.
    throw new OperationOutcomeError(badRequest('PATCH is not supported by the EPJ stand-in'));
  }

  override async readResource<T extends Resource>(resourceType: string, id: string): Promise<WithId<T>> {
    const slot = this.slots.get(key(resourceType, id));
    if (!slot) {
      throw new OperationOutcomeError(notFound);
    }
    if (!slot.current) {
      throw new OperationOutcomeError(gone);
    }
    return deepClone(slot.current) as WithId<T>;
  }

  override async readReference<T extends Resource>(reference: Reference<T>): Promise<WithId<T>> {
    const parts = reference.reference?.split('/');
    if (parts?.length !== 2 || !parts[0] || !parts[1]) {
      throw new OperationOutcomeError(badRequest('Invalid reference'));
    }
    return this.readResource<T>(parts[0], parts[1]);
  }

  override async readReferences<T extends Resource>(references: readonly Reference<T>[]): Promise<(T | Error)[]> {
    return Promise.all(
      references.map((r) => this.readReference(r).catch((err: unknown) => (err instanceof Error ? err : new Error(String(err))))),
    );
  }

  override async readHistory<T extends Resource>(
    resourceType: string,
    id: string,
    options?: { offset?: number; limit?: number },
  ): Promise<Bundle<WithId<T>>> {
    const slot = this.slots.get(key(resourceType, id));
    if (!slot) {
      throw new OperationOutcomeError(notFound);
    }
    const newestFirst = [...slot.history].reverse();
    const offset = options?.offset ?? 0;
    const page = newestFirst.slice(offset, options?.limit === undefined ? undefined : offset + options.limit);
    return {
      resourceType: 'Bundle',
      type: 'history',
      total: newestFirst.length,
      entry: page.map((version) => ({ resource: deepClone(version) as WithId<T> })),
    };
  }

  override async readVersion<T extends Resource>(resourceType: string, id: string, versionId: string): Promise<WithId<T>> {
    const version = this.slots.get(key(resourceType, id))?.history.find((v) => v.meta?.versionId === versionId);
    if (!version) {
      throw new OperationOutcomeError(notFound);
    }
    return deepClone(version) as WithId<T>;
  }

  override async search<T extends Resource>(searchRequest: SearchRequest<T>): Promise<Bundle<WithId<T>>> {
    let matches: WithId<Resource>[] = [];
    for (const slot of this.candidates(searchRequest)) {
      const current = slot.current;
      if (current?.resourceType === searchRequest.resourceType && matchesSearchRequest(current, searchRequest)) {
        matches.push(current);
      }
    }
    for (const rule of [...(searchRequest.sortRules ?? [])].reverse()) {
      // Stable sorts applied last-rule-first give the first rule precedence.
      matches = matches.sort((a, b) => compareBy(a, b, rule));
    }
    const total = matches.length;
    const offset = searchRequest.offset ?? 0;
    const page = matches.slice(offset, searchRequest.count === undefined ? undefined : offset + searchRequest.count);
    const entry: BundleEntry<WithId<T>>[] = page.map((r) => ({
      resource: deepClone(r) as WithId<T>,
      search: { mode: 'match' },
    }));
    return { resourceType: 'Bundle', type: 'searchset', total, ...(entry.length > 0 ? { entry } : {}) };
  }

  override async searchByReference<T extends Resource>(
    searchRequest: SearchRequest<T>,
    referenceField: string,
    references: string[],
  ): Promise<Record<string, WithId<T>[]>> {
    const results: Record<string, WithId<T>[]> = {};
    for (const reference of references) {
      const filters = [...(searchRequest.filters ?? []), { code: referenceField, operator: Operator.EQUALS, value: reference }];
      const bundle = await this.search({ ...searchRequest, filters });
      results[reference] = (bundle.entry ?? []).flatMap((e) => (e.resource ? [e.resource] : []));
    }
    return results;
  }

  override async deleteResource(resourceType: string, id: string): Promise<void> {
    const k = key(resourceType, id);
    const slot = this.slots.get(k);
    if (!slot) {
      throw new OperationOutcomeError(notFound);
    }
    if (!slot.current) {
      return; // R4 http.html#delete: deleting a deleted resource succeeds (idempotent).
    }
    this.remember(k, slot);
    slot.current = undefined;
  }

  override async withTransaction<TResult>(callback: (client: undefined) => Promise<TResult>): Promise<TResult> {
    if (this.journal) {
      // Already inside an EPJ transaction (e.g. a conditional create within a transaction
      // Bundle): the outer transaction decides about commit or rollback.
      return callback(undefined);
    }
    this.begin();
    try {
      const result = await callback(undefined);
      this.commit();
      return result;
    } catch (err) {
      this.rollback();
      throw err;
    }
  }

  /** The slots a search can match: by the identifier index when the search is `identifier=…` only. */
  private candidates(searchRequest: SearchRequest): Iterable<Slot> {
    const filters = searchRequest.filters ?? [];
    const only = filters.length === 1 ? filters[0]! : undefined;
    if (only?.code !== 'identifier' || only.operator !== Operator.EQUALS || only.value.includes(',')) {
      return this.slots.values();
    }
    const bar = only.value.indexOf('|');
    const indexKey =
      bar < 0 ? `${searchRequest.resourceType}|*|${only.value}` : `${searchRequest.resourceType}|${only.value}`;
    const keys = this.identifierIndex.get(indexKey.toLowerCase());
    const out: Slot[] = [];
    for (const k of keys ?? []) {
      const slot = this.slots.get(k);
      if (slot) out.push(slot);
    }
    return out;
  }

  private indexIdentifiers(slotKey: string, resource: Resource): void {
    const identifiers = (resource as { identifier?: { system?: string; value?: string }[] }).identifier;
    if (!Array.isArray(identifiers)) return;
    for (const id of identifiers) {
      if (typeof id?.value !== 'string') continue;
      for (const k of [`${resource.resourceType}|${id.system ?? ''}|${id.value}`, `${resource.resourceType}|*|${id.value}`]) {
        // Lower case: the index must be a superset of what the (case-insensitive) matcher accepts.
        const lower = k.toLowerCase();
        let set = this.identifierIndex.get(lower);
        if (!set) this.identifierIndex.set(lower, (set = new Set()));
        set.add(slotKey);
      }
    }
  }

  /** Stores `resource` as the next version of its slot (version 1 for a new resource). */
  private write<T extends Resource>(resource: WithId<T>): WithId<T> {
    const k = key(resource.resourceType, resource.id);
    let slot = this.slots.get(k);
    if (slot) {
      this.remember(k, slot);
    } else {
      this.journal?.push({ key: k, before: undefined });
      slot = { current: undefined, history: [], lastVersion: 0 };
      this.slots.set(k, slot);
    }
    slot.lastVersion += 1;
    const stored = deepClone(resource);
    // The server owns versionId and lastUpdated; whatever the client sent is replaced.
    stored.meta = {
      ...stored.meta,
      versionId: String(slot.lastVersion),
      lastUpdated: new Date(this.now()).toISOString(),
    };
    slot.current = stored;
    slot.history.push(stored);
    this.indexIdentifiers(k, stored);
    return deepClone(stored);
  }

  /** Journals a slot's state the first time a transaction touches it. */
  private remember(k: string, slot: Slot): void {
    if (this.journal && !this.journal.some((e) => e.key === k)) {
      this.journal.push({
        key: k,
        before: { current: slot.current, historyLength: slot.history.length, lastVersion: slot.lastVersion },
      });
    }
  }
}

function key(resourceType: string, id: string): string {
  return `${resourceType}/${id}`;
}

function compareBy(a: Resource, b: Resource, rule: SortRule): number {
  const expression = getSearchParameter(a.resourceType, rule.code)?.expression;
  if (!expression) {
    return 0;
  }
  const left = JSON.stringify(evalFhirPath(expression, a));
  const right = JSON.stringify(evalFhirPath(expression, b));
  return left.localeCompare(right) * (rule.descending ? -1 : 1);
}
