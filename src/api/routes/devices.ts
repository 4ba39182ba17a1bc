/**
 * `/api/devices`: register, change, approve and retire devices, and bind them to a bed or a
 * patient. A `location` in a device's input becomes a binding from now (the registry does not
 * keep beds itself).
 */
import type { FastifyPluginAsync } from 'fastify';
import { z } from 'zod';
import { ErrorCode, GatewayError } from '../../errors.js';
import { bedKeyOf, DeviceInputSchema, DevicePatchSchema } from '../../registry/devices.js';
import { DEVICE_KINDS, DeviceStatus, type Binding, type DeviceRecord } from '../../registry/types.js';
import { BedInput, bedKey, BodyTime, iso, parseOr400, PatientInput, patientId, patientView, type Pseudonymize, type RegistryRouteOptions } from '../http.js';

const ListQuery = z.strictObject({
  status: z.enum(Object.values(DeviceStatus) as [DeviceStatus, ...DeviceStatus[]]).optional(),
  kind: z.enum(DEVICE_KINDS).optional(),
});
const IdParam = z.strictObject({ id: z.string().min(1).max(128).describe('device id or EUI-64 (URL-encode a /)') });
const RetireBody = z.strictObject({ reason: z.string().min(1).max(500).optional() });
const BindBody = z
  .strictObject({
    bed: BedInput.optional(),
    patient: PatientInput.optional(),
    from: BodyTime.optional(),
    to: BodyTime.nullable().optional(),
    reason: z.string().min(1).max(500).optional(),
  })
  .refine((b) => (b.bed === undefined) !== (b.patient === undefined), { message: 'give either "bed" or "patient"', path: ['bed'] });
const UnbindBody = z.strictObject({ at: BodyTime.optional() });

/** A device as the API shows it: times in ISO 8601, an MQTT password hash only as set. */
export function deviceView(d: DeviceRecord) {
  const transport = d.transport?.type === 'mqtt' ? { ...d.transport, passwordHash: d.transport.passwordHash === null ? null : '[set]' } : d.transport;
  return { ...d, transport, created: iso(d.created), updated: iso(d.updated) };
}

/** A binding as the API shows it: the patient as a pseudonym. */
export function bindingView(b: Binding, pseudonym: Pseudonymize) {
  return { ...b, patient: patientView(b.patient, pseudonym), from: iso(b.from), to: iso(b.to), created: iso(b.created) };
}

export const deviceRoutes: FastifyPluginAsync<RegistryRouteOptions> = async (app, o) => {
  const tags = ['devices'];
  const find = (id: string): DeviceRecord => {
    const d = o.devices.get(id);
    if (d === null) throw new GatewayError(ErrorCode.REGISTRY_NOT_FOUND, `no device ${id}`);
    return d;
  };

  app.get('/api/devices', { config: { doc: { summary: 'List devices', tags, query: ListQuery } } }, async (req) => {
    const q = parseOr400(ListQuery, req.query, 'query');
    return { items: o.devices.list(q).map(deviceView) };
  });

  app.post('/api/devices', { config: { doc: { summary: 'Register a device (a location binds it to that bed from now)', tags, body: DeviceInputSchema, responses: { 201: 'registered', 400: 'invalid input', 409: 'id or EUI-64 taken' } } } }, async (req, reply) => {
    const input = parseOr400(DeviceInputSchema, req.body, 'body');
    const added = o.devices.add(input, req.actor);
    if (input.location) o.bindings.bind({ device: added.id, bed: bedKeyOf(input.location) }, req.actor);
    return reply.code(201).send(deviceView(o.devices.get(added.id) ?? added));
  });

  app.get('/api/devices/:id', { config: { doc: { summary: 'One device, with its binding now', tags, params: IdParam, responses: { 200: 'the device', 404: 'no such device' } } } }, async (req) => {
    const { id } = parseOr400(IdParam, req.params, 'path');
    const d = find(id);
    const binding = o.bindings.bindings({ device: d.id, at: o.clock(), limit: 1 })[0] ?? null;
    return { ...deviceView(d), binding: binding && bindingView(binding, o.pseudonym) };
  });

  app.patch('/api/devices/:id', { config: { doc: { summary: 'Change a device (a location moves it to that bed from now; null unbinds it)', tags, params: IdParam, body: DevicePatchSchema } } }, async (req) => {
    const { id } = parseOr400(IdParam, req.params, 'path');
    const patch = parseOr400(DevicePatchSchema, req.body, 'body');
    const d = o.devices.update(id, patch, req.actor);
    if (patch.location !== undefined) relocate(o, d.id, patch.location, req.actor);
    return deviceView(o.devices.get(d.id) ?? d);
  });

  app.post('/api/devices/:id/approve', { config: { doc: { summary: 'Approve an unregistered (or retired) device, optionally completing it', tags, params: IdParam, body: DevicePatchSchema } } }, async (req) => {
    const { id } = parseOr400(IdParam, req.params, 'path');
    const patch = parseOr400(DevicePatchSchema, req.body, 'body');
    const d = o.devices.approve(id, patch, req.actor);
    if (patch.location !== undefined) relocate(o, d.id, patch.location, req.actor);
    return deviceView(o.devices.get(d.id) ?? d);
  });

  app.post('/api/devices/:id/retire', { config: { doc: { summary: 'Take a device out of service', tags, params: IdParam, body: RetireBody } } }, async (req) => {
    const { id } = parseOr400(IdParam, req.params, 'path');
    const body = parseOr400(RetireBody, req.body, 'body');
    return deviceView(o.devices.retire(id, req.actor, body.reason));
  });

  app.post('/api/devices/:id/bind', { config: { doc: { summary: 'Bind a device to a bed or a patient', tags: ['bindings'], params: IdParam, body: BindBody, responses: { 201: 'bound', 409: 'overlaps another binding' } } } }, async (req, reply) => {
    const { id } = parseOr400(IdParam, req.params, 'path');
    const b = parseOr400(BindBody, req.body, 'body');
    const device = find(id).id;
    const binding = o.bindings.bind(
      {
        device,
        ...(b.bed ? { bed: bedKey(b.bed) } : {}),
        ...(b.patient ? { patient: patientId(b.patient) } : {}),
        ...(b.from !== undefined ? { from: b.from } : {}),
        ...(b.to !== undefined ? { to: b.to } : {}),
        ...(b.reason !== undefined ? { reason: b.reason } : {}),
      },
      req.actor,
    );
    return reply.code(201).send(bindingView(binding, o.pseudonym));
  });

  app.post('/api/devices/:id/unbind', { config: { doc: { summary: "End a device's open binding", tags: ['bindings'], params: IdParam, body: UnbindBody } } }, async (req) => {
    const { id } = parseOr400(IdParam, req.params, 'path');
    const b = parseOr400(UnbindBody, req.body, 'body');
    const ended = o.bindings.unbind(find(id).id, b.at, req.actor);
    return { ended: ended && bindingView(ended, o.pseudonym) };
  });
};

/**
 * A location given with a device: bind it to that bed from now (a new open binding ends the open
 * one: a move), or, for null, end its open binding.
 */
function relocate(o: RegistryRouteOptions, device: string, location: z.output<typeof BedInput> | null, actor: string): void {
  const open = o.bindings.bindings({ device, at: o.clock(), limit: 1 })[0];
  const bed = location === null ? null : bedKeyOf(location);
  if (open !== undefined && open.bed === bed && open.to === null) return;
  if (bed === null) o.bindings.unbind(device, undefined, actor);
  else o.bindings.bind({ device, bed }, actor);
}
