/**
 * Client mode: the gateway subscribes to an external broker (Mosquitto, EMQX, HiveMQ) on which
 * devices publish `mdi/v1/devices/<deviceId>/readings`.
 *
 * Delivery promise (what makes "nothing is lost while the gateway restarts" true):
 * - MQTT v5, `clean start = false` with a session expiry: the broker keeps the subscription
 *   and queues QoS 1 messages while this instance is away (restart, crash, network cut).
 * - PUBACK only after the durable commit: mqtt.js' `handleMessage` hook is called before it
 *   sends PUBACK, and we call back only once `ctx.submit` has settled. A crash between the
 *   commit and the PUBACK makes the broker redeliver: the reading is then stored twice unless
 *   the device sends a message `id` (then the store's message record makes it a no-op).
 * - A store failure sends no PUBACK: the connection is dropped, so the broker keeps the
 *   message and redelivers it after the reconnect (an un-acked message is not redelivered on
 *   the same connection in MQTT v5 [MQTT-4.4.0-1]).
 * - Shared subscriptions (`$share/<group>/<topic>`): several instances with the same group
 *   split the messages; each message goes to one of them.
 *
 * Backpressure: mqtt.js hands over one PUBLISH at a time and reads the next only after the
 * callback, so at most one commit is in flight per connection; the broker is told how many
 * un-acked messages it may send (`receiveMaximum`) and how large a packet may be
 * (`maximumPacketSize`), which bounds the memory one connection can hold.
 */
import { readFileSync } from 'node:fs';
import mqtt, { type IClientOptions, type IPublishPacket, type MqttClient } from 'mqtt';
import { DriverState, messageDigest, type Driver, type DriverContext, type DriverStatus } from '../../src/driver.js';
import { ErrorCode, GatewayError } from '../../src/errors.js';
import { Backoff, DEFAULT_BACKOFF, sleep, type BackoffOptions } from '../../src/reconnect.js';
import { decodeOptions, decodeReadings, deviceIdOfReadingsTopic, DEAD_LETTER_HEAD_BYTES, DEFAULT_MAX_PAYLOAD_BYTES, TOPIC_ROOT, type DecodeOptions } from './payload.js';

/** TLS to the broker; files are read at start. */
export interface MqttTlsOptions {
  /** PEM file of the CA that signed the broker's certificate (else the system CAs). */
  readonly ca?: string;
  /** PEM files of this gateway's client certificate and key, for brokers that require one. */
  readonly cert?: string;
  readonly key?: string;
  /** Default true. False only for a test broker: it accepts any certificate. */
  readonly rejectUnauthorized?: boolean;
  /** Server name to verify when it differs from the URL's host. */
  readonly servername?: string;
}

/** One external broker subscription (one `mqtt.subscribe[]` entry). */
export interface MqttSubscriberOptions {
  /** `mqtt://host:1883`, `mqtts://host:8883`. */
  readonly url: string;
  /** Topic filters; default `mdi/v1/devices/+/readings`. */
  readonly topics?: readonly string[];
  /** Shared-subscription group: every instance with the same group splits the load. */
  readonly sharedGroup?: string;
  /** 1 (default): at least once. 0 only for data whose loss does not matter. */
  readonly qos?: 0 | 1;
  /** Stable per instance: the broker keeps this client's session under it. */
  readonly clientId: string;
  /** How long (s) the broker keeps the session (and queues messages) while this instance is away. Default 1 day. */
  readonly sessionExpirySeconds?: number;
  readonly tls?: MqttTlsOptions;
  readonly auth?: { readonly username: string; readonly password?: string };
  /** Largest accepted payload (bytes); larger ones are dead-lettered with their head. */
  readonly maxPayloadBytes?: number;
  /** Un-acked QoS 1 messages the broker may send at once. Default 32. */
  readonly receiveMaximum?: number;
  readonly keepaliveSeconds?: number;
  readonly connectTimeoutMs?: number;
  readonly reconnect?: Partial<BackoffOptions>;
}

/** A stretch without a connection. */
export interface MqttGap {
  readonly from: number;
  readonly to: number | null;
}

/** Status of one broker subscription, as `/api/status` shows it. */
export interface MqttSubscriberStatus extends DriverStatus {
  /** The broker URL without credentials. */
  readonly url: string;
  readonly clientId: string;
  readonly topics: readonly string[];
  readonly lastErrorMessage: string | null;
  readonly lastMessageAt: number | null;
  readonly connectedSince: number | null;
  readonly lastGap: MqttGap | null;
}

