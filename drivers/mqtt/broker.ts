/**
 * The embedded MQTT broker (aedes, MQTT 3.1.1): devices connect to the gateway itself.
 *
 * Security:
 * - Authentication: the client id must be a configured device id, with that device's user
 *   name and a password that matches its scrypt hash (`auth.ts`) — or, on the TLS listener
 *   with `tls.clientCa`, a client certificate that verifies against that CA and whose subject
 *   CN is the device id. Wrong or unknown
 *   credentials get CONNACK 5 "not authorized" (the same code for an unknown id and a wrong
 *   password, and the same scrypt time, so device ids cannot be enumerated); absent ones get
 *   CONNACK 4 "bad user name or password". The log names the client id and the reason, never
 *   the password.
 * - ACLs: a device may publish only to `mdi/v1/devices/<its id>/readings`; anything else
 *   closes its connection, as MQTT 3.1.1 prescribes for a refused PUBLISH [MQTT-3.3.5-2]. It
 *   may subscribe only to `mdi/v1/devices/<its id>/commands`; any other filter gets SUBACK
 *   0x80 (failure) and the connection stays.
 * - Bounds: at most `maxConnections` sockets per listener, `maxPacketBytes` per packet
 *   (`guard.ts`, checked before aedes buffers anything), `maxPayloadBytes` per message
 *   (dead-lettered beyond).
 * - Transport: plain TCP on `port`, and TLS ≥ 1.2 on `tls.port` when a certificate is given.
 *
 * Ingest is in-process, in aedes' `authorizePublish` hook: aedes runs it before it writes the
 * PUBACK (lib/handlers/publish.js: authorizePublish → enqueuePublish → PUBACK), so a QoS 1
 * message is acknowledged only after its readings (or its dead letter) are durable, with no
 * loopback client, no extra copy and no second TCP hop. A store failure closes the device's
 * connection without PUBACK: the device redelivers after it reconnects. Backpressure comes
 * free: aedes reads a client's next chunk only once every packet of the previous chunk is done.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer, TLSSocket, type Server as TlsServer } from 'node:tls';
import { Aedes, type AedesOptions, type AuthenticateError, type Client } from 'aedes';
import { DriverState, messageDigest, type Driver, type DriverContext, type DriverStatus, type IngestBatch, type MessageIdentity } from '../../src/driver.js';
import { ErrorCode, GatewayError } from '../../src/errors.js';
import { verifySecret } from './auth.js';
import { guardSocket } from './guard.js';
import { commandsTopic, decodeOptions, decodeReadings, readingsTopic, DEFAULT_MAX_PAYLOAD_BYTES, type DecodeOptions } from './payload.js';

/** One device allowed on the embedded broker. */
export interface MqttDeviceCredential {
  /** The device id; the MQTT client id must be exactly this. */
  readonly deviceId: string;
  /** User name; default: the device id. */
  readonly username?: string;
  /** `scrypt$…` hash of the device's password (`mdi mqtt-hash-password`). */
  readonly passwordHash: string;
}

/** How the embedded broker listens and what it allows. */
export interface MqttBrokerOptions {
  readonly port: number;
  readonly host: string;
  readonly devices: readonly MqttDeviceCredential[];
  /** Largest accepted payload (bytes); larger ones are dead-lettered with their head. */
  readonly maxPayloadBytes?: number;
  /** Largest MQTT packet (bytes); a connection announcing a larger one is closed. */
  readonly maxPacketBytes?: number;
  /** Concurrent connections (devices and strays). */
  readonly maxConnections?: number;
  /** A socket that has not sent CONNECT by then is closed (ms). */
  readonly connectTimeoutMs?: number;
  /** A second listener with TLS (MQTT over TLS, usually 8883), when a certificate is configured. */
  readonly tls?: MqttBrokerTlsOptions;
}

/** TLS listener of the embedded broker; files are PEM and read at start. */
export interface MqttBrokerTlsOptions {
  /** Port of the TLS listener (0: any free port). */
  readonly port: number;
  /** The broker's certificate (chain) and private key. */
  readonly cert: string;
  readonly key: string;
  /** CA bundle to send along with the certificate chain, when the devices need it. */
  readonly ca?: string;
  /**
   * CA that signs device certificates. With it, a device may authenticate by a client
   * certificate instead of a password: the certificate must verify against this CA and its
   * subject CN must be the device id (= the client id). Devices without a certificate still
   * connect with their password.
   */
  readonly clientCa?: string;
}

