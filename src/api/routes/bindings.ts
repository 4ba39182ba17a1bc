/**
 * `/api/bindings` and `/api/beds`: who was bound to what and when, corrections of the past, and
 * bed occupancy set by hand. Patients are always shown as pseudonyms. A bed in a URL is its key
 * URL-encoded: `/api/beds/ICU%2F1%2F3/occupancy`.
 */
import type { FastifyPluginAsync } from 'fastify';
import { z } from 'zod';
import type { Occupancy } from '../../registry/types.js';
import { BedInput, bedKey, BedKeyParam, BodyTime, iso, parseOr400, PatientInput, patientId, patientView, TimeParam, type Pseudonymize, type RegistryRouteOptions } from '../http.js';
import { bindingView } from './devices.js';

const limit = z.coerce.number().int().min(1).max(10_000).default(100);
const BindingsQuery = z.strictObject({ device: z.string().min(1).max(128).optional(), bed: BedKeyParam.optional(), at: TimeParam.optional(), limit });
const CorrectionBody = z
  .strictObject({
    device: z.string().min(1).max(128),
    from: BodyTime,
    to: BodyTime,
    bed: BedInput.optional(),
    patient: PatientInput.optional(),
    none: z.literal(true).optional().describe('the device was bound to nothing over [from, to)'),
    reason: z.string().min(1).max(500),
  })
  .refine((b) => [b.bed, b.patient, b.none].filter((x) => x !== undefined).length === 1, { message: 'give exactly one of "bed", "patient" and "none": true', path: ['bed'] })
  .refine((b) => b.from < b.to, { message: 'must be after "from"', path: ['to'] });
const BedParam = z.strictObject({ bed: BedKeyParam.describe('bed key ward/room/bed, URL-encoded (ICU%2F1%2F3)') });
const OccupancyQuery = z.strictObject({ at: TimeParam.optional(), limit });
const OccupyBody = z.strictObject({ patient: PatientInput, from: BodyTime.optional(), to: BodyTime.nullable().optional() });
const VacateBody = z.strictObject({ at: BodyTime.optional() });

export function occupancyView(o: Occupancy, pseudonym: Pseudonymize) {
  return { ...o, patient: patientView(o.patient, pseudonym), from: iso(o.from), to: iso(o.to), created: iso(o.created) };
}

export const bindingRoutes: FastifyPluginAsync<RegistryRouteOptions> = async (app, o) => {
  const tags = ['bindings'];

  app.get('/api/bindings', { config: { doc: { summary: 'Bindings, newest first (of a device, of a bed, at a time)', tags, query: BindingsQuery } } }, async (req) => {
    const q = parseOr400(BindingsQuery, req.query, 'query');
    const device = q.device === undefined ? undefined : (o.devices.get(q.device)?.id ?? q.device);
    return { items: o.bindings.bindings({ ...q, device }).map((b) => bindingView(b, o.pseudonym)) };
  });

  app.post('/api/bindings/corrections', { config: { doc: { summary: "Rewrite a device's bindings over a past interval", tags, body: CorrectionBody } } }, async (req) => {
    const b = parseOr400(CorrectionBody, req.body, 'body');
    const binding = o.bindings.correct(
      {
        device: o.devices.get(b.device)?.id ?? b.device,
        from: b.from,
        to: b.to,
        ...(b.bed ? { bed: bedKey(b.bed) } : {}),
        ...(b.patient ? { patient: patientId(b.patient) } : {}),
        reason: b.reason,
      },
      req.actor,
    );
    return { binding: binding && bindingView(binding, o.pseudonym) };
  });

  app.get('/api/beds', { config: { doc: { summary: 'Beds in use now: occupant (pseudonym) and bound devices', tags: ['beds'] } } }, async () => {
    const now = o.clock();
    const beds = new Map<string, { bed: string; patient: ReturnType<typeof patientView>; since: string | null; devices: string[] }>();
    const entry = (bed: string) => {
      let e = beds.get(bed);
      if (e === undefined) beds.set(bed, (e = { bed, patient: null, since: null, devices: [] }));
      return e;
    };
    for (const occ of o.bindings.occupancies({ at: now, limit: 10_000 })) {
      const e = entry(occ.bed);
      e.patient = patientView(occ.patient, o.pseudonym);
      e.since = iso(occ.from);
    }
    for (const b of o.bindings.bindings({ at: now, limit: 10_000 })) if (b.bed !== null) entry(b.bed).devices.push(b.device);
    return { items: [...beds.values()].sort((a, b) => a.bed.localeCompare(b.bed)) };
  });

  app.get('/api/beds/:bed/occupancy', { config: { doc: { summary: 'Who lay in a bed, newest first', tags: ['beds'], params: BedParam, query: OccupancyQuery } } }, async (req) => {
    const { bed } = parseOr400(BedParam, req.params, 'path');
    const q = parseOr400(OccupancyQuery, req.query, 'query');
    return { items: o.bindings.occupancies({ bed, ...q }).map((x) => occupancyView(x, o.pseudonym)) };
  });

  app.post('/api/beds/:bed/occupancy', { config: { doc: { summary: 'Put a patient in a bed by hand', tags: ['beds'], params: BedParam, body: OccupyBody, responses: { 201: 'occupied', 409: 'overlaps another stay' } } } }, async (req, reply) => {
    const { bed } = parseOr400(BedParam, req.params, 'path');
    const b = parseOr400(OccupyBody, req.body, 'body');
    const occ = o.bindings.occupy(
      { bed, patient: patientId(b.patient), ...(b.from !== undefined ? { from: b.from } : {}), ...(b.to !== undefined ? { to: b.to } : {}) },
      req.actor,
    );
    return reply.code(201).send(occupancyView(occ, o.pseudonym));
  });

  app.post('/api/beds/:bed/vacate', { config: { doc: { summary: "End a bed's open occupancy", tags: ['beds'], params: BedParam, body: VacateBody } } }, async (req) => {
    const { bed } = parseOr400(BedParam, req.params, 'path');
    const b = parseOr400(VacateBody, req.body, 'body');
    const ended = o.bindings.vacate(bed, b.at, req.actor);
    return { ended: ended && occupancyView(ended, o.pseudonym) };
  });
};
