/**
 * MQTT: the embedded broker (devices connect to the gateway) and client mode (the gateway
 * subscribes to an external broker). The gateway reaches this folder only through
 * `mqttBrokerDriver` and `mqttClientDriver` (registered in src/drivers.ts).
 */
import { readFileSync } from 'node:fs';
import type { DriverContext, DriverFactory } from '../../src/driver.js';
import { MqttBrokerDriver, type MqttBrokerOptions } from './broker.js';
import { MqttSubscriberDriver, type MqttSubscriberOptions } from './client.js';
import { hashSecret } from './auth.js';

export { MqttBrokerDriver, type MqttBrokerOptions, type MqttBrokerStatus, type MqttBrokerTlsOptions, type MqttDeviceCredential } from './broker.js';
export { MqttSubscriberDriver, mqttSubscriberName, redactUrl, subscriptionFilters, type MqttSubscriberOptions, type MqttSubscriberStatus, type MqttTlsOptions } from './client.js';
export { hashSecret, isSecretHash, verifySecret, SCRYPT_DEFAULTS } from './auth.js';
export {
  commandsTopic,
  decodeOptions,
  decodeReadings,
  deviceIdOfReadingsTopic,
  readingsTopic,
  DEFAULT_MAX_PAYLOAD_BYTES,
  DEVICE_ID_PATTERN,
  MqttEnvelope,
  MqttReading,
  TOPIC_ROOT,
  type DecodedMessage,
} from './payload.js';

/** The broker factory, plus what the CLI needs to configure it. */
export interface MqttBrokerFactory extends DriverFactory<MqttBrokerOptions> {
  /** The scrypt hash of a device password for `mqtt.broker.devices[].passwordHash`. */
  hashSecret(password: string): Promise<string>;
}

/** The embedded aedes broker on `mqtt.broker.port`. */
export const mqttBrokerDriver = {
  kind: 'mqtt-broker',
  create: (options: MqttBrokerOptions, ctx: DriverContext) => new MqttBrokerDriver(options, ctx),
  hashSecret: (password: string) => hashSecret(password),
} satisfies MqttBrokerFactory;

/** One `mqtt.subscribe[]` entry: `auth.passwordFile` (a mounted secret) is read here, once. */
export type MqttClientDriverOptions = Omit<MqttSubscriberOptions, 'auth'> & {
  readonly auth?: { readonly username: string; readonly password?: string; readonly passwordFile?: string };
};

/** A subscription to an external broker. */
export const mqttClientDriver = {
  kind: 'mqtt-client',
  create: (options: MqttClientDriverOptions, ctx: DriverContext) => {
    const { auth, ...rest } = options;
    const password = auth?.passwordFile !== undefined ? readFileSync(auth.passwordFile, 'utf8').replace(/\r?\n$/, '') : auth?.password;
    return new MqttSubscriberDriver(
      { ...rest, ...(auth ? { auth: { username: auth.username, ...(password !== undefined ? { password } : {}) } } : {}) },
      ctx,
    );
  },
} satisfies DriverFactory<MqttClientDriverOptions>;
