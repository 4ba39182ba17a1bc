/**
 * Authentication towards the EPJ: none, a static bearer token, or OAuth 2.0 client credentials
 * (client secret, or SMART Backend Services `private_key_jwt`: a JWT signed with our private
 * key, research note §4.5). Signing uses `node:crypto` only.
 */
import { createPrivateKey, randomUUID, sign, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { AuthSettings } from './config.js';
import { FhirError, FhirErrorCode } from './errors.js';
import type { HttpClient } from './http.js';

/** Gives the `Authorization` header for the next request. */
export interface AuthProvider {
  /** The header value (`Bearer …`), or null for no header. Rejects with FhirError AUTH/NETWORK. */
  authorization(signal?: AbortSignal): Promise<string | null>;
  /** The EPJ answered 401: drop the cached token so the next call fetches a new one. */
  invalidate(): void;
}

/**
 * SMART Backend Services: `exp` no more than five minutes after now. We use four, leaving room
 * for clock skew between us and the token endpoint.
 */
const ASSERTION_LIFETIME_S = 240;
/** Renew an access token this long before it expires, so no request goes out with a dying token. */
const RENEW_BEFORE_MS = 30_000;
/** `expires_in` missing: assume five minutes (a common default), renewing early as usual. */
const DEFAULT_TOKEN_LIFETIME_S = 300;

/** Builds the provider for the configured auth type. Reads key and token files now (at start). */
export function createAuthProvider(settings: AuthSettings, http: HttpClient, clock: () => number = Date.now): AuthProvider {
  switch (settings.type) {
    case 'none':
      return { authorization: async () => null, invalidate: () => undefined };
    case 'bearer': {
      const token = settings.token ?? readFileSync(settings.tokenFile!, 'utf8').trim();
      return { authorization: async () => `Bearer ${token}`, invalidate: () => undefined };
    }
    case 'client-credentials':
      return new ClientCredentials(settings, http, clock);
    default:
      settings.type satisfies never;
      throw new Error('unknown auth type');
  }
}

/** base64url without padding (RFC 7515 §2). */
function b64url(data: Buffer | string): string {
  return Buffer.from(data).toString('base64url');
}

/**
 * A signed JWT client assertion (RFC 7523; SMART Backend Services): header `alg`, `kid`,
 * `typ: JWT`; claims `iss` = `sub` = client id, `aud` = token URL, `exp`, `iat`, unique `jti`.
 * RS384 is RSASSA-PKCS1-v1_5 with SHA-384; ES384 is ECDSA P-384 with SHA-384 in the JOSE
 * signature form (r‖s, 96 bytes: `dsaEncoding: 'ieee-p1363'`, RFC 7518 §3.4).
 */
export function signClientAssertion(options: {
  readonly clientId: string;
  readonly tokenUrl: string;
  readonly keyId: string;
  readonly algorithm: 'RS384' | 'ES384';
  readonly privateKey: KeyObject;
  readonly now: number;
}): string {
  const header = { alg: options.algorithm, kid: options.keyId, typ: 'JWT' };
  const iat = Math.floor(options.now / 1000);
  const claims = {
    iss: options.clientId,
    sub: options.clientId,
    aud: options.tokenUrl,
    exp: iat + ASSERTION_LIFETIME_S,
    iat,
    // The token endpoint refuses a reused jti (replay protection).
    jti: randomUUID(),
  };
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  const signature =
    options.algorithm === 'RS384'
      ? sign('sha384', Buffer.from(input), options.privateKey)
      : sign('sha384', Buffer.from(input), { key: options.privateKey, dsaEncoding: 'ieee-p1363' });
  return `${input}.${b64url(signature)}`;
}

class ClientCredentials implements AuthProvider {
  private token: { value: string; renewAt: number } | null = null;
  private inflight: Promise<string> | null = null;
  private readonly privateKey: KeyObject | null;

  constructor(
    private readonly settings: AuthSettings,
    private readonly http: HttpClient,
    private readonly clock: () => number,
  ) {
    this.privateKey =
      settings.clientAuth === 'private_key_jwt' ? createPrivateKey(readFileSync(settings.privateKeyFile!, 'utf8')) : null;
    if (this.privateKey !== null) {
      const type = this.privateKey.asymmetricKeyType;
      if ((settings.algorithm === 'RS384' && type !== 'rsa') || (settings.algorithm === 'ES384' && type !== 'ec')) {
        throw new FhirError(FhirErrorCode.AUTH, `fhir.auth.privateKeyFile holds a ${type} key, which cannot sign ${settings.algorithm}`);
      }
    }
  }

  async authorization(signal?: AbortSignal): Promise<string> {
    const now = this.clock();
    if (this.token !== null && now < this.token.renewAt) return `Bearer ${this.token.value}`;
    // Concurrent senders share one token request.
    this.inflight ??= this.fetchToken(signal).finally(() => {
      this.inflight = null;
    });
    return `Bearer ${await this.inflight}`;
  }

  invalidate(): void {
    this.token = null;
  }

  private async fetchToken(signal?: AbortSignal): Promise<string> {
    const s = this.settings;
    const form = new URLSearchParams({ grant_type: 'client_credentials', scope: s.scope });
    const headers: Record<string, string> = {
      'content-type': 'application/x-www-form-urlencoded',
      accept: 'application/json',
    };
    if (s.clientAuth === 'private_key_jwt') {
      form.set('client_assertion_type', 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer');
      form.set(
        'client_assertion',
        signClientAssertion({
          clientId: s.clientId!,
          tokenUrl: s.tokenUrl!,
          keyId: s.keyId!,
          algorithm: s.algorithm,
          privateKey: this.privateKey!,
          now: this.clock(),
        }),
      );
    } else if (s.clientAuth === 'client_secret_basic') {
      // RFC 6749 §2.3.1: form-urlencode id and secret, then base64.
      const user = encodeURIComponent(s.clientId!);
      const pass = encodeURIComponent(s.clientSecret!);
      headers.authorization = `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`;
    } else {
      form.set('client_id', s.clientId!);
      form.set('client_secret', s.clientSecret!);
    }
    const res = await this.http.request({
      method: 'POST',
      url: s.tokenUrl!,
      headers,
      body: form.toString(),
      ...(signal ? { signal } : {}),
    });
    if (res.status >= 500 || res.status === 429 || res.status === 408) {
      throw new FhirError(FhirErrorCode.UNAVAILABLE, `token endpoint answered ${res.status}`, { status: res.status });
    }
    let body: { access_token?: unknown; expires_in?: unknown; error?: unknown; token_type?: unknown };
    try {
      body = JSON.parse(res.body.toString('utf8')) as typeof body;
    } catch {
      throw new FhirError(FhirErrorCode.AUTH, `token endpoint answered ${res.status} without JSON`, { status: res.status });
    }
    if (res.status !== 200 || typeof body.access_token !== 'string' || body.access_token === '') {
      // RFC 6749 §5.2 error codes (invalid_client, invalid_scope, …) say what to fix.
      const code = typeof body.error === 'string' ? body.error.slice(0, 64) : 'no access_token';
      throw new FhirError(FhirErrorCode.AUTH, `token endpoint refused: ${res.status} ${code}`, { status: res.status });
    }
    const lifetime = typeof body.expires_in === 'number' && body.expires_in > 0 ? body.expires_in : DEFAULT_TOKEN_LIFETIME_S;
    const lifetimeMs = lifetime * 1000;
    this.token = { value: body.access_token, renewAt: this.clock() + Math.max(lifetimeMs / 2, lifetimeMs - RENEW_BEFORE_MS) };
    return body.access_token;
  }
}
