import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig } from '../../src/config/load.js';
import type { ConfigInput } from '../../src/config/schema.js';
import { Gateway, type GatewayAddresses } from '../../src/gateway.js';
import { silentLogger } from '../../src/log.js';

export interface TestGateway {
  gateway: Gateway;
  addresses: GatewayAddresses;
  dataDir: string;
  mllpPort: number;
  httpUrl: string;
  stop(): Promise<void>;
}

/**
 * A gateway on free ports (0) and a fresh temp data folder. Charting and the embedded MQTT
 * broker are off unless the test turns them on: a stand-in EPJ or a broker on its fixed
 * default port would collide between test files running in parallel.
 */
export async function startTestGateway(overrides: ConfigInput = {}): Promise<TestGateway> {
  const dataDir = mkdtempSync(join(tmpdir(), 'mdi-gw-'));
  const config = parseConfig({
    dataDir,
    fhir: { enabled: false },
    ...overrides,
    // The embedded MQTT broker stays off unless asked for: it would bind 1883 in every test.
    mqtt: { ...overrides.mqtt, broker: { enabled: false, ...overrides.mqtt?.broker } },
    // The ADT listener stays off unless asked for (it would bind 2576); when asked, on a free port.
    adt: { enabled: false, port: 0, host: '127.0.0.1', ...overrides.adt },
    // Tests written before the registry talk to the API without a token, chart readings of
    // devices nobody registered and use fixed reading times (no clock check); a test about any
    // of these sets `http.auth` / `registry` itself.
    http: { port: 0, host: '127.0.0.1', auth: { enabled: false }, ...overrides.http },
    registry: { unregistered: 'chart', clockDriftLimitSeconds: 0, ...overrides.registry },
    mllp: { port: 0, host: '127.0.0.1', ...overrides.mllp },
    log: { level: 'silent' },
  });
  const gateway = new Gateway(config, silentLogger());
  const addresses = await gateway.start();
  return {
    gateway,
    addresses,
    dataDir,
    mllpPort: addresses.mllp!.port,
    httpUrl: `http://127.0.0.1:${addresses.http.port}`,
    stop: () => gateway.stop(),
  };
}

export async function getJson<T = unknown>(url: string): Promise<{ status: number; body: T }> {
  const res = await fetch(url);
  return { status: res.status, body: (await res.json()) as T };
}
