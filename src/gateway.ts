import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { ensureBootstrapToken } from './api/auth.js';
import { createApi, type Api } from './api/server.js';
import type { Config } from './config/schema.js';
import type { Driver } from './driver.js';
import { driverFactories } from './drivers.js';
import type { Logger } from './log.js';
import { loadMappings } from './mappings.js';
import { Attributor } from './pipeline/attribute.js';
import { Ingest } from './pipeline/ingest.js';
import { Normalizer } from './pipeline/normalize.js';
import { Reattributor } from './pipeline/reattribute.js';
import { DeviceDrivers, syncConfigDevices } from './registry/device-drivers.js';
import { openRegistry, type Registry } from './registry/index.js';
import { UnregisteredDevices } from './registry/unregistered.js';
import { createFhirForwarder, type FhirCharting } from './sinks/fhir/index.js';
import type { InfluxFeeder } from './sinks/influx/index.js';
import { MqttRepublisher } from './sinks/mqtt-republish.js';
import { SqliteStore } from './store/sqlite.js';

/** Bound addresses once started (ports are the real ones when the config said 0). */
export interface GatewayAddresses {
  readonly http: { host: string; port: number };
  readonly mllp: { host: string; port: number } | null;
  /** The ADT listener, or null when `adt.enabled` is false. */
  readonly adt?: { host: string; port: number } | null;
  /** The embedded MQTT broker, or null when `mqtt.broker.enabled` is false. */
  readonly mqtt?: { host: string; port: number } | null;
  /** The EPJ the gateway charts to (the embedded stand-in's URL when `fhir.baseUrl` is absent), or null. */
  readonly epj: { url: string; embedded: boolean } | null;
}

const HOUR_MS = 60 * 60 * 1000;
const DAY_MS = 24 * HOUR_MS;

/**
 * The composition root: the only place that knows every part. Start order:
 * mappings → store → registry (devices, bindings, tokens, health; config devices put into it)
 * → pipeline (normalize + attribute → commit) and re-attribution → InfluxDB feeder (only with
 * `store.influx`) → EPJ stand-in (only without `fhir.baseUrl`) → charting (outbox and
 * forwarder) → HTTP API → drivers → device health checks, then ready.
 * Stop in reverse: health checks stop (a check while drivers close would report every
 * connection lost), drivers stop accepting and finish (every in-flight message committed and
 * answered), re-attribution finishes its slice, the API closes, charting stops (requests in
 * flight are aborted; their entries stay in the outbox), the InfluxDB feeder stops (its cursor
 * stays where InfluxDB acknowledged), the store flushes and closes, the stand-in closes. Each
 * stop step runs under a timeout so one stuck part cannot keep the process alive forever.
 * Drivers start in order (the MLLP listener, the ADT listener, each registered serial device,
 * the embedded MQTT broker, each MQTT subscription) and stop in reverse.
 */
export class Gateway {
  private store: SqliteStore | null = null;
  private api: Api | null = null;
  private drivers: Driver[] = [];
  private ingest: Ingest | null = null;
  private ready = false;
  private retentionTimer: NodeJS.Timeout | null = null;
  private addresses: GatewayAddresses | null = null;
  private charting: FhirCharting | null = null;
  private epj: { url: string; close(): Promise<void> } | null = null;
  private republisher: MqttRepublisher | null = null;
  private influx: InfluxFeeder | null = null;
  private registry: Registry | null = null;
  private deviceDrivers: DeviceDrivers | null = null;
  private reattributor: Reattributor | null = null;

  constructor(
    private readonly config: Readonly<Config>,
    private readonly log: Logger,
  ) {}

