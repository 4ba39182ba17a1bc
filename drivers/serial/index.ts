/**
 * Serial devices: the transport (serial port or TCP terminal server), and the device protocols
 * carried on it — Masimo ASCII 1, Dräger MEDIBUS, B. Braun BCC. The gateway reaches this folder
 * only through `serialDriver` (registered in src/drivers.ts).
 */
import { zoneOffsets } from '../../src/codec/hl7-time.js';
import type { DriverContext, DriverFactory } from '../../src/driver.js';
import { loadVendorCodes, type VendorCodes } from '../../src/mappings.js';
import type { BackoffOptions } from '../../src/reconnect.js';
import { BbraunSession, BCC_LINE_DEFAULTS, type BbraunOptions } from './bbraun.js';
import { SerialDeviceDriver, type SerialProtocolName } from './driver.js';
import type { LinkOpener } from './link.js';
import { MASIMO_LINE_DEFAULTS, MasimoSession, type MasimoOptions } from './masimo.js';
import { MEDIBUS_LINE_DEFAULTS, MedibusSession, type MedibusOptions } from './medibus.js';
import { serialLinkOpener, type SerialLineSettings } from './port.js';
import type { LineDefaults, ProtocolSession, SessionIo } from './session.js';
import { tcpLinkOpener } from './tcp.js';
import { decodeCapture, parseHexDump, type CaptureDecoded } from './capture.js';
import { listSerialPorts, type SerialPortListing } from './port.js';

export { SerialDeviceDriver, serialDriverName, type SerialDriverStatus, type SerialGap, type SerialProtocolName } from './driver.js';
export { scanDevPorts, type SerialPortListing } from './port.js';
export { parseHexDump, type CaptureDecoded, type CaptureProblem } from './capture.js';

/** The protocols, for option parsing. */
export const SERIAL_PROTOCOLS: readonly SerialProtocolName[] = ['masimo', 'medibus', 'bbraun'];

/** Settings common to every serial device. Line settings left out take the protocol's defaults. */
interface CommonDeviceOptions {
  /** Registered id of the device (B. Braun: of the SpaceCom; pumps get `/pump-<slot>`). */
  readonly deviceId: string;
  /** Serial port path (`/dev/ttyUSB0`, `/dev/serial/by-id/…`). Exactly one of `port` and `tcp`. */
  readonly port?: string;
  /** A TCP terminal server or B. Braun ComDevice instead of a local port. */
  readonly tcp?: { readonly host: string; readonly port: number; readonly connectTimeoutMs?: number };
  readonly baudRate?: number;
  readonly dataBits?: 5 | 6 | 7 | 8;
  readonly parity?: 'none' | 'even' | 'odd';
  readonly stopBits?: 1 | 1.5 | 2;
  readonly rtscts?: boolean;
  readonly xon?: boolean;
  readonly xoff?: boolean;
  /** Reopen backoff; defaults: 500 ms doubling to 30 s, ±20 % jitter. */
  readonly reconnect?: Partial<BackoffOptions>;
  /** No valid frame for this long (ms) counts as down. Default per protocol. */
  readonly silenceTimeoutMs?: number;
  /** Zone of the device clock (Masimo prints local time). Default: the gateway's zone. */
  readonly timezone?: string;
}

/** One configured serial device, by protocol. */
export type SerialDeviceOptions =
  | (CommonDeviceOptions & { readonly protocol: 'masimo' } & MasimoOptions)
  | (CommonDeviceOptions & { readonly protocol: 'medibus' } & MedibusOptions)
  | (CommonDeviceOptions & { readonly protocol: 'bbraun' } & BbraunOptions);

/** Line settings each protocol's devices ship with. */
export const PROTOCOL_LINE_DEFAULTS: Readonly<Record<SerialProtocolName, LineDefaults>> = {
  masimo: MASIMO_LINE_DEFAULTS,
  medibus: MEDIBUS_LINE_DEFAULTS,
  bbraun: BCC_LINE_DEFAULTS,
};

/** Vendor table (mappings/vendors/) of each protocol. */
export const PROTOCOL_VENDOR_TABLE: Readonly<Record<SerialProtocolName, string>> = {
  masimo: 'masimo',
  medibus: 'draeger-medibus',
  bbraun: 'bbraun-bcc',
};

const vendorCache = new Map<string, VendorCodes>();

/** The vendor table of a protocol, loaded once per process (a bad row fails the start). */
export function vendorCodesFor(protocol: SerialProtocolName): VendorCodes {
  const vendor = PROTOCOL_VENDOR_TABLE[protocol];
  let codes = vendorCache.get(vendor);
  if (!codes) {
    codes = loadVendorCodes(vendor);
    vendorCache.set(vendor, codes);
  }
  return codes;
}

