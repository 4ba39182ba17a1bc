/**
 * Binding corrections in the outbox (no HTTP): what a correction job does to entries in each
 * state, voids before re-issues, idempotence, and resuming after a crash (DB reopened).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { Quality, type PatientId } from '../../src/model/measurement.js';
import type { Observation } from '../../src/model/observation.js';
import { ChartingPolicy } from '../../src/sinks/fhir/charting.js';
import { ChartingSettings } from '../../src/sinks/fhir/config.js';
import { Corrections } from '../../src/sinks/fhir/corrections.js';
import { FhirErrorCode } from '../../src/sinks/fhir/errors.js';
import { itemIdentifier } from '../../src/sinks/fhir/observation.js';
import { NO_BINDINGS, Outbox, OutboxAction, OutboxState, type BindingLookup, type OutboxEntryView } from '../../src/sinks/fhir/outbox.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { commit, PATIENTS, reading, reattributeStore, tempStore } from '../helpers/fhir-harness.js';

const NAMESPACE = '3f2b6d1e-0c4a-4e7b-9d2a-6c1f0e9b8a70';
const MINUTE = 60_000;
const T0 = Date.UTC(2025, 2, 12, 9, 15, 0);
const DEVICE = '0123456789ABCDEF';
const [A, B, C] = PATIENTS as [PatientId, PatientId, PatientId];

const stores: SqliteStore[] = [];
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close();
});

function setup(charting: Record<string, unknown> = {}, file?: string) {
  const store = file === undefined ? tempStore().store : new SqliteStore({ file, synchronous: 'normal' });
  stores.push(store);
  const settings = ChartingSettings.parse({ intervalSeconds: 0, closeDelaySeconds: 0, ...charting });
  const policy = new ChartingPolicy(settings, (p) => store.pseudonym(p));
  const outbox = new Outbox(store, policy, {
    identifierNamespace: NAMESPACE,
    closeDelayMs: settings.closeDelaySeconds * 1000,
    holdMs: settings.holdMinutes * MINUTE,
    feedBatch: 1000,
    maxRows: 1000,
  });
  const corrections = new Corrections(store, outbox, {
    identifierNamespace: NAMESPACE,
    unbound: settings.unbound,
    holdMs: settings.holdMinutes * MINUTE,
    policy,
    keepMs: 24 * 60 * MINUTE,
  });
  return { store, outbox, corrections };
}

type Setup = ReturnType<typeof setup>;

/** Feeds and closes as a loop pass does. */
function pass({ outbox }: Setup, now: number, bindings: BindingLookup = NO_BINDINGS) {
  outbox.feed(now);
  return outbox.close(now, bindings);
}

/** Sends everything due and confirms it, as a working EPJ would. */
function confirmAll({ outbox }: Setup, now: number) {
  const claimed = outbox.claim(100, now);
  outbox.settle(
    claimed.map((c, i) => ({ id: c.id, kind: 'confirmed' as const, fhirId: `Observation/obs-${c.id}-${i}`, status: 201 })),
    now,
  );
  return claimed;
}

function entries(s: Setup): OutboxEntryView[] {
  return s.outbox.list(undefined, 1000).reverse();
}

function patientOf(s: Setup, entry: number): PatientId | null {
  const row = s.store.database().prepare('SELECT payload FROM fhir_outbox WHERE id = ?').pluck().get(entry) as string;
  return (JSON.parse(row) as { readings: { observation: { patient: PatientId | null } }[] }).readings[0]!.observation.patient;
}

/** Commits readings received at T0 (closing compares arrival with the pass time). */
const put = (s: Setup, observations: Observation[], received = T0) => commit(s.store, observations, received);

const change = (from: number, to: number) => ({ device: DEVICE, from, to, reason: 'binding corrected by token:test' });