/** Status of the embedded broker. */
export interface MqttBrokerStatus extends DriverStatus {
  readonly host: string;
  /** The bound port (the real one when configured as 0), or null while stopped. */
  readonly port: number | null;
  /** The bound TLS port, or null without TLS. */
  readonly tlsPort: number | null;
  readonly devicesConfigured: number;
  readonly devicesConnected: number;
  readonly lastErrorMessage: string | null;
  readonly lastMessageAt: number | null;
}

/** The same warning is logged at most this often per key (ms); counters always count. */
const LOG_REPEAT_MS = 60_000;

/**
 * The embedded broker as a driver. `start()` rejects when the port cannot be bound (a
 * configuration error); `stop()` closes the listener and every client after the commits in
 * flight have settled.
 */
export class MqttBrokerDriver implements Driver {
  readonly name = 'mqtt-broker';
  private state: DriverState = DriverState.STOPPED;
  private since = Date.now();
  private lastError: string | null = null;
  private lastErrorMessage: string | null = null;
  private lastMessageAt: number | null = null;
  private lastLogged = new Map<string, number>();
  private broker: Aedes | null = null;
  private server: Server | null = null;
  private tlsServer: TlsServer | null = null;
  private boundPort: number | null = null;
  private boundTlsPort: number | null = null;
  private readonly sockets = new Set<Socket>();
  /**
   * Per device: HMAC (with a key that lives only in this process) of the password that last
   * passed scrypt. Never the password itself; bounded by the configured devices.
   */
  private readonly verified = new Map<string, Buffer>();
  private readonly macKey = randomBytes(32);
  /** Per connection: the CN of a client certificate that verified against `tls.clientCa`. */
  private readonly certIdentity = new WeakMap<object, string>();
  private readonly inFlight = new Set<Promise<unknown>>();
  /** Connections per device id: a device that reconnects takes over before the old one is gone. */
  private readonly connected = new Map<string, number>();
  private devices: ReadonlyMap<string, MqttDeviceCredential>;
  private readonly decode: DecodeOptions;
  private readonly counters: Record<string, number> = {
    connections: 0,
    refusedConnections: 0,
    authFailures: 0,
    scryptChecks: 0,
    notAuthorized: 0,
    tooLarge: 0,
    messages: 0,
    readings: 0,
    rejected: 0,
    deadLetters: 0,
    duplicates: 0,
    storeErrors: 0,
  };
  private starting: Promise<void> | null = null;
  private stopping: Promise<void> | null = null;

  constructor(
    private readonly options: MqttBrokerOptions,
    private readonly ctx: DriverContext,
  ) {
    this.devices = new Map(options.devices.map((d) => [d.deviceId, d]));
    this.decode = decodeOptions(ctx.timezone, options.maxPayloadBytes ?? DEFAULT_MAX_PAYLOAD_BYTES);
  }

  /**
   * Replaces the devices allowed to connect (the registry changed). Connected clients stay;
   * a device no longer listed is refused at its next connect, and a changed password needs
   * scrypt again.
   */
  setDevices(devices: readonly MqttDeviceCredential[]): void {
    this.devices = new Map(devices.map((d) => [d.deviceId, d]));
    // Remembered passwords are forgotten: one scrypt per device at its next connect.
    this.verified.clear();
  }

  /** Whether a client with this id (a device id) is connected now (device health). */
  isConnected(clientId: string): boolean {
    return this.connected.has(clientId);
  }

  /** The bound TLS port, or null when no TLS listener is configured. */
  tlsPort(): number | null {
    return this.boundTlsPort;
  }

  /** The bound port; throws before start. */
  port(): number {
    if (this.boundPort === null) throw new Error('mqtt broker not started');
    return this.boundPort;
  }

  start(): Promise<void> {
    if (this.starting) return this.starting;
    this.stopping = null;
    this.starting = this.doStart().catch(async (err: unknown) => {
      await this.doStop();
      this.starting = null;
      throw err;
    });
    return this.starting;
  }

