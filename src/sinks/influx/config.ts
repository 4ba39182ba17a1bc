import { z } from 'zod';

/**
 * The `store.influx` settings: the InfluxDB 1.x server the series are kept in for the long term
 * (dashboards, trend analysis, a region's shared store). The reference for every key, its
 * default, unit and bounds; `src/config/schema.ts` mounts it as `store.influx`. Absent: no
 * InfluxDB (the SQLite store alone). Time precision is fixed to milliseconds (the precision of
 * a reading's time in the store), so it is not a setting.
 */

/** An http(s) URL with no credentials in it (they go in `username` / `password(File)`). */
const influxUrl = z.string().refine(
  (text) => {
    try {
      const u = new URL(text);
      return (u.protocol === 'http:' || u.protocol === 'https:') && u.username === '' && u.password === '' && u.search === '';
    } catch {
      return false;
    }
  },
  { message: 'must be an http(s) URL without credentials or query, e.g. http://influx.example.dk:8086' },
);

/** InfluxDB identifiers we write into statements (quoted, but kept plain so logs and dashboards match). */
const influxName = z.string().regex(/^[A-Za-z0-9_.-]{1,128}$/, 'use 1–128 letters, digits and _ . - only');

export const InfluxSettings = z
  .strictObject({
    /** The InfluxDB 1.x HTTP API, e.g. `http://influx.example.dk:8086`. */
    url: influxUrl,
    database: influxName.default('mdi'),
    /** Retention policy to write into; absent: the database's default policy. */
    retentionPolicy: influxName.optional(),
    /** `CREATE DATABASE` at start (idempotent; needs admin rights, a refusal is logged, not fatal). */
    createDatabase: z.boolean().default(true),
    /** Extra CA certificates (PEM) trusted for an https `url`, beside the system ones (a hospital CA). */
    caFile: z.string().min(1).optional(),
    username: z.string().min(1).max(256).optional(),
    /** Prefer `passwordFile` (a mounted secret): a password here sits in the config file. */
    password: z.string().max(1024).optional(),
    passwordFile: z.string().min(1).optional(),
    /** One HTTP request (write, create) gives up after this long (ms) and counts as a failure. */
    timeoutMs: z.number().int().min(100).max(300_000).default(10_000),
    /**
     * Points per write request. InfluxData recommends 5,000–10,000 per request; the bound keeps
     * one request body (≈150 B a point) well under influxd's 25 MB `max-body-size`.
     */
    batchSize: z.number().int().min(1).max(50_000).default(5000),
    /** Time between store reads while caught up (ms): the delay a dashboard sees, beyond the commit. */
    pollIntervalMs: z.number().int().min(10).max(60_000).default(1000),
    /** Retry backoff after a failed write (ms), doubling with ±20 % jitter up to `maxDelayMs`. */
    retry: z
      .strictObject({
        initialDelayMs: z.number().int().min(10).max(60_000).default(500),
        maxDelayMs: z.number().int().min(100).max(600_000).default(30_000),
      })
      .prefault({}),
  })
  .superRefine((s, ctx) => {
    if (s.password !== undefined && s.passwordFile !== undefined) ctx.addIssue({ code: 'custom', path: ['password'], message: 'give "password" or "passwordFile", not both' });
    if ((s.password !== undefined || s.passwordFile !== undefined) && s.username === undefined) ctx.addIssue({ code: 'custom', path: ['username'], message: 'is required with a password' });
    if (s.retry.maxDelayMs < s.retry.initialDelayMs) ctx.addIssue({ code: 'custom', path: ['retry', 'maxDelayMs'], message: 'must be at least retry.initialDelayMs' });
  });

export type InfluxSettings = z.infer<typeof InfluxSettings>;
