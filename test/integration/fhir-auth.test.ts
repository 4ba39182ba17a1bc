/**
 * Authentication towards the EPJ, against a small OAuth 2.0 token endpoint written here that
 * verifies SMART Backend Services client assertions (RS384 and ES384) with the public key, and
 * an auth-checking proxy in front of the EPJ stand-in.
 */
import { execFileSync } from 'node:child_process';
import { generateKeyPairSync, verify, type KeyObject } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer, request as httpRequest, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { startEpj } from '../../simulators/epj/index.js';
import { silentLogger } from '../../src/log.js';
import { createFhirForwarder, FhirErrorCode, OUTBOX_CURSOR, type FhirCharting } from '../../src/sinks/fhir/index.js';
import type { FhirSettingsInput } from '../../src/sinks/fhir/config.js';
import type { SqliteStore } from '../../src/store/sqlite.js';
import { commit, fhirSettings, reading, startRecordingProxy, tempDir, tempStore, waitFor, type RecordingProxy } from '../helpers/fhir-harness.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

interface TokenEndpoint {
  url: string;
  /** Decoded client assertions received, in order. */
  readonly assertions: { header: Record<string, unknown>; claims: Record<string, unknown> }[];
  readonly forms: URLSearchParams[];
  /** Bearer tokens issued, in order. */
  readonly issued: string[];
  /** Refuse every request (invalid_client) while true. */
  refuse: boolean;
}

const CLIENT_ID = 'mdi-gateway-test';

