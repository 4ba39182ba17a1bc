/**
 * `GET /api/openapi.json`: an OpenAPI 3.1 description of the routes that are actually
 * registered. Routes are collected with an onRoute hook on the root instance, so plugins
 * registered later are listed too. A route describes itself in its options:
 *
 *   app.get('/api/things/:id', { config: { doc: { summary: 'One thing', params: IdParam } } }, handler)
 *
 * with zod schemas for query, body and params (converted by `z.toJSONSchema`, input side: what
 * a client sends). A route without `doc` is still listed, with its path parameters.
 */
import { needsToken } from './auth.js';
import type { ApiInstance } from './http.js';
import { z } from 'zod';

export interface RouteDoc {
  readonly summary: string;
  readonly description?: string;
  readonly tags?: readonly string[];
  readonly query?: z.ZodType;
  readonly body?: z.ZodType;
  readonly params?: z.ZodType;
  /** Status → description (and the response body's schema, when worth stating). */
  readonly responses?: Readonly<Record<string, string | { readonly description: string; readonly schema?: z.ZodType }>>;
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The route's entry in /api/openapi.json. */
    doc?: RouteDoc;
  }
}

interface CollectedRoute {
  readonly method: string;
  readonly url: string;
  readonly doc: RouteDoc | undefined;
}

type JsonSchema = Record<string, unknown>;

function jsonSchema(schema: z.ZodType): JsonSchema {
  // Input side: a time parameter is what the client sends (a string), not the parsed number.
  const out = z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any' }) as JsonSchema;
  delete out.$schema;
  return out;
}

function parameters(where: 'query' | 'path', schema: z.ZodType | undefined, names: readonly string[]): JsonSchema[] {
  const json = schema ? jsonSchema(schema) : { properties: {}, required: [] };
  const props = (json.properties ?? {}) as Record<string, JsonSchema>;
  const required = new Set((json.required ?? []) as string[]);
  const all = new Set([...names, ...Object.keys(props)]);
  return [...all].map((name) => {
    const s = props[name] ?? { type: 'string' };
    const { description, ...rest } = s;
    return {
      name,
      in: where,
      required: where === 'path' || required.has(name),
      schema: rest,
      ...(typeof description === 'string' ? { description } : {}),
    };
  });
}

function operation(route: CollectedRoute): JsonSchema {
  const doc = route.doc;
  const pathNames = [...route.url.matchAll(/:([A-Za-z0-9_]+)/g)].map((m) => m[1]!);
  const params = [...parameters('path', doc?.params, pathNames), ...(doc?.query ? parameters('query', doc.query, []) : [])];
  const responses: Record<string, JsonSchema> = {};
  for (const [status, r] of Object.entries(doc?.responses ?? { 200: 'OK' })) {
    const { description, schema } = typeof r === 'string' ? { description: r, schema: undefined } : r;
    responses[status] = { description, ...(schema ? { content: { 'application/json': { schema: jsonSchema(schema) } } } : {}) };
  }
  if (needsToken(route.url)) {
    responses['401'] ??= { description: 'no token, or an unknown one' };
    if (route.method !== 'GET') responses['403'] ??= { description: 'the token is not an admin token' };
  }
  return {
    summary: doc?.summary ?? `${route.method} ${route.url}`,
    ...(doc?.description ? { description: doc.description } : {}),
    ...(doc?.tags ? { tags: doc.tags } : {}),
    operationId: `${route.method.toLowerCase()}${route.url.replace(/[^A-Za-z0-9]+(.)?/g, (_m, c: string | undefined) => (c ?? '').toUpperCase())}`,
    ...(params.length ? { parameters: params } : {}),
    // A body whose every field is optional may be left out (POST …/retire, …/unbind).
    ...(doc?.body ? { requestBody: { required: !doc.body.safeParse({}).success, content: { 'application/json': { schema: jsonSchema(doc.body) } } } } : {}),
    responses,
    // /health is open; everything under /api needs a token.
    ...(needsToken(route.url) ? {} : { security: [] }),
  };
}

export function buildOpenApi(routes: readonly CollectedRoute[], info: { title: string; version: string }): JsonSchema {
  const paths: Record<string, Record<string, JsonSchema>> = {};
  for (const r of [...routes].sort((a, b) => a.url.localeCompare(b.url))) {
    const path = r.url.replace(/:([A-Za-z0-9_]+)/g, '{$1}');
    (paths[path] ??= {})[r.method.toLowerCase()] = operation(r);
  }
  return {
    openapi: '3.1.0',
    info: { ...info, description: 'Medical Device Integration gateway. Patient identifiers are shown as pseudonyms, never in clear.' },
    servers: [{ url: '/' }],
    components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'mdi_… token (mdi token new)' } } },
    security: [{ bearer: [] }],
    paths,
  };
}

/**
 * Starts collecting routes on `app` and serves the document. Call it on the root instance
 * before any route is added.
 */
export function installOpenApi(app: ApiInstance, info: { title: string; version: string }): void {
  const routes: CollectedRoute[] = [];
  app.addHook('onRoute', (route) => {
    const methods = Array.isArray(route.method) ? route.method : [route.method];
    for (const method of methods) {
      // fastify adds a HEAD route per GET route by itself: the GET entry says it all.
      if (method === 'HEAD' || method === 'OPTIONS') continue;
      routes.push({ method, url: route.url, doc: route.config?.doc });
    }
  });
  let cached: string | null = null;
  app.get('/api/openapi.json', { config: { doc: { summary: 'This API as OpenAPI 3.1', tags: ['meta'] } } }, async (_req, reply) => {
    cached ??= JSON.stringify(buildOpenApi(routes, info));
    return reply.type('application/json').send(cached);
  });
}
