/**
 * The PCD-01 simulator's sender against small MLLP ACK servers on real TCP sockets (port 0).
 * The servers are test code: they decode with the MLLP codec and read MSH-10 with a plain split,
 * so nothing here depends on the gateway's HL7 reader.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { encodeFrame, MllpDecoder, type MllpError } from '../../src/codec/mllp.js';
import { ErrorCode } from '../../src/errors.js';
import { runPcd01Simulation, type Pcd01SimulationReport } from '../../simulators/pcd01.js';

interface AckServerOptions {
  /** MSA-1 for a message: AA by default. `null`: send no ACK at all. */
  answer?: (controlId: string, n: number) => 'AA' | 'AE' | 'AR' | null;
  /** Delay before each ACK, ms. */
  delayMs?: number;
  /** Called for each frame; may destroy the socket (a gateway that goes away). */
  onFrame?: (socket: Socket, controlId: string, n: number) => boolean | void;
}

interface AckServer {
  readonly server: Server;
  readonly port: number;
  /** MSH-10 of every frame received, in arrival order (retransmissions included). */
  readonly received: string[];
  readonly errors: MllpError[];
  connections: number;
  /** Most messages one connection had waiting for their ACK at once. */
  maxPending: number;
  close(): Promise<void>;
}

const servers: AckServer[] = [];

/** MSH-10 with a plain split (the test must not trust the code under test to read HL7). */
const controlIdOf = (frame: Buffer) => frame.toString('latin1').split('\r')[0]?.split('|')[9] ?? '';

async function ackServer(options: AckServerOptions = {}, port = 0): Promise<AckServer> {
  const sockets = new Set<Socket>();
  const result: AckServer = {
    server: createServer(),
    port: 0,
    received: [],
    errors: [],
    connections: 0,
    maxPending: 0,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => this.server.close(() => resolve()));
    },
  };
  result.server.on('connection', (socket) => {
    result.connections++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    let pending = 0;
    const decoder = new MllpDecoder({
      maxMessageBytes: 2 * 1024 * 1024,
      onFrame: (frame) => {
        const id = controlIdOf(frame);
        const n = result.received.push(id);
        if (options.onFrame?.(socket, id, n) === false || socket.destroyed) return;
        const code = options.answer ? options.answer(id, n) : 'AA';
        if (code === null) return;
        const ack = encodeFrame(Buffer.from(`MSH|^~\\&|TEST_GW|MDI|||20251121100000+0100||ACK^R01^ACK|A${n}|P|2.6\rMSA|${code}|${id}\r`));
        result.maxPending = Math.max(result.maxPending, ++pending);
        const send = () => {
          pending--;
          if (!socket.destroyed) socket.write(ack);
        };
        if (options.delayMs) setTimeout(send, options.delayMs);
        else send();
      },
      onError: (e) => result.errors.push(e),
    });
    socket.on('data', (chunk: Buffer) => decoder.push(chunk));
    socket.on('end', () => {
      decoder.end();
      socket.end();
    });
  });
  await new Promise<void>((resolve) => result.server.listen(port, '127.0.0.1', resolve));
  const address = result.server.address();
  (result as { port: number }).port = typeof address === 'object' && address !== null ? address.port : 0;
  servers.push(result);
  return result;
}

afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

/** Sockets and timers alive now (to prove the simulator leaves none behind). */
function handles(): { sockets: number; timers: number } {
  const info = process.getActiveResourcesInfo();
  return { sockets: info.filter((r) => r === 'TCPSocketWrap').length, timers: info.filter((r) => r === 'Timeout').length };
}

