/**
 * The registry in the whole gateway, over real HTTP, MLLP and a pty:
 * - a device nobody registered: stored and listed as unregistered, not charted; approved and
 *   bound, its readings go to the patient in its bed; a PID naming someone else is flagged and
 *   kept out of the chart;
 * - a binding corrected through the API for a past interval: what was charted is
 *   entered-in-error in the EPJ stand-in and re-issued for the right patient, audited;
 * - a serial device registered through the API starts its driver; retired, it stops.
 */
import type { Observation as FhirObservation, Patient } from '@medplum/fhirtypes';
import { afterEach, describe, expect, it } from 'vitest';
import { startMasimoSimulator } from '../../simulators/masimo.js';
import type { SerialSimulator } from '../../simulators/serial-common.js';
import { hl7Utc } from '../helpers/adt-message.js';
import { allResources, waitFor } from '../helpers/fhir-harness.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { MllpTestClient } from '../helpers/mllp-client.js';
import { pcd01Message } from '../helpers/pcd01-message.js';
import { SOCAT_ABSENT_NOTE, SOCAT_AVAILABLE, stopPtyPairs, testPtyPair } from '../helpers/socat.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});

const EUI = '0012A0FFFE00B001';
const ANNA = '0101000011';
const BO = '0101000022';
const CARL = '0101000033';
const MIN = 60_000;

function client(gw: TestGateway) {
  return async <T = Record<string, unknown>>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }> => {
    const res = await fetch(`${gw.httpUrl}${path}`, {
      method,
      ...(body !== undefined ? { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) } : {}),
    });
    return { status: res.status, body: (await res.json()) as T };
  };
}

interface Item {
  time: string;
  flags: string[];
  patient: string | null;
  location: string | null;
}

