/**
 * A small HTTP(S) client on `node:http`/`node:https` for the EPJ and its token endpoint.
 *
 * Not `fetch`: Node 20's global fetch cannot take extra CA certificates without the `undici`
 * package (its `dispatcher` option needs an undici Agent), and hospital EPJs commonly sit
 * behind an internal CA. Here one keep-alive Agent per client carries the system CAs plus the
 * configured ones, a connect timeout and a whole-request timeout, and bounds the answer size.
 */
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { rootCertificates } from 'node:tls';
import { FhirError, FhirErrorCode } from './errors.js';

export interface HttpClientOptions {
  /** PEM file with extra CA certificates (added to Node's bundled roots, not replacing them). */
  readonly caFile?: string;
  readonly connectTimeoutMs: number;
  readonly requestTimeoutMs: number;
  /** Sockets per host; concurrency + 1 leaves room for a token or lookup request. */
  readonly maxSockets: number;
  /**
   * Largest answer read, bytes. A batch-response of 1000 entries with OperationOutcomes is well
   * under 16 MiB; the bound keeps a misbehaving server from filling our memory.
   */
  readonly maxResponseBytes?: number;
}

export interface HttpResponse {
  readonly status: number;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: Buffer;
}

export interface HttpRequest {
  readonly method: 'GET' | 'POST' | 'PUT';
  readonly url: string;
  readonly headers?: Record<string, string>;
  readonly body?: string | Buffer;
  /** Aborts the request (stop of the forwarder). */
  readonly signal?: AbortSignal;
}

const DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024;

/** HTTP client with keep-alive, timeouts and extra CAs. Network failures reject with FhirError NETWORK. */
export class HttpClient {
  private readonly httpAgent: http.Agent;
  private readonly httpsAgent: https.Agent;
  private readonly maxResponseBytes: number;

  /** @throws {Error} when `caFile` cannot be read. */
  constructor(private readonly options: HttpClientOptions) {
    const ca = options.caFile === undefined ? undefined : [...rootCertificates, readFileSync(options.caFile, 'utf8')];
    // Keep-alive: one TLS handshake per socket, not per Bundle.
    this.httpAgent = new http.Agent({ keepAlive: true, maxSockets: options.maxSockets });
    this.httpsAgent = new https.Agent({ keepAlive: true, maxSockets: options.maxSockets, ...(ca ? { ca } : {}) });
    this.maxResponseBytes = options.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
  }

  /** Sends one request and reads the whole answer. Any status resolves; only network trouble rejects. */
  request(req: HttpRequest): Promise<HttpResponse> {
    return new Promise<HttpResponse>((resolve, reject) => {
      let url: URL;
      try {
        url = new URL(req.url);
      } catch {
        reject(new FhirError(FhirErrorCode.CONFIG, 'invalid URL'));
        return;
      }
      const secure = url.protocol === 'https:';
      const body = req.body === undefined ? undefined : typeof req.body === 'string' ? Buffer.from(req.body, 'utf8') : req.body;
      let settled = false;
      const fail = (code: FhirErrorCode, message: string, cause?: unknown) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        reject(new FhirError(code, message, { cause }));
      };
      const request = (secure ? https : http).request(
        url,
        {
          method: req.method,
          agent: secure ? this.httpsAgent : this.httpAgent,
          headers: { ...req.headers, ...(body ? { 'content-length': String(body.length) } : {}) },
          signal: req.signal,
        },
        (res) => {
          const chunks: Buffer[] = [];
          let size = 0;
          res.on('data', (chunk: Buffer) => {
            size += chunk.length;
            if (size > this.maxResponseBytes) {
              res.destroy();
              fail(FhirErrorCode.BAD_RESPONSE, `answer larger than ${this.maxResponseBytes} bytes`);
              return;
            }
            chunks.push(chunk);
          });
          res.on('end', () => {
            if (settled) return;
            settled = true;
            clearTimeout(timer);
            resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) });
          });
          res.on('error', (err) => fail(FhirErrorCode.NETWORK, `answer interrupted: ${describe(err)}`, err));
          // A socket destroyed mid-answer ends without 'end' on some Node versions.
          res.on('close', () => fail(FhirErrorCode.NETWORK, 'connection closed before the answer was complete'));
        },
      );
      // Connect timeout: only until the socket is connected (TLS included for https).
      const connectTimer = setTimeout(() => {
        request.destroy(new Error(`connect timeout after ${this.options.connectTimeoutMs} ms`));
      }, this.options.connectTimeoutMs);
      request.on('socket', (socket) => {
        if (!socket.connecting) {
          clearTimeout(connectTimer);
          return;
        }
        socket.once(secure ? 'secureConnect' : 'connect', () => clearTimeout(connectTimer));
      });
      // Whole-request timeout: a server that accepts and then never answers must not hold a batch forever.
      const timer = setTimeout(() => {
        request.destroy(new Error(`no answer within ${this.options.requestTimeoutMs} ms`));
      }, this.options.requestTimeoutMs);
      request.on('error', (err) => {
        clearTimeout(connectTimer);
        fail(FhirErrorCode.NETWORK, describe(err), err);
      });
      request.on('close', () => clearTimeout(connectTimer));
      request.end(body);
    });
  }

  /** Closes idle keep-alive sockets. */
  close(): void {
    this.httpAgent.destroy();
    this.httpsAgent.destroy();
  }
}

/** `ECONNREFUSED connect …` style text without URLs' query strings (they could carry identifiers). */
function describe(err: Error & { code?: string }): string {
  const text = err.code ? `${err.code}: ${err.message}` : err.message;
  return text.replace(/\?[^\s]*/g, '?…');
}