/** Default session expiry (s): a day covers a restart, a crash or an overnight outage of one instance; longer outages are the broker's storage to size. */
const DEFAULT_SESSION_EXPIRY_S = 24 * 60 * 60;
/** Default receive maximum: enough to keep one connection busy, small enough to bound memory (× maximumPacketSize). */
const DEFAULT_RECEIVE_MAXIMUM = 32;
/** The same error is logged at most this often (ms); the status always has the latest. */
const LOG_REPEAT_MS = 60_000;

/** `mqtt-client:<clientId>`. */
export function mqttSubscriberName(clientId: string): string {
  return `mqtt-client:${clientId}`;
}

/** The topic filters actually subscribed: `$share/<group>/<filter>` when a group is set. */
export function subscriptionFilters(topics: readonly string[], sharedGroup: string | undefined): string[] {
  return topics.map((t) => (sharedGroup ? `$share/${sharedGroup}/${t}` : t));
}

/** The URL with any user:password removed, for logs and status. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    u.username = '';
    u.password = '';
    return u.toString().replace(/\/$/, '');
  } catch {
    return '(invalid url)';
  }
}

/**
 * One subscription to an external broker. `start()` returns at once; a broker that is down is
 * retried with backoff and jitter (src/reconnect.ts) and shows in `status()`. `stop()` waits
 * for the commit in flight and its PUBACK, then disconnects (the session stays on the broker).
 */
export class MqttSubscriberDriver implements Driver {
  readonly name: string;
  private state: DriverState = DriverState.STOPPED;
  private since = Date.now();
  private lastError: string | null = null;
  private lastErrorMessage: string | null = null;
  private lastLogged = new Map<string, number>();
  private lastMessageAt: number | null = null;
  private connectedSince: number | null = null;
  private gap: { from: number; to: number | null } | null = null;
  private readonly counters: Record<string, number> = {
    connects: 0,
    connectFailures: 0,
    disconnects: 0,
    messages: 0,
    readings: 0,
    rejected: 0,
    deadLetters: 0,
    duplicates: 0,
    storeErrors: 0,
  };
  private abort: AbortController | null = null;
  private loop: Promise<void> | null = null;
  private stopping: Promise<void> | null = null;
  private client: MqttClient | null = null;
  /** Set when we dropped the connection ourselves (store failure): its reason stays the last error. */
  private dropped = false;
  private readonly inFlight = new Set<Promise<unknown>>();
  private readonly backoff: Backoff;
  private readonly decode: DecodeOptions;
  private readonly topics: readonly string[];
  private readonly url: string;

  constructor(
    private readonly options: MqttSubscriberOptions,
    private readonly ctx: DriverContext,
  ) {
    this.name = mqttSubscriberName(options.clientId);
    this.backoff = new Backoff({ ...DEFAULT_BACKOFF, ...options.reconnect });
    this.decode = decodeOptions(ctx.timezone, options.maxPayloadBytes ?? DEFAULT_MAX_PAYLOAD_BYTES);
    this.topics = options.topics && options.topics.length > 0 ? options.topics : [`${TOPIC_ROOT}/devices/+/readings`];
    this.url = redactUrl(options.url);
  }

  async start(): Promise<void> {
    if (this.abort) return;
    this.stopping = null;
    this.abort = new AbortController();
    this.setState(DriverState.STARTING);
    this.ctx.log.info({ url: this.url, clientId: this.options.clientId, topics: this.filters() }, 'mqtt subscriber starting');
    this.loop = this.run(this.abort.signal);
  }

  stop(): Promise<void> {
    if (this.stopping) return this.stopping;
    if (!this.abort) return Promise.resolve();
    this.stopping = this.doStop();
    return this.stopping;
  }

  status(): MqttSubscriberStatus {
    return {
      name: this.name,
      kind: 'mqtt-client',
      state: this.state,
      lastError: this.lastError,
      since: this.since,
      counters: { ...this.counters },
      url: this.url,
      clientId: this.options.clientId,
      topics: this.filters(),
      lastErrorMessage: this.lastErrorMessage,
      lastMessageAt: this.lastMessageAt,
      connectedSince: this.connectedSince,
      lastGap: this.gap ? { ...this.gap } : null,
    };
  }

