/**
 * `/api/tokens`: API tokens kept in the store. A new token is shown once, in the answer to its
 * POST; lists show names and roles, never tokens or hashes. Tokens from the config are listed
 * too but can only be removed from the config.
 */
import type { FastifyPluginAsync } from 'fastify';
import { z } from 'zod';
import { ErrorCode, GatewayError } from '../../errors.js';
import { TOKEN_NAME, TOKEN_ROLES } from '../../registry/tokens.js';
import { iso, parseOr400, type RegistryRouteOptions } from '../http.js';

const NewToken = z.strictObject({ name: z.string().regex(TOKEN_NAME, 'use 1–64 letters, digits and . _ @ -'), role: z.enum(TOKEN_ROLES) });
const NameParam = z.strictObject({ name: z.string().regex(TOKEN_NAME, 'use 1–64 letters, digits and . _ @ -') });

export const tokenRoutes: FastifyPluginAsync<RegistryRouteOptions> = async (app, o) => {
  const tags = ['tokens'];
  const inConfig = (name: string) => o.configTokens.some((t) => t.name === name);

  app.get('/api/tokens', { config: { doc: { summary: 'API tokens (names and roles only)', tags } } }, async () => ({
    items: [
      ...o.configTokens.map((t) => ({ name: t.name, role: t.role, source: 'config', created: null, createdBy: null })),
      ...o.tokens.list().map((t) => ({ ...t, source: 'store', created: iso(t.created) })),
    ],
  }));

  app.post('/api/tokens', { config: { doc: { summary: 'Make a token (shown once, in this answer)', tags, body: NewToken, responses: { 201: 'made', 409: 'name taken' } } } }, async (req, reply) => {
    const b = parseOr400(NewToken, req.body, 'body');
    if (inConfig(b.name)) throw new GatewayError(ErrorCode.REGISTRY_CONFLICT, `token "${b.name}" is in the config (http.auth.tokens)`);
    const { token, info } = o.tokens.create(b, req.actor);
    return reply.code(201).send({ ...info, created: iso(info.created), token });
  });

  app.delete('/api/tokens/:name', { config: { doc: { summary: 'Revoke a token (at once)', tags, params: NameParam, responses: { 200: 'revoked', 404: 'no such token', 409: 'a config token' } } } }, async (req) => {
    const { name } = parseOr400(NameParam, req.params, 'path');
    if (inConfig(name)) throw new GatewayError(ErrorCode.REGISTRY_CONFLICT, `token "${name}" is in the config (http.auth.tokens): remove it there`);
    const info = o.tokens.revoke(name, req.actor);
    return { revoked: { ...info, created: iso(info.created) } };
  });
};
