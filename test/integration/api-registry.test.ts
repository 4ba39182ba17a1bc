/**
 * The registry API over real HTTP: a fastify app from createApi over a temp SQLite store and
 * the real registry classes (devices, bindings, audit, tokens), on port 0. Every endpoint is
 * tried without a token, with a viewer token and with an admin token; patient numbers must
 * never come back in an answer or reach a log line; the `mdi devices` commands run as child
 * processes against the same server.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApi, type Api } from '../../src/api/server.js';
import { createLogger } from '../../src/log.js';
import { PACKAGE_ROOT } from '../../src/paths.js';
import { AuditLog } from '../../src/registry/audit.js';
import { Bindings } from '../../src/registry/bindings.js';
import { DeviceRegistry } from '../../src/registry/devices.js';
import { hashToken, TokenStore } from '../../src/registry/tokens.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { startTestGateway } from '../helpers/gateway.js';

const CPR = '0101901234';
const CPR_DASHED = '010190-1234';
const OTHER_CPR = '0202855678';

let dir: string;
let store: SqliteStore;
let app: Api;
let url: string;
let admin: string;
let viewer: string;
const logLines: string[] = [];
const bodies: string[] = [];

async function http(method: string, path: string, token: string | null, body?: unknown) {
  const res = await fetch(`${url}${path}`, {
    method,
    headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await res.text();
  bodies.push(text);
  return { status: res.status, headers: res.headers, text, json: (text ? JSON.parse(text) : null) as Record<string, unknown> & { items?: Record<string, unknown>[] } };
}

/** `mdi …` as a child process (async: the server answers from this process). */
function mdi(args: string[], options: { input?: string; env?: Record<string, string> } = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(PACKAGE_ROOT, 'src/main.ts'), ...args], {
      cwd: PACKAGE_ROOT,
      env: { ...process.env, MDI_URL: '', MDI_TOKEN: '', MDI_DATA_DIR: '', ...options.env },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(options.input ?? '');
  });
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'mdi-api-registry-'));
  store = new SqliteStore({ file: join(dir, 'store.db') });
  const db = store.database();
  const audit = new AuditLog(db);
  const devices = new DeviceRegistry(db, audit, { defaultExpectedIntervalSeconds: 120 });
  const bindings = new Bindings(db, audit, devices);
  devices.setLocationSource((id) => bindings.locationOf(id));
  const tokens = new TokenStore(db, audit);
  admin = tokens.create({ name: 'anna', role: 'admin' }, 'test').token;
  viewer = 'mdi_viewer-from-config';
  const log = createLogger({
    level: 'debug',
    destination: new Writable({
      write: (chunk: Buffer, _enc, cb) => {
        logLines.push(chunk.toString());
        cb();
      },
    }),
  });
  app = createApi({
    store,
    log,
    ready: () => true,
    drivers: () => [],
    counters: () => ({}),
    registry: { devices, bindings, audit, tokens },
    auth: { enabled: true, tokens: [{ name: 'vera', role: 'viewer', hash: hashToken(viewer) }] },
  });
  // Per-request lines too: a token or CPR in a request line would show.
  app.addHook('onRequest', async (req) => req.log.debug({ url: req.url, headers: req.headers }, 'request'));
  await app.listen({ port: 0, host: '127.0.0.1' });
  const address = app.server.address();
  url = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
});

afterAll(async () => {
  await app?.close();
  await store?.close();
  rmSync(dir, { recursive: true, force: true });
});

