import { z } from 'zod';

/**
 * The `fhir` settings: where the EPJ is, how to authenticate, how hard to push, and the
 * charting policy (what goes into the patient chart, how often). The reference for every key,
 * its default, unit and bounds. `src/config/schema.ts` mounts it as `fhir`.
 *
 * Lists (`charting.metrics`, `charting.exclude`, …) also accept one comma-separated string, so
 * that `MDI_FHIR_CHARTING_METRICS=MDC_FLOW_FLUID_PUMP,MDC_VOL_FLUID_TBI` works.
 */

const port = z.number().int().min(0).max(65535);

/** A list of short strings, also accepted as one comma-separated string (environment variables). */
const stringList = z.preprocess(
  (value) =>
    typeof value === 'string'
      ? value
          .split(',')
          .map((s) => s.trim())
          .filter((s) => s !== '')
      : value,
  z.array(z.string().min(1)),
);

/** Absolute URI (identifier systems must be URIs: `https://…` or `urn:…`). */
const uri = z.string().regex(/^[a-z][a-z0-9+.-]*:\S+$/i, { message: 'must be an absolute URI (https://… or urn:…)' });

const httpUrl = z.string().refine(
  (text) => {
    try {
      const u = new URL(text);
      return (u.protocol === 'http:' || u.protocol === 'https:') && u.username === '' && u.password === '';
    } catch {
      return false;
    }
  },
  { message: 'must be an http(s) URL without credentials in it' },
);

/** How the charting interval of one location is chosen: the first rule whose pattern matches. */
export const LocationRule = z.strictObject({
  /**
   * Glob over the reading's location (PV1-3 as `ward/room/bed`): `*` matches any run of
   * characters, including `/`. `ICU/*` matches every bed of ward ICU.
   */
  match: z.string().min(1),
  /** Seconds per chart entry for this location; 0 charts every reading. */
  intervalSeconds: z.number().int().min(0).max(86_400).optional(),
  /** Which reading represents the interval; defaults to `charting.value`. */
  value: z.enum(['latest', 'median']).optional(),
});
export type LocationRule = z.infer<typeof LocationRule>;

export const ChartingSettings = z.strictObject({
  /**
   * Chart every metric whose LOINC code has an R4 vital-signs profile (heart rate, SpO2,
   * respiratory rate, body temperature, blood pressure as a `bp` panel, height, weight, BMI,
   * head circumference).
   */
  vitalSigns: z.boolean().default(true),
  /**
   * Further metrics to chart (MDC reference id such as `MDC_FLOW_FLUID_PUMP`, or the numeric
   * MDC code). Metrics without a vital-signs LOINC are charted only when listed here, as plain
   * Observations with the MDC code (and their LOINC code when the mapping has one).
   */
  metrics: stringList.default([]),
  /** Metrics never charted, even when `vitalSigns` covers them (reference id or MDC code). */
  exclude: stringList.default([]),
  /**
   * Seconds per chart entry per metric and patient (60 = at most one heart rate a minute in
   * the chart); 0 charts every reading. The store always keeps every reading.
   */
  intervalSeconds: z.number().int().min(0).max(86_400).default(60),
  /**
   * Which reading represents an interval: `latest` (the newest), or `median` (the reading
   * whose value is the lower median: always a real reading, never an average).
   */
  value: z.enum(['latest', 'median']).default('latest'),
  /** Per-location overrides, first match wins (e.g. ICU every minute, wards every 15 minutes). */
  locations: z.array(LocationRule).max(1000).default([]),
  /**
   * An interval is charted once readings received up to its end plus this many seconds have
   * been read: room for transit delay and device clock skew. A reading that arrives later
   * than that is stored but not charted (its interval is already in the chart).
   */
  closeDelaySeconds: z.number().int().min(0).max(3600).default(5),
  /** Readings with no patient: `store` (kept in the store only) or `hold` (wait for a binding). */
  unbound: z.enum(['store', 'hold']).default('store'),
  /** With `unbound: hold`: minutes to wait for a device→patient binding before giving up. */
  holdMinutes: z.number().min(0).max(24 * 60).default(15),
  /**
   * A reading whose message PID disagrees with the patient bound to its device (flagged
   * PATIENT_MISMATCH, attributed to the bound patient): `exclude` keeps it out of the chart;
   * `chart` charts it to the bound patient (the flag stays in the store).
   */
  patientMismatch: z.enum(['exclude', 'chart']).default('exclude'),
});
export type ChartingSettings = z.infer<typeof ChartingSettings>;