describe('corrections: entries not sent yet', () => {
  it('queued: re-attributed in place (same identifier); outside the interval and other devices untouched', async () => {
    const s = setup();
    await put(s, [
      reading('hr', { time: T0 }),
      reading('hr', { time: T0 + MINUTE }),
      reading('hr', { time: T0 + 2 * MINUTE }),
      reading('hr', { time: T0 + MINUTE, deviceId: 'FEDCBA9876543210' }),
    ]);
    pass(s, T0 + 3 * MINUTE);
    const before = entries(s);
    expect(before.map((e) => e.state)).toEqual(['queued', 'queued', 'queued', 'queued']);
    reattributeStore(s.store, DEVICE, T0 + MINUTE, T0 + 2 * MINUTE, B);
    s.corrections.record(change(T0 + MINUTE, T0 + 2 * MINUTE), T0 + 3 * MINUTE);
    const [report] = s.corrections.run(T0 + 3 * MINUTE);
    expect(report).toMatchObject({ voids: 0, reattributed: 1, waiting: 0, done: true });
    const after = entries(s);
    expect(after.map((e) => [e.state, e.identifier])).toEqual(before.map((e) => [e.state, e.identifier]));
    expect(s.outbox.deliveryState(2)).toMatchObject({ state: OutboxState.QUEUED, entry: { entry: before[1]!.entry, revision: 0 } });
    expect(after.map((e) => patientOf(s, e.entry))).toEqual([A, B, A, A]);
    const claimed = s.outbox.claim(10, T0 + 3 * MINUTE);
    expect(claimed.find((c) => c.id === before[1]!.entry)!.item.readings[0]!.observation.patient).toEqual(B);
    expect(s.corrections.counts()).toMatchObject({ pending: 0, voidsPending: 0 });
  });

  it('queued → unbound: held (unbound: hold) or skipped UNBOUND (unbound: store)', async () => {
    for (const unbound of ['hold', 'store'] as const) {
      const s = setup({ unbound, holdMinutes: 5 });
      await put(s, [reading('hr', { time: T0 })]);
      pass(s, T0 + MINUTE);
      reattributeStore(s.store, DEVICE, T0, T0 + 1, null);
      s.corrections.record(change(T0, T0 + 1), T0 + MINUTE);
      expect(s.corrections.run(T0 + MINUTE)[0]).toMatchObject({ unbound: 1, done: true });
      const [e] = entries(s);
      expect(e!.state).toBe(unbound === 'hold' ? OutboxState.HELD : OutboxState.SKIPPED);
      if (unbound === 'store') expect(e!.errorCode).toBe(FhirErrorCode.UNBOUND);
      expect(patientOf(s, e!.entry)).toBeNull();
      expect(s.outbox.claim(10, T0 + MINUTE)).toHaveLength(0);
      expect(s.outbox.depth()).toBe(0);
    }
  });

  it('held and skipped-for-no-patient: queued with the patient bound now; other skips and rejected stay', async () => {
    const s = setup({ unbound: 'hold', holdMinutes: 1 });
    await put(s, [
      reading('hr', { time: T0, patient: null }), // held
      reading('hr', { time: T0 + 1000, patient: null }), // held, then skipped (no binding in time)
      reading('hr', { time: T0 + 2000 }), // queued, then rejected
    ]);
    pass(s, T0 + 5000);
    s.outbox.close(T0 + 5000 + MINUTE, NO_BINDINGS);
    const [held, skipped, rejected] = entries(s);
    expect([held!.state, skipped!.state]).toEqual([OutboxState.SKIPPED, OutboxState.SKIPPED]);
    // Make the first one held again to have one of each: a fresh hold at a later time.
    s.store.database().prepare(`UPDATE fhir_outbox SET state = 'held', hold_until = ?, error_code = NULL WHERE id = ?`).run(T0 + 10 * MINUTE, held!.entry);
    const [claimed] = s.outbox.claim(10, T0 + 2 * MINUTE);
    s.outbox.settle([{ id: claimed!.id, kind: 'rejected', code: FhirErrorCode.REJECTED, message: '422 business-rule' }], T0 + 2 * MINUTE);
    reattributeStore(s.store, DEVICE, T0, T0 + MINUTE, C);
    s.corrections.record(change(T0, T0 + MINUTE), T0 + 2 * MINUTE);
    expect(s.corrections.run(T0 + 2 * MINUTE)[0]).toMatchObject({ reattributed: 2, voids: 0, done: true });
    const after = entries(s);
    expect(after.map((e) => e.state)).toEqual([OutboxState.QUEUED, OutboxState.QUEUED, OutboxState.REJECTED]);
    expect(after[1]!.errorCode).toBeNull();
    expect(patientOf(s, rejected!.entry)).toEqual(A);
    const sent = s.outbox.claim(10, T0 + 2 * MINUTE);
    expect(sent.map((c) => c.item.readings[0]!.observation.patient)).toEqual([C, C]);
    expect(sent.every((c) => c.identifier.length === 36 && c.revision === 0)).toBe(true);
  });

  it('a duplicate skip is not revived', async () => {
    const s = setup();
    await put(s, [reading('hr', { time: T0 })]);
    pass(s, T0 + MINUTE);
    const [e] = entries(s);
    s.store.database().prepare(`UPDATE fhir_outbox SET state = 'skipped', error_code = ? WHERE id = ?`).run(FhirErrorCode.DUPLICATE, e!.entry);
    reattributeStore(s.store, DEVICE, T0, T0 + 1, B);
    s.corrections.record(change(T0, T0 + 1), T0 + MINUTE);
    s.corrections.run(T0 + MINUTE);
    expect(entries(s)[0]!.state).toBe(OutboxState.SKIPPED);
  });

  it('open and sending: the job waits, then applies once the entry settles', async () => {
    const s = setup({ intervalSeconds: 60, closeDelaySeconds: 5 });
    await put(s, [reading('hr', { time: T0 + 10_000 })], T0 + 10_000);
    pass(s, T0 + 20_000);
    expect(entries(s)[0]!.state).toBe(OutboxState.OPEN);
    reattributeStore(s.store, DEVICE, T0, T0 + 2 * MINUTE, B);
    s.corrections.record(change(T0, T0 + 2 * MINUTE), T0 + 20_000);
    expect(s.corrections.run(T0 + 20_000)[0]).toMatchObject({ waiting: 1, done: false });
    expect(s.corrections.counts().pending).toBe(1);
    // Closed (for A, as it was fed) and claimed: still waiting while in flight.
    pass(s, T0 + 2 * MINUTE);
    const [claimed] = s.outbox.claim(10, T0 + 2 * MINUTE);
    expect(claimed!.item.readings[0]!.observation.patient).toEqual(A);
    expect(s.corrections.run(T0 + 2 * MINUTE)[0]).toMatchObject({ waiting: 1, done: false });
    // The send failed transiently: back in the queue, so re-attributed in place.
    s.outbox.settle([{ id: claimed!.id, kind: 'retry', nextAttempt: 0, code: FhirErrorCode.UNAVAILABLE, message: '503' }], T0 + 2 * MINUTE);
    expect(s.corrections.run(T0 + 2 * MINUTE)[0]).toMatchObject({ reattributed: 1, waiting: 0, done: true });
    expect(s.corrections.counts().pending).toBe(0);
    expect(s.outbox.claim(10, T0 + 2 * MINUTE)[0]!.item.readings[0]!.observation.patient).toEqual(B);
  });
});

