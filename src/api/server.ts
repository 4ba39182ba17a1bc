import Fastify from 'fastify';
import { z } from 'zod';
import { formatIsoTime } from '../codec/hl7-time.js';
import type { DriverStatus } from '../driver.js';
import type { Logger } from '../log.js';
import type { DeviceHealth } from '../registry/health.js';
import type { FhirCharting } from '../sinks/fhir/index.js';
import type { InfluxFeederStatus } from '../sinks/influx/feeder.js';
import { outboxRoutes } from '../sinks/fhir/routes.js';
import type { Store } from '../store/store.js';
import { observationItem } from './observation-item.js';
import { installAuth, type AuthSettings } from './auth.js';
import { errorStatus, TimeParam, type RegistryRouteOptions } from './http.js';
import { installOpenApi } from './openapi.js';
import { auditRoutes } from './routes/audit.js';
import { bindingRoutes } from './routes/bindings.js';
import { deviceRoutes } from './routes/devices.js';
import { tokenRoutes } from './routes/tokens.js';
import type { AuditLog } from '../registry/audit.js';
import type { TokenStore } from '../registry/tokens.js';
import type { BindingsApi, DeviceRegistryApi } from '../registry/types.js';
import { healthRoutes } from './routes/health.js';

export interface ApiDeps {
  readonly store: Store;
  readonly log: Logger;
  /** True once every part of the gateway has started; /health answers 503 before. */
  readonly ready: () => boolean;
  readonly drivers: () => DriverStatus[];
  readonly counters: () => Record<string, number>;
  /** Charting into the EPJ (`/api/outbox…`); null or absent when charting is off. */
  readonly charting?: FhirCharting | null;
  /** The InfluxDB feeder's status (`/api/status` → `influx`); null or absent when `store.influx` is not set. */
  readonly influx?: (() => InfluxFeederStatus) | null;
  /** Device health (`/api/devices/:id/health`, `/api/health/devices`, `/api/events`, `/metrics`); absent: not served. */
  readonly health?: DeviceHealth | null;
  /** The device registry (`/api/devices`, `/api/bindings`, `/api/beds`, `/api/audit`, `/api/tokens`); absent: not served. */
  readonly registry?: { devices: DeviceRegistryApi; bindings: BindingsApi; audit: AuditLog; tokens: TokenStore } | null;
  /** Bearer-token access (config `http.auth`); absent or null: no checks (tests, embedded use). */
  readonly auth?: AuthSettings | null;
  /** For the registry routes' "now" (tests); Date.now by default. */
  readonly clock?: () => number;
}

const ObservationQuery = z.strictObject({
  device: z.string().min(1).optional(),
  metric: z.string().min(1).optional(),
  since: TimeParam.optional(),
  until: TimeParam.optional(),
  limit: z.coerce.number().int().min(1).max(10_000).default(100),
  order: z.enum(['asc', 'desc']).default('desc'),
});

const DeadLetterQuery = z.strictObject({
  since: TimeParam.optional(),
  code: z.string().min(1).optional(),
  limit: z.coerce.number().int().min(1).max(10_000).default(100),
});

const IdParam = z.strictObject({ id: z.coerce.number().int().min(1) });

/**
 * The HTTP API (fastify): health, observations, dead letters, status, outbox, device health
 * and, with a registry, devices, bindings, beds, audit and tokens (bearer tokens when `auth` is
 * on; /api/openapi.json lists every route). Input is validated with zod; a bad one gets 400
 * naming the parameter.
 */
export function createApi(deps: ApiDeps) {
  const app = Fastify({ loggerInstance: deps.log.child({ component: 'api' }) });
  // Per-request lines would drown the log of a busy ward; errors and warnings still show.
  app.addHook('onRoute', (route) => {
    route.logLevel ??= 'warn';
  });
  // Before any route: the auth hook and the OpenAPI collector must see every one of them.
  installAuth(app, deps.auth ?? null, deps.registry?.tokens ?? null);
  installOpenApi(app, { title: 'mdi-gateway', version: '0.1.0' });

  app.setErrorHandler((err: Error & { statusCode?: number }, _req, reply) => {
    const { status, code } = errorStatus(err);
    if (status >= 500) deps.log.error({ err }, 'api request failed');
    void reply.code(status).send({ error: status >= 500 ? 'internal error' : err.message, ...(code ? { code } : {}) });
  });

  void app.register(outboxRoutes, { charting: deps.charting ?? null });
  if (deps.health) void app.register(healthRoutes, { health: deps.health });
  if (deps.registry) {
    const options: RegistryRouteOptions = {
      ...deps.registry,
      configTokens: deps.auth?.tokens ?? [],
      pseudonym: deps.store.pseudonym.bind(deps.store),
      clock: deps.clock ?? Date.now,
    };
    for (const routes of [deviceRoutes, bindingRoutes, auditRoutes, tokenRoutes]) void app.register(routes, options);
  }

  app.get('/health', async (_req, reply) => {
    const ready = deps.ready();
    return reply.code(ready ? 200 : 503).send({ status: ready ? 'ok' : 'starting' });
  });

  app.get('/api/status', async () => ({
    drivers: deps.drivers(),
    counters: deps.counters(),
    store: deps.store.counts(),
    ...(deps.influx ? { influx: deps.influx() } : {}),
  }));

  app.get('/api/observations', async (req, reply) => {
    const q = ObservationQuery.safeParse(req.query);
    if (!q.success) return reply.code(400).send({ error: describe(q.error) });
    const rows = deps.store.queryObservations(q.data);
    const pseudonym = deps.store.pseudonym.bind(deps.store);
    return { items: rows.map((r) => observationItem(r.observation, pseudonym)) };
  });

  app.get('/api/dead-letters', async (req, reply) => {
    const q = DeadLetterQuery.safeParse(req.query);
    if (!q.success) return reply.code(400).send({ error: describe(q.error) });
    const items = deps.store.listDeadLetters(q.data).map((d) => ({
      id: d.id,
      received: formatIsoTime(d.received, 0),
      source: d.source,
      code: d.code,
      reason: d.reason,
      location: d.location,
      controlId: d.controlId,
      size: d.size,
      raw: `/api/dead-letters/${d.id}/raw`,
    }));
    return { items };
  });

  // The exact bytes that were refused, for the engineer debugging a feed. Never logged.
  app.get('/api/dead-letters/:id/raw', async (req, reply) => {
    const p = IdParam.safeParse(req.params);
    if (!p.success) return reply.code(400).send({ error: describe(p.error) });
    const raw = deps.store.deadLetterRaw(p.data.id);
    if (raw === null) return reply.code(404).send({ error: `no dead letter ${p.data.id}` });
    return reply.type('application/octet-stream').send(raw);
  });

  return app;
}

function describe(error: z.ZodError): string {
  return error.issues
    .map((i) =>
      i.code === 'unrecognized_keys'
        ? `unknown parameter${i.keys.length > 1 ? 's' : ''} ${i.keys.join(', ')}`
        : `${i.path.join('.') || 'query'}: ${i.message}`,
    )
    .join('; ');
}

export type Api = ReturnType<typeof createApi>;
