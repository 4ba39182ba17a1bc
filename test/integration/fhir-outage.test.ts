/**
 * An EPJ outage under load: readings keep arriving while the EPJ is down (connection refused,
 * sockets destroyed); after it comes back every reading is charted, none twice, with its
 * original reading time.
 *
 * Default: a short outage (a few seconds) exercising the same logic. `MDI_SOAK=1`: the
 * 10-minute outage of issue 3, at one reading group per device per second (the stand-in
 * validates a few hundred Observations a second, so the drain after it takes a while).
 */
import type { Observation as FhirObservation } from '@medplum/fhirtypes';
import { afterAll, describe, expect, it } from 'vitest';
import { startEpj } from '../../simulators/epj/index.js';
import { silentLogger } from '../../src/log.js';
import type { Observation } from '../../src/model/observation.js';
import { fhirDateTime } from '../../src/sinks/fhir/identity.js';
import { createFhirForwarder, OUTBOX_CURSOR } from '../../src/sinks/fhir/index.js';
import { allResources, commit, countByIdentifier, fhirSettings, PATIENTS, reading, tempStore, waitFor } from '../helpers/fhir-harness.js';

const SOAK = process.env.MDI_SOAK === '1';
const OUTAGE_MS = SOAK ? 10 * 60_000 : 3_000;
/** One reading group per device per tick; a group is an HR and an NIBP measurement (2 chart entries). */
const TICK_MS = SOAK ? 1_000 : 300;
const DEVICES = ['00000000000000A1', '00000000000000A2'];

const cleanups: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

describe('EPJ outage under load', () => {
  it(
    `charts every reading after a ${OUTAGE_MS / 1000} s outage, none twice, at its original time`,
    async () => {
      const epj = await startEpj({
        port: 0,
        preload: PATIENTS.map((p, i) => ({ resourceType: 'Patient', id: `pat-${i}`, identifier: [{ system: p.system, value: p.value }] })),
      });
      cleanups.push(() => epj.close());
      const { store } = tempStore();
      cleanups.push(() => store.close());
      const charting = createFhirForwarder({
        settings: fhirSettings({ batchSize: 25, retry: { initialDelayMs: 100, maxDelayMs: 1000 } }),
        baseUrl: epj.url,
        store,
        log: silentLogger(),
      });
      await charting.start();
      cleanups.push(() => charting.stop());

      // Load: every tick, each device sends one message with HR and an NIBP measurement.
      const sent: Observation[] = [];
      let tick = 0;
      const load = setInterval(() => {
        const time = Date.now() - 500;
        const batch = DEVICES.flatMap((deviceId, d) => {
          const common = { time, deviceId, patient: PATIENTS[d]!, value: 60 + (tick % 40) };
          return [reading('hr', common), reading('sys', { ...common, value: 120 }), reading('dia', { ...common, value: 80 })];
        });
        tick++;
        sent.push(...batch);
        void commit(store, batch);
      }, TICK_MS);

      await new Promise((r) => setTimeout(r, Math.min(1000, TICK_MS * 4)));
      await epj.setFaults({ down: true });
      const downAt = Date.now();
      await waitFor(() => charting.status().epj.reachable === false, 10_000, 'the outage noticed');
      while (Date.now() - downAt < OUTAGE_MS) await new Promise((r) => setTimeout(r, 100));
      const during = charting.status();
      expect(during.depth).toBeGreaterThan(0);
      expect(during.lastError?.code).toBe('MDI_ERR_FHIR_NETWORK');
      await epj.setFaults({ down: false });
      await new Promise((r) => setTimeout(r, Math.min(1000, TICK_MS * 4)));
      clearInterval(load);
      await new Promise((r) => setTimeout(r, 50)); // the last commit settles

      await waitFor(
        () => {
          const s = charting.status();
          return store.cursor(OUTBOX_CURSOR) === store.counts().observations && s.depth === 0 && s.states.open === 0;
        },
        SOAK ? 15 * 60_000 : 30_000,
        'the backlog drained',
      );
      expect(charting.status().epj.reachable).toBe(true);
      expect(charting.status().states.rejected).toBe(0);

      const stored = await allResources<FhirObservation>(epj.url, 'Observation');
      const counts = countByIdentifier(stored);
      const expectedEntries = sent.length - sent.filter((o) => o.metric.endsWith('_DIA')).length; // HR + one panel per NIBP
      expect(stored.length).toBe(expectedEntries);
      expect([...counts.values()].every((n) => n === 1)).toBe(true);
      expect(charting.status().confirmedSinceStart).toBe(expectedEntries);
      // Original reading times, also for what was charted long after.
      const times = new Set(stored.map((o) => `${o.code.coding?.[1]?.code}|${o.effectiveDateTime}`));
      for (const o of sent.filter((x) => x.metric === 'MDC_ECG_HEART_RATE')) {
        expect(times.has(`147842|${fhirDateTime(o.time, o.tzOffset)}`)).toBe(true);
      }
    },
    SOAK ? 30 * 60_000 : 60_000,
  );
});