describe('corrections: entries already in the EPJ', () => {
  it('confirmed: void first, re-issue for the new patient (new identifier, revision 1) only once the void is confirmed; idempotent', async () => {
    const s = setup();
    await put(s, [reading('hr', { time: T0 }), reading('sys', { time: T0 }), reading('dia', { time: T0 })]);
    pass(s, T0 + MINUTE);
    const created = confirmAll(s, T0 + MINUTE);
    expect(created).toHaveLength(2);
    reattributeStore(s.store, DEVICE, T0, T0 + 1, B);
    s.corrections.record(change(T0, T0 + 1), T0 + MINUTE);
    expect(s.corrections.run(T0 + MINUTE)[0]).toMatchObject({ voids: 2, reattributed: 0, done: true });
    // Run again, and record the same change twice: nothing more.
    s.corrections.record(change(T0, T0 + 1), T0 + MINUTE);
    expect(s.corrections.run(T0 + MINUTE)[0]).toMatchObject({ voids: 0, done: true });
    expect(s.corrections.counts()).toMatchObject({ pending: 0, voidsPending: 2, voided: 0, reissued: 0 });
    expect(s.outbox.depth()).toBe(2);
    // Voids are not creates: the create sender never gets them; no re-issue exists yet.
    expect(s.outbox.claim(10, T0 + MINUTE)).toHaveLength(0);
    const voids = s.corrections.claimVoids(10, T0 + MINUTE);
    expect(voids.map((v) => v.target)).toEqual(created.map((c, i) => ({ fhirId: `Observation/obs-${c.id}-${i}`, identifier: c.identifier })));
    expect(voids.every((v) => v.item.readings[0]!.observation.patient!.value === A.value)).toBe(true);
    const view = entries(s).filter((e) => e.action === OutboxAction.VOID);
    expect(view.map((v) => [v.state, v.ref, v.identifier])).toEqual(created.map((c) => [OutboxState.SENDING, c.id, c.identifier]));
    // One void confirmed, one refused for good: a re-issue only for the first.
    s.corrections.settleVoids(
      [
        { id: voids[0]!.id, kind: 'confirmed', fhirId: voids[0]!.target.fhirId, status: 200 },
        { id: voids[1]!.id, kind: 'rejected', code: FhirErrorCode.REJECTED, message: '422 invariant', outcome: { resourceType: 'OperationOutcome', issue: [] } },
      ],
      T0 + MINUTE,
    );
    expect(s.corrections.counts()).toMatchObject({ voidsPending: 0, voided: 1, reissued: 1 });
    const reissues = s.outbox.claim(10, T0 + MINUTE);
    expect(reissues).toHaveLength(1);
    const r = reissues[0]!;
    expect(r.revision).toBe(1);
    expect(r.item.readings.map((x) => x.observation.patient)).toEqual(created[0]!.item.readings.map(() => B));
    expect(r.identifier).not.toBe(created[0]!.identifier);
    expect(r.identifier).toBe(itemIdentifier(r.item, NAMESPACE, 1));
    expect(itemIdentifier(r.item, NAMESPACE, 0)).toBe(created[0]!.identifier);
    const reissueView = s.outbox.entry(r.id)!;
    expect(reissueView).toMatchObject({ action: OutboxAction.CREATE, revision: 1, ref: voids[0]!.id });
    // Delivery state per reading follows the correction (the series lookup alone would not).
    const hr = created[0]!.item.readings[0]!.id;
    expect(s.outbox.deliveryState(hr)).toMatchObject({ state: OutboxState.SENDING, entry: { entry: r.id, revision: 1 } });
    const sys = created[1]!.item.readings[0]!.id;
    expect(s.outbox.deliveryState(sys)).toMatchObject({ state: 'voided', entry: { entry: voids[1]!.id, action: OutboxAction.VOID, state: OutboxState.REJECTED } });
    // The job again (e.g. the lead re-sends the change): the voided entry is not voided twice.
    s.corrections.record(change(T0, T0 + 1), T0 + MINUTE);
    // The re-issue (in flight) is for B already: nothing to wait for.
    expect(s.corrections.run(T0 + MINUTE)[0]).toMatchObject({ voids: 0, reattributed: 0, waiting: 0, done: true });
  });

  it('a second correction of a re-issue voids it and issues revision 2', async () => {
    const s = setup();
    await put(s, [reading('hr', { time: T0 })]);
    pass(s, T0 + MINUTE);
    const [first] = confirmAll(s, T0 + MINUTE);
    reattributeStore(s.store, DEVICE, T0, T0 + 1, B);
    s.corrections.record(change(T0, T0 + 1), T0 + MINUTE);
    s.corrections.run(T0 + MINUTE);
    const [v1] = s.corrections.claimVoids(10, T0 + MINUTE);
    s.corrections.settleVoids([{ id: v1!.id, kind: 'confirmed', fhirId: v1!.target.fhirId, status: 200 }], T0 + MINUTE);
    const [second] = confirmAll(s, T0 + MINUTE);
    expect(second!.revision).toBe(1);
    reattributeStore(s.store, DEVICE, T0, T0 + 1, C);
    s.corrections.record(change(T0, T0 + 1), T0 + 2 * MINUTE);
    expect(s.corrections.run(T0 + 2 * MINUTE)[0]).toMatchObject({ voids: 1, done: true });
    const [v2] = s.corrections.claimVoids(10, T0 + 2 * MINUTE);
    expect(v2!.target.identifier).toBe(second!.identifier);
    s.corrections.settleVoids([{ id: v2!.id, kind: 'confirmed', fhirId: v2!.target.fhirId, status: 200 }], T0 + 2 * MINUTE);
    const [third] = s.outbox.claim(10, T0 + 2 * MINUTE);
    expect(third!.revision).toBe(2);
    expect(third!.item.readings[0]!.observation.patient).toEqual(C);
    expect(new Set([first!.identifier, second!.identifier, third!.identifier]).size).toBe(3);
  });

  it('corrected to no patient: voided only', async () => {
    const s = setup();
    await put(s, [reading('hr', { time: T0 })]);
    pass(s, T0 + MINUTE);
    confirmAll(s, T0 + MINUTE);
    reattributeStore(s.store, DEVICE, T0, T0 + 1, null);
    s.corrections.record(change(T0, T0 + 1), T0 + MINUTE);
    expect(s.corrections.run(T0 + MINUTE)[0]).toMatchObject({ voids: 1 });
    const [v] = s.corrections.claimVoids(10, T0 + MINUTE);
    s.corrections.settleVoids([{ id: v!.id, kind: 'confirmed', fhirId: v!.target.fhirId, status: 200 }], T0 + MINUTE);
    expect(s.corrections.counts()).toMatchObject({ voided: 1, reissued: 0, voidsPending: 0 });
    expect(s.outbox.deliveryState(1)).toMatchObject({ state: 'voided', entry: { action: OutboxAction.VOID, state: OutboxState.CONFIRMED } });
    expect(s.outbox.claim(10, T0 + MINUTE)).toHaveLength(0);
    expect(s.outbox.depth()).toBe(0);
  });

  it('patient unchanged: nothing happens', async () => {
    const s = setup();
    await put(s, [reading('hr', { time: T0 })]);
    pass(s, T0 + MINUTE);
    confirmAll(s, T0 + MINUTE);
    s.corrections.record(change(T0 - MINUTE, T0 + MINUTE), T0 + MINUTE);
    expect(s.corrections.run(T0 + MINUTE)[0]).toMatchObject({ voids: 0, reattributed: 0, unbound: 0, done: true });
    expect(s.corrections.claimVoids(10, T0 + MINUTE)).toHaveLength(0);
    expect(s.corrections.record(change(T0, T0), T0)).toBeNull(); // empty interval: no job
  });
});