async function settled(before: { sockets: number; timers: number }): Promise<void> {
  // The server side of each closed connection goes away a moment after ours.
  for (let i = 0; i < 50; i++) {
    const now = handles();
    if (now.sockets <= before.sockets && now.timers <= before.timers) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  expect(handles()).toEqual(before);
}

function expectLatency(r: Pcd01SimulationReport, n: number): void {
  const l = r.latencyMs;
  expect(l.count).toBe(n);
  expect(l.p50).toBeGreaterThan(0);
  expect(l.p50).toBeLessThanOrEqual(l.p95);
  expect(l.p95).toBeLessThanOrEqual(l.p99);
  expect(l.p99).toBeLessThanOrEqual(l.max);
  expect(r.msgsPerSecond).toBeGreaterThan(0);
}

describe('PCD-01 simulator against an MLLP ACK server', () => {
  it('sends the requested count, one connection per device, matches AA/AE and reports latency', async () => {
    const gw = await ackServer({ answer: (_id, n) => (n % 10 === 0 ? 'AE' : 'AA') });
    const before = handles();
    const r = await runPcd01Simulation({ port: gw.port, devices: 4, rate: 0, count: 200, seed: 1, profile: 'mixed' });
    expect(r).toMatchObject({ sent: 200, resent: 0, aa: 180, ae: 20, ar: 0, timeouts: 0, errors: 0, reconnects: 0, unacknowledged: 0 });
    expect(r.unmatchedAcks + r.badAcks).toBe(0);
    expectLatency(r, 200);
    expect(gw.connections).toBe(4);
    expect(new Set(gw.received).size).toBe(200); // MSH-10 unique
    expect(gw.errors).toEqual([]);
    await settled(before);
  });

  it('keeps a window of messages in flight over fewer connections', async () => {
    const gw = await ackServer({ delayMs: 5 });
    const progress: Pcd01SimulationReport[] = [];
    const r = await runPcd01Simulation({
      port: gw.port,
      devices: 6,
      connections: 2,
      window: 8,
      rate: 0,
      count: 300,
      seed: 2,
      onProgress: (p) => progress.push(p),
      progressIntervalMs: 20,
    });
    expect(r).toMatchObject({ sent: 300, aa: 300, timeouts: 0, connections: 2, devices: 6 });
    expect(gw.connections).toBe(2);
    expect(gw.maxPending).toBeGreaterThan(1);
    expect(gw.maxPending).toBeLessThanOrEqual(8);
    expect(progress.length).toBeGreaterThan(0);
    expectLatency(r, 300);
  });

  it('paces each device at its rate and stops after the duration', async () => {
    const gw = await ackServer();
    const before = handles();
    const r = await runPcd01Simulation({ port: gw.port, devices: 2, rate: 20, durationMs: 1000, seed: 3 });
    // 2 devices × 20/s × 1 s, give or take the start phase and timer slack.
    expect(r.sent).toBeGreaterThanOrEqual(30);
    expect(r.sent).toBeLessThanOrEqual(44);
    expect(r.aa).toBe(r.sent);
    expect(r.elapsedMs).toBeGreaterThanOrEqual(990);
    expect(r.elapsedMs).toBeLessThan(2500);
    await settled(before);
  });

  it('counts timeouts when ACKs do not come, and goes on sending', async () => {
    const gw = await ackServer({ answer: (_id, n) => (n % 5 === 0 ? null : 'AA') });
    const r = await runPcd01Simulation({ port: gw.port, devices: 1, rate: 0, count: 20, ackTimeoutMs: 150, seed: 4 });
    expect(r).toMatchObject({ sent: 20, aa: 16, timeouts: 4, errors: 0 });
    expect(r.latencyMs.count).toBe(16);
  });

  it('reconnects with backoff when the gateway drops the connection, and resends what was in flight', async () => {
    let dropped = 0;
    const gw = await ackServer({
      onFrame: (socket, _id, n) => {
        if (n === 10 || n === 25) {
          dropped++;
          socket.destroy(); // gone without an ACK for this message
          return false;
        }
      },
    });
    const before = handles();
    const r = await runPcd01Simulation({ port: gw.port, devices: 1, rate: 0, count: 40, reconnectDelayMs: 20, seed: 5 });
    expect(dropped).toBe(2);
    expect(r).toMatchObject({ sent: 42, resent: 2, aa: 40, reconnects: 2, errors: 2, unacknowledged: 0 });
    expect(gw.connections).toBe(3);
    // The dropped messages came again with the same MSH-10 (a retransmission, not a new message).
    expect(gw.received[10]).toBe(gw.received[9]);
    expect(new Set(gw.received).size).toBe(40);
    await settled(before);
  });

  it('waits for a gateway that is not up yet', async () => {
    const probe = await ackServer();
    const port = probe.port;
    await probe.close();
    servers.splice(servers.indexOf(probe), 1);
    const run = runPcd01Simulation({ port, devices: 2, rate: 0, count: 10, reconnectDelayMs: 30, reconnectMaxDelayMs: 100, seed: 6 });
    await new Promise((r) => setTimeout(r, 250));
    const gw = await ackServer({}, port);
    const r = await run;
    expect(r.aa).toBe(10);
    expect(r.errors).toBeGreaterThanOrEqual(2); // refused connections, counted
    expect(gw.received).toHaveLength(10);
  });

  it('puts wire faults on the wire: garbage is reported by the gateway, a truncated frame expects no ACK', async () => {
    const gw = await ackServer();
    const r = await runPcd01Simulation({
      port: gw.port,
      devices: 1,
      rate: 0,
      count: 6,
      seed: 7,
      faultSchedule: { 1: 'garbage', 3: 'truncated', 4: 'bad-value' },
    });
    expect(r).toMatchObject({ sent: 6, aa: 5, timeouts: 0, unacknowledged: 0 });
    expect(r.faults).toMatchObject({ garbage: 1, truncated: 1, 'bad-value': 1 });
    expect(gw.errors.map((e) => [e.code, e.reason])).toEqual([
      [ErrorCode.MLLP_GARBAGE, 'garbage'],
      [ErrorCode.MLLP_TRUNCATED, 'restarted'],
    ]);
    expect(gw.received).toHaveLength(5);
  });

  it('stops at once on abort, with nothing left open', async () => {
    const gw = await ackServer({ delayMs: 2 });
    const before = handles();
    const controller = new AbortController();
    const t0 = Date.now();
    setTimeout(() => controller.abort(), 300);
    const r = await runPcd01Simulation({ port: gw.port, devices: 3, rate: 0, signal: controller.signal, seed: 8 });
    expect(Date.now() - t0).toBeLessThan(1500);
    expect(r.sent).toBeGreaterThan(0);
    expect(r.aa + r.unacknowledged).toBe(r.sent);
    expect(r.errors).toBe(0);
    await settled(before);
  });

  it('measures ACK latency: a gateway that answers after 30 ms shows it', async () => {
    const gw = await ackServer({ delayMs: 30 });
    const r = await runPcd01Simulation({ port: gw.port, devices: 2, rate: 0, count: 20, seed: 9 });
    expect(r.aa).toBe(20);
    expect(r.latencyMs.p50).toBeGreaterThanOrEqual(29);
    expect(r.latencyMs.max).toBeLessThan(1000);
    expect(r.msgsPerSecond).toBeLessThan(2 * (1000 / 30) + 5); // window 1 per connection bounds it
  });
});
