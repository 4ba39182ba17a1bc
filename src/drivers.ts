/**
 * The one registry of driver factories: the only way src/ reaches drivers/. A new transport
 * is added here and wired from config in gateway.ts.
 */
import { adtDriver, mllpDriver } from '../drivers/mllp/index.js';
import { mqttBrokerDriver, mqttClientDriver } from '../drivers/mqtt/index.js';
import { serialDriver } from '../drivers/serial/index.js';

export const driverFactories = {
  mllp: mllpDriver,
  adt: adtDriver,
  serial: serialDriver,
  mqttBroker: mqttBrokerDriver,
  mqttClient: mqttClientDriver,
} as const;