describe('corrections: one value per interval and patient', () => {
  it('an interval the corrected patient has an entry for already: not sent again (queued: skipped; confirmed: voided, not re-issued)', async () => {
    for (const sent of [false, true]) {
      const s = setup({ intervalSeconds: 60, closeDelaySeconds: 5 });
      // The binding changed at T0+30 s; the correction moves it back to T0.
      await put(s, [reading('hr', { time: T0 + 10_000, value: 70, patient: A }), reading('hr', { time: T0 + 40_000, value: 75, patient: B })]);
      pass(s, T0 + 2 * MINUTE);
      const [forA, forB] = entries(s);
      if (sent) confirmAll(s, T0 + 2 * MINUTE);
      reattributeStore(s.store, DEVICE, T0, T0 + 30_000, B);
      s.corrections.record(change(T0, T0 + 30_000), T0 + 2 * MINUTE);
      const [report] = s.corrections.run(T0 + 2 * MINUTE);
      if (!sent) {
        expect(report).toMatchObject({ merged: 1, reattributed: 0, voids: 0 });
        expect(s.outbox.entry(forA!.entry)).toMatchObject({ state: OutboxState.SKIPPED, errorCode: FhirErrorCode.DUPLICATE });
        expect(s.outbox.claim(10, T0 + 2 * MINUTE).map((c) => c.id)).toEqual([forB!.entry]);
      } else {
        expect(report).toMatchObject({ merged: 0, voids: 1 });
        const [v] = s.corrections.claimVoids(10, T0 + 2 * MINUTE);
        s.corrections.settleVoids([{ id: v!.id, kind: 'confirmed', fhirId: v!.target.fhirId, status: 200 }], T0 + 2 * MINUTE);
        expect(s.corrections.counts()).toMatchObject({ voided: 1, reissued: 0 });
        expect(s.outbox.claim(10, T0 + 2 * MINUTE)).toHaveLength(0);
      }
    }
  });
});

