import { afterEach, describe, expect, it } from 'vitest';
import type { Observation } from '../../src/model/observation.js';
import { ChartingPolicy } from '../../src/sinks/fhir/charting.js';
import { ChartingSettings } from '../../src/sinks/fhir/config.js';
import { FhirErrorCode } from '../../src/sinks/fhir/errors.js';
import { NO_BINDINGS, Outbox, OUTBOX_CURSOR, OutboxState, type OutboxOptions } from '../../src/sinks/fhir/outbox.js';
import type { SqliteStore } from '../../src/store/sqlite.js';
import { commit, PATIENTS, reading, tempStore } from '../helpers/fhir-harness.js';

const NAMESPACE = '3f2b6d1e-0c4a-4e7b-9d2a-6c1f0e9b8a70';
const MINUTE = 60_000;
const T0 = Date.UTC(2025, 2, 12, 9, 15, 0);

const stores: SqliteStore[] = [];
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close();
});

function setup(charting: Record<string, unknown> = {}, options: Partial<OutboxOptions> = {}, existing?: SqliteStore) {
  const store = existing ?? tempStore().store;
  if (!existing) stores.push(store);
  const settings = ChartingSettings.parse({ intervalSeconds: 60, closeDelaySeconds: 5, ...charting });
  const policy = new ChartingPolicy(settings, (p) => store.pseudonym(p));
  const outbox = new Outbox(store, policy, {
    identifierNamespace: NAMESPACE,
    closeDelayMs: settings.closeDelaySeconds * 1000,
    holdMs: settings.holdMinutes * MINUTE,
    feedBatch: 1000,
    maxRows: 1000,
    ...options,
  });
  return { store, outbox, policy };
}

/** Feeds and closes as one loop pass at `now` would. */
function pass(outbox: Outbox, now: number) {
  outbox.feed(now);
  return outbox.close(now, NO_BINDINGS);
}

