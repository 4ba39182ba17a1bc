/**
 * A packet-size guard in front of the embedded broker. aedes' parser (mqtt-packet) buffers a
 * whole packet before anyone sees it, up to the protocol's 256 MiB, and it does so for a client
 * that has not even authenticated yet (packets sent behind CONNECT are queued). This guard
 * reads the MQTT fixed header of every packet as the bytes pass and closes the connection as
 * soon as one announces more than `maxPacketBytes`, so no connection can hold more than that.
 *
 * MQTT fixed header: one byte of type and flags, then the remaining length as a variable byte
 * integer of 1–4 bytes, 7 bits each, least significant first [MQTT-2.2.3].
 */
import { Duplex } from 'node:stream';
import type { Socket } from 'node:net';

const TYPE = 0;
const LENGTH = 1;
const BODY = 2;

/** Tracks packet boundaries over a byte stream; `feed` returns false once a packet is too large. */
export class PacketSizeScanner {
  private state = TYPE;
  private length = 0;
  private multiplier = 1;
  private lengthBytes = 0;
  private remaining = 0;

  constructor(private readonly maxPacketBytes: number) {}

  /** Scans the next chunk; false when a packet announced more than the bound or a bad length. */
  feed(chunk: Uint8Array): boolean {
    let i = 0;
    while (i < chunk.length) {
      if (this.state === BODY) {
        const take = Math.min(this.remaining, chunk.length - i);
        this.remaining -= take;
        i += take;
        if (this.remaining === 0) this.state = TYPE;
        continue;
      }
      const byte = chunk[i++]!;
      if (this.state === TYPE) {
        this.state = LENGTH;
        this.length = 0;
        this.multiplier = 1;
        this.lengthBytes = 0;
        continue;
      }
      this.length += (byte & 0x7f) * this.multiplier;
      this.multiplier *= 128;
      this.lengthBytes++;
      if (this.length > this.maxPacketBytes) return false;
      if (byte & 0x80) {
        if (this.lengthBytes >= 4) return false; // [MQTT-1.5.5] at most four bytes
        continue;
      }
      this.remaining = this.length;
      this.state = this.remaining === 0 ? TYPE : BODY;
    }
    return true;
  }
}

/**
 * Wraps a socket for `aedes.handle()`: reads pass the scanner, writes go straight to the socket
 * (with its backpressure: the write callback fires when the socket took the bytes).
 * `onTooLarge` is called once before the connection is destroyed.
 */
export function guardSocket(socket: Socket, maxPacketBytes: number, onTooLarge: () => void): Duplex {
  const scanner = new PacketSizeScanner(maxPacketBytes);
  const duplex = new Duplex({
    read() {
      socket.resume();
    },
    write(chunk: Buffer, _encoding, callback) {
      if (socket.destroyed) return callback();
      socket.write(chunk, (err) => callback(err ?? null));
    },
    final(callback) {
      socket.end(() => callback());
    },
    destroy(err, callback) {
      socket.destroy();
      callback(err);
    },
  });
  socket.on('data', (chunk: Buffer) => {
    if (!scanner.feed(chunk)) {
      onTooLarge();
      socket.destroy();
      duplex.destroy();
      return;
    }
    if (!duplex.push(chunk)) socket.pause();
  });
  socket.on('end', () => duplex.push(null));
  socket.on('error', (err) => duplex.destroy(err));
  socket.on('close', () => duplex.destroy());
  return duplex;
}
