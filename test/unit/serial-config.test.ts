import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { ErrorCode, GatewayError } from '../../src/errors.js';

function error(input: unknown): string {
  try {
    parseConfig(input);
  } catch (err) {
    expect(err).toBeInstanceOf(GatewayError);
    expect((err as GatewayError).code).toBe(ErrorCode.CONFIG_INVALID);
    return (err as Error).message;
  }
  throw new Error('expected the config to be refused');
}

const masimo = { protocol: 'masimo', deviceId: 'spo2-1', port: '/dev/ttyUSB0' };

describe('config: serial.devices', () => {
  it('has no serial devices by default', () => {
    expect(parseConfig({}).serial).toEqual({ devices: [] });
  });

  it('keeps line settings unset (the protocol supplies them) and fills flow control and backoff', () => {
    const device = parseConfig({ serial: { devices: [masimo] } }).serial.devices[0]!;
    expect(device).toEqual({ ...masimo, rtscts: false, xon: false, xoff: false, reconnect: { initialDelayMs: 500, maxDelayMs: 30000 } });
    const bbraun = parseConfig({ serial: { devices: [{ protocol: 'bbraun', deviceId: 'sc', tcp: { host: '10.0.0.5', port: 4001 }, pollIntervalMs: 0 }] } }).serial.devices[0]!;
    expect(bbraun.tcp).toEqual({ host: '10.0.0.5', port: 4001, connectTimeoutMs: 5000 });
  });

  it('names the path of a bad setting', () => {
    expect(error({ serial: { devices: [{ ...masimo, baudRate: 'fast' }] } })).toMatch(/^serial\.devices\.0\.baudRate: .*number/);
    expect(error({ serial: { devices: [{ ...masimo, parity: 'mark' }] } })).toMatch(/^serial\.devices\.0\.parity: /);
    expect(error({ serial: { devices: [{ ...masimo, stopBits: 3 }] } })).toMatch(/^serial\.devices\.0\.stopBits: /);
    expect(error({ serial: { devices: [{ ...masimo, protocol: 'nonin' }] } })).toMatch(/^serial\.devices\.0\.protocol: /);
    expect(error({ serial: { devices: [{ ...masimo, baud: 9600 }] } })).toMatch(/serial\.devices\.0\.baud: unknown key/);
    expect(error({ serial: { devices: [{ ...masimo, pollIntervalMs: 1000 }] } })).toMatch(/serial\.devices\.0\.pollIntervalMs: unknown key/);
  });

  it('needs exactly one of port and tcp, and unique ids and ports', () => {
    expect(error({ serial: { devices: [{ protocol: 'masimo', deviceId: 'x' }] } })).toMatch(/serial\.devices\.0\.port: give either "port"/);
    expect(error({ serial: { devices: [masimo, { ...masimo, port: '/dev/ttyUSB1' }] } })).toMatch(/serial\.devices\.1\.deviceId: "spo2-1" is already used/);
    expect(error({ serial: { devices: [masimo, { ...masimo, deviceId: 'spo2-2' }] } })).toMatch(/serial\.devices\.1\.port: \/dev\/ttyUSB0 is already used/);
  });

  it('keeps protocol rules: MEDIBUS keep-alive under 3 s, BCC polls at least every 500 ms or cyclic', () => {
    expect(error({ serial: { devices: [{ protocol: 'medibus', deviceId: 'v', port: 'p', keepAliveMs: 3000 }] } })).toMatch(/serial\.devices\.0\.keepAliveMs: /);
    expect(error({ serial: { devices: [{ protocol: 'bbraun', deviceId: 'b', port: 'p', pollIntervalMs: 200 }] } })).toMatch(/serial\.devices\.0\.pollIntervalMs: must be 0 \(cyclic mode\) or at least 500/);
    expect(error({ serial: { devices: [{ ...masimo, reconnect: { initialDelayMs: 5000, maxDelayMs: 1000 } }] } })).toMatch(/serial\.devices\.0\.reconnect\.maxDelayMs/);
  });
});