/**
 * How long silence means "down", by protocol: Masimo sends every second; MEDIBUS is polled
 * every second; BCC answers at the poll interval (cyclic mode: whenever the ComDevice likes).
 */
function defaultSilenceMs(options: SerialDeviceOptions): number {
  switch (options.protocol) {
    case 'masimo':
      return 5000;
    case 'medibus':
      return Math.max(5000, 3 * (options.pollIntervalMs ?? 1000));
    case 'bbraun':
      return options.pollIntervalMs === 0 ? 60_000 : 2 * (options.pollIntervalMs ?? 5000) + (options.responseTimeoutMs ?? 5000);
  }
}

/** The link of a device: its TCP endpoint, or its serial port with line settings filled in. */
export function linkFor(options: SerialDeviceOptions): LinkOpener {
  if (options.tcp) return tcpLinkOpener(options.tcp);
  if (!options.port) throw new RangeError(`serial device ${options.deviceId}: give "port" or "tcp"`);
  const d = PROTOCOL_LINE_DEFAULTS[options.protocol];
  const settings: SerialLineSettings = {
    path: options.port,
    baudRate: options.baudRate ?? d.baudRate,
    dataBits: options.dataBits ?? d.dataBits,
    parity: options.parity ?? (d.parity === 'even' || d.parity === 'odd' ? d.parity : 'none'),
    stopBits: options.stopBits ?? d.stopBits,
    rtscts: options.rtscts ?? false,
    xon: options.xon ?? false,
    xoff: options.xoff ?? false,
  };
  return serialLinkOpener(settings);
}

/** The session factory of a device's protocol. */
export function sessionFactory(options: SerialDeviceOptions): (io: SessionIo) => ProtocolSession {
  const codes = vendorCodesFor(options.protocol);
  switch (options.protocol) {
    case 'masimo':
      return (io) => new MasimoSession(io, codes, options);
    case 'medibus':
      return (io) => new MedibusSession(io, codes, options);
    case 'bbraun':
      return (io) => new BbraunSession(io, codes, options);
  }
}

/** The serial driver factory, with what the offline tools (`mdi inspect`, `mdi serial-ports`) need. */
export interface SerialDriverFactory extends DriverFactory<SerialDeviceOptions> {
  create(options: SerialDeviceOptions, ctx: DriverContext): SerialDeviceDriver;
  decodeCapture(protocol: SerialProtocolName, bytes: Buffer, options: { timezone: string; deviceId?: string; received?: number }): CaptureDecoded;
  parseHexDump(text: string): Buffer;
  listPorts(): Promise<SerialPortListing[]>;
}

/**
 * Serial devices (Masimo, Dräger MEDIBUS, B. Braun BCC) over a serial port or TCP.
 * `create` throws for settings that can never work (no port and no tcp, an unknown zone, a bad
 * vendor table row); everything that can change at run time (a missing port) is retried.
 */
export const serialDriver = {
  kind: 'serial',
  create(options: SerialDeviceOptions, ctx: DriverContext): SerialDeviceDriver {
    return new SerialDeviceDriver(
      {
        deviceId: options.deviceId,
        protocol: options.protocol,
        link: linkFor(options),
        createSession: sessionFactory(options),
        zone: zoneOffsets(options.timezone ?? ctx.timezone),
        silenceTimeoutMs: options.silenceTimeoutMs ?? defaultSilenceMs(options),
        backoff: {
          initialDelayMs: options.reconnect?.initialDelayMs ?? 500,
          maxDelayMs: options.reconnect?.maxDelayMs ?? 30_000,
          factor: options.reconnect?.factor ?? 2,
          jitter: options.reconnect?.jitter ?? 0.2,
        },
      },
      ctx,
    );
  },
  /**
   * Decodes a capture file offline (`mdi inspect --protocol`), with the driver's own framers
   * and decoders. Readings of protocols without times are placed at `received` (default now).
   */
  decodeCapture(
    protocol: SerialProtocolName,
    bytes: Buffer,
    options: { timezone: string; deviceId?: string; received?: number },
  ): CaptureDecoded {
    return decodeCapture(protocol, bytes, {
      deviceId: options.deviceId ?? `capture-${protocol}`,
      zone: zoneOffsets(options.timezone),
      codes: vendorCodesFor(protocol),
      received: options.received ?? Date.now(),
    });
  },
  /** Hex dump text → bytes (`mdi inspect --hex`); RangeError naming the bad line. */
  parseHexDump,
  /** Serial ports of this machine; works without udev (see port.ts). Never throws. */
  listPorts: (): Promise<SerialPortListing[]> => listSerialPorts(),
} satisfies SerialDriverFactory;
