/**
 * A real InfluxDB 1.x (`influxd`, Debian package `influxdb`, installed by `.ci/run`) for tests:
 * started on free ports (HTTP and the RPC/backup `bind-address`) with its own generated config
 * and temp meta/data/wal folders, never the system service. `stop()` then `start()` restarts it
 * on the same port and folders, like an operator restarting the server. When influxd is not
 * installed, `INFLUXD_AVAILABLE` is false and the suites skip with a note.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { request as httpsRequest } from 'node:https';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './mosquitto.js';

export const INFLUXD = process.env.MDI_INFLUXD ?? '/usr/bin/influxd';
/**
 * Whether the InfluxDB suites run (`describe.skipIf(!INFLUXD_AVAILABLE)`): when influxd is
 * installed, and always in CI (`CI=true`, where `.ci/run` installs it), so that a missing
 * package fails there instead of passing as skipped.
 */
export const INFLUXD_AVAILABLE = existsSync(INFLUXD) || process.env.CI === 'true';
/** The note a skipped suite prints. */
export const INFLUXD_SKIP_NOTE = `influxd not found at ${INFLUXD} (apt-get install -y influxdb, or set MDI_INFLUXD): InfluxDB tests skipped`;

export interface TestInfluxd {
  readonly port: number;
  /** `http://127.0.0.1:<port>` (`https://` with `tls`) */
  readonly url: string;
  /** Starts (again) on the same ports and folders; resolves once /ping answers 204. */
  start(): Promise<void>;
  /** SIGTERM, and waits for the exit (SIGKILL after 10 s). */
  stop(): Promise<void>;
  /** SIGKILL, and waits for the exit: a crash of the server. */
  kill(): Promise<void>;
  /** Stops and removes the temp folder. */
  close(): Promise<void>;
  /** Runs an InfluxQL statement over HTTP and returns the parsed JSON answer. */
  query(q: string, db?: string): Promise<InfluxQueryResult>;
  /** Whether the process is running. */
  running(): boolean;
}

/** The JSON of `GET /query` (epoch=ms). */
export interface InfluxQueryResult {
  results: Array<{
    statement_id: number;
    error?: string;
    series?: Array<{ name: string; tags?: Record<string, string>; columns: string[]; values: unknown[][] }>;
  }>;
}

export interface InfluxdOptions {
  /**
   * `[http] auth-enabled`: every request needs credentials. The admin user `admin` with
   * `adminPassword` is created at the first start (InfluxDB allows that one unauthenticated
   * statement while no user exists); `query()` then authenticates as admin.
   */
  readonly auth?: { readonly adminPassword: string };
  /** `[http] https-enabled` with this certificate and key (PEM files); `ca` (PEM text) is trusted by the helper's own requests. */
  readonly tls?: { readonly certFile: string; readonly keyFile: string; readonly ca: string };
}

/** A request to influxd: plain fetch, or node:https trusting the test CA (fetch cannot take one). */
async function influxRequest(url: string, method: 'GET' | 'POST', ca: string | undefined): Promise<{ status: number; text: string }> {
  if (ca === undefined) {
    const res = await fetch(url, { method, signal: AbortSignal.timeout(5000) });
    return { status: res.status, text: await res.text() };
  }
  return new Promise((resolve, reject) => {
    const req = httpsRequest(url, { method, ca, timeout: 5000 }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (text += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
}

/** Starts an influxd on free ports on 127.0.0.1 with reporting and the internal monitor off. */
export async function startInfluxd(options: InfluxdOptions = {}): Promise<TestInfluxd> {
  const dir = mkdtempSync(join(tmpdir(), 'mdi-influxd-'));
  const port = await freePort();
  const rpcPort = await freePort();
  for (const sub of ['meta', 'data', 'wal']) mkdirSync(join(dir, sub));
  const conf = join(dir, 'influxdb.conf');
  writeFileSync(
    conf,
    [
      'reporting-disabled = true',
      // The RPC service (backup/restore) binds 8088 by default: two test servers would collide.
      `bind-address = "127.0.0.1:${rpcPort}"`,
      '[meta]',
      `  dir = "${join(dir, 'meta')}"`,
      '[data]',
      `  dir = "${join(dir, 'data')}"`,
      `  wal-dir = "${join(dir, 'wal')}"`,
      '  query-log-enabled = false',
      '[monitor]',
      '  store-enabled = false',
      '[continuous_queries]',
      '  enabled = false',
      '[subscriber]',
      '  enabled = false',
      '[http]',
      '  enabled = true',
      `  bind-address = "127.0.0.1:${port}"`,
      '  log-enabled = false',
      `  auth-enabled = ${options.auth ? 'true' : 'false'}`,
      ...(options.tls
        ? ['  https-enabled = true', `  https-certificate = "${options.tls.certFile}"`, `  https-private-key = "${options.tls.keyFile}"`]
        : []),
      '[logging]',
      '  level = "error"',
      '',
    ].join('\n'),
  );
  const url = `${options.tls ? 'https' : 'http'}://127.0.0.1:${port}`;
  let child: ChildProcess | null = null;
  let exitedEarly: string | null = null;

  const ping = async (): Promise<boolean> => {
    try {
      return (await influxRequest(`${url}/ping`, 'GET', options.tls?.ca)).status === 204;
    } catch {
      return false;
    }
  };

  const start = async () => {
    if (child) return;
    exitedEarly = null;
    const proc = spawn(INFLUXD, ['run', '-config', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    proc.stderr?.on('data', (chunk: Buffer) => {
      // Only the tail matters for a start failure; bounded so a chatty server cannot grow it.
      stderr = (stderr + chunk.toString()).slice(-4000);
    });
    child = proc;
    proc.once('exit', (code, signal) => {
      if (child === proc) {
        child = null;
        exitedEarly = `influxd exited (${code ?? signal}): ${stderr}`;
      }
    });
    const deadline = Date.now() + 20_000;
    while (!(await ping())) {
      if (exitedEarly) throw new Error(exitedEarly);
      if (Date.now() > deadline) throw new Error(`influxd did not answer /ping on ${port} within 20 s: ${stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };

  const halt = async (signal: NodeJS.Signals) => {
    const proc = child;
    if (!proc) return;
    child = null;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
      proc.once('exit', () => {
        clearTimeout(timer);
        resolve();
      });
      proc.kill(signal);
    });
  };

  const query = async (q: string, db?: string, asAdmin = true): Promise<InfluxQueryResult> => {
    const params = new URLSearchParams({ q, epoch: 'ms' });
    if (db !== undefined) params.set('db', db);
    if (options.auth && asAdmin) {
      params.set('u', 'admin');
      params.set('p', options.auth.adminPassword);
    }
    const res = await influxRequest(`${url}/query?${params}`, 'POST', options.tls?.ca);
    if (res.status !== 200) throw new Error(`influx query failed: ${res.status} ${res.text}`);
    return JSON.parse(res.text) as InfluxQueryResult;
  };

  await start();
  if (options.auth) await query(`CREATE USER admin WITH PASSWORD '${options.auth.adminPassword.replace(/'/g, "\\'")}' WITH ALL PRIVILEGES`, undefined, false);
  return {
    port,
    url,
    start,
    stop: () => halt('SIGTERM'),
    kill: () => halt('SIGKILL'),
    close: async () => {
      await halt('SIGTERM');
      rmSync(dir, { recursive: true, force: true });
    },
    query: (q, db) => query(q, db),
    running: () => child !== null,
  };
}