/** Every registry endpoint with a request that an admin may make (in this order, on a fresh store). */
const ENDPOINTS: [method: string, path: string, body?: unknown][] = [
  ['POST', '/api/devices', { id: 'mon-1', kind: 'monitor', vendor: 'Philips', eui64: '00-09-fb-ff-fe-01-02-03', location: { ward: 'ICU', room: '1', bed: '3' } }],
  ['GET', '/api/devices'],
  ['GET', '/api/devices/mon-1'],
  ['PATCH', '/api/devices/mon-1', { model: 'MX800' }],
  ['POST', '/api/beds/ICU%2F1%2F3/occupancy', { patient: { cpr: CPR_DASHED } }],
  ['GET', '/api/beds'],
  ['GET', '/api/beds/ICU%2F1%2F3/occupancy'],
  ['POST', '/api/devices', { id: 'pump/1', kind: 'pump' }],
  ['POST', '/api/devices/pump%2F1/bind', { patient: { cpr: OTHER_CPR }, reason: 'scanned at the bedside' }],
  ['GET', '/api/bindings?device=pump%2F1'],
  ['POST', '/api/devices/pump%2F1/unbind', {}],
  ['POST', '/api/bindings/corrections', { device: 'mon-1', from: Date.now() - 3_600_000, to: Date.now() - 1_800_000, bed: { ward: 'ICU', room: '1', bed: '4' }, reason: 'was in bed 4 before' }],
  ['POST', '/api/beds/ICU%2F1%2F3/vacate', {}],
  ['POST', '/api/devices/pump%2F1/retire', { reason: 'repair' }],
  ['POST', '/api/devices/pump%2F1/approve', {}],
  ['GET', '/api/audit?limit=1000'],
  ['GET', '/api/tokens'],
  ['POST', '/api/tokens', { name: 'ci', role: 'viewer' }],
  ['DELETE', '/api/tokens/ci'],
];

