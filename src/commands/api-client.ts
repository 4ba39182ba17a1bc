/**
 * The HTTP client the registry commands (`mdi devices`, `mdi token`) use to talk to a running
 * gateway: where it is (--url, MDI_URL, the config's http.port), which token (--token,
 * MDI_TOKEN, --token-file, else `<dataDir>/admin.token`), and errors turned into one clear line.
 */
import { readFileSync } from 'node:fs';
import { bootstrapTokenFile } from '../api/auth.js';
import { UsageError } from '../cli.js';
import { loadConfig } from '../config/load.js';
import { GatewayError } from '../errors.js';

/** Exit code 2 and the message with the command's help. */

/** Exit code 1: the gateway said no, or could not be reached. */
export class CliFailure extends Error {}

export const CONNECTION_OPTIONS = {
  url: { type: 'string' },
  token: { type: 'string' },
  'token-file': { type: 'string' },
  config: { type: 'string', short: 'c' },
} as const;

export const CONNECTION_HELP = `Connection:
  --url URL           the gateway's HTTP API (default $MDI_URL, else http://127.0.0.1:<http.port
                      of --config>, else http://127.0.0.1:8080)
  --token TOKEN       bearer token (default $MDI_TOKEN); prefer --token-file: a token on the
                      command line shows in the process list
  --token-file FILE   read the token from FILE
  -c, --config FILE   the gateway's config: its dataDir holds admin.token (the bootstrap admin
                      token), used when no token is given; also $MDI_DATA_DIR, else ./data`;

export interface Connection {
  readonly url: string;
  readonly token: string | null;
}

export function connection(values: Record<string, unknown>, env: NodeJS.ProcessEnv = process.env): Connection {
  const configFile = values.config as string | undefined;
  // An empty variable counts as unset (MDI_TOKEN= in a script).
  const fromEnv = (name: string): string | undefined => env[name] || undefined;
  // Only what this needs of the config (dataDir, http.port); a broken config is a usage error.
  let config: { dataDir: string; http: { port: number } } | null = null;
  const loadIt = () => (config ??= loadConfig({ file: configFile, env }));
  const url = ((values.url as string | undefined) ?? fromEnv('MDI_URL') ?? (configFile ? `http://127.0.0.1:${loadIt().http.port}` : 'http://127.0.0.1:8080')).replace(/\/+$/, '');
  if (!/^https?:\/\/[^/]+/.test(url)) throw new UsageError(`--url must be an http(s) URL, got '${url}'`);
  let token = (values.token as string | undefined) ?? fromEnv('MDI_TOKEN') ?? null;
  const tokenFile = values['token-file'] as string | undefined;
  if (token === null && tokenFile !== undefined) token = readToken(tokenFile, true);
  if (token === null) {
    const dataDir = configFile ? loadIt().dataDir : (fromEnv('MDI_DATA_DIR') ?? './data');
    token = readToken(bootstrapTokenFile(dataDir), false);
  }
  return { url, token };
}

function readToken(file: string, required: boolean): string | null {
  try {
    const t = readFileSync(file, 'utf8').trim();
    if (t === '' && required) throw new UsageError(`${file} is empty`);
    return t === '' ? null : t;
  } catch (err) {
    if (err instanceof UsageError) throw err;
    if (required) throw new UsageError(`cannot read the token file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    return null;
  }
}

/** One request; answers the parsed JSON body, or throws a CliFailure that says what went wrong. */
export async function call<T>(c: Connection, method: string, path: string, body?: unknown): Promise<T> {
  let res: Response;
  try {
    res = await fetch(`${c.url}${path}`, {
      method,
      headers: {
        ...(c.token ? { authorization: `Bearer ${c.token}` } : {}),
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(15_000),
    });
  } catch (err) {
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    throw new CliFailure(`cannot reach the gateway at ${c.url} (${cause?.code ?? cause?.message ?? (err as Error).message}); is it running? (--url, MDI_URL)`);
  }
  const text = await res.text();
  let json: unknown = null;
  try {
    json = text === '' ? null : JSON.parse(text);
  } catch {
    // Not JSON: a proxy's page, say; reported below with the status.
  }
  if (!res.ok) {
    const e = json as { error?: string; code?: string } | null;
    const hint =
      res.status === 401 && c.token === null ? ' (no token given: --token-file, MDI_TOKEN, or --config to find <dataDir>/admin.token)' : '';
    throw new CliFailure(`${e?.error ?? (text.slice(0, 200) || res.statusText)}${e?.code ? ` [${e.code}]` : ''} (HTTP ${res.status})${hint}`);
  }
  return json as T;
}

/** Runs a command body and turns its errors into exit codes and one line on stderr. */
export async function runCli(name: string, help: string, body: () => Promise<number>): Promise<number> {
  try {
    return await body();
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`mdi ${name}: ${err.message}\n\n${help}\n`);
      return 2;
    }
    if (err instanceof GatewayError) {
      // A config that does not load (--config): the command line is wrong, not the gateway.
      process.stderr.write(`mdi ${name}: ${err.message} [${err.code}]\n`);
      return 2;
    }
    if (err instanceof CliFailure) {
      process.stderr.write(`mdi ${name}: ${err.message}\n`);
      return 1;
    }
    if (err instanceof TypeError && (err as NodeJS.ErrnoException).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`mdi ${name}: ${err.message}\n\n${help}\n`);
      return 2;
    }
    throw err;
  }
}

/** Everything on stdin as text (for secrets that must not be on the command line). */
export async function readStdin(limit = 4096): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin) {
    size += (chunk as Buffer).length;
    if (size > limit) throw new UsageError(`stdin is longer than ${limit} bytes`);
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '');
}