describe('outbox: intervals', () => {
  it('latest: one entry per series and minute, holding the newest reading, closed after end + delay', async () => {
    const { store, outbox } = setup();
    await commit(store, [reading('hr', { time: T0 + 10_000, value: 70 })]);
    await commit(store, [reading('hr', { time: T0 + 50_000, value: 74 }), reading('hr', { time: T0 + 30_000, value: 72 })]);
    expect(pass(outbox, T0 + MINUTE + 4_000)).toEqual({ queued: 0, held: 0, skipped: 0 });
    expect(outbox.counts().open).toBe(1);
    expect(pass(outbox, T0 + MINUTE + 5_000).queued).toBe(1);
    const [entry] = outbox.claim(10, T0 + MINUTE + 5_000);
    expect(entry!.item.readings.map((r) => r.observation.value)).toEqual([74]);
    expect(entry!.identifier).toMatch(/^[0-9a-f-]{36}$/);
    expect(outbox.depth()).toBe(1);
  });

  it('median: the lower median reading (a real one, never an average)', async () => {
    const { store, outbox } = setup({ value: 'median' });
    const values = [60, 90, 70, 80];
    await commit(store, values.map((value, i) => reading('hr', { time: T0 + i * 10_000, value })));
    pass(outbox, T0 + 2 * MINUTE);
    const [entry] = outbox.claim(10, T0 + 2 * MINUTE);
    expect(entry!.item.readings).toHaveLength(1);
    expect(entry!.item.readings[0]!.observation).toMatchObject({ value: 70, time: T0 + 20_000 });
  });

  it('median of BP measurements ranks by systolic and keeps the parts of one measurement together', async () => {
    const { store, outbox } = setup({ value: 'median' });
    const nibp = (t: number, sys: number, dia: number) => [
      reading('sys', { time: t, value: sys }),
      reading('dia', { time: t, value: dia }),
    ];
    await commit(store, [...nibp(T0, 140, 60), ...nibp(T0 + 20_000, 120, 90), ...nibp(T0 + 40_000, 130, 70)]);
    pass(outbox, T0 + 2 * MINUTE);
    const [entry] = outbox.claim(10, T0 + 2 * MINUTE);
    expect(entry!.item.kind).toBe('bp');
    expect(entry!.item.readings.map((r) => r.observation.value).sort()).toEqual([130, 70]);
  });

  it('latest BP: parts of the same time merge; a newer measurement replaces them', async () => {
    const { store, outbox } = setup();
    await commit(store, [reading('sys', { time: T0 + 1000, value: 150 })]);
    await commit(store, [reading('sys', { time: T0 + 5000 }), reading('dia', { time: T0 + 5000 })]);
    await commit(store, [reading('mean', { time: T0 + 5000 })]);
    pass(outbox, T0 + 2 * MINUTE);
    const [entry] = outbox.claim(10, T0 + 2 * MINUTE);
    expect(entry!.item.readings.map((r) => r.observation.metric).sort()).toEqual([
      'MDC_PRESS_BLD_NONINV_DIA',
      'MDC_PRESS_BLD_NONINV_MEAN',
      'MDC_PRESS_BLD_NONINV_SYS',
    ]);
    expect(entry!.item.readings.every((r) => r.observation.time === T0 + 5000)).toBe(true);
  });

  it('a reading arriving after its interval closed is stored, counted, not charted again', async () => {
    const { store, outbox } = setup();
    await commit(store, [reading('hr', { time: T0 + 1000 })]);
    pass(outbox, T0 + 2 * MINUTE);
    await commit(store, [reading('hr', { time: T0 + 2000 })]);
    pass(outbox, T0 + 2 * MINUTE + 1);
    expect(outbox.lateReadingCount()).toBe(1);
    expect(outbox.depth()).toBe(1);
    expect(store.counts().observations).toBe(2);
  });

  it('a repeat of the charted reading (the last NIBP in every message) is neither late nor charted again', async () => {
    const { store, outbox } = setup();
    const nibp = [reading('sys', { time: T0 + 1000 }), reading('dia', { time: T0 + 1000 })];
    await commit(store, nibp);
    pass(outbox, T0 + 2 * MINUTE);
    for (let i = 0; i < 3; i++) {
      await commit(store, nibp);
      pass(outbox, T0 + 2 * MINUTE + i);
    }
    // After a restart the closed entry is looked up instead of cached: same answer.
    const again = setup({}, {}, store);
    await commit(store, nibp);
    pass(again.outbox, T0 + 3 * MINUTE);
    expect(outbox.repeatCount() + again.outbox.repeatCount()).toBe(8);
    expect(outbox.lateReadingCount() + again.outbox.lateReadingCount()).toBe(0);
    expect(again.outbox.depth()).toBe(1);
  });

  it('interval 0: every reading is an entry, closed once everything received before it was read', async () => {
    const { store, outbox } = setup({ intervalSeconds: 0 });
    await commit(store, [reading('hr', { time: T0 }), reading('hr', { time: T0 + 1000 }), reading('sys', { time: T0 }), reading('dia', { time: T0 })]);
    expect(pass(outbox, Date.now()).queued).toBe(3);
  });

  it('does not close intervals while the store still has unread readings of that time (backlog)', async () => {
    const { store, outbox } = setup({}, { feedBatch: 2 });
    // Received within the close delay (5 s) after the interval's end: still on time.
    const received = T0 + MINUTE + 2_000;
    await commit(store, [reading('hr', { time: T0 + 1000 }), reading('spo2', { time: T0 + 1000 })], received);
    await commit(store, [reading('hr', { time: T0 + 59_000, value: 99 })], received);
    // One batch of two read, more waiting: the watermark stays behind what was read.
    expect(pass(outbox, T0 + 10 * MINUTE).queued).toBe(0);
    pass(outbox, T0 + 10 * MINUTE);
    const claimed = outbox.claim(10, T0 + 10 * MINUTE);
    expect(claimed.find((c) => c.item.readings[0]!.observation.metric === 'MDC_ECG_HEART_RATE')!.item.readings[0]!.observation.value).toBe(99);
  });
});