  private filters(): string[] {
    return subscriptionFilters(this.topics, this.options.sharedGroup);
  }

  private async doStop(): Promise<void> {
    this.abort!.abort();
    // Let the commit in flight finish and its PUBACK go out before the connection closes.
    await Promise.allSettled([...this.inFlight]);
    const client = this.client;
    this.client = null;
    if (client) await new Promise<void>((resolve) => client.end(false, {}, () => resolve()));
    await this.loop;
    this.abort = null;
    this.loop = null;
    this.connectedSince = null;
    this.setState(DriverState.STOPPED);
    this.ctx.log.info('mqtt subscriber stopped');
  }

  private clientOptions(): IClientOptions {
    const o = this.options;
    const maxPayload = this.decode.maxPayloadBytes;
    const tls = o.tls;
    return {
      clientId: o.clientId,
      protocolVersion: 5,
      // [MQTT-3.1.2-4] clean start 0: resume the session the broker kept for this client id.
      clean: false,
      manualConnect: true,
      // Our own loop reconnects, with backoff and jitter (mqtt.js retries at a fixed period).
      reconnectPeriod: 0,
      resubscribe: false,
      connectTimeout: o.connectTimeoutMs ?? 10_000,
      keepalive: o.keepaliveSeconds ?? 30,
      properties: {
        sessionExpiryInterval: o.sessionExpirySeconds ?? DEFAULT_SESSION_EXPIRY_S,
        receiveMaximum: o.receiveMaximum ?? DEFAULT_RECEIVE_MAXIMUM,
        // Four times the payload bound: a payload somewhat over the bound still arrives and
        // becomes a dead letter with its head; a far larger one is dropped by the broker
        // [MQTT-3.1.2-25] and never occupies our memory.
        maximumPacketSize: Math.min(268_435_455, maxPayload * 4 + 1024),
      },
      ...(o.auth ? { username: o.auth.username, ...(o.auth.password !== undefined ? { password: o.auth.password } : {}) } : {}),
      ...(tls?.ca ? { ca: readFileSync(tls.ca) } : {}),
      ...(tls?.cert ? { cert: readFileSync(tls.cert) } : {}),
      ...(tls?.key ? { key: readFileSync(tls.key) } : {}),
      ...(tls?.servername ? { servername: tls.servername } : {}),
      rejectUnauthorized: tls?.rejectUnauthorized ?? true,
    };
  }

