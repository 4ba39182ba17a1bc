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
import { z } from 'zod';
import type { DeviceHealth } from '../../registry/health.js';
import { DEVICE_EVENT_TYPES } from '../../registry/health.js';
import { describe, TimeParam } from '../http.js';
import { PROMETHEUS_CONTENT_TYPE, renderDeviceMetrics } from '../metrics.js';

export interface HealthRoutesOptions {
  readonly health: DeviceHealth;
}

const TAGS = ['device health'];

const DeviceParam = z.strictObject({ id: z.string().min(1).max(128) });

const EventQuery = z.strictObject({
  device: z.string().min(1).max(128).optional(),
  type: z.enum(DEVICE_EVENT_TYPES).optional(),
  since: TimeParam.optional(),
  limit: z.coerce.number().int().min(1).max(10_000).default(100),
});

export const healthRoutes: FastifyPluginAsync<HealthRoutesOptions> = async (app, { health }) => {
  app.get('/api/devices/:id/health', { config: { doc: { summary: 'Health of one device', tags: TAGS, params: DeviceParam } } }, async (req, reply) => {
    const p = DeviceParam.safeParse(req.params);
    if (!p.success) return reply.code(400).send({ error: describe(p.error, 'path') });
    const snapshot = health.snapshot(p.data.id);
    if (snapshot === null) return reply.code(404).send({ error: `no health data for device ${p.data.id}` });
    return snapshot;
  });

  app.get('/api/health/devices', { config: { doc: { summary: 'Health of every device heard since start or watched', tags: TAGS } } }, async () => ({
    items: health.all(),
  }));

  app.get('/api/events', { config: { doc: { summary: 'Device health events, newest first', tags: TAGS, query: EventQuery } } }, async (req, reply) => {
    const q = EventQuery.safeParse(req.query);
    if (!q.success) return reply.code(400).send({ error: describe(q.error) });
    const items = health.eventLog(q.data).map((e) => ({ ...e, time: new Date(e.time).toISOString() }));
    return { items };
  });

  app.get('/metrics', { config: { doc: { summary: 'Device health metrics (Prometheus text format 0.0.4)', tags: TAGS } } }, async (_req, reply) =>
    reply.type(PROMETHEUS_CONTENT_TYPE).send(renderDeviceMetrics(health.all(), health.eventTotals())),
  );
};
