import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import Database from 'better-sqlite3';
import { startChildGateway } from '../helpers/child-gateway.js';
import { MllpTestClient } from '../helpers/mllp-client.js';
import { HR_ROW, pcd01Message, SPO2_ROW } from '../helpers/pcd01-message.js';

describe('kill -9 of the gateway under load', () => {
  it('loses nothing that was ACKed', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'mdi-crash-'));
    const gw = await startChildGateway(dataDir);
    const clients = await Promise.all(Array.from({ length: 4 }, () => MllpTestClient.connect(gw.mllpPort)));
    const rows = Array.from({ length: 10 }, (_, i) => (i % 2 ? HR_ROW : SPO2_ROW));
    let sent = 0;
    // Keep every connection busy with a window of unacknowledged messages until the kill.
    const pump = (client: MllpTestClient, c: number) => {
      const target = client.acks.length + 32;
      while (sent < 1_000_000 && clientSent[c]! < target) {
        client.send(pcd01Message({ controlId: `K${c}-${clientSent[c]}`, rows }));
        clientSent[c]!++;
        sent++;
      }
    };
    const clientSent = clients.map(() => 0);
    const timer = setInterval(() => clients.forEach(pump), 2);
    await expect.poll(() => clients.reduce((n, c) => n + c.acks.length, 0), { timeout: 20_000 }).toBeGreaterThan(2000);
    await gw.kill9();
    clearInterval(timer);

    const acked = clients.flatMap((c) => c.acks.filter((a) => a.code === 'AA').map((a) => a.controlId));
    expect(acked.length).toBeGreaterThan(2000);
    await Promise.all(clients.map((c) => c.close().catch(() => undefined)));

    // Restart on the same data: it must come up on the crashed store.
    const again = await startChildGateway(dataDir);
    const health = await fetch(`http://127.0.0.1:${again.httpPort}/health`);
    expect(health.status).toBe(200);
    expect(await again.terminate()).toBe(0);

    const db = new Database(join(dataDir, 'mdi.sqlite'), { readonly: true });
    const committed = db.prepare('SELECT observations FROM messages WHERE control_id = ?').pluck();
    const missing = acked.filter((id) => committed.get(id) !== rows.length);
    const observations = db.prepare('SELECT count(*) FROM observations').pluck().get() as number;
    db.close();
    expect(missing).toEqual([]);
    expect(observations).toBeGreaterThanOrEqual(acked.length * rows.length);
  }, 60_000);
});
