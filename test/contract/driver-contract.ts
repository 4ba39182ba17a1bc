/**
 * The driver contract suite: a function that registers the tests every driver must pass, run
 * against a real peer (a simulator behind a socat pty pair or a TCP socket), in the style of
 * aedes-persistence's `abstract.js` (research/aesthetics.md §9.1.2).
 *
 *   driverContract('masimo over a pty', async (ctx, options) => { …build driver + peer…; return harness });
 *
 * The suite builds a fresh driver for each test with a recording `DriverContext` and checks:
 * start/stop idempotent (and a restart), status shape, reconnect after the peer vanishes with
 * the gap shown in the status, garbage counted and dead-lettered with the next frame still
 * arriving, a huge frame bounded, stop during connect, and backpressure (no second submit
 * before the first has settled).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { DriverState, type Driver, type DriverContext, type DriverStatus, type IngestBatch } from '../../src/driver.js';
import { silentLogger } from '../../src/log.js';
import type { CommitResult } from '../../src/store/store.js';

/** The device side as the contract drives it. */
export interface ContractPeer {
  /** Makes the device send noise (bytes that are no frame) at its next chance. */
  garbage(): void;
  /** Makes the device send a frame far larger than any real one at its next chance. */
  huge(): void;
  /** The peer vanishes: the port disappears (pty unplugged) or the socket server goes away. */
  unplug(): Promise<void>;
  /** The peer is back on the same address. */
  replug(): Promise<void>;
}

/** A driver under test and its peer, as a builder returns them. */
export interface ContractHarness {
  readonly driver: Driver;
  /** Null when built with `absent: true`. */
  readonly peer: ContractPeer | null;
  /** Stops the driver (if the test did not) and the peer; removes temporary files. */
  close(): Promise<void>;
}

/** How the suite wants the driver built. */
export interface ContractBuildOptions {
  /** Build the driver for an address where no device is (a path that does not exist). */
  readonly absent?: boolean;
}

/** Builds a fresh driver (with the given recording context) and its peer for one test. */
export type ContractBuilder = (ctx: DriverContext, options: ContractBuildOptions) => Promise<ContractHarness>;

/** Time limits of the suite, for slower transports. */
export interface ContractTiming {
  /** First reading after start, ms. Default 5000. */
  readonly firstReadingMs?: number;
  /** Down after unplug, and back after replug, ms each. Default 6000. */
  readonly reconnectMs?: number;
}

/** A DriverContext that records every batch, with an optional slow commit. */
export class RecordingContext implements DriverContext {
  readonly log = silentLogger();
  readonly timezone = 'Europe/Copenhagen';
  readonly batches: IngestBatch[] = [];
  /** Batches whose submit has started, and the most that were in flight at once. */
  started = 0;
  maxInFlight = 0;
  private inFlight = 0;
  submitDelayMs = 0;

  submit = async (batch: IngestBatch): Promise<CommitResult> => {
    this.started++;
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      if (this.submitDelayMs > 0) await new Promise((r) => setTimeout(r, this.submitDelayMs));
      this.batches.push(batch);
      return { stored: batch.measurements.length, deadLetters: batch.rejects.length, duplicate: false, previouslyStored: 0 };
    } finally {
      this.inFlight--;
    }
  };

  readings(): number {
    return this.batches.reduce((n, b) => n + b.measurements.length, 0);
  }

  rejects(): IngestBatch['rejects'][number][] {
    return this.batches.flatMap((b) => b.rejects);
  }
}