  async start(): Promise<GatewayAddresses> {
    const { config, log } = this;
    // A bad mapping row must stop the start, before any device is acknowledged.
    const mappings = loadMappings();
    const dataDir = resolve(config.dataDir);
    const store = new SqliteStore({
      file: join(dataDir, 'mdi.sqlite'),
      synchronous: config.store.sqlite.synchronous,
      groupCommitMaxDelayMs: config.store.sqlite.groupCommitMaxDelayMs,
      groupCommitMaxRows: config.store.sqlite.groupCommitMaxRows,
    });
    this.store = store;
    try {
      // The registry lives in the store's file: a binding and the readings it decides commit there.
      const registry = openRegistry(store.database(), config, log, () => [...this.drivers, ...(this.deviceDrivers?.drivers() ?? [])]);
      this.registry = registry;
      const { devices, bindings, health } = registry;
      syncConfigDevices(config, devices, log);
      const attributor = new Attributor(
        { devices, bindings, clockOffsetMs: (id) => health.clockOffsetMs(devices.get(id)?.id ?? id) },
        { unregistered: config.registry.unregistered, clockDriftLimitMs: config.registry.clockDriftLimitSeconds * 1000 },
      );
      const unregistered = new UnregisteredDevices(devices, log);
      const ingest = new Ingest(new Normalizer(mappings), store, {
        attributor,
        // Recorded on this thread's connection, when the store's writer holds no lock.
        noteUnregistered: (id, source, at) => void store.exclusive(() => unregistered.note(id, source, at)),
        // Health is kept per registry device (a monitor sending as its EUI-64 is its record).
        noteBatch: (id, stats) => health.noteBatch(devices.get(id)?.id ?? id, stats),
      });
      this.ingest = ingest;
      // A binding changed for past time: stored readings follow it, and charting corrects the EPJ.
      this.reattributor = new Reattributor({ store, devices, bindings, charting: () => this.charting, log: log.child({ component: 'reattribute' }) });
      bindings.onAttributionChange((change) => this.reattributor?.enqueue(change));

      // InfluxDB: a sink that tails the store; InfluxDB down delays it, never the ingest.
      if (config.store.influx !== undefined) {
        // Loaded only when configured: most sites run on the SQLite store alone.
        const { createInfluxFeeder } = await import('./sinks/influx/index.js');
        this.influx = await createInfluxFeeder({ settings: config.store.influx, store, log });
        this.influx.start();
      }
      const charting = await this.startCharting(store);
      this.reattributor.start();
      const influx = this.influx;
      const auth = { enabled: config.http.auth.enabled, tokens: config.http.auth.tokens };
      ensureBootstrapToken({ auth, tokens: registry.tokens, dataDir, log });
      this.api = createApi({
        store,
        log,
        ready: () => this.ready,
        drivers: () => [
          ...this.drivers.map((d) => d.status()),
          ...(this.deviceDrivers ? this.deviceDrivers.drivers().map((d) => d.status()) : []),
          ...(this.republisher ? [this.republisher.status()] : []),
        ],
        counters: () => ingest.counters(),
        charting,
        influx: influx === null ? null : () => influx.status(),
        registry: { devices, bindings, audit: registry.audit, tokens: registry.tokens },
        health,
        auth,
      });
      await this.api.listen({ port: config.http.port, host: config.http.host });
      const httpAddress = this.api.server.address();
      const httpPort = typeof httpAddress === 'object' && httpAddress ? httpAddress.port : config.http.port;

      let mllp: GatewayAddresses['mllp'] = null;
      if (config.mllp.enabled) {
        const listener = driverFactories.mllp.create(
          {
            host: config.mllp.host,
            port: config.mllp.port,
            maxMessageBytes: config.mllp.maxMessageBytes,
            maxConnections: config.mllp.maxConnections,
            maxInFlight: config.mllp.maxInFlight,
            idleTimeoutMs: config.mllp.idleTimeoutMs,
          },
          ingest.contextFor(log.child({ driver: 'mllp' }), config.timezone),
        );
        this.drivers.push(listener);
        await listener.start();
        mllp = { host: config.mllp.host, port: listener.port() };
      }

      // ADT: who lies in which bed. Applied to the bindings (durable) before each ACK.
      let adt: GatewayAddresses['adt'] = null;
      if (config.adt.enabled) {
        const listener = driverFactories.adt.create(
          { host: config.adt.host, port: config.adt.port, maxMessageBytes: config.adt.maxMessageBytes, maxConnections: config.adt.maxConnections, bindings },
          ingest.contextFor(log.child({ driver: 'adt' }), config.timezone),
        );
        this.drivers.push(listener);
        await listener.start();
        adt = { host: config.adt.host, port: listener.port() };
      }

      // Serial devices (and TCP terminal servers) of the registry: start() returns at once; a
      // port that is missing or busy is retried with backoff and shows in /api/status, never
      // fails the start. Registry changes start and stop them from then on.
      const deviceDrivers = new DeviceDrivers(
        devices,
        (device) => ingest.contextFor(log.child({ driver: 'serial', device: device.id }), config.timezone),
        log,
      );
      this.deviceDrivers = deviceDrivers;
      await deviceDrivers.start();

      // MQTT: the embedded broker (a port that cannot be bound fails the start, like MLLP),
      // then each external-broker subscription (start() returns at once; a broker that is
      // down is retried with backoff and shows in /api/status).
      let mqtt: GatewayAddresses['mqtt'] = null;
      if (config.mqtt.broker.enabled) {
        const b = config.mqtt.broker;
        const broker = driverFactories.mqttBroker.create(
          {
            host: b.host,
            port: b.port,
            // The registry's active MQTT devices (the config's are in it): kept current below.
            devices: deviceDrivers.brokerCredentials(),
            maxPayloadBytes: config.mqtt.maxPayloadBytes,
            maxPacketBytes: b.maxPacketBytes,
            maxConnections: b.maxConnections,
            connectTimeoutMs: b.connectTimeoutMs,
            ...(b.tls ? { tls: b.tls } : {}),
          },
          ingest.contextFor(log.child({ driver: 'mqtt-broker' }), config.timezone),
        );
        this.drivers.push(broker);
        await broker.start();
        deviceDrivers.attachBroker(broker);
        mqtt = { host: b.host, port: broker.port() };
      }
      for (const sub of config.mqtt.subscribe) {
        const driver = driverFactories.mqttClient.create(
          { ...sub, maxPayloadBytes: config.mqtt.maxPayloadBytes },
          ingest.contextFor(log.child({ driver: 'mqtt-client', clientId: sub.clientId }), config.timezone),
        );
        this.drivers.push(driver);
        await driver.start();
      }

      // Republish: a sink that tails the store; a broker that is down delays it, never the ingest.
      const republish = config.mqtt.republish;
      if (republish.enabled && republish.url !== undefined) {
        const { auth, tls } = republish;
        const password = auth?.passwordFile !== undefined ? readFileSync(auth.passwordFile, 'utf8').replace(/\r?\n$/, '') : auth?.password;
        this.republisher = new MqttRepublisher(
          {
            url: republish.url,
            clientId: republish.clientId,
            topicRoot: republish.topicRoot,
            retain: republish.retain,
            intervalMs: republish.intervalMs,
            beds: republish.beds,
            ...(auth ? { auth: { username: auth.username, ...(password !== undefined ? { password } : {}) } } : {}),
            ...(tls ? { tls } : {}),
          },
          store,
          log.child({ sink: 'mqtt-republish' }),
        );
        this.republisher.start();
      }

      if (config.store.sqlite.retentionDays > 0) {
        const prune = () => {
          const removed = store.prune(Date.now() - config.store.sqlite.retentionDays * DAY_MS);
          if (removed.observations > 0) log.info(removed, 'retention: old readings removed');
        };
        prune();
        this.retentionTimer = setInterval(prune, HOUR_MS).unref();
      }

      const epj = charting === null ? null : { url: this.epj?.url ?? config.fhir.baseUrl ?? '', embedded: this.epj !== null };
      health.start();
      this.addresses = { http: { host: config.http.host, port: httpPort }, mllp, adt, mqtt, epj };
      this.ready = true;
      log.info({ dataDir, http: this.addresses.http, mllp, adt, mqtt, epj }, 'mdi-gateway started');
      return this.addresses;
    } catch (err) {
      await this.stop();
      throw err;
    }
  }

