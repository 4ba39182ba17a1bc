/**
 * Bearer-token access to the HTTP API. `/health` is open (load balancers probe it); everything
 * under `/api/`, and `/metrics`, needs `Authorization: Bearer <token>`: GET and HEAD a viewer or admin token, any
 * other method an admin token. Tokens are known only by their SHA-256 (config
 * `http.auth.tokens` and the store's `api_tokens`), compared in constant time.
 *
 * Every request gets `request.actor`, the name the audit log records: `token:<name>`, or
 * `anonymous` when auth is off.
 */
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { ApiInstance } from './http.js';
import { ErrorCode } from '../errors.js';
import type { Logger } from '../log.js';
import { hashToken, sameHash, type TokenGrant, type TokenStore } from '../registry/tokens.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** Who is asking, for the audit log: `token:<name>` or `anonymous`. */
    actor: string;
  }
}

export interface AuthSettings {
  /** False turns every check off (behind a proxy that authenticates). */
  readonly enabled: boolean;
  /** Tokens from the config (`http.auth.tokens`). */
  readonly tokens: readonly TokenGrant[];
}

/** The file the bootstrap admin token is written to. */
export function bootstrapTokenFile(dataDir: string): string {
  return join(dataDir, 'admin.token');
}

/**
 * A first start with auth on and no token anywhere would lock everybody out: make an admin token
 * named `bootstrap`, write it to `<dataDir>/admin.token` (mode 0600, the CLI reads it from there)
 * and log only the file's path. Returns the file, or null when nothing was needed.
 */
export function ensureBootstrapToken(options: {
  readonly auth: AuthSettings;
  readonly tokens: TokenStore;
  readonly dataDir: string;
  readonly log: Logger;
}): string | null {
  const { auth, tokens, dataDir, log } = options;
  if (!auth.enabled || auth.tokens.length > 0 || tokens.size > 0) return null;
  const file = bootstrapTokenFile(dataDir);
  mkdirSync(dataDir, { recursive: true });
  const { token } = tokens.create({ name: 'bootstrap', role: 'admin' }, 'gateway');
  // A leftover file from an earlier store would have mode bits of its own: set them again.
  writeFileSync(file, `${token}\n`, { mode: 0o600 });
  chmodSync(file, 0o600);
  log.warn({ file }, 'no API token configured: made an admin token "bootstrap"; read it from the file, then make your own (mdi token new) and revoke it');
  return file;
}

/** The grant a presented token matches, or null. Every grant is compared, so timing says nothing about which one. */
export function findGrant(token: string, grants: readonly (readonly TokenGrant[])[]): TokenGrant | null {
  const hash = hashToken(token);
  let found: TokenGrant | null = null;
  for (const list of grants) {
    for (const g of list) if (sameHash(hash, g.hash) && found === null) found = g;
  }
  return found;
}

/**
 * Which paths need a token: everything under /api, and /metrics (it names every device; a viewer
 * token, which Prometheus sends as a bearer token). /health stays open for load balancers.
 */
export function needsToken(path: string): boolean {
  return path.startsWith('/api/') || path === '/api' || path === '/metrics';
}

function deny(reply: FastifyReply, status: 401 | 403, code: string, error: string): FastifyReply {
  if (status === 401) void reply.header('WWW-Authenticate', 'Bearer realm="mdi-gateway"');
  return reply.code(status).send({ error, code });
}

/**
 * Installs the check on `app` itself (not in an encapsulated plugin), so that it covers every
 * route, including those registered later by other modules.
 */
export function installAuth(app: ApiInstance, settings: AuthSettings | null, tokens: TokenStore | null): void {
  app.decorateRequest('actor', 'anonymous');
  if (settings === null || !settings.enabled) return;
  const grants = (): readonly (readonly TokenGrant[])[] => [settings.tokens, tokens?.grants() ?? []];

  app.addHook('onRequest', async (req: FastifyRequest, reply: FastifyReply) => {
    // The matched route's pattern, not the raw URL: the router decodes `/%61pi/devices` into
    // /api/devices, which a check of the raw text would let through.
    const path = req.routeOptions.url ?? req.url.split('?', 1)[0] ?? '';
    if (!needsToken(path)) return;
    const header = req.headers.authorization;
    if (header === undefined || header === '') {
      return deny(reply, 401, ErrorCode.AUTH_MISSING, 'this API needs a bearer token (Authorization: Bearer <token>)');
    }
    const match = /^Bearer +(\S+) *$/i.exec(header);
    const grant = match?.[1] === undefined ? null : findGrant(match[1], grants());
    if (grant === null) return deny(reply, 401, ErrorCode.AUTH_INVALID, 'the bearer token is not valid (unknown or revoked)');
    if (req.method !== 'GET' && req.method !== 'HEAD' && grant.role !== 'admin') {
      return deny(reply, 403, ErrorCode.AUTH_FORBIDDEN, `${req.method} ${path} needs the admin role; token "${grant.name}" has ${grant.role}`);
    }
    req.actor = `token:${grant.name}`;
  });
}
