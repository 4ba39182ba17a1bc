/**
 * The EPJ stand-in over real HTTP on a port from listen(0): FHIR semantics the gateway relies on
 * (create / conditional create / batch / transaction, status codes, Location and ETag),
 * validation against R4 and the vital-signs profiles, every fault mode, the admin API, the CLI,
 * and that logs never carry a CPR number.
 */
import { connect } from 'node:net';
import { Writable } from 'node:stream';
import type { Bundle, BundleEntry, Observation, OperationOutcome, Patient, Resource } from '@medplum/fhirtypes';
import { pino } from 'pino';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  EPJ_CLI_HELP,
  parseEpjCliArgs,
  runEpjCli,
  startEpj,
} from '../../simulators/epj/index.js';
import type { EpjServer } from '../../simulators/epj/index.js';
import {
  golden,
  HEART_RATE,
  NIBP_PANEL,
  OBSERVATION_ID_SYSTEM,
  PUMP_TRANSACTION,
  SPO2,
} from '../helpers/epj-golden.js';

const CPR_SYSTEM = 'urn:oid:1.2.208.176.1.2';
const CPR = '0101901234';
const UNKNOWN_CPR = '3112995678';
const PATIENT: Patient = {
  resourceType: 'Patient',
  id: 'pat-cpr',
  identifier: [{ use: 'official', system: CPR_SYSTEM, value: CPR }],
  name: [{ family: 'Testesen', given: ['Tove'] }],
};

interface Answer {
  readonly status: number;
  readonly headers: Headers;
  /** Parsed JSON body (a FHIR resource, or admin JSON), undefined when empty. */
  readonly body: Record<string, unknown> | undefined;
}

async function call(url: string, method: string, body?: unknown, headers: Record<string, string> = {}): Promise<Answer> {
  const res = await fetch(url, {
    method,
    headers: { accept: 'application/fhir+json', ...(body !== undefined ? { 'content-type': 'application/fhir+json' } : {}), ...headers },
    ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, body: text ? (JSON.parse(text) as Record<string, unknown>) : undefined };
}

function asBundle(a: Answer): Bundle {
  expect(a.body?.resourceType).toBe('Bundle');
  return a.body as unknown as Bundle;
}

function asOutcome(a: Answer): OperationOutcome {
  expect(a.body?.resourceType).toBe('OperationOutcome');
  return a.body as unknown as OperationOutcome;
}

function statuses(bundle: Bundle): string[] {
  return (bundle.entry ?? []).map((e) => e.response?.status ?? '');
}

function identifierOf(o: Observation): string {
  const id = o.identifier?.[0];
  return `${id?.system ?? ''}|${id?.value ?? ''}`;
}

/** Is anything listening on the port? A refused connect is what an outage looks like. */
function tcpState(port: number): Promise<'open' | 'refused'> {
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host: '127.0.0.1' });
    socket.once('connect', () => {
      socket.destroy();
      resolve('open');
    });
    socket.once('error', (err: NodeJS.ErrnoException) => (err.code === 'ECONNREFUSED' ? resolve('refused') : reject(err)));
  });
}

