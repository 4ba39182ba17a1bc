/**
 * Republish: normalized Observations go out to an MQTT broker as
 * `mdi/v1/beds/<bed>/<metric>` (retained: a dashboard that subscribes sees the latest value at
 * once), for bedside dashboards, central stations and other consumers.
 *
 * What is in a message, and what never is: time (ISO-8601 with the device's offset), value or
 * text, UCUM unit, metric (MDC refid), MDC code, LOINC, device id and quality flags. No patient
 * identity, neither in topics nor in payloads: a bed is a place, and whoever may see a bed's
 * monitor already knows who lies there; the binding to a patient stays in the gateway.
 *
 * How: the republisher tails the store from its own cursor (like the EPJ outbox), so it never
 * slows the commit path and resumes after a restart. Per batch only the newest reading of each
 * topic is published (retained "latest value" semantics; a backlog is not replayed reading by
 * reading). The cursor moves only after the broker acknowledged the batch (QoS 1), so a broker
 * outage delays values and loses none of the latest ones. Bed: `beds[deviceId]` from the
 * config when listed, else the reading's location: the bed its device was bound to at the
 * reading's time (registry), or the one its message carried (PCD-01 PV1-3); `ward/room/bed` →
 * `ward.room.bed`. Without one the reading is skipped (counted `noBed`).
 */
import { readFileSync } from 'node:fs';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { formatIsoTime } from '../codec/hl7-time.js';
import type { DriverStatus } from '../driver.js';
import { ErrorCode } from '../errors.js';
import type { Logger } from '../log.js';
import { qualityNames } from '../model/measurement.js';
import type { Observation } from '../model/observation.js';
import { Backoff, DEFAULT_BACKOFF } from '../reconnect.js';
import type { StoredObservation } from '../store/store.js';

/** The cursor name in the store's `cursors` table. */
export const REPUBLISH_CURSOR = 'mqtt-republish';

/** What the republisher reads from the store. */
export interface RepublishStore {
  observationsAfter(afterId: number, limit: number): StoredObservation[];
  cursor(name: string): number;
  setCursor(name: string, position: number): void;
  /** Runs a write (the cursor move) when it need not wait for the store's write lock. */
  exclusive<T>(fn: () => T): Promise<T>;
}

/** Settings (`mqtt.republish`). */
export interface RepublishOptions {
  /** The broker to publish to: `mqtt://host:1883`, `mqtts://…`. */
  readonly url: string;
  readonly clientId: string;
  /** Topic prefix; default `mdi/v1/beds`. */
  readonly topicRoot?: string;
  readonly retain?: boolean;
  /** Time between store reads (ms). */
  readonly intervalMs?: number;
  /** Rows read per tick: bounds the memory and the publish burst of one tick. */
  readonly batchRows?: number;
  /** Device id → bed id, overriding the bed the registry bound the device to. */
  readonly beds?: Readonly<Record<string, string>>;
  readonly auth?: { readonly username: string; readonly password?: string };
  readonly tls?: { readonly ca?: string; readonly cert?: string; readonly key?: string; readonly rejectUnauthorized?: boolean };
}

/** A topic level from free text: `/`, `+`, `#` and control characters cannot stand in one. */
export function topicLevel(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/\//g, '.').replace(/[+#\u0000-\u001f\u007f]/g, '_').slice(0, 128);
}

/** The message body for one Observation: no patient identity. */
export function republishPayload(o: Observation): string {
  return JSON.stringify({
    ts: formatIsoTime(o.time, o.tzOffset),
    value: Number.isFinite(o.value) ? o.value : null,
    ...(o.text !== null ? { text: o.text } : {}),
    unit: o.unit,
    metric: o.metric,
    mdc: o.code,
    loinc: o.loinc,
    device: o.deviceId,
    quality: qualityNames(o.flags),
  });
}

/** Tails the store and publishes the latest value per bed and metric. */
export class MqttRepublisher {
  private client: MqttClient | null = null;
  private timer: NodeJS.Timeout | null = null;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private stopped = true;
  private readonly backoff = new Backoff(DEFAULT_BACKOFF);
  private lastError: string | null = null;
  private wasConnected = false;
  private since = Date.now();
  private readonly counters = { published: 0, coalesced: 0, older: 0, noBed: 0, failures: 0 };
  /** Time of the value last published per topic: a late, older reading must not replace a newer retained one. */
  private readonly lastTime = new Map<string, number>();

