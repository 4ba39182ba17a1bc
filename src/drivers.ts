/**
 * The one registry of driver factories: the only way src/ reaches drivers/. A new transport
 * is added here and wired from config in gateway.ts.
 */
import { mllpDriver } from '../drivers/mllp/index.js';

export const driverFactories = {
  mllp: mllpDriver,
} as const;