export const AuthSettings = z
  .strictObject({
    /**
     * `none`; `bearer`: a static token; `client-credentials`: OAuth 2.0 client credentials,
     * including SMART Backend Services (`clientAuth: private_key_jwt`).
     */
    type: z.enum(['none', 'bearer', 'client-credentials']).default('none'),
    /** `bearer`: the token (prefer the environment: MDI_FHIR_AUTH_TOKEN). */
    token: z.string().min(1).optional(),
    /** `bearer`: a file holding the token (read at start; surrounding whitespace ignored). */
    tokenFile: z.string().min(1).optional(),
    /** `client-credentials`: the token endpoint. */
    tokenUrl: httpUrl.optional(),
    clientId: z.string().min(1).optional(),
    /** How the client authenticates at the token endpoint. */
    clientAuth: z.enum(['private_key_jwt', 'client_secret_basic', 'client_secret_post']).default('private_key_jwt'),
    /** `client_secret_*`: the secret (prefer the environment: MDI_FHIR_AUTH_CLIENT_SECRET). */
    clientSecret: z.string().min(1).optional(),
    /** `private_key_jwt`: PEM file of the private key (RSA for RS384, P-384 EC for ES384). */
    privateKeyFile: z.string().min(1).optional(),
    /** `private_key_jwt`: the `kid` of the public key registered with the EPJ (JWKS). */
    keyId: z.string().min(1).optional(),
    /** `private_key_jwt`: SMART Backend Services requires servers to accept both. */
    algorithm: z.enum(['RS384', 'ES384']).default('RS384'),
    /** Scopes requested (SMART v2 names; use `system/Observation.write` for v1 servers). */
    scope: z.string().default('system/Observation.c system/Device.cu system/Patient.rs'),
  })
  .superRefine((auth, ctx) => {
    const need = (key: keyof typeof auth, why: string) => {
      if (auth[key] === undefined) ctx.addIssue({ code: 'custom', path: [key], message: `is required ${why}` });
    };
    if (auth.type === 'bearer' && auth.token === undefined && auth.tokenFile === undefined) {
      ctx.addIssue({ code: 'custom', path: ['token'], message: 'or tokenFile is required with type bearer' });
    }
    if (auth.type === 'client-credentials') {
      need('tokenUrl', 'with type client-credentials');
      need('clientId', 'with type client-credentials');
      if (auth.clientAuth === 'private_key_jwt') {
        need('privateKeyFile', 'with clientAuth private_key_jwt');
        need('keyId', 'with clientAuth private_key_jwt');
      } else {
        need('clientSecret', `with clientAuth ${auth.clientAuth}`);
      }
    }
  });
export type AuthSettings = z.infer<typeof AuthSettings>;

export const OutboxSettings = z.strictObject({
  /**
   * Readings waiting for the EPJ (queued + sending) before the outbox stops taking more from
   * the store. Nothing is lost when it is full: the rest waits in the store behind the
   * outbox's cursor. 500 000 is about two days of a 200-bed ward at 6 charted metrics a
   * minute (~0.5 KB each, ~250 MB). Not counted: the open interval of each series (one per
   * device channel and patient), which is bounded by the number of beds.
   */
  maxRows: z.number().int().min(100).max(50_000_000).default(500_000),
  /**
   * Observations read from the store per step (one transaction). A step is synchronous work
   * (~20–40 µs a reading): 500 keeps it to ~10–20 ms, so MLLP ACKs never wait long behind it.
   */
  feedBatch: z.number().int().min(1).max(100_000).default(500),
  /** How often the outbox looks for new readings and due retries, ms. */
  pollMs: z.number().int().min(10).max(60_000).default(250),
  /**
   * A reading the EPJ has neither accepted nor refused after this many hours in the outbox
   * becomes a dead letter (`expired`) so the gap is visible instead of retried forever.
   */
  maxAgeHours: z.number().min(1).max(24 * 365).default(168),
  /**
   * Confirmed entries are kept this long for the delivery-state query, then deleted. A day of a
   * 200-bed ward at 6 charted metrics a minute is ~1.7 million entries (~1 GB): keep it short.
   */
  keepConfirmedHours: z.number().min(0).max(24 * 365).default(24),
  /** Dead letters (rejected, expired, skipped) are kept this long, then deleted. */
  keepRejectedHours: z.number().min(0).max(24 * 3650).default(24 * 90),
});
export type OutboxSettings = z.infer<typeof OutboxSettings>;