describe('corrections: readings no entry took', () => {
  it('no patient before (unbound: store): charted for the patient bound now, one entry per interval; once', async () => {
    const s = setup({ intervalSeconds: 60, closeDelaySeconds: 5 });
    await put(s, [
      reading('hr', { time: T0 + 10_000, value: 70, patient: null }),
      reading('hr', { time: T0 + 40_000, value: 74, patient: null }),
      reading('hr', { time: T0 + MINUTE + 5_000, value: 80, patient: null }),
      reading('hr', { time: T0 + 2 * MINUTE, value: 90, patient: null }), // outside the correction
    ]);
    pass(s, T0 + 5 * MINUTE);
    expect(entries(s)).toHaveLength(0);
    reattributeStore(s.store, DEVICE, T0, T0 + 2 * MINUTE, B);
    s.corrections.record(change(T0, T0 + 2 * MINUTE), T0 + 5 * MINUTE);
    expect(s.corrections.run(T0 + 5 * MINUTE)[0]).toMatchObject({ charted: 2, voids: 0, done: true });
    s.corrections.record(change(T0, T0 + 2 * MINUTE), T0 + 5 * MINUTE);
    expect(s.corrections.run(T0 + 5 * MINUTE)[0]).toMatchObject({ charted: 0, done: true });
    const claimed = s.outbox.claim(10, T0 + 5 * MINUTE);
    expect(claimed.map((c) => [c.item.readings[0]!.observation.value, c.item.readings[0]!.observation.patient, c.revision])).toEqual([
      [74, B, 0],
      [80, B, 0],
    ]);
    expect(claimed.every((c) => c.identifier === itemIdentifier(c.item, NAMESPACE, 0))).toBe(true);
  });

  it('a reading flagged PATIENT_MISMATCH stays out of the chart after a correction (the store keeps the flag)', async () => {
    const s = setup();
    await put(s, [reading('sys', { time: T0, flags: Quality.PATIENT_MISMATCH }), reading('dia', { time: T0, flags: Quality.PATIENT_MISMATCH })]);
    pass(s, T0 + MINUTE);
    expect(entries(s)).toHaveLength(0);
    reattributeStore(s.store, DEVICE, T0, T0 + 1, B);
    s.corrections.record(change(T0, T0 + 1), T0 + MINUTE);
    expect(s.corrections.run(T0 + MINUTE)[0]).toMatchObject({ charted: 0, done: true });
    expect(s.outbox.claim(10, T0 + MINUTE)).toHaveLength(0);
    // The same readings without the flag are charted: the flag is what keeps them out.
    s.store.database().prepare('UPDATE observations SET flags = 0').run();
    s.corrections.record(change(T0, T0 + 1), T0 + MINUTE);
    expect(s.corrections.run(T0 + MINUTE)[0]).toMatchObject({ charted: 1 });
    const [bp] = s.outbox.claim(10, T0 + MINUTE);
    expect(bp!.item.kind).toBe('bp');
    expect(bp!.item.readings.map((r) => [r.observation.metric, r.observation.patient])).toEqual([
      ['MDC_PRESS_BLD_NONINV_SYS', B],
      ['MDC_PRESS_BLD_NONINV_DIA', B],
    ]);
  });

  it('voided to "no patient", then given back: charted again under the next revision', async () => {
    const s = setup();
    await put(s, [reading('hr', { time: T0 })]);
    pass(s, T0 + MINUTE);
    const [first] = confirmAll(s, T0 + MINUTE);
    reattributeStore(s.store, DEVICE, T0, T0 + 1, null);
    s.corrections.record(change(T0, T0 + 1), T0 + MINUTE);
    expect(s.corrections.run(T0 + MINUTE)[0]).toMatchObject({ voids: 1, charted: 0 });
    const [v] = s.corrections.claimVoids(10, T0 + MINUTE);
    // While the void is not confirmed, the reading is not free: no second chart entry.
    reattributeStore(s.store, DEVICE, T0, T0 + 1, A);
    s.corrections.record(change(T0, T0 + 1), T0 + MINUTE);
    expect(s.corrections.run(T0 + MINUTE)[0]).toMatchObject({ voids: 0, charted: 0 });
    reattributeStore(s.store, DEVICE, T0, T0 + 1, null);
    s.corrections.settleVoids([{ id: v!.id, kind: 'confirmed', fhirId: v!.target.fhirId, status: 200 }], T0 + MINUTE);
    expect(s.outbox.claim(10, T0 + MINUTE)).toHaveLength(0);
    reattributeStore(s.store, DEVICE, T0, T0 + 1, A);
    s.corrections.record(change(T0, T0 + 1), T0 + 2 * MINUTE);
    expect(s.corrections.run(T0 + 2 * MINUTE)[0]).toMatchObject({ voids: 0, charted: 1 });
    const [again] = s.outbox.claim(10, T0 + 2 * MINUTE);
    expect(again!.revision).toBe(1);
    expect(again!.identifier).not.toBe(first!.identifier);
    expect(again!.item.readings[0]!.observation.patient).toEqual(A);
  });

  it('readings the feeder has not read yet are left to it', async () => {
    const s = setup();
    await put(s, [reading('hr', { time: T0, patient: null })]);
    reattributeStore(s.store, DEVICE, T0, T0 + 1, B);
    s.corrections.record(change(T0, T0 + 1), T0 + MINUTE);
    expect(s.corrections.run(T0 + MINUTE)[0]).toMatchObject({ charted: 0, done: true });
    pass(s, T0 + MINUTE);
    const claimed = s.outbox.claim(10, T0 + MINUTE);
    expect(claimed.map((c) => [c.item.readings[0]!.observation.patient, c.revision])).toEqual([[B, 0]]);
  });
});

