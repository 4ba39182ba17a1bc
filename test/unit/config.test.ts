import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { envName, loadConfig, parseConfig, settingPaths } from '../../src/config/load.js';
import { ErrorCode, GatewayError } from '../../src/errors.js';

function writeConfig(text: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'mdi-config-'));
  const file = join(dir, 'mdi.yaml');
  writeFileSync(file, text);
  return file;
}

function errorOf(fn: () => unknown): GatewayError {
  try {
    fn();
  } catch (err) {
    if (err instanceof GatewayError) return err;
    throw err;
  }
  throw new Error('expected a GatewayError');
}

describe('config', () => {
  it('gives the embedded defaults with no file', () => {
    const config = loadConfig({ env: {} });
    expect(config.dataDir).toBe('./data');
    expect(config.http.port).toBe(8080);
    expect(config.mllp.port).toBe(2575);
    expect(config.mllp.host).toBe('0.0.0.0');
    expect(config.mllp.maxMessageBytes).toBe(1024 * 1024);
    expect(config.mqtt.broker.port).toBe(1883);
    expect(config.fhir.embeddedEpj.port).toBe(8090);
    expect(config.timezone).toBe('Europe/Copenhagen');
    expect(Object.isFrozen(config.mllp)).toBe(true);
  });

  it('reads every key the schema promises from YAML', () => {
    const file = writeConfig(`
dataDir: /var/lib/mdi
http: { port: 9000 }
mllp: { port: 3000, host: 127.0.0.1, maxMessageBytes: 65536 }
mqtt: { broker: { port: 11883 } }
fhir: { embeddedEpj: { port: 18090 } }
`);
    const config = loadConfig({ file, env: {} });
    expect(config.dataDir).toBe('/var/lib/mdi');
    expect(config.http.port).toBe(9000);
    expect(config.mllp).toMatchObject({ port: 3000, host: '127.0.0.1', maxMessageBytes: 65536 });
    expect(config.mqtt.broker.port).toBe(11883);
    expect(config.fhir.embeddedEpj.port).toBe(18090);
  });

  it('names the key and the problem of a bad value', () => {
    const file = writeConfig('mllp:\n  port: seventy\n');
    const err = errorOf(() => loadConfig({ file, env: {} }));
    expect(err.code).toBe(ErrorCode.CONFIG_INVALID);
    expect(err.message).toContain(file);
    expect(err.message).toMatch(/mllp\.port: .*number/);
  });

  it('names an unknown (misspelt) key', () => {
    const err = errorOf(() => parseConfig({ mllp: { maxMesageBytes: 10 } }));
    expect(err.message).toContain('mllp.maxMesageBytes: unknown key');
  });

  it('refuses out-of-range ports and unknown time zones', () => {
    expect(errorOf(() => parseConfig({ http: { port: 70000 } })).message).toMatch(/^http\.port: /);
    expect(errorOf(() => parseConfig({ timezone: 'Europe/Atlantis' })).message).toMatch(/timezone: .*IANA/);
  });

  it('reports unreadable files and broken YAML clearly', () => {
    expect(errorOf(() => loadConfig({ file: '/nonexistent/mdi.yaml', env: {} })).message).toContain('file not found');
    expect(errorOf(() => loadConfig({ file: writeConfig('mllp: [1, 2'), env: {} })).message).toContain('not valid YAML');
    expect(errorOf(() => loadConfig({ file: writeConfig('- 1\n- 2\n'), env: {} })).message).toContain('mapping');
  });

  it('lets MDI_* environment variables override the file', () => {
    const file = writeConfig('mllp: { port: 3000 }\n');
    const config = loadConfig({ file, env: { MDI_MLLP_PORT: '4000', MDI_MLLP_MAX_MESSAGE_BYTES: '2048', MDI_DATA_DIR: '/tmp/x' } });
    expect(config.mllp.port).toBe(4000);
    expect(config.mllp.maxMessageBytes).toBe(2048);
    expect(config.dataDir).toBe('/tmp/x');
    const bad = errorOf(() => loadConfig({ env: { MDI_HTTP_PORT: 'eighty' } }));
    expect(bad.message).toMatch(/^http\.port: /);
  });

  it('derives environment names from the schema', () => {
    const names = settingPaths().map(envName);
    expect(names).toContain('MDI_MLLP_MAX_MESSAGE_BYTES');
    expect(names).toContain('MDI_FHIR_EMBEDDED_EPJ_PORT');
    expect(names).toContain('MDI_STORE_SQLITE_SYNCHRONOUS');
  });
});

describe('mdi.example.yaml', () => {
  it('is valid and documents exactly the defaults', async () => {
    const { PACKAGE_ROOT } = await import('../../src/paths.js');
    const fromExample = loadConfig({ file: join(PACKAGE_ROOT, 'mdi.example.yaml'), env: {} });
    expect(fromExample).toEqual(loadConfig({ env: {} }));
  });
});

describe('device lists', () => {
  it('refuse a device id that appears twice, naming the later entry', () => {
    const hash = 'scrypt$16384$8$1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNo';
    const mqtt = errorOf(() =>
      parseConfig({ mqtt: { broker: { devices: [{ deviceId: 'pump-1', passwordHash: hash }, { deviceId: 'pump-1', passwordHash: hash }] } } }),
    );
    expect(mqtt.message).toContain('mqtt.broker.devices.1.deviceId: "pump-1" is already used by device 0');
    const serial = errorOf(() =>
      parseConfig({
        serial: {
          devices: [
            { deviceId: 'spo2-1', protocol: 'masimo', port: '/dev/ttyUSB0' },
            { deviceId: 'spo2-1', protocol: 'masimo', port: '/dev/ttyUSB1' },
          ],
        },
      }),
    );
    expect(serial.message).toContain('serial.devices.1.deviceId: "spo2-1" is already used by device 0');
  });
});