  async stop(): Promise<void> {
    this.ready = false;
    // First: a health check while the drivers close would report every device's connection lost.
    this.registry?.health.stop();
    if (this.retentionTimer) clearInterval(this.retentionTimer);
    this.retentionTimer = null;
    for (const driver of [...this.drivers].reverse()) {
      await withTimeout(driver.stop(), 10_000, `driver ${driver.name}`, this.log);
    }
    this.drivers = [];
    if (this.deviceDrivers) await withTimeout(this.deviceDrivers.stop(), 10_000, 'device drivers', this.log);
    this.deviceDrivers = null;
    if (this.reattributor) await withTimeout(this.reattributor.stop(), 5_000, 're-attribution', this.log);
    this.reattributor = null;
    if (this.republisher) await withTimeout(this.republisher.stop(), 5_000, 'mqtt republish', this.log);
    this.republisher = null;
    if (this.api) await withTimeout(this.api.close(), 5_000, 'http api', this.log);
    this.api = null;
    if (this.charting) await withTimeout(this.charting.stop(), 10_000, 'charting', this.log);
    this.charting = null;
    // Before the store closes: a write in flight ends within store.influx.timeoutMs.
    if (this.influx) await withTimeout(this.influx.stop(), (this.config.store.influx?.timeoutMs ?? 10_000) + 1_000, 'influx', this.log);
    this.influx = null;
    if (this.store) await this.store.close();
    this.store = null;
    if (this.epj) await withTimeout(this.epj.close(), 5_000, 'EPJ stand-in', this.log);
    this.epj = null;
  }