export const FhirSettings = z.strictObject({
  /** false: nothing is charted (readings are still stored). */
  enabled: z.boolean().default(true),
  /**
   * The EPJ's FHIR R4 base URL (`https://epj.example/fhir`). Absent: the gateway starts the
   * EPJ stand-in on `embeddedEpj.port` and charts there.
   */
  baseUrl: httpUrl.optional(),
  embeddedEpj: z
    .strictObject({
      port: port.default(8090),
    })
    .prefault({}),
  auth: AuthSettings.prefault({}),
  /** PEM file with extra CA certificates trusted for the EPJ and token endpoint (added to the system CAs). */
  caFile: z.string().min(1).optional(),
  timeouts: z
    .strictObject({
      /** TCP + TLS connect, ms. */
      connectMs: z.number().int().min(100).max(120_000).default(5000),
      /** Whole request including the answer, ms; a batch of 100 conditional creates is one request. */
      requestMs: z.number().int().min(100).max(600_000).default(30_000),
    })
    .prefault({}),
  /**
   * Observations per Bundle. Research note §4.1: keep bundles ≤ 100 entries or the receiver's
   * documented limit; a 413 answer halves the batch for that send.
   */
  batchSize: z.number().int().min(1).max(1000).default(100),
  /** Bundles in flight at once (drops to 1 while the EPJ is failing, to probe it gently). */
  concurrency: z.number().int().min(1).max(32).default(2),
  retry: z
    .strictObject({
      /** First backoff after a failure, ms; doubled per consecutive failure, with jitter. */
      initialDelayMs: z.number().int().min(10).max(600_000).default(1000),
      /** Backoff cap, ms. */
      maxDelayMs: z.number().int().min(10).max(3_600_000).default(60_000),
      /** Longest `Retry-After` honoured, ms; a longer one is clamped (a typo must not stall charting for a day). */
      maxRetryAfterMs: z.number().int().min(0).max(86_400_000).default(600_000),
    })
    .prefault({}),
  /**
   * `Observation.subject`: `conditional` (`Patient?identifier=urn:oid:1.2.208.176.1.2|…`,
   * resolved by the server), `resolved` (the gateway looks the Patient up with a POST
   * `_search`, keeping CPR numbers out of URLs, and sends `Patient/<id>`), or `create`
   * (conditional create of a minimal Patient first: for test servers and the stand-in, never
   * for a production EPJ). Absent: `conditional` with `baseUrl`, `create` with the stand-in.
   */
  subject: z.enum(['conditional', 'resolved', 'create']).optional(),
  /** `Observation.status` of charted readings; readings a device marks not final are `preliminary`. */
  observationStatus: z.enum(['final', 'preliminary']).default('final'),
  /**
   * System of the deterministic Observation identifier (the idempotency key). Set it to a URI
   * your region owns before go-live and never change it afterwards: a change re-keys every
   * reading still in the outbox.
   */
  identifierSystem: uri.default('https://mdi-gateway.example.dk/sid/observation'),
  /** UUIDv5 namespace of the identifier values. Same rule as `identifierSystem`. */
  identifierNamespace: z.uuid().default('3f2b6d1e-0c4a-4e7b-9d2a-6c1f0e9b8a70'),
  /** `Device.identifier` system for devices without an EUI-64 (registered ids, serial devices). */
  deviceIdentifierSystem: uri.default('https://mdi-gateway.example.dk/sid/device'),
  charting: ChartingSettings.prefault({}),
  outbox: OutboxSettings.prefault({}),
});
export type FhirSettings = z.infer<typeof FhirSettings>;
export type FhirSettingsInput = z.input<typeof FhirSettings>;
