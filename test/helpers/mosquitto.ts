/**
 * A real Mosquitto (Debian package `mosquitto`) for tests: started on a free port with its own
 * temp config, never the system service. `stop()` then `start()` restarts it on the same port
 * (with persistence, sessions and queued messages survive like on a production broker).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const MOSQUITTO = '/usr/sbin/mosquitto';

/** A free TCP port on 127.0.0.1 (listen on 0, close, reuse the number). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

async function waitForPort(port: number, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`mosquitto did not listen on ${port} within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export interface TestMosquitto {
  readonly port: number;
  readonly url: string;
  /** Starts (again) on the same port. */
  start(): Promise<void>;
  /** SIGTERM, and waits for the exit (persistence is written on exit). */
  stop(): Promise<void>;
  /** Stops and removes the temp folder. */
  close(): Promise<void>;
}

export interface MosquittoOptions {
  /** Keep sessions and queued messages across restarts (default true). */
  readonly persistence?: boolean;
  /** Let clients in without credentials (default true); false refuses every client. */
  readonly anonymous?: boolean;
  /** Extra lines for mosquitto.conf. */
  readonly extra?: readonly string[];
}

/** Starts a Mosquitto on a free port on 127.0.0.1 with anonymous access. */
export async function startMosquitto(options: MosquittoOptions = {}): Promise<TestMosquitto> {
  const dir = mkdtempSync(join(tmpdir(), 'mdi-mosq-'));
  const port = await freePort();
  const conf = join(dir, 'mosquitto.conf');
  writeFileSync(
    conf,
    [
      `listener ${port} 127.0.0.1`,
      `allow_anonymous ${options.anonymous === false ? 'false' : 'true'}`,
      `persistence ${options.persistence === false ? 'false' : 'true'}`,
      `persistence_location ${dir}/`,
      'max_queued_messages 100000',
      'log_dest none',
      ...(options.extra ?? []),
      '',
    ].join('\n'),
  );
  let child: ChildProcess | null = null;
  const start = async () => {
    if (child) return;
    const proc = spawn(MOSQUITTO, ['-c', conf], { stdio: 'ignore' });
    child = proc;
    proc.once('exit', () => {
      if (child === proc) child = null;
    });
    await waitForPort(port, 5000);
  };
  const stop = async () => {
    const proc = child;
    if (!proc) return;
    await new Promise<void>((resolve) => {
      proc.once('exit', () => resolve());
      proc.kill('SIGTERM');
    });
    child = null;
  };
  await start();
  return {
    port,
    url: `mqtt://127.0.0.1:${port}`,
    start,
    stop,
    close: async () => {
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
