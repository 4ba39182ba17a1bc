/**
 * A simulated ward through the whole gateway: three bedside monitors bound to three beds send
 * PCD-01 every minute over MLLP, while ADT over MLLP admits, transfers, discharges and cancels.
 * Two ADT messages arrive late, after readings they decide were already charted: the gateway
 * must void those Observations (entered-in-error) and re-issue them for the right patient.
 *
 * Counted against the EPJ stand-in at the end: every Observation that is not entered-in-error
 * names the patient who lay in the monitor's bed at the reading's time, each reading is charted
 * exactly once when somebody lay there, and never when nobody did.
 */
import type { Device, Observation as FhirObservation, Patient } from '@medplum/fhirtypes';
import { afterEach, describe, expect, it } from 'vitest';
import { adtMessage, hl7Utc } from '../helpers/adt-message.js';
import { allResources, waitFor } from '../helpers/fhir-harness.js';
import { startTestGateway } from '../helpers/gateway.js';
import { MllpTestClient } from '../helpers/mllp-client.js';
import { pcd01Message } from '../helpers/pcd01-message.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});

const MIN = 60_000;
const STEPS = 24;
const MONITORS = [
  { id: 'mon-1', eui64: '0012A0FFFE0000A1', bed: 'ICU/1/1' },
  { id: 'mon-2', eui64: '0012A0FFFE0000A2', bed: 'ICU/1/2' },
  { id: 'mon-3', eui64: '0012A0FFFE0000A3', bed: 'ICU/1/3' },
] as const;
const P = { p1: '0101000001', p2: '0101000002', p3: '0101000003', p4: '0101000004' } as const;

interface AdtStep {
  readonly event: 'A01' | 'A02' | 'A03' | 'A13';
  readonly cpr: string;
  /** Minute (step) it happened. */
  readonly at: number;
  /** Step after whose readings it is sent (late when > at). */
  readonly sentAfter: number;
  readonly bed?: string;
  readonly priorBed?: string;
}

// The ward's day. P3's discharge (minute 8) reaches the gateway only after minute 10's readings,
// together with P1's transfer into that bed (minute 10): bed 3's readings of minutes 8–10 were
// charted to P3 and bed 1's of minute 10 to P1 before the gateway knew.
const ADT: AdtStep[] = [
  { event: 'A01', cpr: P.p1, at: -5, sentAfter: -1, bed: 'ICU/1/1' },
  { event: 'A01', cpr: P.p2, at: -5, sentAfter: -1, bed: 'ICU/1/2' },
  { event: 'A01', cpr: P.p3, at: -5, sentAfter: -1, bed: 'ICU/1/3' },
  { event: 'A03', cpr: P.p3, at: 8, sentAfter: 10, bed: 'ICU/1/3' },
  { event: 'A02', cpr: P.p1, at: 10, sentAfter: 10, bed: 'ICU/1/3', priorBed: 'ICU/1/1' },
  { event: 'A01', cpr: P.p4, at: 12, sentAfter: 11, bed: 'ICU/1/1' },
  { event: 'A03', cpr: P.p4, at: 18, sentAfter: 17, bed: 'ICU/1/1' },
  { event: 'A13', cpr: P.p4, at: 18, sentAfter: 20, bed: 'ICU/1/1' },
];

/** Who lay in `bed` at minute `m` (the truth the ADT messages describe, with the cancel applied). */
function occupant(bed: string, m: number): string | null {
  if (bed === 'ICU/1/1') return m < 10 ? P.p1 : m >= 12 ? P.p4 : null;
  if (bed === 'ICU/1/2') return P.p2;
  return m < 8 ? P.p3 : m >= 10 ? P.p1 : null;
}