  constructor(
    private readonly options: RepublishOptions,
    private readonly store: RepublishStore,
    private readonly log: Logger,
  ) {}

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    const o = this.options;
    const clientOptions: IClientOptions = {
      clientId: o.clientId,
      protocolVersion: 5,
      // Our own reconnect with backoff and jitter (src/reconnect.ts), not mqtt.js' fixed period.
      reconnectPeriod: 0,
      connectTimeout: 10_000,
      ...(o.auth ? { username: o.auth.username, ...(o.auth.password !== undefined ? { password: o.auth.password } : {}) } : {}),
      ...(o.tls?.ca ? { ca: readFileSync(o.tls.ca) } : {}),
      ...(o.tls?.cert ? { cert: readFileSync(o.tls.cert) } : {}),
      ...(o.tls?.key ? { key: readFileSync(o.tls.key) } : {}),
      rejectUnauthorized: o.tls?.rejectUnauthorized ?? true,
    };
    const client = mqtt.connect(o.url, clientOptions);
    client.on('error', (err) => {
      this.lastError = ErrorCode.MQTT_CONNECT_FAILED;
      this.log.warn({ code: ErrorCode.MQTT_CONNECT_FAILED, err: err.message }, 'mqtt republish: broker error');
    });
    client.on('connect', () => this.backoff.reset());
    client.on('close', () => {
      if (this.stopped || this.reconnectTimer) return;
      this.reconnectTimer = setTimeout(() => {
        this.reconnectTimer = null;
        if (!this.stopped) client.reconnect();
      }, this.backoff.next());
    });
    this.client = client;
    this.schedule();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.timer = null;
    this.reconnectTimer = null;
    await this.running;
    const client = this.client;
    this.client = null;
    if (client) await client.endAsync(true).catch(() => undefined);
  }

  /** State and counters, shaped like a driver's status so `/api/status` lists it beside them. */
  status(): DriverStatus & { readonly cursor: number } {
    const connected = this.client?.connected ?? false;
    if (connected !== this.wasConnected) {
      this.wasConnected = connected;
      this.since = Date.now();
    }
    return {
      name: 'mqtt-republish',
      kind: 'mqtt-republish',
      state: this.stopped ? 'stopped' : connected ? 'up' : 'down',
      lastError: this.lastError,
      since: this.since,
      counters: { ...this.counters },
      cursor: this.store.cursor(REPUBLISH_CURSOR),
    };
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.running = this.tick().finally(() => {
        this.running = null;
        this.schedule();
      });
    }, this.options.intervalMs ?? 500);
  }

  /** One store read and publish round; the cursor moves only after every PUBACK. */
  private async tick(): Promise<void> {
    const client = this.client;
    if (!client?.connected) return;
    const after = this.store.cursor(REPUBLISH_CURSOR);
    const rows = this.store.observationsAfter(after, this.options.batchRows ?? 2000);
    if (rows.length === 0) return;
    const root = this.options.topicRoot ?? 'mdi/v1/beds';
    const latest = new Map<string, Observation>();
    for (const row of rows) {
      const o = row.observation;
      const bed = this.options.beds?.[o.deviceId] ?? o.location;
      if (!bed) {
        this.counters.noBed++;
        continue;
      }
      const topic = `${root}/${topicLevel(bed)}/${topicLevel(o.metric)}`;
      const published = this.lastTime.get(topic);
      if (published !== undefined && published > o.time) {
        this.counters.older++;
        continue;
      }
      const seen = latest.get(topic);
      if (seen !== undefined) {
        this.counters.coalesced++;
        if (seen.time > o.time) continue;
      }
      latest.set(topic, o);
    }
    try {
      await Promise.all([...latest].map(([topic, o]) => client.publishAsync(topic, republishPayload(o), { qos: 1, retain: this.options.retain ?? true })));
      this.counters.published += latest.size;
      // Bounded: beds × metrics of one site is thousands; past the bound start over (at worst an
      // older late reading is republished once).
      if (this.lastTime.size > 100_000) this.lastTime.clear();
      for (const [topic, o] of latest) this.lastTime.set(topic, o.time);
      const last = rows[rows.length - 1]!.id;
      await this.store.exclusive(() => this.store.setCursor(REPUBLISH_CURSOR, last));
    } catch (err) {
      this.counters.failures++;
      this.lastError = ErrorCode.MQTT_DISCONNECTED;
      this.log.warn({ err: (err as Error).message }, 'mqtt republish: publish failed; retrying from the same position');
    }
  }
}