describe('corrections: failures', () => {
  it('a job that fails is rolled back and retried without holding up the others', async () => {
    const s = setup();
    const other = 'FEDCBA9876543210';
    await put(s, [reading('hr', { time: T0 }), reading('hr', { time: T0, deviceId: other })]);
    pass(s, T0 + MINUTE);
    const [broken, fine] = entries(s);
    reattributeStore(s.store, DEVICE, T0, T0 + 1, B);
    reattributeStore(s.store, other, T0, T0 + 1, B);
    s.corrections.record(change(T0, T0 + 1), T0 + MINUTE);
    s.corrections.record({ ...change(T0, T0 + 1), device: other }, T0 + MINUTE);
    const db = s.store.database();
    const payload = db.prepare('SELECT payload FROM fhir_outbox WHERE id = ?').pluck().get(broken!.entry) as string;
    db.prepare('UPDATE fhir_outbox SET payload = ? WHERE id = ?').run('{not json', broken!.entry);
    const failed: number[] = [];
    const reports = s.corrections.run(T0 + MINUTE, undefined, (job) => failed.push(job));
    expect(failed).toEqual([1]);
    expect(reports).toMatchObject([{ job: 2, reattributed: 1, done: true }]);
    expect(patientOf(s, fine!.entry)).toEqual(B);
    expect(s.corrections.counts().pending).toBe(1);
    expect(() => s.corrections.run(T0 + MINUTE)).toThrow(SyntaxError);
    db.prepare('UPDATE fhir_outbox SET payload = ? WHERE id = ?').run(payload, broken!.entry);
    expect(s.corrections.run(T0 + MINUTE)).toMatchObject([{ job: 1, reattributed: 1, done: true }]);
  });
});