  stop(): Promise<void> {
    if (this.stopping) return this.stopping;
    if (!this.starting) return Promise.resolve();
    this.stopping = (async () => {
      await this.starting!.catch(() => undefined);
      await this.doStop();
      this.starting = null;
    })();
    return this.stopping;
  }

  status(): MqttBrokerStatus {
    return {
      name: this.name,
      kind: 'mqtt-broker',
      state: this.state,
      lastError: this.lastError,
      since: this.since,
      counters: { ...this.counters },
      host: this.options.host,
      port: this.boundPort,
      tlsPort: this.boundTlsPort,
      devicesConfigured: this.devices.size,
      devicesConnected: this.connected.size,
      lastErrorMessage: this.lastErrorMessage,
      lastMessageAt: this.lastMessageAt,
    };
  }

  private async doStart(): Promise<void> {
    this.setState(DriverState.STARTING);
    const opts: AedesOptions = {
      connectTimeout: this.options.connectTimeoutMs ?? 10_000,
      // Device ids are ≤ 128 characters (DEVICE_ID_PATTERN); longer client ids are refused by aedes.
      maxClientsIdLength: 128,
      // Our topics have five levels; nothing legitimate needs more.
      maxTopicLevels: 16,
      authenticate: (client, username, password, done) => void this.authenticate(client, username, password, done),
      authorizePublish: (client, packet, done) => {
        // The gateway consumes readings; a retained copy per device would only hold memory
        // (up to maxPacketBytes each) that nobody may read.
        packet.retain = false;
        this.onPublish(client, packet.topic, typeof packet.payload === 'string' ? Buffer.from(packet.payload) : packet.payload, done);
      },
      authorizeSubscribe: (client, sub, done) => {
        if (sub.topic === commandsTopic(client.id)) return done(null, sub);
        this.counters.notAuthorized!++;
        this.warn(`sub|${client.id}`, ErrorCode.MQTT_NOT_AUTHORIZED, `device ${client.id} may not subscribe to ${sub.topic.slice(0, 200)} (SUBACK 0x80)`);
        done(null, null);
      },
      // Belt and braces: whatever a subscription matched, a device receives only its own commands.
      authorizeForward: (client, packet) => (packet.topic === commandsTopic(client.id) ? packet : null),
    };
    const broker = await Aedes.createBroker(opts);
    this.broker = broker;
    broker.on('clientReady', (client) => {
      this.connected.set(client.id, (this.connected.get(client.id) ?? 0) + 1);
    });
    broker.on('clientDisconnect', (client) => {
      const n = this.connected.get(client.id);
      if (n === undefined) return;
      if (n <= 1) this.connected.delete(client.id);
      else this.connected.set(client.id, n - 1);
    });
    broker.on('clientError', (client, err) => {
      this.ctx.log.debug({ clientId: client.id, err: err.message }, 'mqtt client error');
    });
    broker.on('connectionError', (_client, err) => {
      this.ctx.log.debug({ err: err.message }, 'mqtt connection error');
    });

    const maxPacket = this.options.maxPacketBytes ?? Math.max(this.decode.maxPayloadBytes * 4, 64 * 1024);
    const accept = (socket: Socket) => {
      this.counters.connections!++;
      this.sockets.add(socket);
      socket.once('close', () => this.sockets.delete(socket));
      const stream = guardSocket(socket, maxPacket, () => {
        this.counters.tooLarge!++;
        this.warn(`large|${socket.remoteAddress}`, ErrorCode.MQTT_PAYLOAD_TOO_LARGE, `a packet from ${socket.remoteAddress ?? '?'} announced more than ${maxPacket} bytes; connection closed`);
      });
      if (socket instanceof TLSSocket && socket.authorized) {
        const cn = socket.getPeerCertificate().subject?.CN;
        if (typeof cn === 'string' && cn !== '') this.certIdentity.set(stream, cn);
      }
      broker.handle(stream);
    };
    const server = createServer(accept);
    this.server = server;
    this.boundPort = await this.listen(server, this.options.port);
    const tls = this.options.tls;
    if (tls) {
      const tlsServer = createTlsServer(
        {
          cert: readFileSync(tls.cert),
          key: readFileSync(tls.key),
          ...(tls.ca || tls.clientCa ? { ca: [...(tls.ca ? [readFileSync(tls.ca)] : []), ...(tls.clientCa ? [readFileSync(tls.clientCa)] : [])] } : {}),
          // Ask for a client certificate, but let devices without one in (they use a password):
          // whether a certificate counts is decided by `socket.authorized` in accept().
          ...(tls.clientCa ? { requestCert: true, rejectUnauthorized: false } : {}),
          // TLS 1.0/1.1 are deprecated (RFC 8996).
          minVersion: 'TLSv1.2',
          // A device that never finishes the handshake must not hold a socket forever.
          handshakeTimeout: this.options.connectTimeoutMs ?? 10_000,
        },
        accept,
      );
      tlsServer.on('tlsClientError', (err) => this.ctx.log.debug({ err: err.message }, 'mqtt tls handshake failed'));
      this.tlsServer = tlsServer;
      this.boundTlsPort = await this.listen(tlsServer, tls.port);
    }
    this.setState(DriverState.UP);
    this.ctx.log.info({ host: this.options.host, port: this.boundPort, tlsPort: this.boundTlsPort, devices: this.devices.size }, 'mqtt broker listening');
  }