describe('a simulated ward with transfers, late ADT and cancels', () => {
  it('charts no reading to the wrong patient, counted against the EPJ stand-in', async () => {
    const gw = await startTestGateway({
      adt: { enabled: true },
      // Readings are stamped over the last half hour and sent at once: the clock check is not the subject.
      registry: { unregistered: 'store', clockDriftLimitSeconds: 0 },
      // Every reading is its own chart entry; a reading without a patient waits for ADT to catch up.
      fhir: { embeddedEpj: { port: 0 }, outbox: { pollMs: 50 }, charting: { intervalSeconds: 0, closeDelaySeconds: 0, unbound: 'hold', holdMinutes: 60 } },
    });
    cleanups.push(() => gw.stop());
    const api = async (method: string, path: string, body?: unknown) => {
      const res = await fetch(`${gw.httpUrl}${path}`, { method, headers: { 'content-type': 'application/json' }, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
      const json = (await res.json()) as unknown;
      if (res.status >= 300) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
      return json;
    };
    const T0 = Math.floor((Date.now() - (STEPS + 10) * MIN) / MIN) * MIN;
    const minute = (m: number) => T0 + m * MIN;
    for (const m of MONITORS) {
      const [ward, room, bed] = m.bed.split('/');
      await api('POST', '/api/devices', { id: m.id, kind: 'monitor', eui64: m.eui64 });
      await api('POST', `/api/devices/${m.id}/bind`, { bed: { ward, room, bed }, from: new Date(minute(-30)).toISOString() });
    }

    const adt = await MllpTestClient.connect(gw.addresses.adt!.port);
    cleanups.push(() => adt.close());
    const pcd = await MllpTestClient.connect(gw.mllpPort);
    cleanups.push(() => pcd.close());
    let adtSent = 0;
    const sendAdt = async (after: number) => {
      for (const e of ADT.filter((x) => x.sentAfter === after)) {
        adt.send(adtMessage({ event: e.event, controlId: `ADT${adtSent}`, cpr: e.cpr, time: minute(e.at), ...(e.bed ? { bed: e.bed } : {}), ...(e.priorBed ? { priorBed: e.priorBed } : {}) }));
        adtSent++;
        await adt.waitForAcks(adtSent);
        expect(adt.acks[adtSent - 1]!.code).toBe('AA');
      }
    };
    /** Every stored reading up to store id `last` has been read by the outbox, and nothing waits to be sent. */
    const chartedUpTo = (last: number) =>
      waitFor(
        async () => {
          const reading = (await api('GET', `/api/outbox/observations/${last}`)) as { state: string };
          const outbox = (await api('GET', '/api/outbox')) as { depth: number; states: { open: number } };
          return reading.state !== 'pending' && reading.state !== 'open' && outbox.depth === 0 && outbox.states.open === 0;
        },
        30_000,
        `the chart to catch up with reading ${last}`,
      );
    await sendAdt(-1);
    let sent = 0;
    for (let m = 0; m < STEPS; m++) {
      for (const mon of MONITORS) {
        // Monitors do not know the patient (empty PID-3): the binding decides.
        pcd.send(pcd01Message({ controlId: `${mon.id}-${m}`, device: mon.eui64, cpr: '', time: hl7Utc(minute(m)) }));
        sent++;
      }
      await pcd.waitForAcks(sent);
      // Before a late ADT message: let the chart catch up, so what it corrects is really in the EPJ.
      if (ADT.some((e) => e.sentAfter === m && e.at < m)) await chartedUpTo(sent * 2);
      await sendAdt(m);
    }
    expect(pcd.acks.every((a) => a.code === 'AA')).toBe(true);

    // Expected chart: one HR and one SpO2 Observation per monitor and minute in which someone lay in its bed.
    const expected = new Map<string, string>();
    for (const mon of MONITORS) {
      for (let m = 0; m < STEPS; m++) {
        const who = occupant(mon.bed, m);
        if (who === null) continue;
        for (const code of ['HR', 'SpO2']) expected.set(`${mon.eui64}|${minute(m)}|${code}`, who);
      }
    }

    const epj = gw.addresses.epj!.url;
    const chart = async () => {
      const [observations, patients, devices] = await Promise.all([
        allResources<FhirObservation>(epj, 'Observation'),
        allResources<Patient>(epj, 'Patient'),
        allResources<Device>(epj, 'Device'),
      ]);
      const cprOf = new Map(patients.map((p) => [`Patient/${p.id}`, p.identifier?.[0]?.value ?? '?']));
      const euiOf = new Map(devices.map((d) => [`Device/${d.id}`, (d.identifier?.[0]?.value ?? '?').replace(/-/g, '')]));
      const live = new Map<string, string[]>();
      let voided = 0;
      for (const o of observations) {
        if (o.status === 'entered-in-error') {
          voided++;
          continue;
        }
        const key = `${euiOf.get(o.device?.reference ?? '')}|${Date.parse(o.effectiveDateTime!)}|${o.code.text}`;
        live.set(key, [...(live.get(key) ?? []), cprOf.get(o.subject?.reference ?? '') ?? '?']);
      }
      return { live, voided };
    };
    const settled = async () => {
      const { live } = await chart();
      return live.size === expected.size && [...expected].every(([k, who]) => live.get(k)?.length === 1 && live.get(k)![0] === who);
    };
    await waitFor(settled, 60_000, 'the chart to match the ward').catch(async (err: unknown) => {
      const { live } = await chart();
      const wrong = [...live].filter(([k, who]) => expected.get(k) !== who[0] || who.length !== 1).slice(0, 10);
      const missing = [...expected].filter(([k]) => !live.has(k)).slice(0, 10);
      throw new Error(`${(err as Error).message}; wrong: ${JSON.stringify(wrong)}; missing: ${JSON.stringify(missing)}`);
    });
    const { live, voided } = await chart();
    // Zero readings charted to the wrong patient; every one charted once.
    const wrong = [...live].filter(([k, who]) => who.length !== 1 || who[0] !== expected.get(k));
    expect(wrong).toEqual([]);
    expect(live.size).toBe(expected.size);
    // The late discharge and transfer voided what had been charted before they arrived:
    // bed 3 minutes 8–10 (to P3) and bed 1 minute 10 (to P1), HR and SpO2 each.
    expect(voided).toBe(8);
  }, 120_000);
});
