/**
 * Charting through the whole gateway: PCD-01 over MLLP in, FHIR out — on embedded defaults
 * (the EPJ stand-in started by the gateway), and across a kill -9 of the gateway process in the
 * middle of a flush (no duplicate, no loss after the restart).
 */
import { join } from 'node:path';
import type { Device, Observation as FhirObservation } from '@medplum/fhirtypes';
import { afterEach, describe, expect, it } from 'vitest';
import { startEpj } from '../../simulators/epj/index.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { startChildGateway, type ChildGateway } from '../helpers/child-gateway.js';
import { allResources, commit, countByIdentifier, PATIENTS, reading, tempDir, waitFor } from '../helpers/fhir-harness.js';
import { getJson, startTestGateway } from '../helpers/gateway.js';
import { MllpTestClient } from '../helpers/mllp-client.js';
import { pcd01Message } from '../helpers/pcd01-message.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});

interface OutboxBody {
  enabled: boolean;
  depth: number;
  confirmedSinceStart: number;
  states: Record<string, number>;
  epj: { reachable: boolean | null; baseUrl: string };
}

describe('charting through the gateway', () => {
  it('on embedded defaults: a PCD-01 message over MLLP shows up as Observations in the stand-in within seconds', async () => {
    const cpr = '2512489996';
    const gw = await startTestGateway({ fhir: { embeddedEpj: { port: 0 }, outbox: { pollMs: 50 } } });
    cleanups.push(() => gw.stop());
    expect(gw.addresses.epj).toMatchObject({ embedded: true });
    const epjUrl = gw.addresses.epj!.url;
    const client = await MllpTestClient.connect(gw.mllpPort);
    cleanups.push(() => client.close());
    const started = Date.now();
    client.send(pcd01Message({ controlId: 'F1', cpr }));
    await client.waitForAcks(1);
    expect(client.acks[0]!.code).toBe('AA');

    // The message's readings are from 10:14 (a closed interval): charted at once.
    await waitFor(async () => (await allResources<FhirObservation>(epjUrl, 'Observation')).length === 2, 15_000, 'Observations in the stand-in');
    expect(Date.now() - started).toBeLessThan(10_000);
    const observations = await allResources<FhirObservation>(epjUrl, 'Observation');
    expect(observations.map((o) => o.code.text).sort()).toEqual(['HR', 'SpO2']);
    expect(observations.every((o) => o.subject?.reference?.startsWith('Patient/'))).toBe(true);
    expect(observations[0]!.effectiveDateTime).toBe('2026-11-21T10:14:55+01:00');
    const [device] = await allResources<Device>(epjUrl, 'Device');
    expect(device!.identifier).toEqual([{ system: 'urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680', value: '00-12-A0-FF-FE-3B-7C-01' }]);

    const outbox = await getJson<OutboxBody>(`${gw.httpUrl}/api/outbox`);
    expect(outbox.body).toMatchObject({ enabled: true, depth: 0, confirmedSinceStart: 2, epj: { reachable: true, baseUrl: epjUrl } });
    const state = await getJson<{ state: string; entry: { fhirId: string } }>(`${gw.httpUrl}/api/outbox/observations/1`);
    expect(state.body.state).toBe('confirmed');
    expect(observations.map((o) => `Observation/${o.id}`)).toContain(state.body.entry.fhirId);
    const entries = await getJson<{ items: unknown[] }>(`${gw.httpUrl}/api/outbox/entries?state=confirmed`);
    expect(entries.body.items).toHaveLength(2);
    expect(JSON.stringify(entries.body) + JSON.stringify(outbox.body)).not.toContain(cpr);
    expect((await getJson(`${gw.httpUrl}/api/outbox/entries?state=nope`)).status).toBe(400);
    expect((await getJson(`${gw.httpUrl}/api/outbox/observations/999`)).status).toBe(404);
  }, 30_000);

  it('kill -9 in the middle of a flush: after the restart every reading is charted once', async () => {
    const epj = await startEpj({
      port: 0,
      preload: PATIENTS.map((p, i) => ({ resourceType: 'Patient', id: `pat-${i}`, identifier: [{ system: p.system, value: p.value }] })),
    });
    cleanups.push(() => epj.close());
    // The answer comes 300 ms after the EPJ stored the Bundle: a kill in that window is the
    // "outcome unknown" case the outbox must resolve by resending (conditional create).
    await epj.setFaults({ latencyMs: 300 });

    const dataDir = tempDir('mdi-fhir-kill-');
    const store = new SqliteStore({ file: join(dataDir, 'mdi.sqlite') });
    const t = Date.now() - 3_600_000;
    const readings = Array.from({ length: 60 }, (_, i) => reading(i % 2 ? 'hr' : 'spo2', { time: t + i * 1000, patient: PATIENTS[i % 4]! }));
    await commit(store, readings);
    await store.close();

    const yaml = [
      'fhir:',
      `  baseUrl: ${epj.url}`,
      '  batchSize: 5',
      '  concurrency: 1',
      '  charting: { intervalSeconds: 0 }',
      '  outbox: { pollMs: 20 }',
      '  retry: { initialDelayMs: 50, maxDelayMs: 500 }',
      '',
    ].join('\n');
    let gw: ChildGateway = await startChildGateway(dataDir, yaml);
    cleanups.push(() => gw.kill9());
    const answered = () => Object.values(epj.stats().responsesByStatus).reduce((a, b) => a + b, 0);
    // Wait until a few Bundles went through and one is in flight (stored by the EPJ, unanswered).
    await waitFor(() => (epj.stats().stored.Observation ?? 0) >= 15 && epj.stats().requests > answered(), 20_000, 'a flush in progress');
    await gw.kill9();
    const storedAtKill = epj.stats().stored.Observation ?? 0;
    expect(storedAtKill).toBeLessThan(60);

    await epj.setFaults({ latencyMs: 0 });
    gw = await startChildGateway(dataDir, yaml);
    await waitFor(async () => {
      const body = (await getJson<OutboxBody>(`http://127.0.0.1:${gw.httpPort}/api/outbox`)).body;
      return body.depth === 0 && body.states.open === 0 && (epj.stats().stored.Observation ?? 0) === 60;
    }, 30_000, 'everything charted after the restart');
    const startLine = gw.lines.map((l) => JSON.parse(l) as { msg?: string; recovered?: number }).find((l) => l.msg === 'charting to the EPJ started');
    expect(startLine?.recovered).toBeGreaterThanOrEqual(1);
    expect(await gw.terminate()).toBe(0);

    const counts = countByIdentifier(await allResources<FhirObservation>(epj.url, 'Observation'));
    expect(counts.size).toBe(60);
    expect([...counts.values()].every((n) => n === 1)).toBe(true);
    // The Bundle in flight at the kill was stored; resent after the restart it matched (200).
    expect(epj.stats().duplicatesAvoided).toBeGreaterThanOrEqual(1);
    expect(await allResources<Device>(epj.url, 'Device')).toHaveLength(1);
  }, 60_000);
});
