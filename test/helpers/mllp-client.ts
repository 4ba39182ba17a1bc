import { connect, type Socket } from 'node:net';
import { encodeFrame, MllpDecoder } from '../../src/codec/mllp.js';

export interface Ack {
  /** MSA-1: AA, AE or AR. */
  code: string;
  /** MSA-2: the acknowledged MSH-10. */
  controlId: string;
  /** ERR segments, as raw text. */
  errors: string[];
  /** MSH-9. */
  type: string;
  raw: Buffer;
}

/**
 * A test MLLP client: sends raw bytes, collects ACKs in order. ACK fields are read with a
 * plain split so the test does not trust the code under test to read its own output.
 */
export class MllpTestClient {
  readonly acks: Ack[] = [];
  private waiters: { count: number; resolve: () => void }[] = [];
  private readonly decoder = new MllpDecoder({
    onFrame: (frame) => {
      this.acks.push(parseAck(frame));
      this.waiters = this.waiters.filter((w) => (this.acks.length >= w.count ? (w.resolve(), false) : true));
    },
    onError: (error) => {
      throw new Error(`bad ACK framing from the gateway: ${error.message}`);
    },
  });

  private constructor(readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => this.decoder.push(chunk));
  }

  static async connect(port: number, host = '127.0.0.1'): Promise<MllpTestClient> {
    const socket = connect({ port, host, noDelay: true });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return new MllpTestClient(socket);
  }

  /** Sends one message framed. */
  send(message: Buffer): void {
    this.socket.write(encodeFrame(message));
  }

  /** Sends raw bytes as they are (to split frames, send garbage, …). */
  write(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  /** Resolves when `count` ACKs in total have arrived (rejects after `timeoutMs`). */
  waitForAcks(count: number, timeoutMs = 10_000): Promise<Ack[]> {
    if (this.acks.length >= count) return Promise.resolve(this.acks.slice(0, count));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`timed out waiting for ${count} ACKs; got ${this.acks.length}`)),
        timeoutMs,
      );
      this.waiters.push({
        count,
        resolve: () => {
          clearTimeout(timer);
          resolve(this.acks.slice(0, count));
        },
      });
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      if (this.socket.destroyed) return resolve();
      this.socket.once('close', () => resolve());
      this.socket.end();
    });
  }
}

export function parseAck(frame: Buffer): Ack {
  const segments = frame.toString('latin1').split(/\r\n|\r|\n/).filter(Boolean);
  const msh = (segments.find((s) => s.startsWith('MSH')) ?? '').split('|');
  const msa = (segments.find((s) => s.startsWith('MSA')) ?? '').split('|');
  return {
    code: msa[1] ?? '',
    controlId: msa[2] ?? '',
    errors: segments.filter((s) => s.startsWith('ERR')),
    type: msh[8] ?? '',
    raw: Buffer.from(frame),
  };
}
