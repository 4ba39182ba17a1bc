import { join, resolve } from 'node:path';
import { createApi, type Api } from './api/server.js';
import type { Config } from './config/schema.js';
import type { Driver } from './driver.js';
import { driverFactories } from './drivers.js';
import type { Logger } from './log.js';
import { loadMappings } from './mappings.js';
import { Ingest } from './pipeline/ingest.js';
import { Normalizer } from './pipeline/normalize.js';
import { SqliteStore } from './store/sqlite.js';

/** Bound addresses once started (ports are the real ones when the config said 0). */
export interface GatewayAddresses {
  readonly http: { host: string; port: number };
  readonly mllp: { host: string; port: number } | null;
}

const HOUR_MS = 60 * 60 * 1000;
const DAY_MS = 24 * HOUR_MS;

/**
 * The composition root: the only place that knows every part. Start order:
 * mappings → store → pipeline → HTTP API → drivers, then ready. Stop in reverse:
 * drivers stop accepting and finish (every in-flight message committed and answered), the
 * API closes, the store flushes and closes. Each stop step runs under a timeout so one stuck
 * part cannot keep the process alive forever.
 */
export class Gateway {
  private store: SqliteStore | null = null;
  private api: Api | null = null;
  private drivers: Driver[] = [];
  private ingest: Ingest | null = null;
  private ready = false;
  private retentionTimer: NodeJS.Timeout | null = null;
  private addresses: GatewayAddresses | null = null;

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
    const ingest = new Ingest(new Normalizer(mappings), store);
    this.ingest = ingest;

    try {
      this.api = createApi({
        store,
        log,
        ready: () => this.ready,
        drivers: () => this.drivers.map((d) => d.status()),
        counters: () => ingest.counters(),
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

      if (config.store.sqlite.retentionDays > 0) {
        const prune = () => {
          const removed = store.prune(Date.now() - config.store.sqlite.retentionDays * DAY_MS);
          if (removed.observations > 0) log.info(removed, 'retention: old readings removed');
        };
        prune();
        this.retentionTimer = setInterval(prune, HOUR_MS).unref();
      }

      this.addresses = { http: { host: config.http.host, port: httpPort }, mllp };
      this.ready = true;
      log.info({ dataDir, http: this.addresses.http, mllp }, 'mdi-gateway started');
      return this.addresses;
    } catch (err) {
      await this.stop();
      throw err;
    }
  }

  async stop(): Promise<void> {
    this.ready = false;
    if (this.retentionTimer) clearInterval(this.retentionTimer);
    this.retentionTimer = null;
    for (const driver of [...this.drivers].reverse()) {
      await withTimeout(driver.stop(), 10_000, `driver ${driver.name}`, this.log);
    }
    this.drivers = [];
    if (this.api) await withTimeout(this.api.close(), 5_000, 'http api', this.log);
    this.api = null;
    if (this.store) await this.store.close();
    this.store = null;
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
