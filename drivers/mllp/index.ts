import type { DriverContext, DriverFactory } from '../../src/driver.js';
import { MllpListener, type MllpListenerOptions } from './listener.js';

export { MllpListener, type MllpListenerOptions } from './listener.js';

/** IHE PCD-01 (HL7 v2 ORU^R01) over MLLP/TCP. */
export const mllpDriver = {
  kind: 'mllp',
  create: (options: MllpListenerOptions, ctx: DriverContext) => new MllpListener(options, ctx),
} satisfies DriverFactory<MllpListenerOptions>;