/** Polls `check` every 20 ms until it is true; fails naming `what` after `ms`. */
export async function waitFor(check: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Registers the contract tests for one driver under `describe(name)`. */
export function driverContract(name: string, build: ContractBuilder, timing: ContractTiming = {}): void {
  const firstMs = timing.firstReadingMs ?? 5000;
  const reconnectMs = timing.reconnectMs ?? 6000;

  describe(`driver contract: ${name}`, () => {
    let harness: ContractHarness | null = null;
    afterEach(async () => {
      await harness?.close();
      harness = null;
    });

    async function setup(options: ContractBuildOptions = {}): Promise<{ ctx: RecordingContext; driver: Driver; peer: ContractPeer | null }> {
      const ctx = new RecordingContext();
      harness = await build(ctx, options);
      return { ctx, driver: harness.driver, peer: harness.peer };
    }

    it('starts, reports readings, and stops; start and stop are idempotent and it can start again', async () => {
      const { ctx, driver } = await setup();
      expect(driver.status().state).toBe(DriverState.STOPPED);
      await driver.start();
      await driver.start();
      await waitFor(() => ctx.readings() > 0, firstMs, 'a first reading');
      await waitFor(() => driver.status().state === DriverState.UP, firstMs, 'state up');
      await Promise.all([driver.stop(), driver.stop()]);
      await driver.stop();
      expect(driver.status().state).toBe(DriverState.STOPPED);
      const after = ctx.started;
      await new Promise((r) => setTimeout(r, 150));
      expect(ctx.started, 'nothing is submitted after stop').toBe(after);
      await driver.start();
      const before = ctx.readings();
      await waitFor(() => ctx.readings() > before, firstMs, 'readings after a restart');
      await driver.stop();
    });

    it('shows its state, last error and counters in status()', async () => {
      const { ctx, driver } = await setup();
      await driver.start();
      await waitFor(() => ctx.readings() > 0, firstMs, 'a first reading');
      const status: DriverStatus = driver.status();
      expect(status.name).toBe(driver.name);
      expect(typeof status.kind).toBe('string');
      expect(status.state).toBe(DriverState.UP);
      expect(status.since).toBeGreaterThan(0);
      expect(Object.values(status.counters).every((n) => Number.isFinite(n))).toBe(true);
      expect(JSON.parse(JSON.stringify(status))).toMatchObject({ name: driver.name, state: 'up' });
    });

    it('reconnects after the peer vanishes, and its status shows the gap', async () => {
      const { ctx, driver, peer } = await setup();
      await driver.start();
      await waitFor(() => driver.status().state === DriverState.UP && ctx.readings() > 0, firstMs, 'state up');
      await peer!.unplug();
      const unpluggedAt = Date.now();
      await waitFor(() => driver.status().state === DriverState.DOWN, reconnectMs, 'state down after unplug');
      const down = driver.status();
      expect(down.lastError).toMatch(/^MDI_ERR_/);
      const readingsWhileDown = ctx.readings();
      await peer!.replug();
      await waitFor(() => driver.status().state === DriverState.UP && ctx.readings() > readingsWhileDown, reconnectMs, 'readings after replug');
      const up = driver.status() as DriverStatus & { lastGap?: { from: number; to: number | null } | null };
      expect(up.lastGap?.to, 'the gap has an end').not.toBeNull();
      expect(up.lastGap!.from).toBeLessThanOrEqual(unpluggedAt + 50);
      expect(up.lastGap!.to!).toBeGreaterThan(up.lastGap!.from);
    });

    it('counts and dead-letters garbage, and the next frame still arrives', async () => {
      const { ctx, driver, peer } = await setup();
      await driver.start();
      await waitFor(() => ctx.readings() > 0, firstMs, 'a first reading');
      peer!.garbage();
      await waitFor(() => ctx.rejects().length > 0, firstMs, 'a dead letter for the garbage');
      const reject = ctx.rejects()[0]!;
      expect(reject.code).toMatch(/^MDI_ERR_/);
      expect(reject.raw.length).toBeGreaterThan(0);
      const readings = ctx.readings();
      await waitFor(() => ctx.readings() > readings, firstMs, 'a reading after the garbage');
      expect(driver.status().counters.rejected).toBeGreaterThan(0);
      expect(driver.status().state).toBe(DriverState.UP);
    });

    it('bounds a huge frame: refused with a bounded head, then readings go on', async () => {
      const { ctx, driver, peer } = await setup();
      await driver.start();
      await waitFor(() => ctx.readings() > 0, firstMs, 'a first reading');
      peer!.huge();
      await waitFor(() => ctx.rejects().some((r) => /TOO_LARGE|TOO_LONG/.test(r.code)), firstMs, 'the huge frame refused');
      for (const r of ctx.rejects()) expect(r.raw.length).toBeLessThanOrEqual(16 * 1024);
      const readings = ctx.readings();
      await waitFor(() => ctx.readings() > readings, firstMs, 'a reading after the huge frame');
    });

    it('stops promptly while it is still trying to connect, and does not retry after', async () => {
      const { driver } = await setup({ absent: true });
      await driver.start();
      await waitFor(() => driver.status().state === DriverState.DOWN, firstMs, 'state down (no device)');
      expect(driver.status().lastError).toMatch(/^MDI_ERR_/);
      const t0 = Date.now();
      await driver.stop();
      expect(Date.now() - t0).toBeLessThan(1000);
      const status = driver.status();
      expect(status.state).toBe(DriverState.STOPPED);
      await new Promise((r) => setTimeout(r, 300));
      expect(driver.status().counters).toEqual(status.counters);
    });

    it('does not read more before a submit has settled (backpressure)', async () => {
      const { ctx, driver } = await setup();
      ctx.submitDelayMs = 250;
      await driver.start();
      await waitFor(() => ctx.batches.length >= 3, firstMs + 3000, 'three slow commits');
      expect(ctx.maxInFlight).toBe(1);
      await driver.stop();
      expect(ctx.started, 'stop waited for the commit in flight').toBe(ctx.batches.length);
    });
  });
}
