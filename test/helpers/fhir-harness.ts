/**
 * Helpers for the FHIR charting tests: a store in a temp folder, readings as the pipeline would
 * store them, an HTTP recorder/proxy in front of the EPJ stand-in, and reading back what the
 * stand-in holds.
 */
import { mkdtempSync } from 'node:fs';
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Bundle, Observation as FhirObservation, Resource } from '@medplum/fhirtypes';
import { CPR_SYSTEM, type PatientId } from '../../src/model/measurement.js';
import type { Observation } from '../../src/model/observation.js';
import { FhirSettings, type FhirSettingsInput } from '../../src/sinks/fhir/config.js';
import { SqliteStore } from '../../src/store/sqlite.js';

/** Fake CPR numbers (valid DDMMYY shape, not real people). */
export const PATIENTS: readonly PatientId[] = [
  { system: CPR_SYSTEM, value: '0101701234' },
  { system: CPR_SYSTEM, value: '0202802345' },
  { system: CPR_SYSTEM, value: '0303903456' },
  { system: CPR_SYSTEM, value: '0404004567' },
];

export function tempDir(prefix = 'mdi-fhir-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** A file-backed store in a fresh temp folder (synchronous=normal: tests need no power-loss safety). */
export function tempStore(dir = tempDir()): { store: SqliteStore; file: string; dir: string } {
  const file = join(dir, 'mdi.sqlite');
  return { store: new SqliteStore({ file, synchronous: 'normal' }), file, dir };
}

/** Metric presets as the normalizer produces them (mappings/metrics.csv). */
export const METRICS = {
  hr: { code: 147842, metric: 'MDC_ECG_HEART_RATE', unit: '/min', loinc: '8867-4', containment: '1.1.1.1', value: 72 },
  spo2: { code: 150456, metric: 'MDC_PULS_OXIM_SAT_O2', unit: '%', loinc: '59408-5', containment: '1.2.1.1', value: 97 },
  rr: { code: 151562, metric: 'MDC_RESP_RATE', unit: '/min', loinc: '9279-1', containment: '1.1.1.2', value: 16 },
  temp: { code: 150364, metric: 'MDC_TEMP_BODY', unit: 'Cel', loinc: '8310-5', containment: '1.4.1.1', value: 37.2 },
  sys: { code: 150021, metric: 'MDC_PRESS_BLD_NONINV_SYS', unit: 'mm[Hg]', loinc: '8480-6', containment: '1.3.1.1', value: 128 },
  dia: { code: 150022, metric: 'MDC_PRESS_BLD_NONINV_DIA', unit: 'mm[Hg]', loinc: '8462-4', containment: '1.3.1.2', value: 82 },
  mean: { code: 150023, metric: 'MDC_PRESS_BLD_NONINV_MEAN', unit: 'mm[Hg]', loinc: '8478-0', containment: '1.3.1.3', value: 97 },
  artSys: { code: 150033, metric: 'MDC_PRESS_BLD_ART_SYS', unit: 'mm[Hg]', loinc: '8480-6', containment: '1.5.1.1', value: 121 },
  artDia: { code: 150034, metric: 'MDC_PRESS_BLD_ART_DIA', unit: 'mm[Hg]', loinc: '8462-4', containment: '1.5.1.2', value: 71 },
  artMean: { code: 150035, metric: 'MDC_PRESS_BLD_ART_MEAN', unit: 'mm[Hg]', loinc: '8478-0', containment: '1.5.1.3', value: 88 },
  pump: { code: 157784, metric: 'MDC_FLOW_FLUID_PUMP', unit: 'mL/h', loinc: null, containment: '1.1.1.1', value: 12.5 },
} as const;
export type MetricName = keyof typeof METRICS;

/** 2025-03-12T10:15:00+01:00, the time of the golden examples. */
export const GOLDEN_TIME = Date.UTC(2025, 2, 12, 9, 15, 0);

/** A stored reading as the pipeline makes it. */
export function reading(
  metric: MetricName,
  overrides: Partial<Observation> & { patient?: PatientId | null } = {},
): Observation {
  const m = METRICS[metric];
  return {
    time: GOLDEN_TIME,
    tzOffset: 60,
    deviceId: '0123456789ABCDEF',
    code: m.code,
    system: 'MDC',
    vendorCode: String(m.code),
    metric: m.metric,
    value: m.value,
    text: null,
    unit: m.unit,
    loinc: m.loinc,
    flags: 0,
    containment: m.containment,
    patient: PATIENTS[0]!,
    location: 'ICU/1/07',
    ...overrides,
  };
}

/** Commits readings as one unit (one "message"), like the ingest path does. */
export async function commit(store: SqliteStore, observations: readonly Observation[], received = Date.now()): Promise<void> {
  await store.commit({ received, source: 'test', message: null, observations, deadLetters: [] });
}

/** Parsed `fhir` settings for tests: interval 0 (every reading charted), fast retries. */
export function fhirSettings(input: FhirSettingsInput = {}): FhirSettings {
  return FhirSettings.parse({
    ...input,
    charting: { intervalSeconds: 0, closeDelaySeconds: 0, ...input.charting },
    retry: { initialDelayMs: 50, maxDelayMs: 500, ...input.retry },
    outbox: { pollMs: 20, ...input.outbox },
  });
}

/** Every resource of a type stored in a FHIR server (follows `next` links). */
export async function allResources<T extends Resource>(baseUrl: string, type: string): Promise<T[]> {
  const out: T[] = [];
  let url: string | undefined = `${baseUrl}/${type}?_count=1000`;
  while (url) {
    const res = await fetch(url, { headers: { accept: 'application/fhir+json' } });
    if (res.status !== 200) throw new Error(`GET ${type}: ${res.status}`);
    const bundle = (await res.json()) as Bundle<T>;
    for (const e of bundle.entry ?? []) if (e.resource) out.push(e.resource);
    url = bundle.link?.find((l) => l.relation === 'next')?.url;
  }
  return out;
}

/** Identifier value → how many Observations carry it. */
export function countByIdentifier(observations: readonly FhirObservation[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const o of observations) {
    const id = o.identifier?.[0]?.value ?? '';
    counts.set(id, (counts.get(id) ?? 0) + 1);
  }
  return counts;
}

/** One request that went through a {@link RecordingProxy}. */
export interface ProxiedRequest {
  readonly at: number;
  readonly method: string;
  readonly path: string;
  readonly status: number;
  readonly authorization: string | undefined;
}

/** Decides about a request before it is forwarded: an answer of its own, or undefined to forward. */
export type ProxyHook = (req: {
  method: string;
  path: string;
  headers: IncomingMessage['headers'];
  body: Buffer;
}) => { status: number; headers?: Record<string, string>; body?: unknown } | undefined;

export interface RecordingProxy {
  readonly url: string;
  readonly requests: ProxiedRequest[];
  hook: ProxyHook | undefined;
  close(): Promise<void>;
}

/**
 * An HTTP proxy in front of a FHIR base URL that records every request (time, status) and can
 * answer requests itself (auth checks, refusing whole Bundles). `url` is the proxied FHIR base.
 */
export async function startRecordingProxy(targetBase: string): Promise<RecordingProxy> {
  const target = new URL(targetBase);
  const requests: ProxiedRequest[] = [];
  const proxy: { hook: ProxyHook | undefined } = { hook: undefined };
  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const path = (req.url ?? '/').replace(/^\/fhir/, '');
      const at = Date.now();
      const own = proxy.hook?.({ method: req.method ?? 'GET', path, headers: req.headers, body });
      if (own !== undefined) {
        const text = own.body === undefined ? '' : JSON.stringify(own.body);
        res.writeHead(own.status, { 'content-type': 'application/fhir+json', ...own.headers });
        res.end(text);
        requests.push({ at, method: req.method ?? '', path, status: own.status, authorization: req.headers.authorization });
        return;
      }
      const upstream = httpRequest(
        {
          host: target.hostname,
          port: target.port,
          method: req.method,
          path: `${target.pathname}${path}`,
          headers: { ...req.headers, host: target.host },
        },
        (up) => {
          res.writeHead(up.statusCode ?? 502, up.headers);
          up.pipe(res);
          requests.push({ at, method: req.method ?? '', path, status: up.statusCode ?? 0, authorization: req.headers.authorization });
        },
      );
      upstream.on('error', () => {
        // Upstream down: behave like it (connection dropped).
        requests.push({ at, method: req.method ?? '', path, status: 0, authorization: req.headers.authorization });
        req.socket.destroy();
      });
      upstream.end(body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}/fhir`,
    requests,
    get hook() {
      return proxy.hook;
    },
    set hook(h) {
      proxy.hook = h;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** Polls `check` until it returns true (or throws the last failure after `timeoutMs`). */
export async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs: number, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/**
 * Re-attributes stored readings with the store's own re-attribution (what
 * `src/pipeline/reattribute.ts` runs): the device's readings with time in [from, to) get
 * `patient` (or none). Without the registry, so the FHIR tests stay about FHIR.
 * @returns how many readings changed patient.
 */
export function reattributeStore(store: SqliteStore, device: string, from: number, to: number, patient: PatientId | null): number {
  return store.reattribute([device], from, to, () => ({ patient, location: undefined }), 0, 1_000_000).changed;
}
