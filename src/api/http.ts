/**
 * Pieces the API routes share: time and patient parameters, validation that answers 400 naming
 * the field, GatewayError → HTTP status, and patient ids shown as pseudonyms.
 */
import type { FastifyInstance, RawReplyDefaultExpression, RawRequestDefaultExpression, RawServerDefault } from 'fastify';
import { z } from 'zod';
import { formatIsoTime } from '../codec/hl7-time.js';
import { ErrorCode, GatewayError } from '../errors.js';
import type { Logger } from '../log.js';
import { CPR_SYSTEM, type PatientId } from '../model/measurement.js';
import type { AuditLog } from '../registry/audit.js';
import type { TokenGrant, TokenStore } from '../registry/tokens.js';
import type { BedKey, BindingsApi, DeviceRegistryApi } from '../registry/types.js';

/** The root instance `createApi` makes (its logger is the gateway's pino logger). */
export type ApiInstance = FastifyInstance<RawServerDefault, RawRequestDefaultExpression, RawReplyDefaultExpression, Logger>;

/** A time given as ISO-8601 (with or without offset) or epoch milliseconds. */
export const TimeParam = z.string().transform((text, ctx) => {
  const ms = /^\d+$/.test(text) ? Number(text) : Date.parse(text);
  if (!Number.isFinite(ms)) {
    ctx.addIssue({ code: 'custom', message: 'must be an ISO-8601 time or epoch milliseconds' });
    return z.NEVER;
  }
  return ms;
});

/** In a JSON body a time may also be a number (epoch ms). */
export const BodyTime = z.union([z.number().int().min(0), TimeParam]);

/** Zod issues as one line: `field: message; …` (never the value: it may be a CPR number). */
export function describe(error: z.ZodError, what = 'query'): string {
  return error.issues
    .map((i) =>
      i.code === 'unrecognized_keys'
        ? `unknown ${what === 'query' ? 'parameter' : 'field'}${i.keys.length > 1 ? 's' : ''} ${i.keys.join(', ')}`
        : `${i.path.join('.') || what}: ${i.message}`,
    )
    .join('; ');
}

/** An error with its HTTP status; the API's error handler answers `{ error, code }`. */
export class HttpError extends Error {
  constructor(
    readonly statusCode: number,
    message: string,
    readonly code?: string,
  ) {
    super(message);
  }
}

/** Parses `data` or throws a 400 that names the field. */
export function parseOr400<S extends z.ZodType>(schema: S, data: unknown, what: 'query' | 'body' | 'path'): z.output<S> {
  const r = schema.safeParse(data ?? {});
  if (!r.success) throw new HttpError(400, describe(r.error, what), ErrorCode.REGISTRY_INVALID);
  return r.data;
}

const STATUS: Partial<Record<ErrorCode, number>> = {
  [ErrorCode.REGISTRY_NOT_FOUND]: 404,
  [ErrorCode.REGISTRY_CONFLICT]: 409,
  [ErrorCode.BINDING_OVERLAP]: 409,
  [ErrorCode.REGISTRY_INVALID]: 400,
  [ErrorCode.ADT_NOT_APPLICABLE]: 400,
  [ErrorCode.AUTH_MISSING]: 401,
  [ErrorCode.AUTH_INVALID]: 401,
  [ErrorCode.AUTH_FORBIDDEN]: 403,
};

/** The HTTP status of an error thrown by a route, and the code to show with it (if any). */
export function errorStatus(err: Error & { statusCode?: number; code?: unknown }): { status: number; code?: string } {
  if (err instanceof GatewayError) return { status: STATUS[err.code] ?? 500, code: err.code };
  const status = err.statusCode && err.statusCode >= 400 ? err.statusCode : 500;
  return typeof err.code === 'string' && err.code.startsWith('MDI_ERR_') ? { status, code: err.code } : { status };
}

const bedPart = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[^/]+$/, 'must not contain /');

/** A bed in a body: `{ ward, room?, bed? }`. */
export const BedInput = z.strictObject({ ward: bedPart, room: bedPart.optional(), bed: bedPart.optional() });

export function bedKey(b: z.output<typeof BedInput>): BedKey {
  return [b.ward, b.room, b.bed].filter((p): p is string => p !== undefined).join('/');
}

/** A bed key as a URL segment (`ICU%2F1%2F3`, decoded by the router) or query value: 1–3 parts. */
export const BedKeyParam = z
  .string()
  .min(1)
  .max(194)
  .refine((k) => {
    const parts = k.split('/');
    return parts.length <= 3 && parts.every((p) => p.length >= 1 && p.length <= 64);
  }, 'must be a bed key ward[/room[/bed]] (URL-encode the slashes: ICU%2F1%2F3)');

/** A patient in a body: a CPR number (10 digits, a dash allowed after six) or any `{system, value}`. */
export const PatientInput = z.union([
  z.strictObject({ cpr: z.string().regex(/^\d{6}-?\d{4}$/, 'must be 10 digits (DDMMYYSSSS, a dash allowed after 6)') }),
  z.strictObject({ system: z.string().min(1).max(256), value: z.string().min(1).max(64) }),
]);

export function patientId(p: z.output<typeof PatientInput>): PatientId {
  return 'cpr' in p ? { system: CPR_SYSTEM, value: p.cpr.replace('-', '') } : { system: p.system, value: p.value };
}

/** A patient as the API shows it: the system and the store's pseudonym, never the value. */
export interface PatientView {
  readonly system: string;
  readonly pseudonym: string;
}

export type Pseudonymize = (patient: PatientId) => string;

export function patientView(p: PatientId | null, pseudonym: Pseudonymize): PatientView | null {
  return p === null ? null : { system: p.system, pseudonym: pseudonym(p) };
}

export function iso(ms: number): string;
export function iso(ms: number | null): string | null;
export function iso(ms: number | null): string | null {
  return ms === null ? null : formatIsoTime(ms, 0);
}

const TIME_KEYS = new Set(['at', 'from', 'to', 'created', 'updated', 'firstSeen', 'time']);

/**
 * A stored JSON value (audit before/after) made fit to show: every `{system, value}` object is
 * a patient id and becomes `{system, pseudonym}`; epoch-ms times under known keys become ISO.
 */
export function redactPatients(value: unknown, pseudonym: Pseudonymize, key = ''): unknown {
  if (typeof value === 'number' && TIME_KEYS.has(key) && Number.isInteger(value) && value > 0) return iso(value);
  if (value === null || typeof value !== 'object') return value;
  if (Array.isArray(value)) return value.map((v) => redactPatients(v, pseudonym));
  const o = value as Record<string, unknown>;
  if (typeof o.system === 'string' && typeof o.value === 'string') return { system: o.system, pseudonym: pseudonym({ system: o.system, value: o.value }) };
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) out[k] = redactPatients(v, pseudonym, k);
  return out;
}

/** What the registry routes (devices, bindings, beds, audit, tokens) are given. */
export interface RegistryRouteOptions {
  readonly devices: DeviceRegistryApi;
  readonly bindings: BindingsApi;
  readonly audit: AuditLog;
  readonly tokens: TokenStore;
  /** Tokens from the config (listed, never revocable through the API). */
  readonly configTokens: readonly TokenGrant[];
  readonly pseudonym: Pseudonymize;
  readonly clock: () => number;
}