  /**
   * Charting into the EPJ: to `fhir.baseUrl`, or — without one — to the EPJ stand-in started
   * here on `fhir.embeddedEpj.port`, so a fresh install shows Observations at
   * `http://localhost:8090/fhir/Observation`. A stand-in that cannot listen (port taken) turns
   * charting off with an error in the log instead of stopping the gateway: readings are still
   * stored, and the outbox's cursor waits for them until charting is configured.
   */
  private async startCharting(store: SqliteStore): Promise<FhirCharting | null> {
    const { config, log } = this;
    const fhir = config.fhir;
    if (!fhir.enabled) return null;
    let baseUrl = fhir.baseUrl;
    if (baseUrl === undefined) {
      // Loaded only when used: the stand-in brings the FHIR R4 definitions (~1 s to load).
      const { startEpj } = await import('../simulators/epj/index.js');
      try {
        // Loopback only: its admin API (fault injection) has no authentication.
        this.epj = await startEpj({ port: fhir.embeddedEpj.port, host: '127.0.0.1', log });
      } catch (err) {
        log.error(
          { err, port: fhir.embeddedEpj.port },
          'the embedded EPJ stand-in could not start; charting is off (readings are stored) until fhir.embeddedEpj.port or fhir.baseUrl is set',
        );
        return null;
      }
      baseUrl = this.epj.url;
    }
    const embedded = this.epj !== null;
    const charting = createFhirForwarder({
      settings: fhir,
      baseUrl,
      store,
      log,
      // The stand-in keeps its data in memory and knows no patients: re-create Devices after a
      // restart, and create the Patients the readings name (never done for a real EPJ).
      ephemeralEpj: embedded,
      ...(embedded && fhir.subject === undefined ? { subject: 'create' as const } : {}),
    });
    await charting.start();
    this.charting = charting;
    return charting;
  }

  /** The store, for tests and the composition of later sinks. */
  storeForTests(): SqliteStore {
    if (!this.store) throw new Error('gateway not started');
    return this.store;
  }
}

async function withTimeout(work: Promise<unknown>, ms: number, what: string, log: Logger): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<void>((resolveTimeout) => {
    timer = setTimeout(() => {
      log.warn({ part: what, timeoutMs: ms }, 'stop timed out; continuing shutdown');
      resolveTimeout();
    }, ms);
  });
  try {
    await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
