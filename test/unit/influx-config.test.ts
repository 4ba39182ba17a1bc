import { describe, expect, it } from 'vitest';
import { loadConfig, parseConfig } from '../../src/config/load.js';

describe('store.influx config', () => {
  it('is off when absent', () => {
    expect(parseConfig({}).store.influx).toBeUndefined();
  });

  it('fills every default from the url alone', () => {
    expect(parseConfig({ store: { influx: { url: 'http://influx.example.dk:8086' } } }).store.influx).toEqual({
      url: 'http://influx.example.dk:8086',
      database: 'mdi',
      createDatabase: true,
      timeoutMs: 10_000,
      batchSize: 5000,
      pollIntervalMs: 1000,
      retry: { initialDelayMs: 500, maxDelayMs: 30_000 },
    });
  });

  it('can be turned on and set from MDI_* environment variables', () => {
    const config = loadConfig({ env: { MDI_STORE_INFLUX_URL: 'https://influx.example.dk', MDI_STORE_INFLUX_BATCH_SIZE: '1000', MDI_STORE_INFLUX_USERNAME: 'mdi', MDI_STORE_INFLUX_PASSWORD_FILE: '/run/secrets/influx' } });
    expect(config.store.influx).toMatchObject({ url: 'https://influx.example.dk', batchSize: 1000, username: 'mdi', passwordFile: '/run/secrets/influx' });
  });

  it('refuses credentials in the url, a password and a password file together, a password without user, and bad bounds', () => {
    const fails = (influx: Record<string, unknown>, message: RegExp) => expect(() => parseConfig({ store: { influx } })).toThrow(message);
    fails({ url: 'http://mdi:secret@influx:8086' }, /store\.influx\.url: .*without credentials/);
    fails({ url: 'influx:8086' }, /store\.influx\.url/);
    fails({ url: 'http://influx:8086', username: 'mdi', password: 'x', passwordFile: '/f' }, /store\.influx\.password: give "password" or "passwordFile"/);
    fails({ url: 'http://influx:8086', password: 'x' }, /store\.influx\.username: is required/);
    fails({ url: 'http://influx:8086', batchSize: 0 }, /store\.influx\.batchSize/);
    fails({ url: 'http://influx:8086', database: 'mdi; DROP' }, /store\.influx\.database/);
    fails({ url: 'http://influx:8086', retry: { initialDelayMs: 5000, maxDelayMs: 1000 } }, /store\.influx\.retry\.maxDelayMs/);
    fails({ url: 'http://influx:8086', precision: 's' }, /store\.influx\.precision: unknown key/);
  });
});
