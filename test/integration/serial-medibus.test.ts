/**
 * Dräger MEDIBUS over a real pty pair: the ventilator simulator answers on one end, the driver
 * polls through the other with the real serialport bindings (19200 8E1). Runs the driver
 * contract, then the MEDIBUS specifics: keep-alive, resync after a bad checksum, re-ICC after a
 * pause longer than the keep-alive, device commands answered.
 */
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { serialDriver } from '../../drivers/serial/index.js';
import { DriverState } from '../../src/driver.js';
import { startMedibusSimulator } from '../../simulators/medibus.js';
import type { SerialSimulator } from '../../simulators/serial-common.js';
import { driverContract, RecordingContext, waitFor } from '../contract/driver-contract.js';
import { SOCAT_ABSENT_NOTE, SOCAT_AVAILABLE, stopPtyPairs, testPtyPair } from '../helpers/socat.js';

const FAST = {
  reconnect: { initialDelayMs: 50, maxDelayMs: 200 },
  silenceTimeoutMs: 1000,
  pollIntervalMs: 200,
  responseTimeoutMs: 400,
};

describe.skipIf(!SOCAT_AVAILABLE)(SOCAT_AVAILABLE ? 'serial: MEDIBUS over a pty pair' : `serial: MEDIBUS (${SOCAT_ABSENT_NOTE})`, () => {
  afterEach(stopPtyPairs);

  driverContract('medibus (pty, serialport)', async (ctx, options) => {
    const pty = await testPtyPair();
    const sim = options.absent ? null : await startMedibusSimulator({ path: pty.simulatorPath, seed: 11, episodes: false, deviceNopMs: 0 });
    const driver = serialDriver.create(
      { deviceId: 'evita-icu-3', protocol: 'medibus', port: options.absent ? join(pty.devicePath, '..', 'absent') : pty.devicePath, ...FAST },
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

  describe('MEDIBUS specifics', () => {
    let sim: SerialSimulator | null = null;
    afterEach(async () => {
      await sim?.stop();
      sim = null;
    });

    it('initialises with ICC, identifies the device, and maps code page 1 and 2 to MDC', async () => {
      const pty = await testPtyPair();
      sim = await startMedibusSimulator({ path: pty.simulatorPath, seed: 1, episodes: false });
      const ctx = new RecordingContext();
      const driver = serialDriver.create({ deviceId: 'vent-1', protocol: 'medibus', port: pty.devicePath, ...FAST }, ctx);
      await driver.start();
      await waitFor(() => ctx.readings() >= 40, 5000, 'readings');
      await driver.stop();
      const all = ctx.batches.flatMap((b) => b.measurements);
      const peep = all.find((m) => m.refid === 'MDC_VENT_PRESS_AWAY_END_EXP_POS')!;
      expect(peep).toMatchObject({ deviceId: 'vent-1', system: 'MDC', code: '151976', unit: 'mbar', flags: 0 });
      expect(all.some((m) => m.refid === 'MDC_VENT_VOL_TIDAL' && m.unit === 'mL')).toBe(true);
      expect(all.some((m) => m.refid === 'MDC_CONC_AWAY_O2_INSP' && m.unit === '%')).toBe(true);
      // Code page 2 has no standard MDC codes for VTe/VTi: kept under the MEDIBUS system.
      expect(all.some((m) => m.system === 'MEDIBUS' && m.code === 'cp2:21' && m.unit === 'mL')).toBe(true);
      // Dashes are "no value": invalid, not a number.
      const spont = all.find((m) => m.code === 'cp1:B5')!;
      expect(Number.isNaN(spont.value)).toBe(true);
      expect(spont.flags).toBe(2);
      const status = driver.status() as { device: Record<string, string>; counters: Record<string, number> };
      expect(status.device).toMatchObject({ model: 'Evita4', idNumber: '8417' });
      expect(status.counters.initializations).toBe(1);
    });

    it('keeps an idle link alive with NOP inside the 3 s limit', async () => {
      const pty = await testPtyPair();
      // The device drops the link after 600 ms of silence; the host polls every 1.5 s.
      sim = await startMedibusSimulator({ path: pty.simulatorPath, seed: 2, episodes: false, keepAliveMs: 600, deviceNopMs: 0 });
      const ctx = new RecordingContext();
      const driver = serialDriver.create(
        { deviceId: 'vent-2', protocol: 'medibus', port: pty.devicePath, ...FAST, pollIntervalMs: 1500, keepAliveMs: 300, silenceTimeoutMs: 5000 },
        ctx,
      );
      await driver.start();
      await waitFor(() => (driver.status().counters.keepAlives ?? 0) >= 3, 5000, 'NOP keep-alives');
      const cycles = ctx.batches.length;
      await waitFor(() => ctx.batches.length > cycles, 3000, 'a poll after the idle time');
      const counters = driver.status().counters;
      expect(counters.initializations).toBe(1);
      expect(counters.timeouts ?? 0).toBe(0);
      await driver.stop();
    });

    it('refuses a frame with a bad checksum, dead-letters it, and goes on without re-initialising', async () => {
      const pty = await testPtyPair();
      sim = await startMedibusSimulator({ path: pty.simulatorPath, seed: 3, episodes: false });
      const ctx = new RecordingContext();
      const driver = serialDriver.create({ deviceId: 'vent-3', protocol: 'medibus', port: pty.devicePath, ...FAST }, ctx);
      await driver.start();
      await waitFor(() => ctx.readings() > 0, 5000, 'readings');
      sim.inject('bad-checksum');
      await waitFor(() => ctx.rejects().some((r) => r.code === 'MDI_ERR_MEDIBUS_BAD_CHECKSUM'), 3000, 'the refused frame');
      const reject = ctx.rejects().find((r) => r.code === 'MDI_ERR_MEDIBUS_BAD_CHECKSUM')!;
      expect(reject.raw[0]).toBe(0x01);
      expect(reject.reason).toMatch(/does not match the computed/);
      const readings = ctx.readings();
      await waitFor(() => ctx.readings() > readings, 3000, 'readings after the bad frame');
      expect(driver.status().counters.initializations).toBe(1);
      expect(driver.status().state).toBe(DriverState.UP);
      await driver.stop();
    });

    it('initialises again after the device stopped answering for longer than the keep-alive', async () => {
      const pty = await testPtyPair();
      sim = await startMedibusSimulator({ path: pty.simulatorPath, seed: 4, episodes: false, keepAliveMs: 600, pauseMs: 1500 });
      const ctx = new RecordingContext();
      const driver = serialDriver.create({ deviceId: 'vent-4', protocol: 'medibus', port: pty.devicePath, ...FAST }, ctx);
      await driver.start();
      await waitFor(() => ctx.readings() > 0, 5000, 'readings');
      sim.inject('pause');
      await waitFor(() => (driver.status().counters.initializations ?? 0) >= 2, 8000, 'a second ICC');
      const readings = ctx.readings();
      await waitFor(() => ctx.readings() > readings, 3000, 'readings after the pause');
      const status = driver.status();
      expect(status.counters.timeouts).toBeGreaterThanOrEqual(3);
      expect(status.lastGap?.to).not.toBeNull();
      await driver.stop();
    });

    it('answers the commands the device sends (both sides are masters)', async () => {
      const pty = await testPtyPair();
      sim = await startMedibusSimulator({ path: pty.simulatorPath, seed: 5, episodes: false, deviceNopMs: 150 });
      const ctx = new RecordingContext();
      const driver = serialDriver.create({ deviceId: 'vent-5', protocol: 'medibus', port: pty.devicePath, ...FAST }, ctx);
      await driver.start();
      await waitFor(() => sim!.stats.acks >= 3, 5000, 'our answers to the device NOPs');
      expect(driver.status().counters.deviceCommands).toBeGreaterThanOrEqual(3);
      await driver.stop();
    });
  });
});