/** A token endpoint that checks RFC 7523 client assertions with `publicKey`, or a client secret. */
async function startTokenEndpoint(publicKey: KeyObject | null, secret?: string): Promise<TokenEndpoint> {
  const state: TokenEndpoint = { url: '', assertions: [], forms: [], issued: [], refuse: false };
  const jtis = new Set<string>();
  const server: Server = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      const form = new URLSearchParams(body);
      state.forms.push(form);
      const fail = (error: string) => {
        res.writeHead(401, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error }));
      };
      if (state.refuse || form.get('grant_type') !== 'client_credentials') return fail('invalid_client');
      if (publicKey !== null) {
        if (form.get('client_assertion_type') !== 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer') return fail('invalid_request');
        const [h, c, s] = (form.get('client_assertion') ?? '').split('.');
        const header = JSON.parse(Buffer.from(h!, 'base64url').toString()) as Record<string, unknown>;
        const claims = JSON.parse(Buffer.from(c!, 'base64url').toString()) as Record<string, unknown>;
        const signature = Buffer.from(s!, 'base64url');
        const ok =
          header.alg === 'RS384'
            ? verify('sha384', Buffer.from(`${h}.${c}`), publicKey, signature)
            : verify('sha384', Buffer.from(`${h}.${c}`), { key: publicKey, dsaEncoding: 'ieee-p1363' }, signature);
        const now = Date.now() / 1000;
        if (
          !ok ||
          claims.iss !== CLIENT_ID ||
          claims.sub !== CLIENT_ID ||
          claims.aud !== state.url ||
          typeof claims.exp !== 'number' ||
          claims.exp > now + 300 ||
          claims.exp < now ||
          typeof claims.jti !== 'string' ||
          jtis.has(claims.jti)
        ) {
          return fail('invalid_client');
        }
        jtis.add(claims.jti);
        state.assertions.push({ header, claims });
      } else {
        const basic = Buffer.from((req.headers.authorization ?? '').replace(/^Basic /, ''), 'base64').toString();
        if (basic !== `${CLIENT_ID}:${secret}`) return fail('invalid_client');
      }
      const token = `tok-${state.issued.length + 1}`;
      state.issued.push(token);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ access_token: token, token_type: 'bearer', expires_in: 300, scope: form.get('scope') }));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  state.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/token`;
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return state;
}

/** The stand-in behind a proxy that answers 401 unless the bearer token is `accepted()`. */
async function protectedEpj(accepted: () => string): Promise<RecordingProxy> {
  const epj = await startEpj({ port: 0, preload: [{ resourceType: 'Patient', id: 'p', identifier: [{ system: 'urn:oid:1.2.208.176.1.2', value: '0101701234' }] }] });
  cleanups.push(() => epj.close());
  const proxy = await startRecordingProxy(epj.url);
  cleanups.push(() => proxy.close());
  proxy.hook = ({ headers }) =>
    headers.authorization === `Bearer ${accepted()}`
      ? undefined
      : { status: 401, body: { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'login', diagnostics: 'token' }] } };
  return proxy;
}

async function charting(baseUrl: string, input: FhirSettingsInput): Promise<{ charting: FhirCharting; store: SqliteStore }> {
  const { store } = tempStore();
  const c = createFhirForwarder({ settings: fhirSettings(input), baseUrl, store, log: silentLogger() });
  await c.start();
  cleanups.push(async () => {
    await c.stop();
    await store.close();
  });
  return { charting: c, store };
}

const drained = (c: FhirCharting, store: SqliteStore) => () =>
  store.cursor(OUTBOX_CURSOR) === store.counts().observations && c.status().depth === 0 && c.status().states.open === 0;

/** openssl makes the test CA and server certificate; without it the TLS test is skipped. */
function hasOpenssl(): boolean {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** A CA and a server certificate for 127.0.0.1 signed by it (PEM files in a temp folder). */
function makeCertificates(): { caFile: string; key: string; cert: string } {
  const dir = tempDir('mdi-tls-');
  const run = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
  run('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=mdi test CA');
  run('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1');
  writeFileSync(join(dir, 'san.ext'), 'subjectAltName=IP:127.0.0.1\n');
  run('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '2', '-extfile', 'san.ext');
  return { caFile: join(dir, 'ca.pem'), key: readFileSync(join(dir, 'server.key'), 'utf8'), cert: readFileSync(join(dir, 'server.pem'), 'utf8') };
}

describe('auth towards the EPJ', () => {
  for (const algorithm of ['RS384', 'ES384'] as const) {
    it(`SMART Backend Services private_key_jwt (${algorithm}): token fetched once, refreshed after a 401`, async () => {
      const { privateKey, publicKey } =
        algorithm === 'RS384' ? generateKeyPairSync('rsa', { modulusLength: 2048 }) : generateKeyPairSync('ec', { namedCurve: 'P-384' });
      const keyFile = join(tempDir(), 'key.pem');
      writeFileSync(keyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }));
      const idp = await startTokenEndpoint(publicKey);
      let valid = 'tok-1';
      const proxy = await protectedEpj(() => valid);
      const { charting: c, store } = await charting(proxy.url, {
        batchSize: 2,
        auth: { type: 'client-credentials', tokenUrl: idp.url, clientId: CLIENT_ID, privateKeyFile: keyFile, keyId: 'key-1', algorithm },
      });
      await commit(store, [1, 2, 3, 4, 5].map((i) => reading('hr', { time: Date.now() - i * 1000 })));
      await waitFor(drained(c, store), 15_000, 'charted with a token');
      expect(idp.issued).toEqual(['tok-1']);
      expect(idp.assertions[0]!.header).toEqual({ alg: algorithm, kid: 'key-1', typ: 'JWT' });
      expect(idp.forms[0]!.get('scope')).toBe('system/Observation.c system/Device.cu system/Patient.rs');
      expect(proxy.requests.filter((r) => r.status === 200).length).toBeGreaterThanOrEqual(3);

      // The EPJ revokes the token: one 401, a new token, a resend.
      valid = 'tok-2';
      await commit(store, [reading('spo2', { time: Date.now() })]);
      await waitFor(drained(c, store), 15_000, 'charted after the refresh');
      expect(idp.issued).toEqual(['tok-1', 'tok-2']);
      expect(proxy.requests.filter((r) => r.status === 401)).toHaveLength(1);
      expect(c.status().states.rejected).toBe(0);
    }, 30_000);
  }

  it('a refused client keeps the readings queued (auth error, nothing dead-lettered) until it works', async () => {
    const idp = await startTokenEndpoint(null, 's3cret');
    idp.refuse = true;
    const proxy = await protectedEpj(() => 'tok-1');
    const { charting: c, store } = await charting(proxy.url, {
      auth: { type: 'client-credentials', tokenUrl: idp.url, clientId: CLIENT_ID, clientAuth: 'client_secret_basic', clientSecret: 's3cret' },
    });
    await commit(store, [reading('hr', { time: Date.now() - 1000 })]);
    await waitFor(() => c.status().lastError?.code === FhirErrorCode.AUTH, 10_000, 'an auth error');
    expect(c.status()).toMatchObject({ depth: 1, states: { rejected: 0 } });
    expect(c.status().lastError!.message).toContain('invalid_client');
    expect(c.status().lastError!.message).not.toContain('s3cret');
    idp.refuse = false;
    await waitFor(drained(c, store), 15_000, 'charted once the client is accepted');
  }, 30_000);

  it('a static bearer token', async () => {
    const proxy = await protectedEpj(() => 'static-token');
    const { charting: c, store } = await charting(proxy.url, { auth: { type: 'bearer', token: 'static-token' } });
    await commit(store, [reading('hr', { time: Date.now() - 1000 })]);
    await waitFor(drained(c, store), 15_000, 'charted');
    expect(proxy.requests.every((r) => r.authorization === 'Bearer static-token')).toBe(true);
  }, 30_000);

  it.skipIf(!hasOpenssl())('trusts an extra CA for an https EPJ (fhir.caFile), and refuses the unknown CA without it', async () => {
    const { caFile, key, cert } = makeCertificates();
    const epj = await startEpj({ port: 0, preload: [{ resourceType: 'Patient', id: 'p', identifier: [{ system: 'urn:oid:1.2.208.176.1.2', value: '0101701234' }] }] });
    cleanups.push(() => epj.close());
    const upstream = new URL(epj.url);
    // TLS terminator in front of the stand-in, with a certificate from our private CA.
    const tls = createHttpsServer({ key, cert }, (req, res) => {
      const up = httpRequest({ host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: req.headers }, (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.pipe(res);
      });
      req.pipe(up);
    });
    await new Promise<void>((resolve) => tls.listen(0, '127.0.0.1', resolve));
    cleanups.push(
      () =>
        new Promise<void>((resolve) => {
          tls.closeAllConnections();
          tls.close(() => resolve());
        }),
    );
    const baseUrl = `https://127.0.0.1:${(tls.address() as AddressInfo).port}/fhir`;

    const untrusted = await charting(baseUrl, {});
    await waitFor(() => untrusted.charting.status().epj.reachable === false, 10_000, 'the start probe failing on TLS');
    await commit(untrusted.store, [reading('hr', { time: Date.now() - 1000 })]);
    await waitFor(() => untrusted.charting.status().lastError !== null, 10_000, 'a TLS failure');
    expect(untrusted.charting.status().lastError!.code).toBe(FhirErrorCode.NETWORK);
    expect(untrusted.charting.status().depth).toBe(1);

    const trusted = await charting(baseUrl, { caFile });
    await commit(trusted.store, [reading('hr', { time: Date.now() - 1000 })]);
    await waitFor(drained(trusted.charting, trusted.store), 15_000, 'charted over TLS');
    expect(trusted.charting.status().lastError).toBeNull();
  }, 30_000);
});
