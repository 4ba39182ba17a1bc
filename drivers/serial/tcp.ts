/**
 * Serial protocols over TCP: a B. Braun ComDevice (BCC on port 4001) or a serial-to-Ethernet
 * terminal server (Moxa NPort and the like in TCP server mode). The gateway is the client.
 */
import { connect, type Socket } from 'node:net';
import { ErrorCode } from '../../src/errors.js';
import { abortedError, LinkError, type Link, type LinkEvents, type LinkOpener } from './link.js';

/** Where the terminal server or ComDevice listens. */
export interface TcpLinkSettings {
  readonly host: string;
  readonly port: number;
  /**
   * Give up a connection attempt after this long (ms). Default 5000: a terminal server on the
   * ward LAN answers in milliseconds; a SYN that is never answered must not hold the retry loop.
   */
  readonly connectTimeoutMs?: number;
}

/** TCP keep-alive probe start (ms): finds a peer that vanished without a FIN (power cut). */
const KEEPALIVE_MS = 10_000;

/**
 * Connects with a timeout and TCP keep-alive. A refused or unanswered connection rejects with
 * `MDI_ERR_SERIAL_OPEN_FAILED` (an unknown host with `…_PORT_NOT_FOUND`); a peer that closes or
 * resets reports the close with `MDI_ERR_SERIAL_DISCONNECTED`.
 */
export function tcpLinkOpener(settings: TcpLinkSettings): LinkOpener {
  return {
    address: `tcp ${settings.host}:${settings.port}`,
    settings: 'tcp',
    open: (events, signal) => openTcp(settings, events, signal),
  };
}

function openTcp(settings: TcpLinkSettings, events: LinkEvents, signal: AbortSignal): Promise<Link> {
  if (signal.aborted) return Promise.reject(abortedError());
  const where = `${settings.host}:${settings.port}`;
  return new Promise<Link>((resolve, reject) => {
    const socket: Socket = connect({ host: settings.host, port: settings.port, noDelay: true });
    let settled = false;
    const fail = (err: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      socket.destroy();
      reject(err);
    };
    const timer = setTimeout(
      () => fail(new LinkError(ErrorCode.SERIAL_OPEN_FAILED, `no TCP connection to ${where} within ${settings.connectTimeoutMs ?? 5000} ms`)),
      settings.connectTimeoutMs ?? 5000,
    );
    const onAbort = () => fail(abortedError());
    signal.addEventListener('abort', onAbort, { once: true });
    socket.once('error', (err: NodeJS.ErrnoException) =>
      fail(
        new LinkError(
          err.code === 'ENOTFOUND' ? ErrorCode.SERIAL_PORT_NOT_FOUND : ErrorCode.SERIAL_OPEN_FAILED,
          `cannot connect to ${where}: ${err.code ?? err.message}`,
        ),
      ),
    );
    socket.once('connect', () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      socket.removeAllListeners('error');
      socket.setKeepAlive(true, KEEPALIVE_MS);
      let closed = false;
      let lastError: Error | null = null;
      const waiters: (() => void)[] = [];
      let closing = false;
      socket.on('data', (chunk: Buffer) => events.onData(chunk));
      socket.on('error', (err: NodeJS.ErrnoException) => {
        lastError = new LinkError(ErrorCode.SERIAL_DISCONNECTED, `connection to ${where} failed: ${err.code ?? err.message}`);
      });
      socket.on('close', () => {
        if (closed) return;
        closed = true;
        events.onClose(
          closing ? null : (lastError ?? new LinkError(ErrorCode.SERIAL_DISCONNECTED, `${where} closed the connection`)),
        );
        for (const waiter of waiters.splice(0)) waiter();
      });
      resolve({
        write: (bytes) => {
          if (!closed) socket.write(bytes);
        },
        pause: () => socket.pause(),
        resume: () => socket.resume(),
        close: () =>
          new Promise<void>((done) => {
            if (closed) return done();
            closing = true;
            waiters.push(done);
            socket.destroy();
          }),
      });
    });
  });
}
