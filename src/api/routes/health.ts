/**
 * Device health over HTTP (a fastify plugin):
 *
 * - `GET /api/devices/:id/health`: one device (404 when the gateway has not heard of it and
 *   does not watch it).
 * - `GET /api/health/devices`: every device heard since start or watched (bound).
 * - `GET /api/events?device=&type=&since=&limit=`: stored health events, newest first.
 * - `GET /metrics`: Prometheus text format. It sits outside `/api` by Prometheus convention but
 *   is NOT open like `/health`: it names every device, so it wants a viewer token like `/api`
 *   (Prometheus sends one with `authorization: { credentials_file: … }`).
 *
 * Answers hold device ids, counts, times and transport addresses: no patient data.
 */
import type { FastifyPluginAsync } from 'fastify';
import { z, type ZodType } from 'zod';
import type { DeviceHealth } from '../../registry/health.js';
import { DEVICE_EVENT_TYPES } from '../../registry/health.js';
import { PROMETHEUS_CONTENT_TYPE, renderDeviceMetrics } from '../metrics.js';

export interface HealthRoutesOptions {
  readonly health: DeviceHealth;
}

/** What a route tells the OpenAPI document (collected from `routeOptions.config.doc`). */
interface RouteDoc {
  readonly summary: string;
  readonly query?: ZodType;
  readonly params?: ZodType;
}

/** Built by a function so the route's `config` is not an object literal checked against fastify's (augmentable) config type. */
function doc(d: RouteDoc): { doc: RouteDoc } {
  return { doc: d };
}

/** A time given as ISO-8601 (with or without offset) or epoch milliseconds. */
const TimeParam = z.string().transform((text, ctx) => {
  const ms = /^\d+$/.test(text) ? Number(text) : Date.parse(text);
  if (!Number.isFinite(ms)) {
    ctx.addIssue({ code: 'custom', message: 'must be an ISO-8601 time or epoch milliseconds' });
    return z.NEVER;
  }
  return ms;
});

const DeviceParam = z.strictObject({ id: z.string().min(1).max(128) });

const EventQuery = z.strictObject({
  device: z.string().min(1).max(128).optional(),
  type: z.enum(DEVICE_EVENT_TYPES).optional(),
  since: TimeParam.optional(),
  limit: z.coerce.number().int().min(1).max(10_000).default(100),
});

function describe(error: z.ZodError): string {
  return error.issues
    .map((i) =>
      i.code === 'unrecognized_keys' ? `unknown parameter${i.keys.length > 1 ? 's' : ''} ${i.keys.join(', ')}` : `${i.path.join('.') || 'query'}: ${i.message}`,
    )
    .join('; ');
}

export const healthRoutes: FastifyPluginAsync<HealthRoutesOptions> = async (app, { health }) => {
  app.get('/api/devices/:id/health', { config: doc({ summary: 'Health of one device', params: DeviceParam }) }, async (req, reply) => {
    const p = DeviceParam.safeParse(req.params);
    if (!p.success) return reply.code(400).send({ error: describe(p.error) });
    const snapshot = health.snapshot(p.data.id);
    if (snapshot === null) return reply.code(404).send({ error: `no health data for device ${p.data.id}` });
    return snapshot;
  });

  app.get('/api/health/devices', { config: doc({ summary: 'Health of every device heard since start or watched' }) }, async () => ({
    items: health.all(),
  }));

  app.get('/api/events', { config: doc({ summary: 'Device health events, newest first', query: EventQuery }) }, async (req, reply) => {
    const q = EventQuery.safeParse(req.query);
    if (!q.success) return reply.code(400).send({ error: describe(q.error) });
    const items = health.eventLog(q.data).map((e) => ({ ...e, time: new Date(e.time).toISOString() }));
    return { items };
  });

  app.get('/metrics', { config: doc({ summary: 'Device health metrics (Prometheus text format 0.0.4)' }) }, async (_req, reply) =>
    reply.type(PROMETHEUS_CONTENT_TYPE).send(renderDeviceMetrics(health.all(), health.eventTotals())),
  );
};
