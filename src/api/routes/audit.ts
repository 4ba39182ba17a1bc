/**
 * `GET /api/audit`: who changed what in the registry, newest first. The audit keeps patient ids
 * (it is the legal record); this answer shows them as pseudonyms, like every other answer.
 */
import type { FastifyPluginAsync } from 'fastify';
import { z } from 'zod';
import { iso, parseOr400, redactPatients, TimeParam, type RegistryRouteOptions } from '../http.js';

const AuditQuery = z.strictObject({
  entity: z.enum(['device', 'binding', 'occupancy', 'token']).optional(),
  id: z.string().min(1).max(256).optional().describe('entity id (device id, binding id, bed key, token name)'),
  actor: z.string().min(1).max(128).optional(),
  since: TimeParam.optional(),
  limit: z.coerce.number().int().min(1).max(10_000).default(100),
});

export const auditRoutes: FastifyPluginAsync<RegistryRouteOptions> = async (app, o) => {
  app.get('/api/audit', { config: { doc: { summary: 'Audit log of registry changes, newest first', tags: ['audit'], query: AuditQuery } } }, async (req) => {
    const q = parseOr400(AuditQuery, req.query, 'query');
    const rows = o.audit.query({ entity: q.entity, entityId: q.id, actor: q.actor, since: q.since, limit: q.limit });
    return {
      items: rows.map((r) => ({
        ...r,
        at: iso(r.at),
        before: redactPatients(r.before, o.pseudonym),
        after: redactPatients(r.after, o.pseudonym),
      })),
    };
  });
};
