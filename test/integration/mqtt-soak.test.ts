/**
 * Soak (opt-in: `MDI_SOAK=1 npx vitest run test/integration/mqtt-soak.test.ts`; length in
 * seconds by `MDI_SOAK_SECONDS`, default 600): a fleet on the embedded broker of a whole
 * gateway for minutes. Every acknowledged reading is stored, none twice, no errors, and the
 * heap does not grow with the number of messages.
 */
import mqtt from 'mqtt';
import { afterAll, describe, expect, it } from 'vitest';
import { readingsTopic } from '../../drivers/mqtt/payload.js';
import { fleetBrokerDevices, fleetDevices, runMqttSimulation } from '../../simulators/mqtt.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';

const SOAK = process.env.MDI_SOAK === '1';
const seconds = Number(process.env.MDI_SOAK_SECONDS ?? 600);

describe.skipIf(!SOAK)('mqtt soak (MDI_SOAK=1)', () => {
  let gw: TestGateway | null = null;
  afterAll(async () => {
    await gw?.stop();
  });

  it(
    `200 devices × 2 msgs/s for ${seconds} s through the embedded broker`,
    async () => {
      const fleet = fleetDevices(200, 'soak');
      gw = await startTestGateway({
        mqtt: { broker: { enabled: true, port: 0, host: '127.0.0.1', devices: await fleetBrokerDevices(fleet, { N: 1024, r: 8, p: 1 }) } },
      });
      const url = `mqtt://127.0.0.1:${gw.addresses.mqtt!.port}`;
      const heap: number[] = [];
      const sampler = setInterval(() => heap.push(process.memoryUsage().heapUsed), 10_000);
      // One device also sends garbage now and then: dead letters, never a reading, connection stays.
      const stray = await mqtt.connectAsync(url, { clientId: fleet[0]!.deviceId, username: fleet[0]!.deviceId, password: fleet[0]!.password, protocolVersion: 4 });
      const report = await runMqttSimulation({ url, devices: fleet.slice(1), rate: 2, durationMs: seconds * 1000, seed: 11, faultRate: 0.001 });
      await stray.publishAsync(readingsTopic(fleet[0]!.deviceId), '{"ts":', { qos: 1 });
      await stray.endAsync();
      clearInterval(sampler);
      expect(report.errors).toBe(0);
      const counts = gw.gateway.storeForTests().counts();
      expect(counts.observations).toBe(report.readings);
      expect(counts.deadLetters).toBe(report.faults + 1);
      if (heap.length >= 6) {
        // Heap after warm-up vs the end: allow noise, not growth with traffic.
        const early = heap[2]!;
        const late = heap[heap.length - 1]!;
        expect(late).toBeLessThan(early * 2 + 64 * 1024 * 1024);
      }
    },
    (seconds + 120) * 1000,
  );
});
