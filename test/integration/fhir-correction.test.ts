/**
 * Binding corrections end to end against the EPJ stand-in (a validating FHIR R4 server over
 * HTTP): what was charted for the wrong patient ends up `entered-in-error`, the readings are
 * charted again for the right patient under new identifiers, and restarts, EPJ outages and
 * version conflicts neither lose nor duplicate anything.
 */
import type { Observation as FhirObservation, Patient } from '@medplum/fhirtypes';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { loadValidator, startEpj, type EpjServer, type EpjValidator } from '../../simulators/epj/index.js';
import { silentLogger } from '../../src/log.js';
import type { PatientId } from '../../src/model/measurement.js';
import { createFhirForwarder, OUTBOX_CURSOR, OutboxAction, OutboxState, type FhirCharting } from '../../src/sinks/fhir/index.js';
import type { SqliteStore } from '../../src/store/sqlite.js';
import {
  allResources,
  commit,
  countByIdentifier,
  fhirSettings,
  PATIENTS,
  reading,
  reattributeStore,
  startRecordingProxy,
  tempStore,
  waitFor,
} from '../helpers/fhir-harness.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const DEVICE = '0123456789ABCDEF';
const [A, B] = PATIENTS as [PatientId, PatientId];
const SECOND = 1000;

function patients(): Patient[] {
  return PATIENTS.map((p, i) => ({ resourceType: 'Patient', id: `pat-${i}`, identifier: [{ system: p.system, value: p.value }] }));
}

async function epjWith(): Promise<EpjServer> {
  const epj = await startEpj({ port: 0, preload: patients() });
  cleanups.push(() => epj.close());
  return epj;
}

async function chartingTo(baseUrl: string, store: SqliteStore): Promise<FhirCharting> {
  const charting = createFhirForwarder({ settings: fhirSettings(), baseUrl, store, log: silentLogger() });
  await charting.start();
  cleanups.push(() => charting.stop());
  return charting;
}

/** Everything read, sent, voided and re-issued. */
const settled = (charting: FhirCharting, store: SqliteStore) => () => {
  const s = charting.status();
  return (
    store.cursor(OUTBOX_CURSOR) === store.counts().observations &&
    s.depth === 0 &&
    s.states.open === 0 &&
    s.corrections.pending === 0 &&
    s.corrections.voidsPending === 0
  );
};

const subjectOf = (o: FhirObservation) => o.subject?.reference;
const timeOf = (o: FhirObservation) => Date.parse(o.effectiveDateTime ?? '');

let validator: EpjValidator;
beforeAll(() => {
  validator = loadValidator();
});

/** Charts HR + SpO2 + NIBP at four times for patient A and waits until all is in the EPJ. */
async function chartForA(epjUrl: string, charting: FhirCharting, store: SqliteStore, t0: number): Promise<FhirObservation[]> {
  const times = [0, 1, 2, 3].map((i) => t0 + i * 60 * SECOND);
  await commit(
    store,
    times.flatMap((t) => [reading('hr', { time: t }), reading('spo2', { time: t }), reading('sys', { time: t }), reading('dia', { time: t })]),
  );
  await waitFor(settled(charting, store), 20_000, 'charted for A');
  const charted = await allResources<FhirObservation>(epjUrl, 'Observation');
  expect(charted).toHaveLength(12);
  expect(charted.every((o) => subjectOf(o) === 'Patient/pat-0' && o.status === 'final')).toBe(true);
  return charted;
}