  private async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      const client = mqtt.connect(this.options.url, this.clientOptions());
      client.handleMessage = (packet, done) => this.onMessage(client, packet, done);
      const closed = new Promise<Error | null>((resolve) => {
        let lastError: Error | null = null;
        client.on('error', (err) => (lastError = err));
        client.on('connect', () => void this.onConnect(client));
        client.on('close', () => resolve(lastError));
      });
      this.client = client;
      client.connect();
      const err = await closed;
      client.removeAllListeners();
      // A listener for late errors: an emitter without one throws.
      client.on('error', () => undefined);
      client.end(true);
      if (this.client === client) this.client = null;
      if (signal.aborted) break;
      if (this.connectedSince !== null) {
        this.counters.disconnects!++;
        this.connectedSince = null;
        if (this.dropped) this.dropped = false;
        else this.noteError(new GatewayError(ErrorCode.MQTT_DISCONNECTED, `connection to ${this.url} lost${err ? `: ${err.message}` : ''}`), ErrorCode.MQTT_DISCONNECTED);
      } else {
        this.counters.connectFailures!++;
        const code = isAuthError(err) ? ErrorCode.MQTT_AUTH_FAILED : ErrorCode.MQTT_CONNECT_FAILED;
        this.noteError(new GatewayError(code, `cannot connect to ${this.url}${err ? `: ${err.message}` : ''}`), code);
      }
      this.goDown();
      await sleep(this.backoff.next(), signal);
    }
  }

  private async onConnect(client: MqttClient): Promise<void> {
    this.counters.connects!++;
    this.connectedSince = Date.now();
    // Subscribe on every connect, session present or not: it is idempotent, and a broker that
    // lost its state (restarted without persistence) would otherwise leave us deaf.
    const qos = this.options.qos ?? 1;
    try {
      const granted = await client.subscribeAsync(this.filters(), { qos });
      const refused = granted.filter((g) => g.qos > 2);
      if (refused.length > 0) throw new Error(`the broker refused ${refused.map((g) => g.topic).join(', ')} (reason ${refused[0]!.qos})`);
    } catch (err) {
      if (this.client !== client) return;
      this.noteError(new GatewayError(ErrorCode.MQTT_SUBSCRIBE_FAILED, (err as Error).message), ErrorCode.MQTT_SUBSCRIBE_FAILED);
      // Without the subscription this connection is useless: drop it and retry with backoff
      // (keeping the subscribe failure, not "disconnected", as the last error).
      this.dropped = true;
      client.end(true);
      return;
    }
    this.backoff.reset();
    if (this.gap && this.gap.to === null) {
      this.gap.to = Date.now();
      this.ctx.log.info({ url: this.url, gapMs: this.gap.to - this.gap.from }, 'mqtt subscriber connected again');
    } else {
      this.ctx.log.info({ url: this.url }, 'mqtt subscriber connected');
    }
    this.setState(DriverState.UP);
  }

  /** mqtt.js calls this before it sends PUBACK; `done` sends it. One call at a time per connection. */
  private onMessage(client: MqttClient, packet: IPublishPacket, done: (err?: Error) => void): void {
    if (this.abort === null || this.abort.signal.aborted) return; // stopping: no PUBACK, redelivered later
    this.counters.messages!++;
    const payload = typeof packet.payload === 'string' ? Buffer.from(packet.payload) : packet.payload;
    const topic = packet.topic;
    const deviceId = deviceIdOfReadingsTopic(topic);
    let batch;
    if (deviceId === null) {
      this.counters.rejected!++;
      batch = {
        measurements: [],
        rejects: [{ code: ErrorCode.MQTT_BAD_TOPIC, reason: `topic is not ${TOPIC_ROOT}/devices/<deviceId>/readings`, location: topic.slice(0, 200), controlId: null, raw: payload.subarray(0, DEAD_LETTER_HEAD_BYTES) }],
        messageId: null,
      };
    } else {
      batch = decodeReadings(deviceId, payload, this.decode);
      if (batch.rejects.length > 0) this.counters.rejected!++;
    }
    const work = this.ctx
      .submit({
        received: Date.now(),
        source: `mqtt ${this.url} ${topic.slice(0, 200)}`,
        message:
          batch.messageId !== null && deviceId !== null
            ? { sender: `mqtt:${deviceId}`, controlId: batch.messageId, digest: messageDigest(payload) }
            : null,
        measurements: batch.measurements,
        rejects: batch.rejects,
      })
      .then(
        (result) => {
          this.counters.readings! += result.stored;
          this.counters.deadLetters! += result.deadLetters;
          if (result.duplicate) this.counters.duplicates!++;
          this.lastMessageAt = Date.now();
          // Durable: now the broker may forget it.
          done();
        },
        (err: unknown) => {
          this.counters.storeErrors!++;
          const code = err instanceof GatewayError ? err.code : ErrorCode.STORE_FAILED;
          this.noteError(new GatewayError(code, `a message from ${topic.slice(0, 200)} could not be stored; it stays with the broker`), code);
          // No PUBACK: drop the connection so the broker redelivers after the reconnect.
          this.dropped = true;
          client.end(true);
        },
      );
    this.inFlight.add(work);
    void work.finally(() => this.inFlight.delete(work));
  }

  private goDown(): void {
    if (this.state === DriverState.DOWN || this.state === DriverState.STOPPED) return;
    if (this.state === DriverState.UP) this.gap = { from: Date.now(), to: null };
    this.setState(DriverState.DOWN);
  }

  private noteError(err: GatewayError, fallback: ErrorCode): void {
    const code = err.code ?? fallback;
    const now = Date.now();
    this.lastError = code;
    this.lastErrorMessage = err.message;
    const key = `${code}|${err.message}`;
    const last = this.lastLogged.get(key);
    if (last !== undefined && now - last < LOG_REPEAT_MS) return;
    if (this.lastLogged.size > 100) this.lastLogged.clear();
    this.lastLogged.set(key, now);
    this.ctx.log.warn({ code, url: this.url }, err.message);
  }

  private setState(state: DriverState): void {
    if (this.state === state) return;
    this.state = state;
    this.since = Date.now();
  }
}

function isAuthError(err: Error | null): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  // CONNACK reason codes: 0x86 bad user name or password, 0x87 not authorized (v5); 4 and 5 (v3.1.1).
  return code === 134 || code === 135 || code === 4 || code === 5;
}