describe('registry API', () => {
  it('keeps /health open and refuses /api without a token (401, WWW-Authenticate)', async () => {
    expect((await http('GET', '/health', null)).status).toBe(200);
    for (const [method, path, body] of ENDPOINTS) {
      const r = await http(method, path, null, body);
      expect(r.status, `${method} ${path}`).toBe(401);
      expect(r.json.code).toBe('MDI_ERR_AUTH_MISSING');
      expect(r.headers.get('www-authenticate')).toMatch(/^Bearer/);
    }
    const bad = await http('GET', '/api/devices', 'mdi_not-a-token');
    expect(bad.status).toBe(401);
    expect(bad.json.code).toBe('MDI_ERR_AUTH_INVALID');
    // Also routes that are not the registry's.
    expect((await http('GET', '/api/status', null)).status).toBe(401);
    // The router decodes %61 to a: the check goes by the matched route, not the raw URL.
    expect((await http('GET', '/%61pi/devices', null)).status).toBe(401);
    expect((await http('GET', '/%61pi/devices', viewer)).status).toBe(200);
  });

  it('lets a viewer read but not change (403 naming the role)', async () => {
    for (const [method, path, body] of ENDPOINTS) {
      const r = await http(method, path, viewer, body);
      if (method === 'GET') {
        // Reads of things not made yet answer 404 (after auth); every read is allowed.
        expect([200, 404], `${method} ${path}`).toContain(r.status);
      } else {
        expect(r.status, `${method} ${path}`).toBe(403);
        expect(r.json).toMatchObject({ code: 'MDI_ERR_AUTH_FORBIDDEN' });
        expect(r.json.error).toMatch(/needs the admin role; token "vera" has viewer$/);
      }
    }
  });

  it('lets an admin use every endpoint', async () => {
    for (const [method, path, body] of ENDPOINTS) {
      const r = await http(method, path, admin, body);
      expect([200, 201], `${method} ${path}: ${r.text}`).toContain(r.status);
    }
  });

  it('shows registry state: location from the binding, pseudonyms, ISO times, actors', async () => {
    const mon = await http('GET', '/api/devices/0009FBFFFE010203', viewer);
    expect(mon.json).toMatchObject({ id: 'mon-1', model: 'MX800', location: 'ICU/1/3', eui64: '0009FBFFFE010203' });
    expect(mon.json.created).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?(Z|\+00:00)$/);
    const occ = await http('GET', '/api/beds/ICU%2F1%2F3/occupancy', viewer);
    const first = occ.json.items![0]! as { patient: { system: string; pseudonym: string }; to: string | null; actor: string };
    expect(first.patient).toEqual({ system: 'urn:oid:1.2.208.176.1.2', pseudonym: store.pseudonym({ system: 'urn:oid:1.2.208.176.1.2', value: CPR }) });
    expect(first.to).not.toBeNull();
    expect(first.actor).toBe('token:anna');
    const audit = await http('GET', '/api/audit?entity=device&id=mon-1', viewer);
    expect(audit.json.items!.map((a) => a.action)).toEqual(['device.update', 'device.add']);
    expect(audit.json.items![0]!.actor).toBe('token:anna');
    const binds = await http('GET', '/api/audit?entity=binding&limit=100', viewer);
    expect(binds.text).toContain('pseudonym');
  });

  it('answers bad input with 400 naming the field, unknown with 404, conflicts with 409', async () => {
    const bad = await http('POST', '/api/devices', admin, { id: 'x', kind: 'toaster' });
    expect(bad.status).toBe(400);
    expect(bad.json.error).toMatch(/^kind: /);
    const badCpr = await http('POST', '/api/devices/mon-1/bind', admin, { patient: { cpr: '12345' } });
    expect(badCpr.status).toBe(400);
    expect(badCpr.json.error).toMatch(/patient/);
    expect((await http('GET', '/api/devices/nope', admin)).status).toBe(404);
    expect((await http('GET', '/api/bindings?at=yesterday', admin)).json.error).toMatch(/^at: /);
    const dup = await http('POST', '/api/devices', admin, { id: 'mon-1', kind: 'monitor' });
    expect(dup.status).toBe(409);
    expect(dup.json.code).toBe('MDI_ERR_REGISTRY_CONFLICT');
    // The correction put mon-1 in bed 4 from 60 to 30 minutes ago.
    const overlap = await http('POST', '/api/devices/mon-1/bind', admin, { bed: { ward: 'ICU', room: '2', bed: '1' }, from: Date.now() - 50 * 60_000, to: new Date(Date.now() - 40 * 60_000).toISOString() });
    expect(overlap.status).toBe(409);
    expect(overlap.json.code).toBe('MDI_ERR_BINDING_OVERLAP');
    expect((await http('DELETE', '/api/tokens/vera', admin)).status).toBe(409);
  });

  it('revokes a token at once', async () => {
    const made = await http('POST', '/api/tokens', admin, { name: 'temp', role: 'viewer' });
    const token = made.json.token as string;
    expect(token).toMatch(/^mdi_/);
    expect((await http('GET', '/api/devices', token)).status).toBe(200);
    expect((await http('GET', '/api/tokens', admin)).text).not.toContain('sha256');
    await http('DELETE', '/api/tokens/temp', admin);
    expect((await http('GET', '/api/devices', token)).status).toBe(401);
  });

  it('describes every /api route in /api/openapi.json (OpenAPI 3.1, bearer)', async () => {
    const r = await http('GET', '/api/openapi.json', viewer);
    expect(r.status).toBe(200);
    const doc = r.json as { openapi: string; paths: Record<string, Record<string, { responses: object; requestBody?: object; parameters?: { name: string; in: string }[] }>>; components: { securitySchemes: Record<string, unknown> } };
    expect(doc.openapi).toBe('3.1.0');
    expect(doc.components.securitySchemes.bearer).toEqual(expect.objectContaining({ type: 'http', scheme: 'bearer' }));
    const listed = Object.entries(doc.paths).flatMap(([p, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${p}`));
    const expected = ENDPOINTS.map(([m, p]) =>
      `${m} ${p.split('?')[0]!.replace('/mon-1', '/{id}').replace('/pump%2F1', '/{id}').replace('/ICU%2F1%2F3', '/{bed}').replace('/tokens/ci', '/tokens/{name}')}`,
    );
    for (const e of [...expected, 'GET /health', 'GET /api/status', 'GET /api/observations', 'GET /api/openapi.json']) expect(listed, e).toContain(e);
    expect(doc.paths['/api/devices']!.post!.requestBody).toMatchObject({ required: true });
    expect(doc.paths['/api/devices/{id}/retire']!.post!.requestBody).toMatchObject({ required: false });
    expect(doc.paths['/api/devices/{id}']!.get!.parameters).toEqual(expect.arrayContaining([expect.objectContaining({ name: 'id', in: 'path' })]));
    expect(doc.paths['/api/audit']!.get!.parameters!.map((p) => p.name)).toEqual(expect.arrayContaining(['entity', 'id', 'actor', 'since', 'limit']));
  });

  it('runs mdi devices against the gateway', async () => {
    const tokenFile = join(dir, 'admin.token');
    writeFileSync(tokenFile, `${admin}\n`, { mode: 0o600 });
    const env = { MDI_URL: url, MDI_DATA_DIR: dir };
    const add = await mdi(['devices', 'add', '--id', 'vent-1', '--kind', 'ventilator', '--vendor', 'Dräger', '--ward', 'ICU', '--room', '2', '--bed', '1'], { env });
    expect(add.stderr).toBe('');
    expect(add.code).toBe(0);
    expect(add.stdout).toMatch(/registered vent-1[\s\S]*location\s+ICU\/2\/1/);
    const list = await mdi(['devices', 'list'], { env });
    expect(list.code).toBe(0);
    expect(list.stdout.split('\n')[0]).toMatch(/^ID\s+KIND\s+STATUS\s+LOCATION/);
    expect(list.stdout).toMatch(/vent-1\s+ventilator\s+active\s+ICU\/2\/1/);
    const jsonl = await mdi(['devices', 'list', '--json', '--kind', 'ventilator'], { env });
    expect(jsonl.stdout.trim().split('\n').map((l) => (JSON.parse(l) as { id: string }).id)).toEqual(['vent-1']);
    const bind = await mdi(['devices', 'bind', 'pump/1', '--patient-stdin', '--reason', 'scan'], { env, input: `${CPR}\n` });
    expect(bind.code, bind.stderr).toBe(0);
    expect(bind.stdout).toMatch(/bound pump\/1 to patient pt-[0-9a-f]{16}/);
    expect((await mdi(['devices', 'unbind', 'pump/1'], { env })).stdout).toMatch(/unbound pump\/1/);
    expect((await mdi(['devices', 'update', 'vent-1', '--model', 'Evita V800'], { env })).stdout).toContain('Evita V800');
    expect((await mdi(['devices', 'retire', 'vent-1', '--reason', 'old'], { env })).stdout).toMatch(/status\s+retired/);
    expect((await mdi(['devices', 'approve', 'vent-1'], { env })).stdout).toMatch(/status\s+active/);
    expect((await mdi(['devices', 'show', '0009fbfffe010203'], { env })).stdout).toMatch(/id\s+mon-1/);

    const refused = await mdi(['devices', 'add', '--id', 'vent-1', '--kind', 'ventilator'], { env });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/device vent-1 is already registered \[MDI_ERR_REGISTRY_CONFLICT\] \(HTTP 409\)/);
    const viewerRun = await mdi(['devices', 'retire', 'mon-1'], { env: { ...env, MDI_TOKEN: viewer } });
    expect(viewerRun.code).toBe(1);
    expect(viewerRun.stderr).toMatch(/needs the admin role/);
    const usage = await mdi(['devices', 'add', '--kind', 'pump'], { env });
    expect(usage.code).toBe(2);
    expect(usage.stderr).toMatch(/add needs --id/);
    const down = await mdi(['devices', 'list', '--url', 'http://127.0.0.1:1'], { env });
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(/cannot reach the gateway at http:\/\/127\.0\.0\.1:1/);
    const help = await mdi(['devices', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/Examples:[\s\S]*mdi devices add/);
  }, 120_000);

  it('runs mdi token against the gateway and offline', async () => {
    const env = { MDI_URL: url, MDI_DATA_DIR: dir };
    const offline = await mdi(['token', 'new', '--name', 'bob', '--role', 'viewer']);
    expect(offline.code).toBe(0);
    const token = /token:\s+(mdi_\S+)/.exec(offline.stdout)![1]!;
    const hash = /hash:\s+(sha256:[0-9a-f]{64})/.exec(offline.stdout)![1]!;
    expect(hash).toBe(hashToken(token));
    const hashed = await mdi(['token', 'hash'], { input: `${token}\n` });
    expect(hashed.stdout.trim()).toBe(hash);
    const stored = await mdi(['token', 'new', '--name', 'carl', '--role', 'viewer', '--store', '--json'], { env });
    expect(stored.code, stored.stderr).toBe(0);
    const made = JSON.parse(stored.stdout) as { token: string };
    expect((await http('GET', '/api/devices', made.token)).status).toBe(200);
    const list = await mdi(['token', 'list'], { env });
    expect(list.stdout).toMatch(/^carl\s+viewer\s+store/m);
    expect(list.stdout).toMatch(/^vera\s+viewer\s+config/m);
    expect((await mdi(['token', 'revoke', 'carl'], { env })).code).toBe(0);
    expect((await http('GET', '/api/devices', made.token)).status).toBe(401);
    expect((await mdi(['token', 'new', '--name', 'x', '--role', 'root'])).code).toBe(2);
  }, 60_000);

  it('never shows a CPR number in an answer or a log line, nor a token in a log line', () => {
    // The test is only meaningful if the CPR went in and things were logged.
    expect(bodies.length).toBeGreaterThan(50);
    expect(logLines.length).toBeGreaterThan(20);
    for (const text of [...bodies, ...logLines]) {
      for (const secret of [CPR, CPR_DASHED, OTHER_CPR]) expect(text).not.toContain(secret);
    }
    for (const line of logLines) {
      expect(line).not.toContain(admin);
      expect(line).not.toContain(viewer);
    }
  });
});

describe('registry API in the real gateway', () => {
  it('makes a bootstrap admin token on first start that mdi devices finds in the data folder', async () => {
    const gw = await startTestGateway({ http: { port: 0, host: '127.0.0.1', auth: { enabled: true } } });
    try {
      const file = join(gw.dataDir, 'admin.token');
      expect(statSync(file).mode & 0o777).toBe(0o600);
      const token = readFileSync(file, 'utf8').trim();
      expect((await fetch(`${gw.httpUrl}/api/devices`)).status).toBe(401);
      expect((await fetch(`${gw.httpUrl}/health`)).status).toBe(200);
      const env = { MDI_URL: gw.httpUrl, MDI_DATA_DIR: gw.dataDir };
      const add = await mdi(['devices', 'add', '--id', 'mon-9', '--kind', 'monitor', '--ward', 'W1', '--bed', '2'], { env });
      expect(add.code, add.stderr).toBe(0);
      const res = await fetch(`${gw.httpUrl}/api/audit?entity=device&id=mon-9`, { headers: { authorization: `Bearer ${token}` } });
      const audit = (await res.json()) as { items: { action: string; actor: string }[] };
      expect(audit.items[0]).toMatchObject({ action: 'device.add', actor: 'token:bootstrap' });
      const show = await mdi(['devices', 'show', 'mon-9'], { env });
      expect(show.stdout).toMatch(/location\s+W1\/2/);
    } finally {
      await gw.stop();
      rmSync(gw.dataDir, { recursive: true, force: true });
    }
  }, 60_000);
});
