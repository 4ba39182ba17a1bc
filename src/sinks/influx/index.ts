/**
 * Keeping the series in InfluxDB 1.x: the store → InfluxDB feeder.
 *
 * ```ts
 * const feeder = await createInfluxFeeder({ settings: config.store.influx, store, log });
 * feeder.start();     // returns at once; an unreachable InfluxDB is retried with backoff
 * feeder.status();    // cursor, lag (rows behind), reachable, points written, last error
 * await feeder.stop(); // before the store closes
 * ```
 *
 * The gateway loads this module (and the `influx` client) only when `store.influx` is set.
 */
import { readFileSync } from 'node:fs';
import { rootCertificates } from 'node:tls';
import type { ISingleHostConfig } from 'influx';
import type { Logger } from '../../log.js';
import type { InfluxSettings } from './config.js';
import { INFLUX_MEASUREMENT, INFLUX_TAGS, InfluxFeeder, type InfluxFeedStore } from './feeder.js';

export { InfluxSettings } from './config.js';
export {
  INFLUX_CURSOR,
  INFLUX_MEASUREMENT,
  INFLUX_TAGS,
  InfluxFeeder,
  classifyInfluxError,
  tagValue,
  toInfluxPoint,
  type InfluxClient,
  type InfluxFailure,
  type InfluxFeedStore,
  type InfluxFeederOptions,
  type InfluxFeederStatus,
} from './feeder.js';

/** The pool's backoff contract (not exported by name from `influx`). */
type IBackoffStrategy = NonNullable<NonNullable<ISingleHostConfig['pool']>['backoff']>;

export interface CreateInfluxFeederOptions {
  /** The parsed `store.influx` settings. */
  readonly settings: InfluxSettings;
  readonly store: InfluxFeedStore;
  readonly log: Logger;
}

/**
 * The `influx` pool takes a host out of rotation for a while after a network error and retries
 * by itself. The feeder owns retry and backoff (one policy, visible in its status), so the
 * pool must do neither: a host is never disabled (delay 0) and `maxRetries` is 0.
 */
const NEVER_DISABLE: IBackoffStrategy = {
  getDelay: () => 0,
  next: () => NEVER_DISABLE,
  reset: () => NEVER_DISABLE,
};

/**
 * Builds the feeder and its InfluxDB client (the `influx` package, loaded here). Reads
 * `passwordFile` and `caFile` now; starts nothing until `start()`.
 * @throws {Error} when `passwordFile` or `caFile` cannot be read.
 */
export async function createInfluxFeeder(options: CreateInfluxFeederOptions): Promise<InfluxFeeder> {
  const s = options.settings;
  const { InfluxDB, FieldType } = await import('influx');
  const url = new URL(s.url);
  const password = s.passwordFile !== undefined ? readFileSync(s.passwordFile, 'utf8').replace(/\r?\n$/, '') : s.password;
  const https = url.protocol === 'https:';
  const config: ISingleHostConfig = {
    // Kept in brackets for IPv6: the package builds `http://[::1]:8086` from it.
    host: url.hostname,
    port: url.port !== '' ? Number(url.port) : https ? 443 : 80,
    protocol: https ? 'https' : 'http',
    path: url.pathname.replace(/\/+$/, ''),
    // Added to the system CAs, not instead of them (Node's `ca` replaces the default list).
    ...(s.caFile !== undefined ? { options: { ca: [...rootCertificates, readFileSync(s.caFile, 'utf8')] } } : {}),
    database: s.database,
    ...(s.username !== undefined ? { username: s.username } : {}),
    ...(password !== undefined ? { password } : {}),
    pool: { maxRetries: 0, requestTimeout: s.timeoutMs, backoff: NEVER_DISABLE },
    // The schema makes the package write `flags` and `code` as integers (`5i`) and `value` as a
    // float, and refuse any tag or field that is not listed here (no identity can slip in).
    schema: [
      {
        measurement: INFLUX_MEASUREMENT,
        fields: { value: FieldType.FLOAT, flags: FieldType.INTEGER, code: FieldType.INTEGER },
        tags: [...INFLUX_TAGS],
      },
    ],
  };
  const client = new InfluxDB(config);
  return new InfluxFeeder(
    {
      url: url.origin + url.pathname.replace(/\/+$/, ''),
      database: s.database,
      ...(s.retentionPolicy !== undefined ? { retentionPolicy: s.retentionPolicy } : {}),
      createDatabase: s.createDatabase,
      batchSize: s.batchSize,
      pollIntervalMs: s.pollIntervalMs,
      retry: s.retry,
    },
    client,
    options.store,
    options.log.child({ sink: 'influx' }),
  );
}