describe('corrections: crashes', () => {
  it('a recorded job survives a crash before it ran; a void in flight is sent again after one; the re-issue comes once', async () => {
    const first = setup();
    const file = first.store.database().name;
    await put(first, [reading('hr', { time: T0 }), reading('spo2', { time: T0 })]);
    pass(first, T0 + MINUTE);
    confirmAll(first, T0 + MINUTE);
    reattributeStore(first.store, DEVICE, T0, T0 + 1, B);
    first.corrections.record(change(T0, T0 + 1), T0 + MINUTE);
    first.store.database().close(); // crash: nothing ran

    const second = setup({}, file);
    expect(second.corrections.counts().pending).toBe(1);
    expect(second.corrections.run(T0 + 2 * MINUTE)[0]).toMatchObject({ voids: 2, done: true });
    const [v] = second.corrections.claimVoids(1, T0 + 2 * MINUTE);
    second.corrections.settleVoids([{ id: v!.id, kind: 'confirmed', fhirId: v!.target.fhirId, status: 200 }], T0 + 2 * MINUTE);
    const [inFlight] = second.corrections.claimVoids(1, T0 + 2 * MINUTE);
    expect(inFlight).toBeDefined();
    second.store.database().close(); // crash with the second void in flight

    const third = setup({}, file);
    expect(third.outbox.recover()).toBe(1);
    const again = third.corrections.claimVoids(10, T0 + 3 * MINUTE);
    expect(again.map((e) => e.id)).toEqual([inFlight!.id]);
    third.corrections.settleVoids([{ id: inFlight!.id, kind: 'confirmed', fhirId: inFlight!.target.fhirId, status: 200 }], T0 + 3 * MINUTE);
    // Running the (finished) job or settling the same void again changes nothing.
    third.corrections.record(change(T0, T0 + 1), T0 + 3 * MINUTE);
    third.corrections.run(T0 + 3 * MINUTE);
    third.corrections.settleVoids([{ id: inFlight!.id, kind: 'confirmed', fhirId: inFlight!.target.fhirId, status: 200 }], T0 + 3 * MINUTE);
    const all = entries(third);
    expect(all.filter((e) => e.action === OutboxAction.VOID).map((e) => e.state)).toEqual([OutboxState.CONFIRMED, OutboxState.CONFIRMED]);
    const reissues = all.filter((e) => e.revision === 1);
    expect(reissues).toHaveLength(2);
    expect(reissues.every((e) => e.state === OutboxState.QUEUED && patientOf(third, e.entry)?.value === B.value)).toBe(true);
  });
});
