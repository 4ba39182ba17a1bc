/**
 * B. Braun BCC over a real pty pair and over TCP: the SpaceCom simulator answers on one end,
 * the driver polls through the other (real serialport bindings; a real socket). Runs the driver
 * contract for both links, then the BCC specifics: bed id from ALIVE, one device per pump, NAK
 * and retransmission, ACK after commit.
 */
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { serialDriver } from '../../drivers/serial/index.js';
import { DriverState } from '../../src/driver.js';
import { Quality } from '../../src/model/measurement.js';
import { startBbraunSimulator } from '../../simulators/bbraun.js';
import type { SerialSimulator } from '../../simulators/serial-common.js';
import { driverContract, RecordingContext, waitFor } from '../contract/driver-contract.js';
import { SOCAT_ABSENT_NOTE, SOCAT_AVAILABLE, stopPtyPairs, testPtyPair } from '../helpers/socat.js';

const FAST = {
  reconnect: { initialDelayMs: 50, maxDelayMs: 200 },
  silenceTimeoutMs: 1500,
  pollIntervalMs: 500,
  responseTimeoutMs: 600,
  ackDelayMs: 10,
};

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as AddressInfo).port;
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

describe.skipIf(!SOCAT_AVAILABLE)(SOCAT_AVAILABLE ? 'serial: B. Braun BCC over a pty pair' : `serial: BCC (${SOCAT_ABSENT_NOTE})`, () => {
  afterEach(stopPtyPairs);

  driverContract('bbraun (pty, serialport)', async (ctx, options) => {
    const pty = await testPtyPair();
    const sim = options.absent ? null : await startBbraunSimulator({ path: pty.simulatorPath, seed: 21, episodes: false });
    const driver = serialDriver.create(
      { deviceId: 'spacecom-7', protocol: 'bbraun', port: options.absent ? join(pty.devicePath, '..', 'absent') : pty.devicePath, ...FAST },
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

  describe('BCC specifics', () => {
    let sim: SerialSimulator | null = null;
    afterEach(async () => {
      await sim?.stop();
      sim = null;
    });

    it('learns the bed id from ALIVE and stores each pump as its own device, mapped to MDC', async () => {
      const pty = await testPtyPair();
      sim = await startBbraunSimulator({ path: pty.simulatorPath, seed: 1, episodes: false, bedId: 'ICU7Bed3' });
      const ctx = new RecordingContext();
      const driver = serialDriver.create({ deviceId: 'spacecom-1', protocol: 'bbraun', port: pty.devicePath, ...FAST }, ctx);
      await driver.start();
      await waitFor(() => ctx.batches.length >= 3, 5000, 'three blocks');
      await driver.stop();
      const all = ctx.batches.flatMap((b) => b.measurements);
      const devices = new Set(all.map((m) => m.deviceId));
      expect(devices).toEqual(new Set(['spacecom-1', 'spacecom-1/pump-11', 'spacecom-1/pump-12', 'spacecom-1/pump-13']));
      const rate = all.find((m) => m.deviceId === 'spacecom-1/pump-11' && m.refid === 'MDC_FLOW_FLUID_PUMP')!;
      expect(rate).toMatchObject({ system: 'MDC', code: '157784', unit: 'mL/h', flags: 0 });
      expect(rate.value).toBeGreaterThan(1);
      expect(all.find((m) => m.refid === 'MDC_DRUG_NAME_LABEL')?.text).toBe('Noradrenalin4mg/50');
      // A syringe without an end time sends INRMT 65535: not a number of minutes.
      const remain = all.find((m) => m.deviceId === 'spacecom-1/pump-11' && m.refid === 'MDC_TIME_PD_REMAIN')!;
      expect(Number.isNaN(remain.value) && (remain.flags & Quality.INVALID) !== 0).toBe(true);
      // The infusomat has a VTBI and so a real remaining time.
      const vtbi = all.find((m) => m.deviceId === 'spacecom-1/pump-13' && m.refid === 'MDC_VOL_FLUID_TBI')!;
      expect(vtbi.value).toBe(1000);
      expect(all.find((m) => m.deviceId === 'spacecom-1/pump-13' && m.refid === 'MDC_PUMP_INFUSING_STATUS')?.text).toBe('pump-status-infusing');
      const status = driver.status() as { device: Record<string, string> };
      expect(status.device).toMatchObject({ bedId: 'ICU7Bed3', version: 'V3.30', 'pump-12 INSERNUM': '1815' });
      // Every block was acknowledged.
      expect(sim.stats.acks).toBeGreaterThanOrEqual(ctx.batches.length);
    });

    it('NAKs a block with a bad check and takes the retransmission', async () => {
      const pty = await testPtyPair();
      sim = await startBbraunSimulator({ path: pty.simulatorPath, seed: 2, episodes: false });
      const ctx = new RecordingContext();
      const driver = serialDriver.create({ deviceId: 'spacecom-2', protocol: 'bbraun', port: pty.devicePath, ...FAST }, ctx);
      await driver.start();
      await waitFor(() => ctx.readings() > 0, 5000, 'readings');
      sim.inject('bad-checksum');
      await waitFor(() => sim!.stats.naks >= 1, 3000, 'a NAK');
      await waitFor(() => ctx.rejects().some((r) => r.code === 'MDI_ERR_BCC_BAD_CHECKSUM'), 3000, 'the refused block kept');
      const readings = ctx.readings();
      await waitFor(() => ctx.readings() > readings, 3000, 'readings after the retransmission');
      expect(driver.status().counters.naks).toBeGreaterThanOrEqual(1);
      expect(driver.status().counters.initializations).toBe(1);
      await driver.stop();
    });

    it('stores status flags when they change, not every poll', async () => {
      const pty = await testPtyPair();
      sim = await startBbraunSimulator({ path: pty.simulatorPath, seed: 3, episodes: false, slots: ['11'] });
      const ctx = new RecordingContext();
      const driver = serialDriver.create({ deviceId: 'spacecom-3', protocol: 'bbraun', port: pty.devicePath, ...FAST }, ctx);
      await driver.start();
      await waitFor(() => ctx.batches.filter((b) => b.measurements.some((m) => m.refid === 'MDC_FLOW_FLUID_PUMP')).length >= 3, 6000, 'three polls');
      await driver.stop();
      const all = ctx.batches.flatMap((b) => b.measurements);
      expect(all.filter((m) => m.refid === 'MDC_FLOW_FLUID_PUMP').length).toBeGreaterThanOrEqual(3);
      expect(all.filter((m) => m.refid === 'MDC_PUMP_INFUSING_STATUS').length).toBe(1);
      expect(all.filter((m) => m.code === '196940').length).toBe(1); // INA3 occlusion, inactive
    });
  });
});

describe('serial: B. Braun BCC over TCP', () => {
  driverContract('bbraun (tcp)', async (ctx, options) => {
    const port = await freePort();
    let sim: SerialSimulator | null = options.absent ? null : await startBbraunSimulator({ tcpPort: port, seed: 31, episodes: false });
    const driver = serialDriver.create({ deviceId: 'spacecom-tcp', protocol: 'bbraun', tcp: { host: '127.0.0.1', port }, ...FAST }, ctx);
    return {
      driver,
      peer: options.absent
        ? null
        : {
            garbage: () => sim?.inject('garbage'),
            huge: () => sim?.inject('huge'),
            unplug: async () => {
              await sim?.stop();
              sim = null;
            },
            replug: async () => {
              sim = await startBbraunSimulator({ tcpPort: port, seed: 32, episodes: false });
            },
          },
      close: async () => {
        await driver.stop();
        await sim?.stop();
      },
    };
  });

  it('shows a ComDevice that refuses connections as down, with the reason', async () => {
    const port = await freePort();
    const ctx = new RecordingContext();
    const driver = serialDriver.create({ deviceId: 'spacecom-x', protocol: 'bbraun', tcp: { host: '127.0.0.1', port }, ...FAST }, ctx);
    await driver.start();
    await waitFor(() => driver.status().state === DriverState.DOWN, 3000, 'down');
    expect(driver.status()).toMatchObject({ lastError: 'MDI_ERR_SERIAL_OPEN_FAILED', port: `tcp 127.0.0.1:${port}` });
    expect((driver.status() as { lastErrorMessage: string }).lastErrorMessage).toMatch(/ECONNREFUSED/);
    await driver.stop();
  });
});