describe('the device registry in the gateway', () => {
  it('unregistered until approved, bound to a bed, PID mismatch kept out, a corrected binding voids and re-issues', async () => {
    const gw = await startTestGateway({
      registry: { unregistered: 'store', clockDriftLimitSeconds: 300 },
      fhir: { embeddedEpj: { port: 0 }, outbox: { pollMs: 50 }, charting: { intervalSeconds: 0, closeDelaySeconds: 0 } },
    });
    cleanups.push(() => gw.stop());
    const api = client(gw);
    const epj = gw.addresses.epj!.url;
    const mllp = await MllpTestClient.connect(gw.mllpPort);
    cleanups.push(() => mllp.close());
    let sent = 0;
    const send = async (cpr: string, time: number) => {
      mllp.send(pcd01Message({ controlId: `R${sent}`, device: EUI, cpr, time: hl7Utc(time) }));
      sent++;
      await mllp.waitForAcks(sent);
      expect(mllp.acks[sent - 1]!.code).toBe('AA');
    };
    const items = async () => (await api<{ items: Item[] }>('GET', `/api/observations?device=${EUI}&order=asc&limit=100`)).body.items;
    // HL7 times carry whole seconds.
    const now = Math.floor(Date.now() / 1000) * 1000;
    const t1 = now - 3 * MIN;

    // 1. Not registered: stored, flagged, listed as unregistered, not charted.
    await send(ANNA, t1);
    const unknown = await api<{ status: string; kind: string }>('GET', `/api/devices/${EUI}`);
    expect(unknown.body).toMatchObject({ status: 'unregistered' });
    expect((await items()).map((i) => i.flags)).toEqual([['UNREGISTERED'], ['UNREGISTERED']]);
    const state = await api<{ state: string; reason: string }>('GET', '/api/outbox/observations/1');
    expect(state.body).toMatchObject({ state: 'not-charted', reason: 'quality flags exclude it from the chart' });

    // 2. Approved, put in bed ICU/2/1 where Anna lies.
    expect((await api('POST', `/api/devices/${EUI}/approve`, { kind: 'monitor' })).status).toBe(200);
    expect((await api('POST', `/api/beds/${encodeURIComponent('ICU/2/1')}/occupancy`, { patient: { cpr: ANNA }, from: new Date(now - 60 * MIN).toISOString() })).status).toBe(201);
    expect((await api('POST', `/api/devices/${EUI}/bind`, { bed: { ward: 'ICU', room: '2', bed: '1' }, from: new Date(now - 2 * MIN).toISOString() })).status).toBe(201);
    const t2 = now - MIN;
    await send(BO, t2); // the monitor still names Bo: a mismatch
    await send(ANNA, t2 + 10_000);
    const after = await items();
    expect(after.slice(2, 4).map((i) => i.flags)).toEqual([['PATIENT_MISMATCH'], ['PATIENT_MISMATCH']]);
    expect(after.slice(2).every((i) => i.location === 'ICU/2/1')).toBe(true);
    const annaPseudonym = after[4]!.patient;
    expect(after.slice(2).every((i) => i.patient === annaPseudonym)).toBe(true);
    expect(after.slice(4).map((i) => i.flags)).toEqual([[], []]);

    // Only the agreeing message is charted, to Anna.
    const patientsById = async () => new Map((await allResources<Patient>(epj, 'Patient')).map((p) => [`Patient/${p.id}`, p.identifier?.[0]?.value]));
    await waitFor(async () => (await allResources<FhirObservation>(epj, 'Observation')).length === 2, 15_000, 'two Observations');
    let ids = await patientsById();
    for (const o of await allResources<FhirObservation>(epj, 'Observation')) {
      expect(ids.get(o.subject!.reference!)).toBe(ANNA);
      expect(Date.parse(o.effectiveDateTime!)).toBe(t2 + 10_000);
    }

    // 3. It was Carl, not Anna, on this monitor for the last two minutes: corrected through the API.
    const correction = await api('POST', '/api/bindings/corrections', {
      device: EUI,
      from: new Date(now - 2 * MIN).toISOString(),
      to: new Date(now).toISOString(),
      patient: { cpr: CARL },
      reason: 'monitor was moved with the patient',
    });
    expect(correction.status).toBeLessThan(300);
    await waitFor(
      async () => {
        const all = await allResources<FhirObservation>(epj, 'Observation');
        return all.filter((o) => o.status === 'entered-in-error').length === 2 && all.filter((o) => o.status !== 'entered-in-error').length === 2;
      },
      20_000,
      'void and re-issue',
    ).catch(async (err: unknown) => {
      const outbox = await api('GET', '/api/outbox');
      const entries = await api('GET', '/api/outbox/entries?limit=20');
      const obs = await items();
      throw new Error(`${(err as Error).message}: ${JSON.stringify({ outbox: outbox.body, entries: entries.body, obs })}`);
    });
    ids = await patientsById();
    for (const o of await allResources<FhirObservation>(epj, 'Observation')) {
      expect(ids.get(o.subject!.reference!)).toBe(o.status === 'entered-in-error' ? ANNA : CARL);
    }
    // The store follows: the readings of the interval are Carl's. The ones whose message named Bo
    // keep their flag (the monitor still disagrees) and stay out of the chart.
    const corrected = await items();
    expect(new Set(corrected.slice(2).map((i) => i.patient)).size).toBe(1);
    expect(corrected[2]!.patient).not.toBe(annaPseudonym);
    expect(corrected.slice(2).map((i) => i.flags)).toEqual([['PATIENT_MISMATCH'], ['PATIENT_MISMATCH'], [], []]);
    // Audited, without the CPR number in clear.
    const audit = await api<{ items: { action: string; actor: string }[] }>('GET', `/api/audit?limit=50`);
    expect(audit.body.items.map((a) => a.action)).toEqual(expect.arrayContaining(['device.unregistered', 'device.approve', 'binding.correct']));
    expect(JSON.stringify(audit.body)).not.toContain(CARL);
  }, 60_000);

  describe.skipIf(!SOCAT_AVAILABLE)(SOCAT_AVAILABLE ? 'serial devices from the registry' : `serial devices from the registry (${SOCAT_ABSENT_NOTE})`, () => {
    const sims: SerialSimulator[] = [];
    afterEach(async () => {
      await Promise.all(sims.splice(0).map((s) => s.stop()));
      await stopPtyPairs();
    });

    it('a serial device registered through the API starts its driver; retired, its driver stops', async () => {
      const gw = await startTestGateway({});
      cleanups.push(() => gw.stop());
      const api = client(gw);
      const pty = await testPtyPair();
      sims.push(await startMasimoSimulator({ path: pty.simulatorPath, intervalMs: 100, seed: 3, episodes: false }));
      const added = await api('POST', '/api/devices', {
        id: 'spo2-icu-4',
        kind: 'monitor',
        vendor: 'Masimo',
        transport: { type: 'serial', settings: { protocol: 'masimo', port: pty.devicePath, reconnect: { initialDelayMs: 50, maxDelayMs: 200 } } },
      });
      expect(added.status).toBe(201);
      const drivers = async () => (await api<{ drivers: { name: string; state: string; since: number }[] }>('GET', '/api/status')).body.drivers;
      await waitFor(async () => (await api<{ items: unknown[] }>('GET', '/api/observations?device=spo2-icu-4')).body.items.length > 0, 10_000, 'readings of the registered device');
      const running = (await drivers()).find((d) => d.name === 'serial:spo2-icu-4')!;
      expect(running).toMatchObject({ state: 'up' });
      // A change that leaves the line settings alone keeps the same driver (and link) running.
      expect((await api('PATCH', '/api/devices/spo2-icu-4', { model: 'Radical-7' })).status).toBe(200);
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect((await drivers()).find((d) => d.name === 'serial:spo2-icu-4')).toMatchObject({ state: 'up', since: running.since });

      expect((await api('POST', '/api/devices/spo2-icu-4/retire', { reason: 'sent for repair' })).status).toBe(200);
      await waitFor(async () => (await drivers()).every((d) => d.name !== 'serial:spo2-icu-4'), 5_000, 'its driver to stop');
    }, 30_000);
  });
});