describe('binding corrections in the EPJ', () => {
  it('voids what was charted for the wrong patient, re-issues it for the right one; a restart duplicates nothing', async () => {
    const epj = await epjWith();
    const proxy = await startRecordingProxy(epj.url);
    cleanups.push(() => proxy.close());
    const { store } = tempStore();
    cleanups.push(() => store.close());
    let charting = await chartingTo(proxy.url, store);
    const t0 = Date.now() - 3_600_000;
    const before = await chartForA(epj.url, charting, store, t0);

    // Readings at t0+1 min and t0+2 min belonged to B. One created Observation lost its id on our
    // side (found by identifier), and the EPJ holds a second copy of it (both must be voided).
    const from = t0 + 60 * SECOND;
    const to = t0 + 3 * 60 * SECOND;
    const lost = before.find((o) => timeOf(o) === from && o.code.coding?.[0]?.code === '8867-4')!;
    const copy = await fetch(`${epj.url}/Observation`, {
      method: 'POST',
      headers: { 'content-type': 'application/fhir+json' },
      body: JSON.stringify({ ...lost, id: undefined, meta: { profile: lost.meta?.profile } }),
    });
    expect(copy.status).toBe(201);
    store.database().prepare('UPDATE fhir_outbox SET fhir_id = NULL WHERE identifier = ?').run(lost.identifier![0]!.value);
    // Somebody edits one Observation in the EPJ between our read and our write: the first PUT
    // answers 412, the void reads again and succeeds.
    let conflicts = 0;
    // The order of writes: every void (PUT) of a reading before the re-issue (POST) of it.
    const writes: { method: string; keys: string[] }[] = [];
    const keyOf = (o: FhirObservation) => `${o.code.coding?.[0]?.code}|${timeOf(o)}`;
    proxy.hook = ({ method, path, body }) => {
      if (method === 'PUT') {
        if (conflicts++ === 0) return { status: 412, body: { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'conflict' }] } };
        const put = JSON.parse(body.toString()) as FhirObservation;
        writes.push({ method, keys: [keyOf(put)] });
      } else if (method === 'POST' && path === '') {
        const bundle = JSON.parse(body.toString()) as { entry?: { resource?: FhirObservation }[] };
        writes.push({ method, keys: (bundle.entry ?? []).filter((e) => e.resource?.resourceType === 'Observation').map((e) => keyOf(e.resource!)) });
      }
      return undefined;
    };

    expect(reattributeStore(store, DEVICE, from, to, B)).toBe(8);
    charting.reattributed({ device: DEVICE, from, to, reason: 'binding corrected by token:test' });
    await waitFor(settled(charting, store), 20_000, 'corrected');

    const after = await allResources<FhirObservation>(epj.url, 'Observation');
    const inRange = (o: FhirObservation) => timeOf(o) >= from && timeOf(o) < to;
    const voided = after.filter((o) => o.status === 'entered-in-error');
    // 6 charted for A in the interval, plus the EPJ's own copy.
    expect(voided).toHaveLength(7);
    expect(voided.every((o) => inRange(o) && subjectOf(o) === 'Patient/pat-0')).toBe(true);
    for (const o of voided) expect(validator.validate(o).valid, JSON.stringify(validator.validate(o))).toBe(true);
    const reissued = after.filter((o) => o.status === 'final' && subjectOf(o) === 'Patient/pat-1');
    expect(reissued).toHaveLength(6);
    expect(reissued.every(inRange)).toBe(true);
    const untouched = after.filter((o) => o.status === 'final' && subjectOf(o) === 'Patient/pat-0');
    expect(untouched).toHaveLength(6);
    expect(untouched.some(inRange)).toBe(false);
    // A new identifier per re-issue: none shared with a voided Observation.
    const voidedIds = new Set(voided.map((o) => o.identifier![0]!.value));
    expect(reissued.some((o) => voidedIds.has(o.identifier![0]!.value))).toBe(false);
    expect(conflicts).toBeGreaterThan(1);
    expect(proxy.requests.filter((r) => r.method === 'PUT' && r.status === 412)).toHaveLength(1);
    for (const o of reissued) {
      const key = keyOf(o);
      const voidedAt = writes.findIndex((w) => w.method === 'PUT' && w.keys.includes(key));
      const postedAt = writes.findIndex((w) => w.method === 'POST' && w.keys.includes(key));
      expect(voidedAt).toBeGreaterThanOrEqual(0);
      expect(postedAt).toBeGreaterThan(voidedAt);
    }

    // What the API shows: voids as entries of their own, re-issues with revision 1.
    const status = charting.status();
    expect(status.corrections).toMatchObject({ pending: 0, voidsPending: 0, voided: 6, reissued: 6 });
    const entries = charting.entries(undefined, 1000);
    expect(entries.filter((e) => e.action === OutboxAction.VOID && e.state === OutboxState.CONFIRMED)).toHaveLength(6);
    expect(entries.filter((e) => e.action === OutboxAction.CREATE && e.revision === 1 && e.state === OutboxState.CONFIRMED)).toHaveLength(6);
    expect(JSON.stringify(entries)).not.toContain(B.value);

    // A restart, and the same change reported again: nothing new in the EPJ.
    await charting.stop();
    charting = await chartingTo(proxy.url, store);
    charting.reattributed({ device: DEVICE, from, to, reason: 'binding corrected by token:test' });
    await waitFor(settled(charting, store), 20_000, 'settled after restart');
    await new Promise((r) => setTimeout(r, 200));
    const final = await allResources<FhirObservation>(epj.url, 'Observation');
    expect(final).toHaveLength(after.length);
    expect([...countByIdentifier(final.filter((o) => o.status === 'final')).values()].every((n) => n === 1)).toBe(true);
  }, 60_000);

  it('an EPJ outage and a restart during the job: the correction completes once it is back, without duplicates', async () => {
    const epj = await epjWith();
    const { store } = tempStore();
    cleanups.push(() => store.close());
    let charting = await chartingTo(epj.url, store);
    const t0 = Date.now() - 3_600_000;
    await chartForA(epj.url, charting, store, t0);

    await epj.setFaults({ down: true });
    reattributeStore(store, DEVICE, t0, t0 + 60 * SECOND, B);
    charting.reattributed({ device: DEVICE, from: t0, to: t0 + 60 * SECOND, reason: 'ADT A11' });
    await waitFor(() => charting.status().lastError !== null && charting.status().corrections.voidsPending === 3, 10_000, 'voids waiting');
    expect(charting.status().corrections.reissued).toBe(0);
    await charting.stop();
    charting = await chartingTo(epj.url, store);
    await new Promise((r) => setTimeout(r, 300));
    expect(charting.status().corrections.voidsPending).toBe(3);
    await epj.resetFaults();
    await waitFor(settled(charting, store), 20_000, 'corrected after the outage');

    const after = await allResources<FhirObservation>(epj.url, 'Observation');
    expect(after).toHaveLength(15);
    const voided = after.filter((o) => o.status === 'entered-in-error');
    expect(voided.map((o) => [timeOf(o), subjectOf(o)])).toEqual(voided.map(() => [t0, 'Patient/pat-0']));
    expect(voided).toHaveLength(3);
    const forB = after.filter((o) => subjectOf(o) === 'Patient/pat-1');
    expect(forB.map((o) => [timeOf(o), o.status])).toEqual(forB.map(() => [t0, 'final']));
    expect(forB).toHaveLength(3);
    expect([...countByIdentifier(after).values()].every((n) => n === 1)).toBe(true);
  }, 60_000);

  it('corrected to "no patient": only voids', async () => {
    const epj = await epjWith();
    const { store } = tempStore();
    cleanups.push(() => store.close());
    const charting = await chartingTo(epj.url, store);
    const t0 = Date.now() - 3_600_000;
    await chartForA(epj.url, charting, store, t0);
    reattributeStore(store, DEVICE, t0 + 3 * 60 * SECOND, t0 + 4 * 60 * SECOND, null);
    charting.reattributed({ device: DEVICE, from: t0 + 3 * 60 * SECOND, to: t0 + 4 * 60 * SECOND, reason: 'binding corrected by token:test' });
    await waitFor(settled(charting, store), 20_000, 'voided');
    const after = await allResources<FhirObservation>(epj.url, 'Observation');
    expect(after).toHaveLength(12);
    const voided = after.filter((o) => o.status === 'entered-in-error');
    expect(voided).toHaveLength(3);
    expect(voided.every((o) => timeOf(o) === t0 + 3 * 60 * SECOND)).toBe(true);
    expect(charting.status().corrections).toMatchObject({ voided: 3, reissued: 0 });
  }, 60_000);

  it('a void the EPJ refuses is a dead letter with its OperationOutcome (CPR masked); no re-issue without it', async () => {
    const epj = await epjWith();
    const proxy = await startRecordingProxy(epj.url);
    cleanups.push(() => proxy.close());
    const { store } = tempStore();
    cleanups.push(() => store.close());
    const charting = await chartingTo(proxy.url, store);
    const t0 = Date.now() - 3_600_000;
    await chartForA(epj.url, charting, store, t0);
    proxy.hook = ({ method }) =>
      method === 'PUT'
        ? { status: 422, body: { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'business-rule', diagnostics: `locked chart of ${A.value}` }] } }
        : undefined;
    reattributeStore(store, DEVICE, t0, t0 + 1, B);
    charting.reattributed({ device: DEVICE, from: t0, to: t0 + 1, reason: 'binding corrected by token:test' });
    await waitFor(settled(charting, store), 20_000, 'settled');
    const rejected = charting.entries(OutboxState.REJECTED, 100);
    expect(rejected).toHaveLength(3);
    expect(rejected.every((e) => e.action === OutboxAction.VOID && e.httpStatus === 422 && e.errorCode !== null)).toBe(true);
    expect(JSON.stringify(rejected)).not.toContain(A.value);
    expect(JSON.stringify(rejected[0]!.outcome)).toContain('business-rule');
    expect(charting.status().corrections).toMatchObject({ voided: 0, reissued: 0 });
    const after = await allResources<FhirObservation>(epj.url, 'Observation');
    expect(after).toHaveLength(12);
    expect(after.every((o) => o.status === 'final' && subjectOf(o) === 'Patient/pat-0')).toBe(true);
  }, 60_000);

  it('an Observation deleted in the EPJ meanwhile counts as voided (410), and is re-issued for the right patient', async () => {
    const epj = await epjWith();
    const { store } = tempStore();
    cleanups.push(() => store.close());
    const charting = await chartingTo(epj.url, store);
    const t0 = Date.now() - 3_600_000;
    const before = await chartForA(epj.url, charting, store, t0);
    const gone = before.find((o) => timeOf(o) === t0 && o.code.coding?.[0]?.code === '8867-4')!;
    expect((await fetch(`${epj.url}/Observation/${gone.id}`, { method: 'DELETE' })).status).toBeLessThan(300);
    reattributeStore(store, DEVICE, t0, t0 + 1, B);
    charting.reattributed({ device: DEVICE, from: t0, to: t0 + 1, reason: 'binding corrected by token:test' });
    await waitFor(settled(charting, store), 20_000, 'corrected');
    expect(charting.status().corrections).toMatchObject({ voided: 3, reissued: 3 });
    const voids = charting.entries(undefined, 100).filter((e) => e.action === OutboxAction.VOID);
    expect(voids.map((v) => v.httpStatus).sort()).toEqual([200, 200, 410]);
    const after = await allResources<FhirObservation>(epj.url, 'Observation');
    expect(after.filter((o) => o.status === 'entered-in-error')).toHaveLength(2);
    expect(after.filter((o) => subjectOf(o) === 'Patient/pat-1' && o.status === 'final')).toHaveLength(3);
  }, 60_000);

  it('readings without a patient (not charted) are charted once a correction names the patient', async () => {
    const epj = await epjWith();
    const { store } = tempStore();
    cleanups.push(() => store.close());
    const charting = await chartingTo(epj.url, store);
    const t0 = Date.now() - 3_600_000;
    await commit(store, [
      reading('hr', { time: t0, patient: null }),
      reading('spo2', { time: t0, patient: null }),
      reading('sys', { time: t0, patient: null }),
      reading('dia', { time: t0, patient: null }),
    ]);
    await waitFor(settled(charting, store), 20_000, 'read, not charted');
    expect(await allResources<FhirObservation>(epj.url, 'Observation')).toHaveLength(0);
    reattributeStore(store, DEVICE, t0, t0 + 1, B);
    charting.reattributed({ device: DEVICE, from: t0, to: t0 + 1, reason: 'binding corrected by token:test' });
    await waitFor(settled(charting, store), 20_000, 'charted after the correction');
    const after = await allResources<FhirObservation>(epj.url, 'Observation');
    expect(after.map((o) => [subjectOf(o), o.status, timeOf(o)])).toEqual(after.map(() => ['Patient/pat-1', 'final', t0]));
    expect(after).toHaveLength(3);
    expect(charting.deliveryState(1)).toMatchObject({ state: OutboxState.CONFIRMED });
  }, 60_000);

  it('an EPJ that cannot search by identifier refuses only that void; new readings are still charted', async () => {
    const epj = await epjWith();
    const proxy = await startRecordingProxy(epj.url);
    cleanups.push(() => proxy.close());
    const { store } = tempStore();
    cleanups.push(() => store.close());
    const charting = await chartingTo(proxy.url, store);
    const t0 = Date.now() - 3_600_000;
    await chartForA(epj.url, charting, store, t0);
    // Our ids of the t0 Observations are unknown: the voids must search by identifier.
    store.database().prepare('UPDATE fhir_outbox SET fhir_id = NULL WHERE reading_time = ?').run(t0);
    proxy.hook = ({ method, path }) =>
      method === 'GET' && path.startsWith('/Observation?')
        ? { status: 400, body: { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'not-supported', diagnostics: 'identifier search' }] } }
        : undefined;
    reattributeStore(store, DEVICE, t0, t0 + 1, B);
    charting.reattributed({ device: DEVICE, from: t0, to: t0 + 1, reason: 'binding corrected by token:test' });
    await commit(store, [reading('hr', { time: t0 + 10 * 60 * SECOND })]);
    await waitFor(settled(charting, store), 20_000, 'settled');
    const rejected = charting.entries(OutboxState.REJECTED, 100);
    expect(rejected.map((e) => [e.action, e.httpStatus])).toEqual([
      [OutboxAction.VOID, 400],
      [OutboxAction.VOID, 400],
      [OutboxAction.VOID, 400],
    ]);
    const after = await allResources<FhirObservation>(epj.url, 'Observation');
    expect(after).toHaveLength(13);
    expect(after.filter((o) => o.status === 'entered-in-error')).toHaveLength(0);
    expect(charting.status().epj.consecutiveFailures).toBe(0);
  }, 60_000);
});
