/**
 * A pseudo-terminal pair made by `socat`: two linked serial ports on temporary paths, one for
 * the gateway and one for a simulated device. Killing socat makes both ports vanish, exactly as
 * pulling a USB serial adapter does; starting it again on the same paths plugs it back in.
 *
 * Used by the serial simulators (`mdi simulate masimo` without `--port`) and by the tests.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, lstatSync, mkdtempSync, rmSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A running pair of linked pseudo-terminals. */
export interface PtyPair {
  /** The port the gateway opens (a symlink to /dev/pts/N while plugged in). */
  readonly devicePath: string;
  /** The port the simulated device opens. */
  readonly simulatorPath: string;
  /** Whether socat is running (the "adapter" is plugged in). */
  readonly plugged: boolean;
  /** Kills socat: both ports vanish, open handles on them fail. Idempotent. */
  unplug(): Promise<void>;
  /** Starts socat again on the same paths (new /dev/pts numbers). Idempotent. */
  replug(): Promise<void>;
  /** Unplugs for good and removes the temporary folder. */
  stop(): Promise<void>;
}

/** Options of `createPtyPair`. */
export interface PtyPairOptions {
  /** Folder for the two links; a fresh temporary folder by default. */
  readonly dir?: string;
  /** The socat binary. Default `socat` from PATH (Debian: `apt-get install socat`). */
  readonly socat?: string;
  /** How long to wait for socat to create the links (ms). Default 5000. */
  readonly readyTimeoutMs?: number;
}

/** Creates a pty pair and waits until both paths exist. */
export async function createPtyPair(options: PtyPairOptions = {}): Promise<PtyPair> {
  const ownDir = options.dir === undefined;
  const dir = options.dir ?? mkdtempSync(join(tmpdir(), 'mdi-pty-'));
  const devicePath = join(dir, 'gateway');
  const simulatorPath = join(dir, 'device');
  const socat = options.socat ?? 'socat';
  const readyTimeoutMs = options.readyTimeoutMs ?? 5000;
  let child: ChildProcess | null = null;
  let exited: Promise<void> = Promise.resolve();

  const removeLinks = () => {
    for (const path of [devicePath, simulatorPath]) {
      try {
        if (lstatSync(path)) unlinkSync(path);
      } catch {
        // not there
      }
    }
  };

  const start = async () => {
    if (child) return;
    removeLinks(); // a SIGKILLed socat leaves dangling links; socat refuses to reuse them
    let stderr = '';
    const proc = spawn(socat, [`pty,raw,echo=0,link=${devicePath}`, `pty,raw,echo=0,link=${simulatorPath}`], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    proc.stderr!.on('data', (d: Buffer) => {
      if (stderr.length < 4096) stderr += d.toString();
    });
    child = proc;
    let spawnError: Error | null = null;
    proc.once('error', (err) => {
      spawnError = err;
    });
    exited = new Promise((resolve) => proc.once('exit', () => resolve()));
    void exited.then(() => {
      if (child === proc) child = null;
    });
    const deadline = Date.now() + readyTimeoutMs;
    while (!(existsSync(devicePath) && existsSync(simulatorPath))) {
      if (spawnError || proc.exitCode !== null || Date.now() > deadline) {
        proc.kill('SIGKILL');
        const why = spawnError
          ? (spawnError as NodeJS.ErrnoException).code === 'ENOENT'
            ? `${socat} is not installed (Debian: apt-get install socat)`
            : (spawnError as Error).message
          : stderr.trim() || 'timed out';
        throw new Error(`socat could not create the pty pair: ${why}`);
      }
      await new Promise((r) => setTimeout(r, 5));
    }
  };

  const stopSocat = async () => {
    const proc = child;
    if (!proc) return;
    proc.kill('SIGTERM');
    const killTimer = setTimeout(() => proc.kill('SIGKILL'), 2000);
    await exited;
    clearTimeout(killTimer);
    child = null;
    removeLinks();
  };

  await start();
  return {
    devicePath,
    simulatorPath,
    get plugged() {
      return child !== null;
    },
    unplug: stopSocat,
    replug: start,
    async stop() {
      await stopSocat();
      if (ownDir) rmSync(dir, { recursive: true, force: true });
    },
  };
}
