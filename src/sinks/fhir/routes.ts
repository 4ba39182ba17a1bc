/**
 * HTTP API of the outbox (a fastify plugin), for operators and the EPJ's integration team:
 *
 * - `GET /api/outbox`: depth, oldest age, delivered/s, last error, whether the EPJ is reachable,
 *   binding corrections (jobs pending, voids waiting, voided and re-issued since start).
 * - `GET /api/outbox/entries?state=rejected&limit=100`: entries, newest first; dead letters are
 *   `state=rejected` and carry the EPJ's OperationOutcome. `action` says what an entry does:
 *   `create` (chart; `revision` > 0 for a re-issue after a correction) or `void` (set the
 *   Observation charted for the wrong patient to entered-in-error; `ref` is the voided entry).
 * - `GET /api/outbox/entries/:id`: one entry.
 * - `GET /api/outbox/observations/:id`: delivery state of one stored reading (queued, sending,
 *   confirmed, rejected with reason, superseded by the interval's representative, voided by a
 *   correction, not charted).
 *
 * No patient data in any answer: entries show device, metric, time and identifiers only, and
 * OperationOutcome texts have CPR-shaped numbers masked.
 */
import type { FastifyPluginAsync } from 'fastify';
import { z } from 'zod';
import type { FhirCharting } from './index.js';
import { OutboxState } from './outbox.js';

export interface OutboxRoutesOptions {
  /** The charting service; null when charting is disabled (`fhir.enabled: false`). */
  readonly charting: FhirCharting | null;
}

const EntriesQuery = z.strictObject({
  state: z.enum(Object.values(OutboxState) as [OutboxState, ...OutboxState[]]).optional(),
  // Bounded: an answer of a few hundred KB at most.
  limit: z.coerce.number().int().min(1).max(1000).default(100),
});
const IdParam = z.strictObject({ id: z.coerce.number().int().min(1) });

function describe(error: z.ZodError): string {
  return error.issues
    .map((i) =>
      i.code === 'unrecognized_keys' ? `unknown parameter${i.keys.length > 1 ? 's' : ''} ${i.keys.join(', ')}` : `${i.path.join('.') || 'query'}: ${i.message}`,
    )
    .join('; ');
}

/** Registers the outbox routes. */
export const outboxRoutes: FastifyPluginAsync<OutboxRoutesOptions> = async (app, options) => {
  const charting = options.charting;

  app.get('/api/outbox', async () => (charting === null ? { enabled: false } : { enabled: true, ...charting.status() }));

  app.get('/api/outbox/entries', async (req, reply) => {
    if (charting === null) return reply.code(404).send({ error: 'charting is disabled (fhir.enabled: false)' });
    const q = EntriesQuery.safeParse(req.query);
    if (!q.success) return reply.code(400).send({ error: describe(q.error) });
    return { items: charting.entries(q.data.state, q.data.limit) };
  });

  app.get('/api/outbox/entries/:id', async (req, reply) => {
    if (charting === null) return reply.code(404).send({ error: 'charting is disabled (fhir.enabled: false)' });
    const p = IdParam.safeParse(req.params);
    if (!p.success) return reply.code(400).send({ error: describe(p.error) });
    const entry = charting.entry(p.data.id);
    if (entry === null) return reply.code(404).send({ error: `no outbox entry ${p.data.id}` });
    return entry;
  });

  app.get('/api/outbox/observations/:id', async (req, reply) => {
    if (charting === null) return reply.code(404).send({ error: 'charting is disabled (fhir.enabled: false)' });
    const p = IdParam.safeParse(req.params);
    if (!p.success) return reply.code(400).send({ error: describe(p.error) });
    const state = charting.deliveryState(p.data.id);
    if (state.state === 'unknown') return reply.code(404).send({ error: `no stored observation ${p.data.id}` });
    return state;
  });
};
