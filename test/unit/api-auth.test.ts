import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ensureBootstrapToken, findGrant } from '../../src/api/auth.js';
import { createLogger, silentLogger } from '../../src/log.js';
import { AuditLog } from '../../src/registry/audit.js';
import { hashToken, newToken, sameHash, TokenStore } from '../../src/registry/tokens.js';

describe('token hashes', () => {
  it('makes mdi_ tokens of 32 random bytes and sha256:<hex> hashes', () => {
    const t = newToken();
    expect(t).toMatch(/^mdi_[A-Za-z0-9_-]{43}$/);
    expect(newToken()).not.toBe(t);
    expect(hashToken('abc')).toBe('sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  });

  it('compares hashes exactly', () => {
    const h = hashToken('one');
    expect(sameHash(h, hashToken('one'))).toBe(true);
    expect(sameHash(h, hashToken('two'))).toBe(false);
    expect(sameHash(h, 'sha256:')).toBe(false);
  });

  it('finds the grant of a token in config and store lists', () => {
    const a = { name: 'a', role: 'admin' as const, hash: hashToken('ta') };
    const v = { name: 'v', role: 'viewer' as const, hash: hashToken('tv') };
    expect(findGrant('tv', [[a], [v]])).toBe(v);
    expect(findGrant('ta', [[a], [v]])).toBe(a);
    expect(findGrant('tx', [[a], [v]])).toBeNull();
  });
});

describe('TokenStore', () => {
  let db: Database.Database;
  beforeEach(() => {
    db = new Database(':memory:');
  });
  afterEach(() => db.close());

  it('keeps only the hash, lists without it, revokes, and audits as entity token', () => {
    const audit = new AuditLog(db);
    const store = new TokenStore(db, audit, () => 1000);
    const { token, info } = store.create({ name: 'anna', role: 'viewer' }, 'token:boss');
    expect(info).toEqual({ name: 'anna', role: 'viewer', created: 1000, createdBy: 'token:boss' });
    const stored = JSON.stringify(db.prepare('SELECT * FROM api_tokens').all());
    expect(stored).not.toContain(token);
    expect(stored).toContain(hashToken(token));
    expect(JSON.stringify(store.list())).not.toContain('sha256');
    expect(() => store.create({ name: 'anna', role: 'admin' }, 'x')).toThrow(/already exists/);
    expect(new TokenStore(db, audit).grants()[0]?.hash).toBe(hashToken(token));
    store.revoke('anna', 'token:boss');
    expect(store.list()).toEqual([]);
    expect(() => store.revoke('anna', 'x')).toThrow(/no token/);
    const rows = audit.query({ entity: 'token', limit: 10 });
    expect(rows.map((r) => r.action)).toEqual(['token.revoke', 'token.create']);
    expect(JSON.stringify(rows)).not.toContain('sha256');
  });
});

describe('bootstrap token', () => {
  let dir: string;
  let db: Database.Database;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'mdi-auth-'));
    db = new Database(':memory:');
  });
  afterEach(() => {
    db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('writes an admin token to <dataDir>/admin.token with mode 0600 and logs only the path', () => {
    const lines: string[] = [];
    const log = createLogger({ destination: new Writable({ write: (c: Buffer, _e, cb) => (lines.push(c.toString()), cb()) }) });
    const tokens = new TokenStore(db, new AuditLog(db));
    // A stale file with loose mode bits is replaced and tightened.
    writeFileSync(join(dir, 'admin.token'), 'old\n', { mode: 0o644 });
    const file = ensureBootstrapToken({ auth: { enabled: true, tokens: [] }, tokens, dataDir: dir, log });
    expect(file).toBe(join(dir, 'admin.token'));
    expect(statSync(file!).mode & 0o777).toBe(0o600);
    const token = readFileSync(file!, 'utf8').trim();
    expect(findGrant(token, [tokens.grants()])).toMatchObject({ name: 'bootstrap', role: 'admin' });
    expect(lines.join('')).toContain(file!);
    expect(lines.join('')).not.toContain(token);
    // Once there is a token, nothing more is made.
    expect(ensureBootstrapToken({ auth: { enabled: true, tokens: [] }, tokens, dataDir: dir, log })).toBeNull();
    expect(tokens.size).toBe(1);
  });

  it('makes nothing when auth is off or the config has tokens', () => {
    const tokens = new TokenStore(db, new AuditLog(db));
    const log = silentLogger();
    expect(ensureBootstrapToken({ auth: { enabled: false, tokens: [] }, tokens, dataDir: dir, log })).toBeNull();
    expect(ensureBootstrapToken({ auth: { enabled: true, tokens: [{ name: 'x', role: 'admin', hash: hashToken('x') }] }, tokens, dataDir: dir, log })).toBeNull();
    expect(tokens.size).toBe(0);
  });

  it('redacts an authorization header wherever it is logged', () => {
    const lines: string[] = [];
    const log = createLogger({ destination: new Writable({ write: (c: Buffer, _e, cb) => (lines.push(c.toString()), cb()) }) });
    log.warn({ req: { headers: { authorization: 'Bearer mdi_secret' } } }, 'request');
    expect(lines.join('')).not.toContain('mdi_secret');
  });
});
