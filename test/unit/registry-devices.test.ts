import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ErrorCode, GatewayError } from '../../src/errors.js';
import { AuditLog } from '../../src/registry/audit.js';
import { bedKeyOf, DeviceInputSchema, DeviceRegistry, normalizeEui64 } from '../../src/registry/devices.js';
import type { DeviceEvent } from '../../src/registry/types.js';

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    if (err instanceof GatewayError) return err.code;
    throw err;
  }
  return undefined;
}

describe('DeviceRegistry', () => {
  let db: Database.Database;
  let audit: AuditLog;
  let now: number;
  let registry: DeviceRegistry;

  beforeEach(() => {
    db = new Database(':memory:');
    audit = new AuditLog(db);
    now = 1_700_000_000_000;
    registry = new DeviceRegistry(db, audit, { defaultExpectedIntervalSeconds: 120, clock: () => now });
  });
  afterEach(() => db.close());

  it('adds a device with defaults and an audit row in the same transaction', () => {
    const d = registry.add({ id: 'mon-1', kind: 'monitor', vendor: 'Philips', eui64: '00-09-fb-ff-fe-01-02-03' }, 'token:anna');
    expect(d).toMatchObject({ id: 'mon-1', status: 'active', eui64: '0009FBFFFE010203', expectedIntervalSeconds: 120, created: now, location: null });
    const [row] = audit.query({ entity: 'device', entityId: 'mon-1', limit: 10 });
    expect(row).toMatchObject({ action: 'device.add', actor: 'token:anna', before: null });
    expect((row!.after as { eui64: string }).eui64).toBe('0009FBFFFE010203');
  });

  it('finds a device by id and by EUI-64 in any spelling, and survives a restart', () => {
    registry.add({ id: 'mon-1', kind: 'monitor', eui64: '0009FBFFFE010203' }, 'a');
    for (const key of ['mon-1', '0009FBFFFE010203', '0009fbfffe010203', '00:09:FB:FF:FE:01:02:03', '00-09-fb-ff-fe-01-02-03']) {
      expect(registry.get(key)?.id, key).toBe('mon-1');
    }
    expect(registry.get('mon-2')).toBeNull();
    const reopened = new DeviceRegistry(db, audit, { defaultExpectedIntervalSeconds: 60 });
    expect(reopened.get('00-09-FB-FF-FE-01-02-03')?.id).toBe('mon-1');
  });

  it('refuses a taken id or EUI-64 (409) and invalid input (400) without writing', () => {
    registry.add({ id: 'mon-1', kind: 'monitor', eui64: '0009FBFFFE010203' }, 'a');
    expect(codeOf(() => registry.add({ id: 'mon-1', kind: 'pump' }, 'a'))).toBe(ErrorCode.REGISTRY_CONFLICT);
    expect(codeOf(() => registry.add({ id: 'mon-2', kind: 'pump', eui64: '0009fbfffe010203' }, 'a'))).toBe(ErrorCode.REGISTRY_CONFLICT);
    expect(codeOf(() => registry.add({ id: 'bad id', kind: 'pump' }, 'a'))).toBe(ErrorCode.REGISTRY_INVALID);
    expect(codeOf(() => registry.add({ id: 'p', kind: 'toaster' as 'pump' }, 'a'))).toBe(ErrorCode.REGISTRY_INVALID);
    expect(codeOf(() => registry.add({ id: 'p', kind: 'pump', eui64: '12345' }, 'a'))).toBe(ErrorCode.REGISTRY_INVALID);
    expect(codeOf(() => registry.update('nope', {}, 'a'))).toBe(ErrorCode.REGISTRY_NOT_FOUND);
    expect(audit.query({ limit: 100 })).toHaveLength(1);
    expect(registry.list().map((d) => d.id)).toEqual(['mon-1']);
  });

  it('validates serial settings as a serial.devices entry of this id', () => {
    const ok = DeviceInputSchema.safeParse({ id: 'sp-1', kind: 'monitor', transport: { type: 'serial', settings: { protocol: 'masimo', port: '/dev/ttyUSB0' } } });
    expect(ok.success).toBe(true);
    const bad = DeviceInputSchema.safeParse({ id: 'sp-1', kind: 'monitor', transport: { type: 'serial', settings: { protocol: 'masimo' } } });
    expect(bad.success).toBe(false);
    expect(bad.error!.issues[0]!.path.slice(0, 2)).toEqual(['transport', 'settings']);
    registry.add({ id: 'sp-1', kind: 'monitor', transport: { type: 'serial', settings: { protocol: 'masimo', port: '/dev/ttyUSB0' } } }, 'a');
    expect(codeOf(() => registry.update('sp-1', { transport: { type: 'serial', settings: { protocol: 'masimo', port: '/dev/x', tcp: { host: 'h', port: 1 } } } }, 'a'))).toBe(
      ErrorCode.REGISTRY_INVALID,
    );
  });

  it('refuses a plain MQTT password where a scrypt hash belongs', () => {
    expect(codeOf(() => registry.add({ id: 'mq', kind: 'monitor', transport: { type: 'mqtt', clientId: 'mq', username: 'u', passwordHash: 'hunter2' } }, 'a'))).toBe(
      ErrorCode.REGISTRY_INVALID,
    );
  });

  it('updates, retires and approves, each audited and told to listeners after commit', () => {
    const events: DeviceEvent[] = [];
    registry.onChange((e) => {
      // After commit: the audit row is already there.
      expect(audit.query({ entityId: e.device.id, limit: 100 }).length).toBeGreaterThan(0);
      events.push(e);
    });
    registry.add({ id: 'pump-1', kind: 'pump' }, 'a');
    now += 1000;
    const u = registry.update('pump-1', { vendor: 'B. Braun', expectedIntervalSeconds: 30 }, 'b');
    expect(u).toMatchObject({ vendor: 'B. Braun', expectedIntervalSeconds: 30, updated: now, status: 'active' });
    // Nothing changed: no audit row, no event.
    expect(registry.update('pump-1', { vendor: 'B. Braun' }, 'b')).toBe(u);
    expect(codeOf(() => registry.approve('pump-1', {}, 'b'))).toBe(ErrorCode.REGISTRY_CONFLICT);
    const r = registry.retire('pump-1', 'c', 'sent for repair');
    expect(r.status).toBe('retired');
    expect(codeOf(() => registry.retire('pump-1', 'c'))).toBe(ErrorCode.REGISTRY_CONFLICT);
    expect(registry.approve('pump-1', {}, 'd').status).toBe('active');
    expect(events.map((e) => e.type)).toEqual(['added', 'updated', 'retired', 'approved']);
    expect(events[1]!.before?.vendor).toBeNull();
    const actions = audit.query({ entityId: 'pump-1', limit: 10 }).map((a) => a.action);
    expect(actions).toEqual(['device.approve', 'device.retire', 'device.update', 'device.add']);
    expect(audit.query({ entityId: 'pump-1', limit: 10 })[1]!.after).toMatchObject({ status: 'retired', reason: 'sent for repair' });
  });

  it('a throwing listener does not undo the change', () => {
    const errors: unknown[] = [];
    registry = new DeviceRegistry(db, audit, { defaultExpectedIntervalSeconds: 120, onListenerError: (e) => errors.push(e) });
    registry.onChange(() => {
      throw new Error('listener broke');
    });
    expect(registry.add({ id: 'm', kind: 'monitor' }, 'a').id).toBe('m');
    expect(registry.get('m')).not.toBeNull();
    expect(errors).toHaveLength(1);
  });

  it('notes an unregistered device once (kind other, actor gateway) and approves it later', () => {
    const first = registry.noteUnregistered('0009FBFFFE0A0B0C', 'mllp', now - 5000);
    expect(first).toMatchObject({ status: 'unregistered', kind: 'other', eui64: '0009FBFFFE0A0B0C' });
    expect(registry.noteUnregistered('0009FBFFFE0A0B0C', 'mllp', now)).toBe(first);
    expect(registry.noteUnregistered('00-09-fb-ff-fe-0a-0b-0c', 'mllp', now).id).toBe('0009FBFFFE0A0B0C');
    const rows = audit.query({ entity: 'device', limit: 10 });
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ action: 'device.unregistered', actor: 'gateway' });
    // An engineer registering it under a new id is told to approve the noted one instead.
    expect(() => registry.add({ id: 'mon-7', kind: 'monitor', eui64: '0009FBFFFE0A0B0C' }, 'a')).toThrow(/approve device 0009FBFFFE0A0B0C/);
    const approved = registry.approve('0009FBFFFE0A0B0C', { kind: 'monitor', vendor: 'Mindray' }, 'token:anna');
    expect(approved).toMatchObject({ status: 'active', kind: 'monitor', vendor: 'Mindray' });
    expect(registry.list({ status: 'unregistered' })).toEqual([]);
    expect(registry.list({ kind: 'monitor' }).map((d) => d.id)).toEqual(['0009FBFFFE0A0B0C']);
  });

  it('records an unregistered device under whatever printable id it sent', () => {
    expect(registry.noteUnregistered('MON^12&ICU', 'mllp', now).status).toBe('unregistered');
    expect(codeOf(() => registry.noteUnregistered('bad\nid', 'mllp', now))).toBe(ErrorCode.REGISTRY_INVALID);
    expect(codeOf(() => registry.noteUnregistered('x'.repeat(129), 'mllp', now))).toBe(ErrorCode.REGISTRY_INVALID);
  });

  it('never throws from noteUnregistered for a known id, whatever its status', () => {
    registry.add({ id: 'm', kind: 'monitor' }, 'a');
    registry.retire('m', 'a');
    expect(registry.noteUnregistered('m', 'mqtt', now).status).toBe('retired');
  });

  it('shows the bed the location source gives, and keeps the same object while it does not change', () => {
    registry.add({ id: 'm', kind: 'monitor' }, 'a');
    let bed: string | null = 'ICU/1/3';
    registry.setLocationSource(() => bed);
    const a = registry.get('m');
    expect(a?.location).toBe('ICU/1/3');
    expect(registry.get('m')).toBe(a);
    bed = null;
    expect(registry.get('m')?.location).toBeNull();
  });
});

describe('device helpers', () => {
  it('normalizes EUI-64 spellings and refuses others', () => {
    expect(normalizeEui64('00:1a:2B:3c:4d:5e:6f:70')).toBe('001A2B3C4D5E6F70');
    expect(normalizeEui64('001A2B3C4D5E6F7')).toBeNull();
    expect(normalizeEui64('001A2B3C4D5E6F7G')).toBeNull();
  });

  it('makes bed keys from locations, leaving out missing parts', () => {
    expect(bedKeyOf({ ward: 'ICU', room: '1', bed: '3' })).toBe('ICU/1/3');
    expect(bedKeyOf({ ward: 'ICU', bed: '3' })).toBe('ICU/3');
    expect(DeviceInputSchema.safeParse({ id: 'x', kind: 'monitor', location: { ward: 'IC/U' } }).success).toBe(false);
  });
});
