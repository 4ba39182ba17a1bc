import { Writable } from 'node:stream';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../../src/log.js';
import { AuditLog } from '../../src/registry/audit.js';
import { DeviceRegistry } from '../../src/registry/devices.js';
import { UnregisteredDevices } from '../../src/registry/unregistered.js';

function setup(limit: number) {
  const db = new Database(':memory:');
  const devices = new DeviceRegistry(db, new AuditLog(db), { defaultExpectedIntervalSeconds: 120 });
  const lines: { level: number; msg: string; device?: string }[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(JSON.parse(chunk.toString()) as { level: number; msg: string });
      done();
    },
  });
  const log = createLogger({ destination: sink });
  return { devices, lines, unregistered: new UnregisteredDevices(devices, log, limit) };
}

const flush = () => new Promise((resolve) => setImmediate(resolve));

describe('recording unregistered devices', () => {
  it('records each device once, logs a refused id once, and stops recording past the limit', async () => {
    const { devices, lines, unregistered } = setup(2);
    for (let i = 0; i < 3; i++) unregistered.note('0012A0FFFE00C001', 'mllp 10.0.0.1:5000', 1);
    expect(devices.get('0012A0FFFE00C001')).toMatchObject({ status: 'unregistered' });
    // An id the registry does not allow (a space): refused, logged once however often it sends.
    for (let i = 0; i < 5; i++) unregistered.note('bed 3 monitor', 'mllp 10.0.0.1:5000', 1);
    expect(devices.get('bed 3 monitor')).toBeNull();
    unregistered.note('dev-2', 's', 1);
    for (let i = 0; i < 4; i++) unregistered.note(`dev-extra-${i}`, 's', 1);
    expect(devices.get('dev-extra-0')).toBeNull();
    await flush();
    const count = (msg: string) => lines.filter((l) => l.msg.startsWith(msg)).length;
    expect(count('a device that is not registered sends data')).toBe(2);
    expect(count('could not record an unregistered device')).toBe(1);
    expect(count('too many unregistered devices')).toBe(1);
  });
});
