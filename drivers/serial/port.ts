/**
 * Serial ports through the real `serialport` bindings: open with the configured line settings,
 * report a vanished port as a close, and list ports also where udev is missing.
 */
import { existsSync, readdirSync, readlinkSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { SerialPort } from 'serialport';
import { ErrorCode } from '../../src/errors.js';
import { abortedError, LinkError, type Link, type LinkEvents, type LinkOpener } from './link.js';

/** Line settings of a serial port. Parity mark/space exist on other systems, not on Linux. */
export interface SerialLineSettings {
  readonly path: string;
  readonly baudRate: number;
  readonly dataBits: 5 | 6 | 7 | 8;
  readonly parity: 'none' | 'even' | 'odd';
  readonly stopBits: 1 | 1.5 | 2;
  /** Hardware flow control (RTS/CTS). */
  readonly rtscts: boolean;
  /** Software flow control: stop sending on XOFF (DC3) … */
  readonly xon: boolean;
  /** … and ask the device to stop with XOFF when our buffer fills. */
  readonly xoff: boolean;
}

/** `9600 8N1`, `19200 8E1 RTS/CTS`. */
export function describeLine(s: Omit<SerialLineSettings, 'path'>): string {
  const parity = s.parity === 'none' ? 'N' : s.parity === 'even' ? 'E' : 'O';
  const flow = [s.rtscts ? 'RTS/CTS' : '', s.xon || s.xoff ? 'XON/XOFF' : ''].filter(Boolean).join(' ');
  return `${s.baudRate} ${s.dataBits}${parity}${s.stopBits}${flow ? ` ${flow}` : ''}`;
}

/**
 * Opens `settings.path` as a serial port. A path that does not exist (adapter not plugged in
 * yet, pulled) rejects with `MDI_ERR_SERIAL_PORT_NOT_FOUND`; any other failure (busy, no
 * permission, settings the driver refuses) with `MDI_ERR_SERIAL_OPEN_FAILED`. The port is
 * opened with an exclusive lock, so two gateways (or a gateway and a terminal program) cannot
 * read the same device and each get half of its bytes.
 */
export function serialLinkOpener(settings: SerialLineSettings): LinkOpener {
  return {
    address: settings.path,
    settings: describeLine(settings),
    open: (events, signal) => openSerial(settings, events, signal),
  };
}

function openSerial(settings: SerialLineSettings, events: LinkEvents, signal: AbortSignal): Promise<Link> {
  if (signal.aborted) return Promise.reject(abortedError());
  if (!existsSync(settings.path)) {
    return Promise.reject(new LinkError(ErrorCode.SERIAL_PORT_NOT_FOUND, `${settings.path} does not exist${availableHint(settings.path)}`));
  }
  return new Promise<Link>((resolvePromise, reject) => {
    let port: SerialPort;
    try {
      port = new SerialPort({
        path: settings.path,
        baudRate: settings.baudRate,
        dataBits: settings.dataBits,
        parity: settings.parity,
        stopBits: settings.stopBits,
        rtscts: settings.rtscts,
        xon: settings.xon,
        xoff: settings.xoff,
        lock: true,
        autoOpen: false,
      });
    } catch (err) {
      reject(new LinkError(ErrorCode.SERIAL_OPEN_FAILED, `cannot open ${settings.path}: ${(err as Error).message}`, { cause: err }));
      return;
    }
    let closed = false;
    let closeWaiters: (() => void)[] = [];
    const onAbortDuringOpen = () => {
      // Opening is not cancellable in the binding: close it as soon as it is open.
      reject(abortedError());
    };
    signal.addEventListener('abort', onAbortDuringOpen, { once: true });
    port.open((err) => {
      signal.removeEventListener('abort', onAbortDuringOpen);
      if (err) {
        reject(new LinkError(ErrorCode.SERIAL_OPEN_FAILED, `cannot open ${settings.path}: ${cleanMessage(err.message)}`, { cause: err }));
        return;
      }
      if (signal.aborted) {
        port.close(() => undefined);
        return;
      }
      port.on('data', (chunk: Buffer) => events.onData(chunk));
      port.on('error', (error: Error) => {
        // Write and read errors other than a cancel: the port is unusable; closing it reports
        // the close once, through the 'close' handler below.
        if (port.isOpen) port.close(() => undefined);
        else finishClose(error);
      });
      port.on('close', (error?: Error & { disconnected?: boolean }) => {
        finishClose(
          error?.disconnected
            ? new LinkError(ErrorCode.SERIAL_DISCONNECTED, `${settings.path} was closed by the system (device or adapter unplugged?)`)
            : error ?? null,
        );
      });
      const finishClose = (error: Error | null) => {
        if (closed) return;
        closed = true;
        events.onClose(error);
        for (const waiter of closeWaiters) waiter();
        closeWaiters = [];
      };
      // The device node we opened (through any symlink): if the path later points nowhere or
      // to another node, the adapter is gone even when the binding never reported a close.
      const openedNode = deviceNode(settings.path);
      resolvePromise({
        vanished: () => openedNode !== null && deviceNode(settings.path) !== openedNode,
        write: (bytes) => {
          if (!closed && port.isOpen) port.write(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
        },
        pause: () => port.pause(),
        resume: () => port.resume(),
        close: () =>
          new Promise<void>((done) => {
            if (closed) return done();
            closeWaiters.push(done);
            if (port.isOpen) port.close(() => undefined);
            else finishClose(null);
          }),
      });
    });
  });
}

/** `dev:ino` of the node a path leads to, or null when it leads nowhere. */
function deviceNode(path: string): string | null {
  try {
    const st = statSync(path);
    return `${st.dev}:${st.ino}`;
  } catch {
    return null;
  }
}

/** The binding's messages repeat "Error: "; keep them short and free of stack noise. */
function cleanMessage(message: string): string {
  return message.replace(/^(Error: )+/, '');
}

/** `(ports here: /dev/ttyUSB1, /dev/ttyS0)` — helps an operator who typed the wrong number. */
function availableHint(path: string): string {
  if (!path.startsWith('/dev/')) return '';
  const ports = scanDevPorts()
    .map((p) => p.path)
    .filter((p) => !/\/ttyS([4-9]|\d{2,})$/.test(p)) // the 32 legacy ttyS nodes every PC has
    .slice(0, 8);
  return ports.length > 0 ? ` (serial ports here: ${ports.join(', ')})` : ' (no serial ports found)';
}

/** One serial port the system knows. */
export interface SerialPortListing {
  readonly path: string;
  readonly manufacturer?: string;
  readonly serialNumber?: string;
  readonly vendorId?: string;
  readonly productId?: string;
  /** Stable names from /dev/serial/by-id that point to this port. */
  readonly byId?: string[];
  /** `udev` when `SerialPort.list()` worked; `dev` when /dev was scanned instead. */
  readonly source: 'udev' | 'dev';
}

/**
 * Lists serial ports. `SerialPort.list()` asks `udevadm`, which is missing in many containers
 * and minimal installs (it throws `spawn udevadm ENOENT`); then /dev is scanned for the usual
 * device names and /dev/serial/by-id links instead. Never throws.
 */
export async function listSerialPorts(): Promise<SerialPortListing[]> {
  try {
    const ports = await SerialPort.list();
    return ports.map((p) => ({
      path: p.path,
      ...(p.manufacturer ? { manufacturer: p.manufacturer } : {}),
      ...(p.serialNumber ? { serialNumber: p.serialNumber } : {}),
      ...(p.vendorId ? { vendorId: p.vendorId } : {}),
      ...(p.productId ? { productId: p.productId } : {}),
      source: 'udev' as const,
    }));
  } catch {
    return scanDevPorts();
  }
}

const DEV_NAMES = /^(ttyUSB|ttyACM|ttyS|ttyAMA|ttyXRUSB|ttyMXUSB|rfcomm)\d+$/;

/** The /dev scan behind `listSerialPorts` when udev is not available. */
export function scanDevPorts(dev = '/dev'): SerialPortListing[] {
  const byId = new Map<string, string[]>();
  try {
    const dir = join(dev, 'serial', 'by-id');
    for (const name of readdirSync(dir)) {
      const target = resolve(dir, readlinkSync(join(dir, name)));
      byId.set(target, [...(byId.get(target) ?? []), join(dir, name)]);
    }
  } catch {
    // no /dev/serial/by-id: no USB serial adapters, or no udev to create the links
  }
  let names: string[] = [];
  try {
    names = readdirSync(dev).filter((n) => DEV_NAMES.test(n));
  } catch {
    return [];
  }
  return names
    .sort((a, b) => a.localeCompare(b, 'en', { numeric: true }))
    .map((name) => {
      const path = join(dev, name);
      const links = byId.get(path);
      return { path, ...(links ? { byId: links } : {}), source: 'dev' as const };
    });
}