async function eventually(check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) {
      throw new Error(`condition not met within ${timeoutMs} ms`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

describe('EPJ stand-in', () => {
  let epj: EpjServer;
  const logLines: string[] = [];

  const fhir = (method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<Answer> =>
    call(`${epj.url}${path}`, method, body, headers);
  const countByIdentifier = async (identifier: string): Promise<number> => {
    const a = await fhir('GET', `/Observation?identifier=${encodeURIComponent(identifier)}&_summary=count`);
    expect(a.status).toBe(200);
    return asBundle(a).total ?? -1;
  };

  beforeAll(async () => {
    const stream = new Writable({
      write(chunk: Buffer, _enc, done): void {
        logLines.push(chunk.toString('utf8'));
        done();
      },
    });
    epj = await startEpj({ port: 0, log: pino({ level: 'debug' }, stream), preload: [PATIENT] });
  });

  afterAll(async () => {
    await epj?.close();
  });

  beforeEach(async () => {
    await epj.resetFaults();
    await epj.reset();
  });

  describe('FHIR R4 server', () => {
    it('starts in reasonable time and serves a CapabilityStatement for FHIR 4.0.1', async () => {
      expect(epj.url).toBe(`http://127.0.0.1:${epj.port}/fhir`);
      // Loading the R4 definitions takes about a second on a developer machine.
      expect(epj.startupMs).toBeLessThan(10_000);
      const a = await fhir('GET', '/metadata');
      expect(a.status).toBe(200);
      expect(a.body?.resourceType).toBe('CapabilityStatement');
      expect(a.body?.fhirVersion).toBe('4.0.1');
    });

    it('accepts the golden heart-rate Observation (§3.1): 201, Location and ETag of version 1', async () => {
      const a = await fhir('POST', '/Observation', HEART_RATE);
      expect(a.status).toBe(201);
      const created = a.body as unknown as Observation;
      expect(created.id).toMatch(/^[0-9a-f-]{36}$/);
      expect(created.meta?.versionId).toBe('1');
      expect(a.headers.get('location')).toBe(`${epj.url}/Observation/${created.id}/_history/1`);
      expect(a.headers.get('etag')).toBe('W/"1"');
      expect(a.headers.get('content-type')).toMatch(/^application\/fhir\+json/);
      const read = await fhir('GET', `/Observation/${created.id}`);
      expect(read.status).toBe(200);
      expect((read.body as unknown as Observation).valueQuantity).toEqual(HEART_RATE.valueQuantity);
      expect(epj.stats().resourcesCreated).toBe(1);
    });

    it.each([
      ['SpO2 (§3.2)', SPO2],
      ['NIBP panel (§3.3)', NIBP_PANEL],
    ])('accepts the golden %s Observation', async (_name, example) => {
      const a = await fhir('POST', '/Observation', example);
      expect(a.status).toBe(201);
      expect(await countByIdentifier(identifierOf(example))).toBe(1);
    });

    it('accepts the golden pump transaction (§3.4) once, then answers 200 without duplicating', async () => {
      const first = await fhir('POST', '', PUMP_TRANSACTION);
      expect(first.status).toBe(200);
      const response = asBundle(first);
      expect(response.type).toBe('transaction-response');
      expect(statuses(response)).toEqual(['201', '201', '201', '201', '201']);
      for (const entry of response.entry ?? []) {
        expect(entry.response?.location).toMatch(/^(Device|DeviceMetric|Observation)\/[0-9a-f-]{36}\/_history\/1$/);
        expect(entry.response?.etag).toBe('W/"1"');
      }
      const metricId = response.entry?.[3]?.response?.location?.split('/')[1];

      const second = asBundle(await fhir('POST', '', PUMP_TRANSACTION));
      // Conditional updates find their Device/DeviceMetric (200); the conditional create matches (200).
      expect(statuses(second)).toEqual(['200', '200', '200', '200', '200']);
      expect(epj.stats().stored).toEqual({ Patient: 1, Device: 3, DeviceMetric: 1, Observation: 1 });
      expect(epj.stats().duplicatesAvoided).toBe(1);

      const obs = asBundle(await fhir('GET', '/Observation?code=urn:iso:std:iso:11073:10101|157784'));
      expect(obs.total).toBe(1);
      // urn:uuid references were rewritten to the stored DeviceMetric.
      expect((obs.entry?.[0]?.resource as Observation).device?.reference).toBe(`DeviceMetric/${metricId}`);
    });

    it('conditional create with If-None-Exist: 201 first, then 200 pointing at the same resource', async () => {
      const ifNoneExist = { 'if-none-exist': `identifier=${identifierOf(HEART_RATE)}` };
      const first = await fhir('POST', '/Observation', HEART_RATE, ifNoneExist);
      const second = await fhir('POST', '/Observation', HEART_RATE, ifNoneExist);
      expect(first.status).toBe(201);
      expect(second.status).toBe(200);
      expect(second.headers.get('location')).toBe(first.headers.get('location'));
      expect(await countByIdentifier(identifierOf(HEART_RATE))).toBe(1);
      expect(epj.stats().duplicatesAvoided).toBe(1);
    });

    it('a batch with conditional creates posted twice creates each Observation once', async () => {
      const batch: Bundle = {
        resourceType: 'Bundle',
        type: 'batch',
        entry: [HEART_RATE, SPO2, NIBP_PANEL].map(
          (o): BundleEntry => ({
            resource: golden(o),
            request: { method: 'POST', url: 'Observation', ifNoneExist: `identifier=${identifierOf(o)}` },
          }),
        ),
      };
      const first = asBundle(await fhir('POST', '', batch));
      const second = asBundle(await fhir('POST', '', batch));
      expect(first.type).toBe('batch-response');
      expect(statuses(first)).toEqual(['201', '201', '201']);
      expect(statuses(second)).toEqual(['200', '200', '200']);
      expect(second.entry?.map((e) => e.response?.location)).toEqual(first.entry?.map((e) => e.response?.location));
      for (const o of [HEART_RATE, SPO2, NIBP_PANEL]) {
        expect(await countByIdentifier(identifierOf(o))).toBe(1);
      }
      expect(epj.stats()).toMatchObject({ resourcesCreated: 3, duplicatesAvoided: 3, stored: { Observation: 3 } });
    });

    it('conditional create stays unique when the same request arrives ten times at once', async () => {
      const ifNoneExist = { 'if-none-exist': `identifier=${identifierOf(SPO2)}` };
      const answers = await Promise.all(Array.from({ length: 10 }, () => fhir('POST', '/Observation', SPO2, ifNoneExist)));
      expect(answers.map((a) => a.status).sort()).toEqual([200, 200, 200, 200, 200, 200, 200, 200, 200, 201]);
      expect(await countByIdentifier(identifierOf(SPO2))).toBe(1);
    });

    it('refuses an unknown ifNoneExist search parameter instead of silently creating duplicates', async () => {
      const a = await fhir('POST', '/Observation', HEART_RATE, { 'if-none-exist': `identifyer=${identifierOf(HEART_RATE)}` });
      expect(a.status).toBe(400);
      expect(asOutcome(a).issue?.[0]?.diagnostics).toContain('identifyer');
      expect(await countByIdentifier(identifierOf(HEART_RATE))).toBe(0);
    });

    type Breaker = (o: Observation) => void;
    it.each<[string, Readonly<Observation>, Breaker, number, string]>([
      ['missing status', HEART_RATE, (o) => delete (o as Partial<Observation>).status, 400, 'Observation.status'],
      ['status outside the required value set', HEART_RATE, (o) => ((o as { status: string }).status = 'done'), 400, 'Observation.status'],
      ['a time without zone offset', HEART_RATE, (o) => (o.effectiveDateTime = '2025-03-12T10:15:00'), 400, 'Observation.effectiveDateTime'],
      ['an unknown element', HEART_RATE, (o) => Object.assign(o, { bedNumber: 7 }), 400, 'Observation.bedNumber'],
      ['missing subject (vitalsigns 1..1)', HEART_RATE, (o) => delete o.subject, 422, 'Observation.subject'],
      ['missing category', SPO2, (o) => delete o.category, 422, 'Observation.category'],
      ['a non-UCUM unit system', HEART_RATE, (o) => o.valueQuantity && (o.valueQuantity.system = 'http://example.org/units'), 422, 'Observation.valueQuantity.system'],
      ['bpm instead of /min', HEART_RATE, (o) => o.valueQuantity && (o.valueQuantity.code = 'bpm'), 422, 'Observation.valueQuantity.code'],
      ['SpO2 as a fraction', SPO2, (o) => o.valueQuantity && Object.assign(o.valueQuantity, { value: 0.97, code: '{fraction}', unit: '1' }), 422, 'Observation.valueQuantity.code'],
      ['a BP panel without components', NIBP_PANEL, (o) => delete o.component, 422, 'Observation.component'],
      ['a BP panel without diastolic', NIBP_PANEL, (o) => o.component?.splice(1, 1), 422, 'Observation.component'],
      ['diastolic in kPa', NIBP_PANEL, (o) => o.component?.[1]?.valueQuantity && (o.component[1].valueQuantity.code = 'kPa'), 422, 'Observation.component[1].valueQuantity.code'],
      ['a BP panel with a valueQuantity', NIBP_PANEL, (o) => (o.valueQuantity = { value: 1, unit: 'mmHg', system: 'http://unitsofmeasure.org', code: 'mm[Hg]' }), 422, 'Observation.valueQuantity'],
      ['neither value nor dataAbsentReason (vs-2)', HEART_RATE, (o) => delete o.valueQuantity, 422, 'Observation'],
    ])('refuses an Observation with %s', async (_name, example, breakIt, status, expression) => {
      const broken = golden(example) as Observation;
      breakIt(broken);
      const a = await fhir('POST', '/Observation', broken);
      expect(a.status).toBe(status);
      const outcome = asOutcome(a);
      const errors = (outcome.issue ?? []).filter((i) => i.severity === 'error');
      expect(errors.length).toBeGreaterThan(0);
      expect(errors.map((i) => i.expression?.[0])).toContain(expression);
      for (const i of errors) {
        expect(i.code).toBeTruthy();
        expect(i.diagnostics?.length).toBeGreaterThan(5);
      }
      if (status === 422) {
        expect(errors.some((i) => i.diagnostics?.includes('http://hl7.org/fhir/StructureDefinition/'))).toBe(true);
      }
      expect(await countByIdentifier(identifierOf(broken))).toBe(0);
      expect(epj.stats().rejections).toBe(1);
    });

    it('applies the vital-signs profile by LOINC code even without meta.profile', async () => {
      const noClaim = golden(HEART_RATE) as Observation;
      delete noClaim.meta;
      expect((await fhir('POST', '/Observation', noClaim)).status).toBe(201);
      const wrongUnit = golden(noClaim);
      if (wrongUnit.valueQuantity) wrongUnit.valueQuantity.code = '{beats}/min';
      const refused = await fhir('POST', '/Observation', wrongUnit);
      expect(refused.status).toBe(422);
      expect(asOutcome(refused).issue?.[0]?.diagnostics).toContain('StructureDefinition/heartrate');
      // The same unit on a non-vital-sign code is no profile's business.
      const other = golden(wrongUnit);
      other.code = { coding: [{ system: 'urn:iso:std:iso:11073:10101', code: '147842' }] };
      delete other.category;
      expect((await fhir('POST', '/Observation', other)).status).toBe(201);
    });

    it('answers malformed requests like a real server', async () => {
      expect((await fhir('POST', '/Observation', '{"resourceType": "Observation",')).status).toBe(400);
      expect((await call(`${epj.url}/Observation`, 'POST', 'x', { 'content-type': 'application/xml' })).status).toBe(415);
      expect((await fhir('POST', '/Patient', HEART_RATE)).status).toBe(400);
      expect((await fhir('GET', '/Observation?bedside=1')).status).toBe(400);
      expect((await fhir('GET', '/Observation/does-not-exist')).status).toBe(404);
      expect((await fhir('GET', '/NoSuchType')).status).toBe(404);
      expect((await fhir('GET', '/metadata', undefined, { accept: 'application/fhir+xml' })).status).toBe(406);
      const created = (await fhir('POST', '/Observation', HEART_RATE)).body as unknown as Observation;
      expect((await fhir('DELETE', `/Observation/${created.id}`)).status).toBe(200);
      expect((await fhir('GET', `/Observation/${created.id}`)).status).toBe(410);
    });

    it('in a batch refuses only the bad entry; in a transaction refuses everything', async () => {
      const bad = golden(SPO2) as Observation;
      delete bad.subject;
      const entries: BundleEntry[] = [HEART_RATE, bad, NIBP_PANEL].map((o) => ({
        resource: golden(o) as Observation,
        request: { method: 'POST', url: 'Observation', ifNoneExist: `identifier=${identifierOf(o)}` },
      }));
      const batch = asBundle(await fhir('POST', '', { resourceType: 'Bundle', type: 'batch', entry: entries }));
      expect(statuses(batch)).toEqual(['201', '422', '201']);
      expect(batch.entry?.[1]?.response?.outcome?.issue?.[0]?.expression).toEqual(['Observation.subject']);

      await epj.reset();
      const tx = await fhir('POST', '', { resourceType: 'Bundle', type: 'transaction', entry: entries });
      expect(tx.status).toBe(422);
      expect(asOutcome(tx).issue?.[0]?.expression).toEqual(['Bundle.entry[1].resource.subject']);
      expect(epj.stats().stored.Observation).toBeUndefined();
    });

    it('rolls a transaction back when an entry fails while being processed', async () => {
      // 12 conditional creates: medplum's own transaction mode refuses more than 8 of them.
      const entries: BundleEntry[] = Array.from({ length: 12 }, (_, i) => {
        const o = golden(HEART_RATE) as Observation;
        o.identifier = [{ system: OBSERVATION_ID_SYSTEM, value: `tx-${i}` }];
        return { resource: o, request: { method: 'POST', url: 'Observation', ifNoneExist: `identifier=${OBSERVATION_ID_SYSTEM}|tx-${i}` } };
      });
      const ok = await fhir('POST', '', { resourceType: 'Bundle', type: 'transaction', entry: entries });
      expect(ok.status).toBe(200);
      expect(statuses(asBundle(ok))).toEqual(Array(12).fill('201'));

      const more = entries.map((e, i) => {
        const o = golden(e.resource) as Observation;
        o.identifier = [{ system: OBSERVATION_ID_SYSTEM, value: `tx2-${i}` }];
        return { resource: o, request: { method: 'POST' as const, url: 'Observation', ifNoneExist: `identifier=${OBSERVATION_ID_SYSTEM}|tx2-${i}` } };
      });
      const firstId = asBundle(ok).entry?.[0]?.response?.location?.split('/')[1] ?? '';
      const stale: BundleEntry = {
        resource: { ...(golden(HEART_RATE) as Observation), id: firstId, status: 'amended' },
        request: { method: 'PUT', url: `Observation/${firstId}`, ifMatch: 'W/"7"' },
      };
      const failed = await fhir('POST', '', { resourceType: 'Bundle', type: 'transaction', entry: [...more, stale] });
      expect(failed.status).toBe(412);
      expect(await countByIdentifier(`${OBSERVATION_ID_SYSTEM}|tx2-0`)).toBe(0);
      expect(epj.stats().stored.Observation).toBe(12);
      expect(((await fhir('GET', `/Observation/${firstId}`)).body as unknown as Observation).status).toBe('final');
    });

    it('versions updates: If-Match, 412 on a stale version, 201 for an update that creates', async () => {
      const created = (await fhir('POST', '/Observation', HEART_RATE)).body as unknown as Observation;
      const amended = { ...created, status: 'amended' };
      const updated = await fhir('PUT', `/Observation/${created.id}`, amended, { 'if-match': 'W/"1"' });
      expect(updated.status).toBe(200);
      expect(updated.headers.get('etag')).toBe('W/"2"');
      expect((await fhir('PUT', `/Observation/${created.id}`, amended, { 'if-match': 'W/"1"' })).status).toBe(412);
      const history = asBundle(await fhir('GET', `/Observation/${created.id}/_history`));
      expect(history.entry?.map((e) => e.resource?.meta?.versionId)).toEqual(['2', '1']);
      const fresh = await fhir('PUT', '/Observation/client-chosen-id', { ...golden(SPO2), id: 'client-chosen-id' });
      expect(fresh.status).toBe(201);
      expect(fresh.headers.get('location')).toBe(`${epj.url}/Observation/client-chosen-id/_history/1`);
    });

    it('searches by subject, patient, code and identifier, with paging', async () => {
      for (const o of [HEART_RATE, SPO2, NIBP_PANEL]) {
        expect((await fhir('POST', '/Observation', o)).status).toBe(201);
      }
      const count = async (q: string): Promise<number | undefined> => asBundle(await fhir('GET', `/Observation?${q}`)).total;
      expect(await count('subject=Patient/pat-123')).toBe(3);
      expect(await count('patient=pat-123')).toBe(3);
      expect(await count('patient=Patient/someone-else')).toBe(0);
      expect(await count(`code=${encodeURIComponent('http://loinc.org|8867-4')}`)).toBe(1);
      expect(await count(`identifier=${encodeURIComponent(identifierOf(NIBP_PANEL))}`)).toBe(1);
      const page = asBundle(await fhir('GET', '/Observation?subject=Patient/pat-123&_count=2'));
      expect(page.entry).toHaveLength(2);
      expect(page.entry?.[0]?.fullUrl).toMatch(new RegExp(`^${epj.url}/Observation/`));
      const next = page.link?.find((l) => l.relation === 'next')?.url ?? '';
      const rest = asBundle(await call(next, 'GET'));
      expect(rest.entry).toHaveLength(1);
    });

    it('resolves conditional references to the Patient by CPR, and never echoes the CPR', async () => {
      const o = golden(HEART_RATE) as Observation;
      o.subject = { reference: `Patient?identifier=${CPR_SYSTEM}|${CPR}` };
      const tx = await fhir('POST', '', {
        resourceType: 'Bundle',
        type: 'transaction',
        entry: [{ resource: o, request: { method: 'POST', url: 'Observation', ifNoneExist: `identifier=${identifierOf(o)}` } }],
      });
      expect(tx.status).toBe(200);
      const stored = asBundle(await fhir('GET', `/Observation?identifier=${encodeURIComponent(identifierOf(o))}`));
      expect((stored.entry?.[0]?.resource as Observation).subject?.reference).toBe('Patient/pat-cpr');

      const unknown = golden(o);
      unknown.subject = { reference: `Patient?identifier=${CPR_SYSTEM}|${UNKNOWN_CPR}` };
      unknown.identifier = [{ system: OBSERVATION_ID_SYSTEM, value: 'unknown-patient' }];
      const refused = await fhir('POST', '/Observation', unknown);
      expect(refused.status).toBe(404);
      expect(asOutcome(refused).issue?.[0]?.expression).toEqual(['Observation.subject']);
      expect(JSON.stringify(refused.body)).not.toContain(UNKNOWN_CPR);
    });

    it('keeps CPR numbers out of the logs', async () => {
      const before = logLines.length;
      await fhir('GET', `/Patient?identifier=${encodeURIComponent(`${CPR_SYSTEM}|${CPR}`)}`);
      await call(`${epj.url}/Patient/_search`, 'POST', `identifier=${encodeURIComponent(`${CPR_SYSTEM}|${CPR}`)}`, {
        'content-type': 'application/x-www-form-urlencoded',
      });
      await fhir('PUT', `/Patient?identifier=${encodeURIComponent(`${CPR_SYSTEM}|${CPR}`)}`, { ...PATIENT, id: undefined, gender: 'female' });
      const bad = golden(HEART_RATE) as Observation;
      bad.subject = { reference: `Patient?identifier=${CPR_SYSTEM}|${UNKNOWN_CPR}` };
      delete (bad as Partial<Observation>).status;
      await fhir('POST', '/Observation', bad);
      await fhir('GET', `/Patient/${CPR}`);
      const lines = logLines.slice(before);
      expect(lines.length).toBeGreaterThanOrEqual(5);
      const all = lines.join('\n');
      expect(all).not.toContain(CPR);
      expect(all).not.toContain(UNKNOWN_CPR);
      const access = lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.msg === 'fhir request');
      expect(access[0]).toMatchObject({ method: 'GET', path: '/fhir/Patient', status: 200 });
      expect(typeof access[0]?.ms).toBe('number');
      expect(access.at(-1)).toMatchObject({ path: '/fhir/Patient/[redacted]', status: 404 });
    });
  });

  describe('faults', () => {
    it('throttle: 429 with Retry-After, nothing processed, until reset', async () => {
      await epj.setFaults({ throttle: 7 });
      const a = await fhir('POST', '/Observation', HEART_RATE);
      expect(a.status).toBe(429);
      expect(a.headers.get('retry-after')).toBe('7');
      expect(asOutcome(a).issue?.[0]?.code).toBe('throttled');
      expect(epj.stats()).toMatchObject({ throttled: 1, resourcesCreated: 0 });
      await epj.resetFaults();
      expect((await fhir('POST', '/Observation', HEART_RATE)).status).toBe(201);
    });

    it('down: the port refuses TCP connections, then comes back on the same port with the data', async () => {
      const created = (await fhir('POST', '/Observation', HEART_RATE)).body as unknown as Observation;
      const port = epj.port;
      await epj.setFaults({ down: true });
      expect(await tcpState(port)).toBe('refused');
      const err = await fetch(`${epj.url}/metadata`).then(
        () => undefined,
        (e: unknown) => e as Error & { cause?: NodeJS.ErrnoException },
      );
      expect(err?.cause?.code).toBe('ECONNREFUSED');
      expect(epj.stats().outages).toBe(1);

      await epj.setFaults({ down: false });
      expect(epj.port).toBe(port);
      expect(await tcpState(port)).toBe('open');
      expect((await fhir('GET', `/Observation/${created.id}`)).status).toBe(200);
    });

    it('down cuts requests in flight', async () => {
      await epj.setFaults({ latencyMs: 5_000 });
      const before = epj.stats().requests;
      const pending = fhir('POST', '/Observation', HEART_RATE).then(
        () => 'answered',
        () => 'cut',
      );
      await eventually(async () => epj.stats().requests > before, 2_000);
      await epj.setFaults({ down: true });
      expect(await pending).toBe('cut');
      await epj.setFaults({ down: false, latencyMs: 0 });
    });

    it('down via the admin API on the FHIR port, with downForMs bringing it back', async () => {
      const a = await call(`${epj.adminUrl}/faults`, 'POST', { down: true, downForMs: 400 }, { 'content-type': 'application/json' });
      expect(a.status).toBe(200);
      expect(a.body).toMatchObject({ down: true, downForMs: 400 });
      await eventually(async () => (await tcpState(epj.port)) === 'refused', 1_000);
      await eventually(async () => (await tcpState(epj.port)) === 'open', 3_000);
      expect(epj.faults().down).toBe(false);
      expect((await fhir('GET', '/metadata')).status).toBe(200);
    });

    it('can start in an outage: the port is known but refuses until downForMs has passed', async () => {
      const other = await startEpj({ port: 0, faults: { down: true, downForMs: 250 } });
      try {
        expect(other.port).toBeGreaterThan(0);
        expect(await tcpState(other.port)).toBe('refused');
        await eventually(async () => (await tcpState(other.port)) === 'open', 3_000);
        expect((await call(`${other.url}/metadata`, 'GET')).status).toBe(200);
      } finally {
        await other.close();
      }
    });

    it('down with a separate admin port: admin stays up and ends the outage', async () => {
      const other = await startEpj({ port: 0, adminPort: 0 });
      try {
        expect(other.adminUrl).not.toContain(`:${other.port}/`);
        const down = await call(`${other.adminUrl}/faults`, 'PUT', { down: true }, { 'content-type': 'application/json' });
        expect(down.status).toBe(200);
        expect(await tcpState(other.port)).toBe('refused');
        expect((await call(`${other.adminUrl}/stats`, 'GET')).body).toMatchObject({ outages: 1 });
        const up = await call(`${other.adminUrl}/faults`, 'DELETE');
        expect(up.body).toMatchObject({ down: false });
        expect((await call(`${other.url}/metadata`, 'GET')).status).toBe(200);
      } finally {
        await other.close();
      }
    });

    it('latency: every answer waits latencyMs', async () => {
      await epj.setFaults({ latencyMs: 500 });
      const started = performance.now();
      const a = await fhir('POST', '/Observation', HEART_RATE);
      const elapsed = performance.now() - started;
      expect(a.status).toBe(201);
      expect(elapsed).toBeGreaterThanOrEqual(495);
      await epj.setFaults({ latencyMs: 0 });
      const quick = performance.now();
      await fhir('GET', '/metadata');
      // Generous bound for a loaded CI machine; still far below the 500 ms of the fault.
      expect(performance.now() - quick).toBeLessThan(400);
    });

    it('errorRate: about that fraction fails with 500/503, reproducibly for a seed', async () => {
      const run = async (): Promise<number[]> => {
        const s = await startEpj({ port: 0, seed: 42, faults: { errorRate: 0.5 } });
        try {
          const out: number[] = [];
          for (let i = 0; i < 40; i++) {
            out.push((await call(`${s.url}/metadata`, 'GET')).status);
          }
          expect(s.stats().injectedErrors).toBe(out.filter((x) => x !== 200).length);
          return out;
        } finally {
          await s.close();
        }
      };
      const first = await run();
      const failures = first.filter((s) => s !== 200);
      expect(new Set(failures)).toEqual(new Set([500, 503]));
      expect(failures.length).toBeGreaterThanOrEqual(10);
      expect(failures.length).toBeLessThanOrEqual(30);
      expect(await run()).toEqual(first);
    });

    it('errorRate 1 with errorStatus 503: every request fails and nothing is stored', async () => {
      await epj.setFaults({ errorRate: 1, errorStatus: 503 });
      const a = await fhir('POST', '/Observation', HEART_RATE);
      expect(a.status).toBe(503);
      expect(asOutcome(a).issue?.[0]?.code).toBe('transient');
      await epj.resetFaults();
      expect(await countByIdentifier(identifierOf(HEART_RATE))).toBe(0);
    });

    it('rejectAll: every resource refused with 422, reads still work', async () => {
      await epj.setFaults({ rejectAll: true });
      const a = await fhir('POST', '/Observation', HEART_RATE);
      expect(a.status).toBe(422);
      expect(asOutcome(a).issue?.[0]?.code).toBe('business-rule');
      const batch = asBundle(
        await fhir('POST', '', {
          resourceType: 'Bundle',
          type: 'batch',
          entry: [SPO2, NIBP_PANEL].map((o) => ({ resource: o, request: { method: 'POST', url: 'Observation' } })),
        }),
      );
      expect(statuses(batch)).toEqual(['422', '422']);
      expect((await fhir('POST', '', PUMP_TRANSACTION)).status).toBe(422);
      expect(await countByIdentifier(identifierOf(HEART_RATE))).toBe(0);
      expect(epj.stats()).toMatchObject({ rejections: 8, stored: { Patient: 1 } });
    });

    it('dropRate: the write happens but no answer comes; a conditional retry does not duplicate', async () => {
      await epj.setFaults({ dropRate: 1 });
      const ifNoneExist = { 'if-none-exist': `identifier=${identifierOf(HEART_RATE)}` };
      await expect(fhir('POST', '/Observation', HEART_RATE, ifNoneExist)).rejects.toThrow();
      await epj.resetFaults();
      expect(epj.stats().dropped).toBe(1);
      const retry = await fhir('POST', '/Observation', HEART_RATE, ifNoneExist);
      expect(retry.status).toBe(200);
      expect(await countByIdentifier(identifierOf(HEART_RATE))).toBe(1);
    });

    it('admin API: validates, merges (POST), replaces (PUT), resets, reports stats', async () => {
      const admin = (method: string, path: string, body?: unknown): Promise<Answer> =>
        call(`${epj.adminUrl}${path}`, method, body, body === undefined ? {} : { 'content-type': 'application/json' });
      const invalid = await admin('PUT', '/faults', { errorRate: 2 });
      expect(invalid.status).toBe(400);
      expect(String(invalid.body?.error)).toContain('errorRate');
      expect((await admin('PUT', '/faults', { latencyMs: 10 })).body).toMatchObject({ latencyMs: 10, throttle: false });
      expect((await admin('POST', '/faults', { throttle: 2 })).body).toMatchObject({ latencyMs: 10, throttle: 2 });
      expect((await admin('PUT', '/faults', { rejectAll: true })).body).toMatchObject({ latencyMs: 0, throttle: false, rejectAll: true });
      expect((await admin('GET', '/faults')).body).toEqual(epj.faults());
      expect((await admin('POST', '/faults/reset')).body).toMatchObject({ rejectAll: false });
      await fhir('POST', '/Observation', HEART_RATE);
      expect((await admin('GET', '/stats')).body).toMatchObject({ resourcesCreated: 1, stored: { Observation: 1, Patient: 1 } });
      const reset = await admin('POST', '/reset');
      expect(reset.body).toMatchObject({ resourcesCreated: 0, stored: { Patient: 1 } });
      expect(await countByIdentifier(identifierOf(HEART_RATE))).toBe(0);
      await expect(epj.setFaults({ dropRate: -1 } as never)).rejects.toThrow(/dropRate/);
    });

    it('a seed makes resource ids reproducible', async () => {
      const ids: string[] = [];
      for (let i = 0; i < 2; i++) {
        const s = await startEpj({ port: 0, seed: 7 });
        try {
          ids.push(String(((await call(`${s.url}/Observation`, 'POST', HEART_RATE)).body as unknown as Resource).id));
        } finally {
          await s.close();
        }
      }
      expect(ids[0]).toBe(ids[1]);
    });
  });
});

describe('EPJ stand-in CLI', () => {
  const sink = (): { stream: Writable; text: () => string } => {
    const parts: string[] = [];
    return {
      stream: new Writable({
        write(chunk: Buffer, _enc, done): void {
          parts.push(chunk.toString('utf8'));
          done();
        },
      }),
      text: () => parts.join(''),
    };
  };

  it('--help explains every flag', async () => {
    const out = sink();
    expect(await runEpjCli(['--help'], { stdout: out.stream })).toBe(0);
    for (const flag of ['--port', '--latency', '--error-rate', '--throttle', '--reject-all', '--down', '--down-for', '--admin-port', '--seed', '--drop-rate', '--preload']) {
      expect(out.text()).toContain(flag);
    }
    expect(out.text()).toBe(EPJ_CLI_HELP);
  });

  it('maps flags to faults, and refuses bad ones with exit code 2', async () => {
    const flags = parseEpjCliArgs(['--port', '0', '--latency', '250', '--error-rate', '0.1', '--throttle', '30', '--reject-all', '--down', '--down-for', '500']);
    expect(flags.port).toBe(0);
    expect(flags.faults).toMatchObject({ latencyMs: 250, errorRate: 0.1, throttle: 30, rejectAll: true, down: true, downForMs: 500 });
    const err = sink();
    expect(await runEpjCli(['--error-rate', '2'], { stderr: err.stream })).toBe(2);
    expect(err.text()).toContain('--error-rate');
    expect(await runEpjCli(['--bogus'], { stderr: err.stream })).toBe(2);
    expect(await runEpjCli(['--port', 'eighty'], { stderr: err.stream })).toBe(2);
  });

  it('runs a server with the faults given until stopped', async () => {
    const stop = new AbortController();
    let url = '';
    const out = sink();
    const exit = runEpjCli(['--port', '0', '--throttle', '3', '--log-level', 'info'], {
      stdout: out.stream,
      signal: stop.signal,
      onListening: (s) => {
        url = s.url;
      },
    });
    await eventually(async () => url !== '', 10_000);
    const a = await call(`${url}/metadata`, 'GET');
    expect(a.status).toBe(429);
    expect(a.headers.get('retry-after')).toBe('3');
    stop.abort();
    expect(await exit).toBe(0);
    expect(out.text()).toContain('EPJ stand-in listening');
  });
});
