import type Database from 'better-sqlite3';
import type { Config } from '../config/schema.js';
import type { Driver } from '../driver.js';
import type { Logger } from '../log.js';
import { AuditLog } from './audit.js';
import { Bindings } from './bindings.js';
import { connectionResolver } from './connection.js';
import { DeviceRegistry } from './devices.js';
import { DeviceHealth } from './health.js';
import { TokenStore } from './tokens.js';
import { DeviceStatus } from './types.js';

/** The registry's parts, all in the store's SQLite file. */
export interface Registry {
  readonly audit: AuditLog;
  readonly devices: DeviceRegistry;
  readonly bindings: Bindings;
  readonly tokens: TokenStore;
  readonly health: DeviceHealth;
}

/**
 * Opens the registry on the store's database: audit log, devices, bindings (and bed occupancy),
 * API tokens and device health. `drivers` is read whenever a connection state is asked for, so
 * drivers started later are seen.
 */
export function openRegistry(db: Database.Database, config: Readonly<Config>, log: Logger, drivers: () => readonly Driver[]): Registry {
  const audit = new AuditLog(db);
  const devices = new DeviceRegistry(db, audit, {
    defaultExpectedIntervalSeconds: config.registry.expectedIntervalSeconds,
    onListenerError: (err) => log.error({ err }, 'a device registry listener failed'),
  });
  const bindings = new Bindings(db, audit, devices);
  devices.setLocationSource((id) => bindings.locationOf(id));
  const tokens = new TokenStore(db, audit);
  const health = new DeviceHealth({
    db,
    log: log.child({ component: 'device-health' }),
    activeDevices: () => devices.list({ status: DeviceStatus.ACTIVE }).map((d) => d.id),
    isBound: (id, now) => {
      const a = bindings.attribution(id, now);
      return a.bed !== null || a.patient !== null;
    },
    expectedIntervalMs: (id) => {
      const d = devices.get(id);
      return d === null ? null : d.expectedIntervalSeconds * 1000;
    },
    defaultExpectedIntervalMs: config.registry.expectedIntervalSeconds * 1000,
    clockDriftLimitMs: config.registry.clockDriftLimitSeconds * 1000,
    connectionOf: connectionResolver(drivers),
  });
  return { audit, devices, bindings, tokens, health };
}
