/**
 * Client mode, kill -9: the gateway (a real `mdi start` process) is killed while it drains a
 * backlog from Mosquitto. Because PUBACK follows the durable commit and the session is
 * persistent, the restarted gateway gets everything it had not acknowledged: every reading is
 * stored, and — the messages carry an `id` — none twice.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import mqtt from 'mqtt';
import { afterEach, describe, expect, it } from 'vitest';
import { readingsTopic } from '../../drivers/mqtt/payload.js';
import { startChildGateway, type ChildGateway } from '../helpers/child-gateway.js';
import { startMosquitto, type TestMosquitto } from '../helpers/mosquitto.js';

async function stored(gw: ChildGateway): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${gw.httpPort}/api/status`);
  const body = (await res.json()) as { drivers: { kind: string; counters: Record<string, number> }[] };
  return body.drivers.filter((d) => d.kind === 'mqtt-client').reduce((n, d) => n + (d.counters.readings ?? 0), 0);
}

async function until(check: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe('mqtt client mode: kill -9 of the gateway', () => {
  let broker: TestMosquitto | null = null;
  let dataDir = '';
  const children: ChildGateway[] = [];
  afterEach(async () => {
    for (const c of children.splice(0)) await c.terminate().catch(() => undefined);
    await broker?.close();
    broker = null;
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  it('loses nothing it had not acknowledged, and stores nothing twice', async () => {
    broker = await startMosquitto();
    dataDir = mkdtempSync(join(tmpdir(), 'mdi-mqtt-crash-'));
    const yaml = `fhir: { enabled: false }\nmqtt:\n  subscribe:\n    - { url: "${broker.url}", clientId: crash-gw, reconnect: { initialDelayMs: 100, maxDelayMs: 1000 } }\n`;
    const first = await startChildGateway(dataDir, yaml);
    children.push(first);
    const pub = await mqtt.connectAsync(broker.url, { clientId: 'crash-pub', protocolVersion: 5 });
    try {
      // The subscription exists once a probe reading comes through.
      await until(
        async () => {
          await pub.publishAsync(readingsTopic('probe'), JSON.stringify({ ts: Date.now(), readings: [{ code: '150456', value: 1, unit: '%' }] }), { qos: 1 });
          return (await stored(first)) > 0;
        },
        15_000,
        'the subscription',
      );
      const total = 3000;
      const published = Promise.all(
        Array.from({ length: total }, (_, k) =>
          pub.publishAsync(readingsTopic('bed-1'), JSON.stringify({ ts: Date.now(), id: `m${k}`, readings: [{ code: '147842', value: k, unit: '/min' }] }), { qos: 1 }),
        ),
      );
      await until(async () => (await stored(first)) > 300, 15_000, 'part of the backlog stored');
      await first.kill9();
      children.splice(0);
      const db0 = () => {
        const db = new Database(join(dataDir, 'mdi.sqlite'), { readonly: true });
        try {
          return db.prepare("SELECT COUNT(*) AS n, COUNT(DISTINCT value) AS d FROM observations WHERE device = 'bed-1'").get() as { n: number; d: number };
        } finally {
          db.close();
        }
      };
      expect(db0().d, 'killed in the middle of the backlog').toBeLessThan(total);
      // Everything is with the broker by now (published while the gateway was down, or un-acked).
      await published;
      const second = await startChildGateway(dataDir, yaml);
      children.push(second);
      await until(async () => db0().d >= total, 30_000, 'every reading after the restart');
      await second.terminate();
      children.splice(0);
      const { n, d } = db0();
      expect(d).toBe(total);
      expect(n, 'no reading stored twice (the message id makes a redelivery a no-op)').toBe(total);
    } finally {
      await pub.endAsync(true);
    }
  });
});
