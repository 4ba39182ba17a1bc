/**
 * API tokens kept in the store (table `api_tokens`), next to those of the config
 * (`http.auth.tokens`). Only the SHA-256 of a token is stored: the token itself is shown once,
 * when it is made, and cannot be recovered. Every change is audited as entity `token`.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type Database from 'better-sqlite3';
import { ErrorCode, GatewayError } from '../errors.js';
import type { AuditLog } from './audit.js';

const SCHEMA = `
-- API bearer tokens made through the API or at bootstrap: the hash only, never the token.
CREATE TABLE IF NOT EXISTS api_tokens (
  name TEXT PRIMARY KEY,
  role TEXT NOT NULL,
  hash TEXT NOT NULL,
  created INTEGER NOT NULL,
  actor TEXT NOT NULL
);
`;

export const TOKEN_ROLES = ['admin', 'viewer'] as const;
export type TokenRole = (typeof TOKEN_ROLES)[number];
export const TOKEN_NAME = /^[A-Za-z0-9._@-]{1,64}$/;

/** A token that may use the API: as in the config, and as the store keeps it. */
export interface TokenGrant {
  readonly name: string;
  readonly role: TokenRole;
  /** `sha256:<64 hex>`. */
  readonly hash: string;
}

/** What anyone may see of a token. */
export interface TokenInfo {
  readonly name: string;
  readonly role: TokenRole;
  readonly created: number;
  readonly createdBy: string;
}

/** A new random token: `mdi_` and 32 random bytes in base64url. */
export function newToken(): string {
  return `mdi_${randomBytes(32).toString('base64url')}`;
}

/** How a token is stored and configured: `sha256:<hex>`. */
export function hashToken(token: string): string {
  return `sha256:${createHash('sha256').update(token, 'utf8').digest('hex')}`;
}

/**
 * Whether two `sha256:<hex>` strings are equal, in time independent of where they differ.
 * (Both are hashes of fixed length, so the length check leaks nothing about a token.)
 */
export function sameHash(a: string, b: string): boolean {
  const x = Buffer.from(a, 'utf8');
  const y = Buffer.from(b, 'utf8');
  return x.length === y.length && timingSafeEqual(x, y);
}

interface TokenRow {
  name: string;
  role: TokenRole;
  hash: string;
  created: number;
  actor: string;
}

export class TokenStore {
  /** Served from memory: every API request looks its token up. */
  private rows: TokenRow[];

  constructor(
    private readonly db: Database.Database,
    private readonly audit: AuditLog,
    private readonly clock: () => number = Date.now,
  ) {
    db.exec(SCHEMA);
    this.rows = db.prepare('SELECT * FROM api_tokens ORDER BY name').all() as TokenRow[];
  }

  /** Makes a token; the only time the token itself is available. */
  create(input: { readonly name: string; readonly role: TokenRole }, actor: string): { token: string; info: TokenInfo } {
    if (!TOKEN_NAME.test(input.name)) throw new GatewayError(ErrorCode.REGISTRY_INVALID, 'name: use 1–64 letters, digits and . _ @ -');
    if (!TOKEN_ROLES.includes(input.role)) throw new GatewayError(ErrorCode.REGISTRY_INVALID, 'role: must be admin or viewer');
    if (this.rows.some((r) => r.name === input.name)) throw new GatewayError(ErrorCode.REGISTRY_CONFLICT, `token "${input.name}" already exists`);
    const token = newToken();
    const row: TokenRow = { name: input.name, role: input.role, hash: hashToken(token), created: this.clock(), actor };
    this.db.transaction(() => {
      this.db.prepare('INSERT INTO api_tokens (name, role, hash, created, actor) VALUES (@name, @role, @hash, @created, @actor)').run(row);
      this.audit.record({ at: row.created, actor, action: 'token.create', entity: 'token', entityId: row.name, before: null, after: info(row) });
    })();
    this.rows = [...this.rows, row].sort((a, b) => a.name.localeCompare(b.name));
    return { token, info: info(row) };
  }

  list(): TokenInfo[] {
    return this.rows.map(info);
  }

  /** Revokes a token at once (the next request with it gets 401). */
  revoke(name: string, actor: string): TokenInfo {
    const row = this.rows.find((r) => r.name === name);
    if (row === undefined) throw new GatewayError(ErrorCode.REGISTRY_NOT_FOUND, `no token "${name}" in the store`);
    this.db.transaction(() => {
      this.db.prepare('DELETE FROM api_tokens WHERE name = ?').run(name);
      this.audit.record({ at: this.clock(), actor, action: 'token.revoke', entity: 'token', entityId: name, before: info(row), after: null });
    })();
    this.rows = this.rows.filter((r) => r.name !== name);
    return info(row);
  }

  /** The stored tokens with their hashes, for the auth check only. */
  grants(): readonly TokenGrant[] {
    return this.rows;
  }

  get size(): number {
    return this.rows.length;
  }
}

function info(r: TokenRow): TokenInfo {
  return { name: r.name, role: r.role, created: r.created, createdBy: r.actor };
}
