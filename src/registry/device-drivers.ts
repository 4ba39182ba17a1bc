/**
 * Registered devices decide which device drivers run: every active device with a serial
 * transport gets its serial driver, and the embedded MQTT broker admits exactly the active
 * devices with MQTT credentials. Devices listed in the config (`serial.devices`,
 * `mqtt.broker.devices`) are put into the registry at start (actor `config`), so the registry
 * is the one place that says what runs; a change through the API starts, restarts or stops the
 * driver at once.
 */
import { SerialDeviceConfig, type Config } from '../config/schema.js';
import type { Driver, DriverContext } from '../driver.js';
import { driverFactories } from '../drivers.js';
import type { Logger } from '../log.js';
import { DeviceStatus, type DeviceInput, type DeviceKind, type DeviceRecord, type DeviceRegistryApi, type DeviceTransport } from './types.js';

const CONFIG_ACTOR = 'config';

/** What a serial protocol's devices usually are (for devices declared in the config). */
const KIND_BY_PROTOCOL: Readonly<Record<string, DeviceKind>> = { masimo: 'monitor', medibus: 'ventilator', bbraun: 'pump' };

/** The MQTT credentials the embedded broker needs (drivers/mqtt MqttDeviceCredential). */
interface BrokerCredential {
  readonly deviceId: string;
  readonly username?: string;
  readonly passwordHash: string;
}

/** The embedded broker as far as this module needs it. */
export interface CredentialSink {
  setDevices(devices: readonly BrokerCredential[]): void;
}

/**
 * Puts the devices of the config into the registry: new ones are added as active, known ones
 * get the config's transport (the config wins over an API edit of the same device, and says so
 * in the audit), unregistered ones are approved. Retired devices stay retired.
 */
export function syncConfigDevices(config: Readonly<Config>, devices: DeviceRegistryApi, log: Logger): void {
  const declared: { id: string; kind: DeviceKind; transport: DeviceTransport }[] = [];
  for (const d of config.serial.devices) {
    const { deviceId, ...settings } = d;
    declared.push({ id: deviceId, kind: KIND_BY_PROTOCOL[d.protocol] ?? 'other', transport: { type: 'serial', settings } });
  }
  for (const d of config.mqtt.broker.devices) {
    declared.push({
      id: d.deviceId,
      kind: 'other',
      transport: { type: 'mqtt', clientId: d.deviceId, username: d.username ?? null, passwordHash: d.passwordHash },
    });
  }
  for (const d of declared) {
    const known = devices.get(d.id);
    if (known === null) {
      const input: DeviceInput = { id: d.id, kind: d.kind, transport: d.transport };
      devices.add(input, CONFIG_ACTOR);
    } else if (known.status === DeviceStatus.RETIRED) {
      log.warn({ device: d.id }, 'the config lists a retired device; it stays retired (approve it again through the API)');
    } else if (known.status === DeviceStatus.UNREGISTERED) {
      devices.approve(d.id, { transport: d.transport }, CONFIG_ACTOR);
    } else if (JSON.stringify(known.transport) !== JSON.stringify(d.transport)) {
      devices.update(d.id, { transport: d.transport }, CONFIG_ACTOR);
    }
  }
}

/** Runs the serial driver of every active serial device and keeps the broker's credentials current. */
export class DeviceDrivers {
  /** Running serial drivers by device id, with the settings they were started with. */
  private readonly running = new Map<string, { readonly driver: Driver; readonly settings: string }>();
  /** Driver starts and stops happen one at a time, in the order the registry changed. */
  private queue: Promise<void> = Promise.resolve();
  private broker: CredentialSink | null = null;
  private stopped = false;

  constructor(
    private readonly devices: DeviceRegistryApi,
    private readonly contextFor: (device: DeviceRecord) => DriverContext,
    private readonly log: Logger,
  ) {
    devices.onChange((event) => {
      if (this.stopped) return;
      if (event.device.transport?.type === 'mqtt' || event.before?.transport?.type === 'mqtt') this.updateBroker();
      this.enqueue(() => this.reconcile(event.device));
    });
  }

  /** Starts the drivers of the active serial devices. */
  async start(): Promise<void> {
    for (const d of this.devices.list({ status: DeviceStatus.ACTIVE })) this.enqueue(() => this.reconcile(d));
    await this.queue;
  }

  /** The broker whose allowed devices follow the registry. */
  attachBroker(broker: CredentialSink): void {
    this.broker = broker;
    this.updateBroker();
  }

  /** Credentials of the active MQTT devices, for the broker's start. */
  brokerCredentials(): BrokerCredential[] {
    const out: BrokerCredential[] = [];
    for (const d of this.devices.list({ status: DeviceStatus.ACTIVE })) {
      const t = d.transport;
      if (t?.type !== 'mqtt' || t.passwordHash === null) continue;
      out.push({ deviceId: t.clientId, passwordHash: t.passwordHash, ...(t.username !== null ? { username: t.username } : {}) });
    }
    return out;
  }

  drivers(): Driver[] {
    return [...this.running.values()].map((r) => r.driver);
  }

  /** Stops every serial driver (in-flight readings are committed first). */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.queue;
    const all = [...this.running.values()];
    this.running.clear();
    await Promise.all(all.map((r) => r.driver.stop()));
  }

  /** Waits for the starts and stops asked for so far (tests). */
  async settled(): Promise<void> {
    await this.queue;
  }

  private enqueue(work: () => Promise<void>): void {
    this.queue = this.queue.then(work).catch((err: unknown) => this.log.error({ err }, 'starting or stopping a device driver failed'));
  }

  private updateBroker(): void {
    this.broker?.setDevices(this.brokerCredentials());
  }

  /** Brings the device's serial driver in line with its record: stop the old one, start a new one if active. */
  private async reconcile(device: DeviceRecord): Promise<void> {
    const t = device.transport;
    const wanted = !this.stopped && device.status === DeviceStatus.ACTIVE && t?.type === 'serial' ? JSON.stringify(t.settings) : null;
    const old = this.running.get(device.id);
    // A change that leaves the line settings alone (vendor, location, …) keeps the link open.
    if (old !== undefined && old.settings === wanted) return;
    if (old !== undefined) {
      this.running.delete(device.id);
      await old.driver.stop();
    }
    if (wanted === null || t?.type !== 'serial') return;
    const parsed = SerialDeviceConfig.safeParse({ ...t.settings, deviceId: device.id });
    if (!parsed.success) {
      // The registry validated the settings when they were saved; a schema change since can still refuse them.
      this.log.error({ device: device.id, problem: parsed.error.issues[0]?.message }, 'serial settings of a registered device are not usable; its driver does not run');
      return;
    }
    const driver = driverFactories.serial.create(parsed.data, this.contextFor(device));
    this.running.set(device.id, { driver, settings: wanted });
    await driver.start();
  }
}