  /** Listens on `port` of the configured host; resolves with the bound port. */
  private async listen(server: Server, port: number): Promise<number> {
    server.maxConnections = this.options.maxConnections ?? 10_000;
    server.on('drop', () => this.counters.refusedConnections!++);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, this.options.host, () => {
        server.off('error', reject);
        resolve();
      });
    }).catch((err: NodeJS.ErrnoException) => {
      // The usual cause is another broker (a system Mosquitto) on the same port: say what to set.
      throw new Error(
        `mqtt broker: cannot listen on ${this.options.host}:${port}: ${err.message} (set mqtt.broker.port, or mqtt.broker.enabled: false)`,
      );
    });
    server.on('error', (err) => this.warn('server', ErrorCode.MQTT_CONNECT_FAILED, `listener error: ${err.message}`));
    const address = server.address();
    return typeof address === 'object' && address ? address.port : port;
  }

  private async doStop(): Promise<void> {
    const servers = [this.server, this.tlsServer].filter((x): x is Server => x !== null);
    this.server = null;
    this.tlsServer = null;
    const closed = Promise.all(servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve()))));
    // Commits in flight finish (and their PUBACKs go out) before the clients are closed.
    await Promise.allSettled([...this.inFlight]);
    const broker = this.broker;
    this.broker = null;
    if (broker) await new Promise<void>((resolve) => broker.close(() => resolve()));
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    await closed;
    this.connected.clear();
    this.boundPort = null;
    this.boundTlsPort = null;
    if (this.state !== DriverState.STOPPED) this.ctx.log.info('mqtt broker stopped');
    this.setState(DriverState.STOPPED);
  }

  private async authenticate(
    client: Client,
    username: string | undefined,
    password: Buffer | undefined,
    done: (error: AuthenticateError | null, success: boolean | null) => void,
  ): Promise<void> {
    const id = client.id;
    // A client certificate that verified against tls.clientCa and names this device.
    const certCn = this.certIdentity.get(client.conn);
    if (certCn !== undefined && certCn === id && this.devices.has(id)) return done(null, true);
    if (username === undefined || password === undefined || username === '' || password.length === 0) {
      this.counters.authFailures!++;
      this.warn(`auth|${id}`, ErrorCode.MQTT_AUTH_FAILED, `client ${safeId(id)} refused: no user name or password (CONNACK 4)`);
      return done(authError(4, 'bad user name or password'), false);
    }
    const device = this.devices.get(id);
    const userOk = device !== undefined && (device.username ?? device.deviceId) === username;
    // A device that reconnects with the password it proved before skips scrypt: after a
    // network blip a whole ward reconnects at once, and ~40 ms of CPU per device adds up.
    // Anything else (unknown id, another password) runs scrypt, which takes as long for an
    // unknown id as for a wrong password, so the timing does not tell which ids exist.
    const remembered = userOk ? this.verified.get(id) : undefined;
    const mac = remembered !== undefined ? this.mac(password) : null;
    let secretOk = remembered !== undefined && mac !== null && timingSafeEqual(remembered, mac);
    if (!secretOk) {
      this.counters.scryptChecks!++;
      secretOk = await verifySecret(password, device?.passwordHash ?? null);
    }
    if (userOk && secretOk && mac === null) this.verified.set(id, this.mac(password));
    if (!userOk || !secretOk) {
      this.counters.authFailures!++;
      const why = device === undefined ? 'unknown client id' : !userOk ? 'wrong user name' : 'wrong password';
      this.warn(`auth|${id}`, ErrorCode.MQTT_AUTH_FAILED, `client ${safeId(id)} refused: ${why} (CONNACK 5)`);
      return done(authError(5, 'not authorized'), false);
    }
    done(null, true);
  }

  private mac(password: Buffer): Buffer {
    return createHmac('sha256', this.macKey).update(password).digest();
  }

  private onPublish(client: Client | null, topic: string, payload: Buffer, done: (error?: Error | null) => void): void {
    // client is null only for a last will published after its client is gone: nothing to ingest.
    if (client === null) return done(new Error('no client'));
    const own = readingsTopic(client.id);
    if (topic !== own) {
      this.counters.notAuthorized!++;
      this.warn(`pub|${client.id}`, ErrorCode.MQTT_NOT_AUTHORIZED, `device ${client.id} may not publish to ${topic.slice(0, 200)}; connection closed`);
      return done(new GatewayError(ErrorCode.MQTT_NOT_AUTHORIZED, 'publish not authorized'));
    }
    this.counters.messages!++;
    const decoded = decodeReadings(client.id, payload, this.decode);
    if (decoded.rejects.length > 0) this.counters.rejected!++;
    const batch: IngestBatch = {
      received: Date.now(),
      source: `mqtt-broker ${client.id}`,
      message:
        decoded.messageId !== null
          ? { sender: `mqtt:${client.id}`, controlId: decoded.messageId, digest: messageDigest(payload) }
          : null,
      measurements: decoded.measurements,
      rejects: decoded.rejects,
    };
    const work = this.ctx.submit(batch).then(
      (result) => {
        this.counters.readings! += result.stored;
        this.counters.deadLetters! += result.deadLetters;
        if (result.duplicate) this.counters.duplicates!++;
        this.lastMessageAt = Date.now();
        // Readings are not forwarded to subscribers: no device may subscribe to them, and the
        // gateway has consumed them. The (possibly invalid) payload goes no further.
        done(null);
      },
      (err: unknown) => {
        this.counters.storeErrors!++;
        const code = err instanceof GatewayError ? err.code : ErrorCode.STORE_FAILED;
        this.lastError = code;
        this.lastErrorMessage = `a message from ${client.id} could not be stored; the device will resend it`;
        this.warn('store', code, this.lastErrorMessage);
        // No PUBACK: closing the connection makes the device resend after it reconnects.
        done(new GatewayError(code, 'not stored'));
      },
    );
    this.inFlight.add(work);
    void work.finally(() => this.inFlight.delete(work));
  }

  private warn(key: string, code: ErrorCode, message: string): void {
    this.lastError = code;
    this.lastErrorMessage = message;
    const now = Date.now();
    const last = this.lastLogged.get(key);
    if (last !== undefined && now - last < LOG_REPEAT_MS) return;
    if (this.lastLogged.size > 1000) this.lastLogged.clear();
    this.lastLogged.set(key, now);
    this.ctx.log.warn({ code }, message);
  }

  private setState(state: DriverState): void {
    if (this.state === state) return;
    this.state = state;
    this.since = Date.now();
  }
}

/**
 * The store's duplicate key for a message with an `id`: sender, id and a digest of the bytes,
 * so a redelivery is a no-op and a reused id with other content is not mistaken for one.
 */
function messageIdentity(deviceId: string, id: string, payload: Buffer): MessageIdentity {
  return { sender: `mqtt:${deviceId}`, controlId: id, digest: messageDigest(payload) };
}

function authError(returnCode: 4 | 5, message: string): AuthenticateError {
  return Object.assign(new Error(message), { returnCode }) as AuthenticateError;
}

/** A client id as it may appear in a log line: printable, bounded (it is input from anyone). */
function safeId(id: string): string {
  return JSON.stringify(id.slice(0, 64));
}
