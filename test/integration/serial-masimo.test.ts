/**
 * Masimo ASCII 1 over a real pty pair: the simulator writes one end, the driver opens the other
 * with the real serialport bindings. Runs the driver contract, then the Masimo specifics.
 */
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { serialDriver } from '../../drivers/serial/index.js';
import { DriverState } from '../../src/driver.js';
import { Quality } from '../../src/model/measurement.js';
import { startMasimoSimulator } from '../../simulators/masimo.js';
import type { SerialSimulator } from '../../simulators/serial-common.js';
import { driverContract, RecordingContext, waitFor } from '../contract/driver-contract.js';
import { SOCAT_ABSENT_NOTE, SOCAT_AVAILABLE, stopPtyPairs, testPtyPair } from '../helpers/socat.js';

const FAST = { reconnect: { initialDelayMs: 50, maxDelayMs: 200 }, silenceTimeoutMs: 800 };

describe.skipIf(!SOCAT_AVAILABLE)(SOCAT_AVAILABLE ? 'serial: Masimo over a pty pair' : `serial: Masimo (${SOCAT_ABSENT_NOTE})`, () => {
  afterEach(stopPtyPairs);

  driverContract('masimo (pty, serialport)', async (ctx, options) => {
    const pty = await testPtyPair();
    const sim = options.absent ? null : await startMasimoSimulator({ path: pty.simulatorPath, intervalMs: 100, seed: 7, episodes: false });
    const driver = serialDriver.create(
      { deviceId: 'spo2-bed-7', protocol: 'masimo', port: options.absent ? join(pty.devicePath, '..', 'absent') : pty.devicePath, ...FAST },
      ctx,
    );
    return {
      driver,
      peer: sim && {
        garbage: () => sim.inject('garbage'),
        huge: () => sim.inject('huge'),
        unplug: () => pty.unplug(),
        replug: () => pty.replug(),
      },
      close: async () => {
        await driver.stop();
        await sim?.stop();
      },
    };
  });

  describe('Masimo specifics', () => {
    let sim: SerialSimulator | null = null;
    afterEach(async () => {
      await sim?.stop();
      sim = null;
    });

    it('decodes SpO2, pulse and PI by key, as MDC, with the device time', async () => {
      const pty = await testPtyPair();
      sim = await startMasimoSimulator({ path: pty.simulatorPath, intervalMs: 100, seed: 1, episodes: false });
      const ctx = new RecordingContext();
      const driver = serialDriver.create({ deviceId: 'spo2-1', protocol: 'masimo', port: pty.devicePath, ...FAST }, ctx);
      await driver.start();
      await waitFor(() => ctx.readings() >= 20, 5000, 'readings');
      await driver.stop();
      const all = ctx.batches.flatMap((b) => b.measurements);
      const spo2 = all.filter((m) => m.code === '150456');
      expect(spo2.length).toBeGreaterThan(0);
      for (const m of spo2) {
        expect(m).toMatchObject({ deviceId: 'spo2-1', system: 'MDC', refid: 'MDC_PULS_OXIM_SAT_O2', unit: '%', flags: 0 });
        expect(m.value).toBeGreaterThanOrEqual(80);
        expect(m.value).toBeLessThanOrEqual(100);
        // ASCII 1 prints whole seconds of the device clock.
        expect(m.time % 1000).toBe(0);
        expect(Math.abs(m.time - Date.now())).toBeLessThan(10_000);
      }
      expect(all.some((m) => m.code === '149530' && m.unit === '/min')).toBe(true);
      expect(all.some((m) => m.system === 'MASIMO' && m.code === 'EXC' && m.text === 'set-mode')).toBe(true);
      // EXC is stored when it changes, not once per line.
      expect(all.filter((m) => m.code === 'EXC').length).toBe(1);
      expect(ctx.batches.every((b) => b.source === `serial ${pty.devicePath}`)).toBe(true);
      expect((driver.status() as { device: Record<string, string> }).device.serial).toBe('0000093112');
    });

    it('discards the first partial line after opening, without a dead letter', async () => {
      const pty = await testPtyPair();
      sim = await startMasimoSimulator({ path: pty.simulatorPath, intervalMs: 100, seed: 2, episodes: false });
      // The oximeter is mid-line when the gateway opens the port.
      await new Promise((r) => setTimeout(r, 350));
      const ctx = new RecordingContext();
      const driver = serialDriver.create({ deviceId: 'spo2-2', protocol: 'masimo', port: pty.devicePath, ...FAST }, ctx);
      await driver.start();
      await waitFor(() => ctx.readings() > 0, 5000, 'readings');
      await driver.stop();
      expect(ctx.rejects()).toEqual([]);
    });

    it('stores a sensor-off line as invalid, never as a number', async () => {
      const pty = await testPtyPair();
      sim = await startMasimoSimulator({ path: pty.simulatorPath, intervalMs: 50, seed: 3, episodes: true, episodeRate: 0.1 });
      const ctx = new RecordingContext();
      const driver = serialDriver.create({ deviceId: 'spo2-3', protocol: 'masimo', port: pty.devicePath, ...FAST }, ctx);
      await driver.start();
      await waitFor(
        () => ctx.batches.some((b) => b.measurements.some((m) => m.code === '150456' && (m.flags & Quality.INVALID) !== 0)),
        8000,
        'a sensor-off line',
      );
      await driver.stop();
      const all = ctx.batches.flatMap((b) => b.measurements);
      for (const m of all) {
        if (m.flags & Quality.INVALID) expect(Number.isNaN(m.value)).toBe(true);
      }
      expect(all.some((m) => m.code === 'EXC' && m.text?.includes('sensor-off'))).toBe(true);
    });

    it('retries a port that does not exist yet and reads it once it appears', async () => {
      const pty = await testPtyPair();
      await pty.unplug();
      const ctx = new RecordingContext();
      const driver = serialDriver.create({ deviceId: 'spo2-4', protocol: 'masimo', port: pty.devicePath, ...FAST }, ctx);
      await driver.start();
      await waitFor(() => driver.status().counters.openFailures! >= 2, 3000, 'open retries');
      expect(driver.status()).toMatchObject({ state: DriverState.DOWN, lastError: 'MDI_ERR_SERIAL_PORT_NOT_FOUND' });
      await pty.replug();
      sim = await startMasimoSimulator({ path: pty.simulatorPath, intervalMs: 100, seed: 4, episodes: false });
      await waitFor(() => ctx.readings() > 0, 5000, 'readings once the port exists');
      expect(driver.status().state).toBe(DriverState.UP);
      await driver.stop();
    });

    it('marks the device down when the line goes silent with the port still there, and up again', async () => {
      const pty = await testPtyPair();
      sim = await startMasimoSimulator({ path: pty.simulatorPath, intervalMs: 100, seed: 5, episodes: false, pauseMs: 1500 });
      const ctx = new RecordingContext();
      const driver = serialDriver.create({ deviceId: 'spo2-5', protocol: 'masimo', port: pty.devicePath, ...FAST }, ctx);
      await driver.start();
      await waitFor(() => driver.status().state === DriverState.UP, 5000, 'up');
      sim.inject('pause');
      await waitFor(() => driver.status().state === DriverState.DOWN, 3000, 'down on silence');
      expect(driver.status()).toMatchObject({ lastError: 'MDI_ERR_SERIAL_NO_DATA', link: 'open' });
      await waitFor(() => driver.status().state === DriverState.UP, 5000, 'up again');
      expect(driver.status().counters.opens).toBe(1);
      await driver.stop();
    });
  });
});
