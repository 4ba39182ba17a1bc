import type { DriverContext, DriverFactory } from '../../src/driver.js';
import { AdtHandler, type AdtTarget } from './adt.js';
import { MllpListener, type MllpListenerOptions } from './listener.js';

export { AdtHandler, type AdtTarget } from './adt.js';
export { MllpListener, PCD01_HANDLER, type MllpListenerOptions, type MllpMessageHandler, type MllpSession } from './listener.js';

/** IHE PCD-01 (HL7 v2 ORU^R01) over MLLP/TCP. */
export const mllpDriver = {
  kind: 'mllp',
  create: (options: MllpListenerOptions, ctx: DriverContext) => new MllpListener(options, ctx),
} satisfies DriverFactory<MllpListenerOptions>;

/** Options of the ADT listener: config `adt` (AdtConfig) plus the bindings it applies events to. */
export interface AdtListenerOptions {
  readonly host: string;
  readonly port: number;
  readonly maxMessageBytes: number;
  readonly maxConnections: number;
  /** `Bindings` (src/registry/bindings.ts). */
  readonly bindings: AdtTarget;
  /** Unanswered messages per connection before reading pauses. Default 16 (ADT feeds send one at a time). */
  readonly maxInFlight?: number;
  /** Default 0: ADT feeds keep one connection open for days and may be quiet for hours. */
  readonly idleTimeoutMs?: number;
}

/** HL7 v2 ADT (A01/A02/A03/A04/A08/A11/A12/A13) over MLLP/TCP → bed occupancy. */
export const adtDriver = {
  kind: 'adt',
  create: (options: AdtListenerOptions, ctx: DriverContext) =>
    new MllpListener(
      {
        host: options.host,
        port: options.port,
        maxMessageBytes: options.maxMessageBytes,
        maxConnections: options.maxConnections,
        maxInFlight: options.maxInFlight ?? 16,
        idleTimeoutMs: options.idleTimeoutMs ?? 0,
      },
      ctx,
      new AdtHandler(options.bindings),
    ),
} satisfies DriverFactory<AdtListenerOptions>;