describe('outbox: durability', () => {
  it('feeding is atomic with the cursor: a failure mid-batch leaves nothing half-done', async () => {
    const { store, outbox, policy } = setup({ intervalSeconds: 0 });
    await commit(store, [reading('hr', { time: T0 }), reading('spo2', { time: T0 }), reading('rr', { time: T0 })]);
    const decide = policy.decide.bind(policy);
    let calls = 0;
    policy.decide = (o: Observation) => {
      if (++calls === 3) throw new Error('power cut');
      return decide(o);
    };
    expect(() => outbox.feed(Date.now())).toThrow('power cut');
    expect(store.cursor(OUTBOX_CURSOR)).toBe(0);
    expect(outbox.counts().open).toBe(0);
    policy.decide = decide;
    pass(outbox, Date.now());
    expect(outbox.depth()).toBe(3);
    expect(store.cursor(OUTBOX_CURSOR)).toBe(3);
  });

  it('a restart resumes from the cursor and re-queues what was in flight, without duplicates', async () => {
    const first = setup({ intervalSeconds: 0 });
    await commit(first.store, [reading('hr', { time: T0 }), reading('spo2', { time: T0 })]);
    pass(first.outbox, Date.now());
    const claimed = first.outbox.claim(1, Date.now());
    expect(claimed).toHaveLength(1);
    // "kill -9": a new Outbox on the same database.
    const second = setup({ intervalSeconds: 0 }, {}, first.store);
    expect(second.outbox.recover()).toBe(1);
    pass(second.outbox, Date.now());
    const again = second.outbox.claim(10, Date.now());
    expect(again.map((c) => c.identifier).sort()).toEqual(
      [claimed[0]!.identifier, ...again.filter((c) => c.id !== claimed[0]!.id).map((c) => c.identifier)].sort(),
    );
    expect(again).toHaveLength(2);
    expect(second.outbox.counts()).toMatchObject({ queued: 0, sending: 2 });
  });

  it('settles confirmed, retry (respecting next attempt) and rejected, masking CPR numbers in outcomes', async () => {
    const { store, outbox } = setup({ intervalSeconds: 0 });
    await commit(store, [reading('hr', { time: T0 }), reading('spo2', { time: T0 }), reading('rr', { time: T0 })]);
    const now = Date.now();
    pass(outbox, now);
    const [a, b, c] = outbox.claim(10, now);
    outbox.settle(
      [
        { id: a!.id, kind: 'confirmed', fhirId: 'Observation/1', status: 201 },
        { id: b!.id, kind: 'retry', nextAttempt: now + 1000, code: FhirErrorCode.UNAVAILABLE, message: '503' },
        {
          id: c!.id,
          kind: 'rejected',
          code: FhirErrorCode.REJECTED,
          message: `404 not-found: Patient?identifier=urn:oid:1.2.208.176.1.2|${PATIENTS[0]!.value}`,
          status: 404,
          outcome: { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'not-found', diagnostics: `no ${PATIENTS[0]!.value}` }] },
        },
      ],
      now,
    );
    expect(outbox.claim(10, now + 999)).toHaveLength(0);
    expect(outbox.claim(10, now + 1000).map((e) => e.id)).toEqual([b!.id]);
    const [dead] = outbox.list(OutboxState.REJECTED, 10);
    expect(dead).toMatchObject({ httpStatus: 404, errorCode: FhirErrorCode.REJECTED });
    expect(JSON.stringify(dead)).not.toContain(PATIENTS[0]!.value);
    expect(JSON.stringify(dead!.outcome)).toContain('not-found');
    expect(outbox.confirmedSinceStart()).toBe(1);
    expect(outbox.depth()).toBe(1);
  });

  it('stops taking readings from the store at maxRows, losing none', async () => {
    const { store, outbox } = setup({ intervalSeconds: 0 }, { maxRows: 2, feedBatch: 1 });
    for (const i of [1, 2, 3, 4]) await commit(store, [reading('hr', { time: T0 + i })], T0 + i * 2000);
    for (let i = 0; i < 10; i++) pass(outbox, Date.now());
    expect(outbox.depth()).toBe(2);
    // The third reading was read (its entry still open, waiting for the watermark); the fourth waits in the store.
    expect(store.cursor(OUTBOX_CURSOR)).toBe(3);
    const claimed = outbox.claim(10, Date.now());
    outbox.settle(
      claimed.map((c) => ({ id: c.id, kind: 'confirmed' as const, fhirId: null, status: 201 })),
      Date.now(),
    );
    for (let i = 0; i < 10; i++) pass(outbox, Date.now());
    expect(outbox.depth()).toBe(2);
    expect(store.cursor(OUTBOX_CURSOR)).toBe(4);
  });

  it('holds readings without patient for a binding, then skips them', async () => {
    const { store, outbox } = setup({ intervalSeconds: 0, unbound: 'hold', holdMinutes: 1 });
    await commit(store, [reading('hr', { time: T0, patient: null, deviceId: 'bound' }), reading('hr', { time: T0, patient: null, deviceId: 'lonely' })]);
    const now = Date.now();
    outbox.feed(now);
    expect(outbox.close(now, NO_BINDINGS)).toEqual({ queued: 0, held: 2, skipped: 0 });
    const bindings = { patientAt: (device: string) => (device === 'bound' ? PATIENTS[1]! : null) };
    expect(outbox.close(now + 1000, bindings)).toEqual({ queued: 1, held: 0, skipped: 0 });
    expect(outbox.close(now + MINUTE, bindings)).toEqual({ queued: 0, held: 0, skipped: 1 });
    const [entry] = outbox.claim(10, now + MINUTE);
    expect(entry!.item.readings[0]!.observation.patient).toEqual(PATIENTS[1]);
    expect(outbox.list(OutboxState.SKIPPED, 10)[0]!.errorCode).toBe(FhirErrorCode.UNBOUND);
  });

  it('dead-letters entries older than maxAge and prunes confirmed ones after their keep time', async () => {
    const { store, outbox } = setup({ intervalSeconds: 0 });
    await commit(store, [reading('hr', { time: T0 }), reading('spo2', { time: T0 })]);
    const now = Date.now();
    pass(outbox, now);
    const [first] = outbox.claim(1, now);
    outbox.settle([{ id: first!.id, kind: 'confirmed', fhirId: null, status: 201 }], now);
    const limits = { maxAgeMs: 60_000, keepConfirmedMs: 120_000, keepRejectedMs: 10 * 60_000 };
    expect(outbox.maintain(now + 30_000, limits).expired).toBe(0);
    expect(outbox.maintain(now + 61_000, limits).expired).toBe(1);
    expect(outbox.list(OutboxState.REJECTED, 10)[0]!.errorCode).toBe(FhirErrorCode.EXPIRED);
    outbox.maintain(now + 121_000, limits);
    expect(outbox.list(OutboxState.CONFIRMED, 10)).toHaveLength(0);
    expect(outbox.depth()).toBe(0);
  });

  it('answers the delivery state of a stored reading', async () => {
    const { store, outbox } = setup();
    await commit(store, [reading('hr', { time: T0 + 1000, value: 70 }), reading('hr', { time: T0 + 2000, value: 71 }), reading('pump', { time: T0 })]);
    expect(outbox.deliveryState(1)).toMatchObject({ state: 'pending' });
    pass(outbox, T0 + 2 * MINUTE);
    const [entry] = outbox.claim(10, T0 + 2 * MINUTE);
    outbox.settle([{ id: entry!.id, kind: 'confirmed', fhirId: 'Observation/x', status: 201 }], T0 + 2 * MINUTE);
    expect(outbox.deliveryState(2)).toMatchObject({ state: 'confirmed', entry: { fhirId: 'Observation/x', observations: [2] } });
    expect(outbox.deliveryState(1)).toMatchObject({ state: 'superseded', entry: { observations: [2] } });
    expect(outbox.deliveryState(3)).toMatchObject({ state: 'not-charted' });
    expect(outbox.deliveryState(99)).toEqual({ observation: 99, state: 'unknown' });
  });
});
