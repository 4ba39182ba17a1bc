import { z } from 'zod';
import { FhirSettings } from '../sinks/fhir/config.js';
import { InfluxSettings } from '../sinks/influx/config.js';

/**
 * The configuration schema: the reference for every setting, its default, unit and bounds.
 * Objects are strict, so a misspelt key fails at start with its path instead of being ignored.
 */

const port = z.number().int().min(0).max(65535);

/** A device id may appear once in a device list; the issue names the later entry. */
function uniqueDeviceIds(devices: readonly { deviceId: string }[], ctx: z.RefinementCtx): void {
  const seen = new Map<string, number>();
  devices.forEach((d, i) => {
    const first = seen.get(d.deviceId);
    if (first !== undefined) {
      ctx.addIssue({ code: 'custom', path: [i, 'deviceId'], message: `"${d.deviceId}" is already used by device ${first}` });
    } else {
      seen.set(d.deviceId, i);
    }
  });
}
const host = z.string().min(1);

const timeZone = z.string().refine(
  (zone) => {
    try {
      new Intl.DateTimeFormat('en', { timeZone: zone });
      return true;
    } catch {
      return false;
    }
  },
  { message: 'is not an IANA time zone (for example Europe/Copenhagen)' },
);

/** An API token as stored: `sha256:` and 64 hex digits (from `mdi token new` or `mdi token hash`). */
const tokenHash = z.string().regex(/^sha256:[0-9a-f]{64}$/, 'must be sha256:<64 hex digits> from `mdi token hash` or `mdi token new`, never a token itself');

export const HttpAuthConfig = z.strictObject({
  /**
   * Require a bearer token on /api/* (GET/HEAD: viewer or admin; anything else: admin).
   * /health stays open. Turn off only behind a proxy that authenticates.
   */
  enabled: z.boolean().default(true),
  /** Tokens from the config; more can be created in the registry (`mdi token new --store`). */
  tokens: z
    .array(z.strictObject({ name: z.string().regex(/^[A-Za-z0-9._@-]{1,64}$/, 'use 1–64 letters, digits and . _ @ -'), role: z.enum(['admin', 'viewer']), hash: tokenHash }))
    .max(1000)
    .default([])
    .superRefine((tokens, ctx) => {
      const seen = new Set<string>();
      tokens.forEach((t, i) => {
        if (seen.has(t.name)) ctx.addIssue({ code: 'custom', path: [i, 'name'], message: `"${t.name}" is already used` });
        seen.add(t.name);
      });
    }),
});

export const HttpConfig = z.strictObject({
  port: port.default(8080),
  host: host.default('0.0.0.0'),
  auth: HttpAuthConfig.prefault({}),
});

/** ADT (A01/A02/A03/A04/A08/A11/A12/A13) over MLLP: who lies in which bed. */
export const AdtConfig = z.strictObject({
  enabled: z.boolean().default(true),
  port: port.default(2576),
  host: host.default('0.0.0.0'),
  maxMessageBytes: z.number().int().min(1024).max(64 * 1024 * 1024).default(1024 * 1024),
  maxConnections: z.number().int().min(1).max(10_000).default(100),
});

/** The device registry: how readings are attributed to patients, and device health. */
export const RegistryConfig = z.strictObject({
  /**
   * Readings of a device the registry does not know (or has not approved, or retired):
   * `store` keeps them in the store only, flagged UNREGISTERED, until an engineer approves the
   * device; `chart` also charts them to the patient their message names (PCD-01 PID), for a
   * site whose upstream device gateway already does the association.
   */
  unregistered: z.enum(['store', 'chart']).default('store'),
  /**
   * A device clock this far from arrival time (s, either way) flags its readings CLOCK_DRIFT
   * (stored, not charted: the patient bound "at the reading's time" may be the wrong one);
   * 0 turns the check off.
   */
  clockDriftLimitSeconds: z.number().int().min(0).max(86_400).default(300),
  /** A bound device silent for longer than this (s) raises a `silent` event; per device it can be set in the registry. */
  expectedIntervalSeconds: z.number().int().min(1).max(86_400).default(120),
});

export const MllpConfig = z.strictObject({
  /** Set false to run without the PCD-01 listener (for example a serial-only instance). */
  enabled: z.boolean().default(true),
  port: port.default(2575),
  host: host.default('0.0.0.0'),
  /**
   * Largest accepted HL7 message in bytes. A 20-OBX PCD-01 message is about 3 KiB; 1 MiB
   * leaves room for waveform (NA) rows while bounding memory per connection.
   */
  maxMessageBytes: z.number().int().min(1024).max(64 * 1024 * 1024).default(1024 * 1024),
  /** Concurrent sender connections; each holds at most one decoder buffer. */
  maxConnections: z.number().int().min(1).max(100_000).default(1000),
  /**
   * Unanswered messages per connection before the listener stops reading from that socket
   * (TCP backpressure). Real gateways wait for each ACK; bursty senders pipeline.
   */
  maxInFlight: z.number().int().min(1).max(100_000).default(256),
  /** Close a connection with no traffic for this long (ms); 0 keeps idle connections. */
  idleTimeoutMs: z.number().int().min(0).default(0),
});

export const StoreConfig = z.strictObject({
  sqlite: z
    .strictObject({
      /**
       * `full` fsyncs the WAL at every group commit: an ACKed message survives power loss.
       * `normal` survives a crash of the gateway process but not of the machine.
       */
      synchronous: z.enum(['full', 'normal']).default('full'),
      /**
       * 0: a group commit takes what arrived in the current event-loop turn (no added latency;
       * under load what arrives while the writer thread commits is the next group). >0: wait up
       * to this long (ms) before handing an idle writer its group.
       */
      groupCommitMaxDelayMs: z.number().int().min(0).max(1000).default(0),
      /** Most rows per group commit; a group this large goes to an idle writer at once. */
      groupCommitMaxRows: z.number().int().min(1).max(1_000_000).default(20_000),
      /** Readings older than this are deleted from the local store; 0 keeps everything. */
      retentionDays: z.number().min(0).default(0),
    })
    .prefault({}),
  /**
   * Keep the series in an InfluxDB 1.x as well (`src/sinks/influx/config.ts`): fed from the
   * SQLite store with its own cursor. Absent: SQLite only.
   */
  influx: InfluxSettings.optional(),
});

/** A device id as it may stand in an MQTT topic level (drivers/mqtt/payload.ts DEVICE_ID_PATTERN). */
const mqttDeviceId = z.string().regex(/^[A-Za-z0-9._:-]{1,128}$/, 'use 1–128 letters, digits and . _ : - (no /, + or #)');

/** One device allowed on the embedded broker. */
const MqttDeviceCredentialConfig = z.strictObject({
  /** The MQTT client id the device must connect with; its readings carry it. */
  deviceId: mqttDeviceId,
  /** User name; default: the device id. */
  username: z.string().min(1).max(128).optional(),
  /** scrypt hash of the device's password, from `mdi mqtt-hash-password` (never the password itself). */
  passwordHash: z.string().regex(/^scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$/, 'must be a scrypt$… hash from `mdi mqtt-hash-password`, never a plain password'),
});

/** Reconnect backoff towards an external broker (ms); see src/reconnect.ts for why backoff and jitter. */
const MqttReconnectConfig = z.strictObject({
  initialDelayMs: z.number().int().min(10).max(60_000).default(500),
  maxDelayMs: z.number().int().min(100).max(600_000).default(30_000),
});

/** One subscription to an external broker (client mode). */
const MqttSubscriptionConfig = z
  .strictObject({
    /** `mqtt://host:1883` or `mqtts://host:8883`. */
    url: z.string().regex(/^(mqtts?|wss?):\/\/[^\s]+$/, 'must be an mqtt://, mqtts://, ws:// or wss:// URL'),
    topics: z.array(z.string().min(1).max(512)).min(1).max(100).default(['mdi/v1/devices/+/readings']),
    /** MQTT v5 shared subscription group: instances with the same group split the messages. */
    sharedGroup: z.string().regex(/^[^/+#\s]{1,64}$/, 'no /, +, # or spaces').optional(),
    qos: z.union([z.literal(0), z.literal(1)]).default(1),
    /** Stable per instance (the broker keeps this instance's session under it); unique per instance. */
    clientId: z.string().min(1).max(128),
    /** How long (s) the broker keeps the session and queues messages while this instance is away. */
    sessionExpirySeconds: z.number().int().min(0).max(4_294_967_295).default(86_400),
    /** Un-acked messages the broker may send at once; × the packet bound is the memory one connection can take. */
    receiveMaximum: z.number().int().min(1).max(65_535).default(32),
    keepaliveSeconds: z.number().int().min(5).max(3600).default(30),
    connectTimeoutMs: z.number().int().min(100).max(120_000).default(10_000),
    tls: z
      .strictObject({
        ca: z.string().min(1).optional(),
        cert: z.string().min(1).optional(),
        key: z.string().min(1).optional(),
        rejectUnauthorized: z.boolean().default(true),
        servername: z.string().min(1).optional(),
      })
      .optional(),
    auth: z
      .strictObject({
        username: z.string().min(1).max(256),
        /** Prefer `passwordFile` (a mounted secret): a password here sits in the config file. */
        password: z.string().max(1024).optional(),
        passwordFile: z.string().min(1).optional(),
      })
      .optional(),
    reconnect: MqttReconnectConfig.prefault({}),
  })
  .superRefine((s, ctx) => {
    if (s.auth?.password !== undefined && s.auth.passwordFile !== undefined) ctx.addIssue({ code: 'custom', path: ['auth'], message: 'give "password" or "passwordFile", not both' });
    if (s.reconnect.maxDelayMs < s.reconnect.initialDelayMs) ctx.addIssue({ code: 'custom', path: ['reconnect', 'maxDelayMs'], message: 'must be at least reconnect.initialDelayMs' });
  });

export const MqttConfig = z.strictObject({
  /** Largest accepted message body (bytes); larger ones become dead letters (head only). */
  maxPayloadBytes: z.number().int().min(1024).max(16 * 1024 * 1024).default(256 * 1024),
  broker: z
    .strictObject({
      /**
       * The embedded broker (aedes, MQTT 3.1.1) for devices that connect to the gateway itself.
       * On by default (the embedded defaults); it admits only the devices listed below.
       */
      enabled: z.boolean().default(true),
      port: port.default(1883),
      host: host.default('0.0.0.0'),
      /** Largest MQTT packet (bytes): a connection announcing a larger one is closed before anything is buffered. */
      maxPacketBytes: z.number().int().min(1024).max(256 * 1024 * 1024).default(1024 * 1024),
      maxConnections: z.number().int().min(1).max(1_000_000).default(10_000),
      /** A socket that has not sent CONNECT by then is closed (ms). */
      connectTimeoutMs: z.number().int().min(100).max(120_000).default(10_000),
      /** A second listener with TLS when a certificate is configured (PEM files). */
      tls: z
        .strictObject({
          port: port.default(8883),
          cert: z.string().min(1),
          key: z.string().min(1),
          ca: z.string().min(1).optional(),
          /** CA of device certificates: a device may then authenticate by certificate (subject CN = device id). */
          clientCa: z.string().min(1).optional(),
        })
        .optional(),
      /** Devices allowed to connect (until the device registry holds them). */
      devices: z
        .array(MqttDeviceCredentialConfig)
        .max(100_000)
        .default([])
        .superRefine(uniqueDeviceIds),
    })
    .prefault({}),
  /**
   * Republish normalized Observations to `<topicRoot>/<bed>/<metric>` on a broker (retained
   * latest value, no patient identity) for dashboards and other consumers.
   */
  republish: z
    .strictObject({
      enabled: z.boolean().default(false),
      /** The broker to publish to; required when enabled. */
      url: z.string().regex(/^(mqtts?|wss?):\/\/[^\s]+$/, 'must be an mqtt://, mqtts://, ws:// or wss:// URL').optional(),
      clientId: z.string().min(1).max(128).default('mdi-gateway-republish'),
      topicRoot: z.string().regex(/^[^+#\s]{1,128}$/, 'no +, # or spaces').default('mdi/v1/beds'),
      retain: z.boolean().default(true),
      /** Time between store reads (ms): the delay a dashboard sees at most, beyond the commit. */
      intervalMs: z.number().int().min(50).max(60_000).default(500),
      /** Device id → bed id, overriding the bed the registry bound the device to (rarely needed). */
      beds: z.record(mqttDeviceId, z.string().min(1).max(128)).default({}),
      auth: z
        .strictObject({ username: z.string().min(1).max(256), password: z.string().max(1024).optional(), passwordFile: z.string().min(1).optional() })
        .optional(),
      tls: z
        .strictObject({ ca: z.string().min(1).optional(), cert: z.string().min(1).optional(), key: z.string().min(1).optional(), rejectUnauthorized: z.boolean().default(true) })
        .optional(),
    })
    .superRefine((r, ctx) => {
      if (r.enabled && r.url === undefined) ctx.addIssue({ code: 'custom', path: ['url'], message: 'is required when republish is enabled' });
    })
    .prefault({}),
  /** External brokers to subscribe to (client mode); each entry is one connection. */
  subscribe: z
    .array(MqttSubscriptionConfig)
    .max(100)
    .default([])
    .superRefine((subs, ctx) => {
      const seen = new Map<string, number>();
      subs.forEach((s, i) => {
        const key = `${s.url}|${s.clientId}`;
        if (seen.has(key)) ctx.addIssue({ code: 'custom', path: [i, 'clientId'], message: `client id "${s.clientId}" is already used on ${s.url} by entry ${seen.get(key)}` });
        else seen.set(key, i);
      });
    }),
});

/**
 * Charting into the EPJ over FHIR R4: the schema lives beside the forwarder
 * (`src/sinks/fhir/config.ts`); `embeddedEpj.port` is part of it.
 */
export const FhirConfig = FhirSettings;

/** Reopen backoff of a serial device (ms); see src/reconnect.ts for why backoff and jitter. */
const SerialReconnectConfig = z.strictObject({
  /** First wait after a failed open or a lost link. */
  initialDelayMs: z.number().int().min(10).max(60_000).default(500),
  /** Longest wait: a device plugged back in is found again within this time. */
  maxDelayMs: z.number().int().min(100).max(600_000).default(30_000),
});

/**
 * Settings every serial device has. Line settings left out take the defaults of the protocol
 * (Masimo 9600 8N1; MEDIBUS 19200 8E1; B. Braun BCC 9600 8N1) — set them to match the device.
 */
const serialDeviceCommon = {
  /** The registered id readings carry (B. Braun: the SpaceCom's; pumps add `/pump-<slot>`). */
  deviceId: z
    .string()
    .min(1)
    .max(128)
    .regex(/^[A-Za-z0-9._:/-]+$/, 'use letters, digits and . _ : / - only'),
  /** Serial port path: `/dev/ttyUSB0`, or better a stable `/dev/serial/by-id/…` name. */
  port: z.string().min(1).optional(),
  /** Instead of `port`: a TCP terminal server or a B. Braun ComDevice (port 4001). */
  tcp: z
    .strictObject({
      host,
      port: port.min(1),
      /** Give up one connection attempt after this long (ms). */
      connectTimeoutMs: z.number().int().min(100).max(60_000).default(5000),
    })
    .optional(),
  baudRate: z.number().int().min(50).max(4_000_000).optional(),
  dataBits: z.union([z.literal(5), z.literal(6), z.literal(7), z.literal(8)]).optional(),
  /** Linux serial drivers know none, even and odd (no mark/space). */
  parity: z.enum(['none', 'even', 'odd']).optional(),
  stopBits: z.union([z.literal(1), z.literal(1.5), z.literal(2)]).optional(),
  /** Hardware flow control (RTS/CTS). */
  rtscts: z.boolean().default(false),
  /** Software flow control: obey XOFF/XON from the device … */
  xon: z.boolean().default(false),
  /** … and send XOFF/XON to it. */
  xoff: z.boolean().default(false),
  reconnect: SerialReconnectConfig.prefault({}),
  /** No valid frame for this long (ms) shows the device as down. Default per protocol (5 s for Masimo and MEDIBUS). */
  silenceTimeoutMs: z.number().int().min(100).max(3_600_000).optional(),
  /** Zone of the device clock (Masimo prints local time). Default: `timezone`. */
  timezone: timeZone.optional(),
};

const MasimoDeviceConfig = z.strictObject({
  protocol: z.literal('masimo'),
  ...serialDeviceCommon,
  /** Longest accepted ASCII 1 line (bytes); real lines are ~200. */
  maxLineBytes: z.number().int().min(64).max(65_536).optional(),
});

const MedibusDeviceConfig = z.strictObject({
  protocol: z.literal('medibus'),
  ...serialDeviceCommon,
  /** Time between poll cycles (ms). */
  pollIntervalMs: z.number().int().min(100).max(60_000).optional(),
  /** Also poll measured data code page 2 and its alarms. */
  codepage2: z.boolean().optional(),
  /** Poll current alarms. */
  alarms: z.boolean().optional(),
  /** Wait this long for an answer (ms); MEDIBUS allows 10 s. */
  responseTimeoutMs: z.number().int().min(100).max(10_000).optional(),
  /** NOP after this long without sending (ms): must stay under the 3 s after which the device drops the link. */
  keepAliveMs: z.number().int().min(100).max(2900).optional(),
  maxFrameBytes: z.number().int().min(64).max(1_048_576).optional(),
});

const BbraunDeviceConfig = z.strictObject({
  protocol: z.literal('bbraun'),
  ...serialDeviceCommon,
  /** Time between MEM:GET requests (ms); BCC asks for ≥ 500. 0: cyclic mode (the ComDevice pushes). */
  pollIntervalMs: z
    .number()
    .int()
    .max(3_600_000)
    .refine((ms) => ms === 0 || ms >= 500, { message: 'must be 0 (cyclic mode) or at least 500 ms (BCC)' })
    .optional(),
  responseTimeoutMs: z.number().int().min(100).max(60_000).optional(),
  /** Pause after a block before ACK (ms); BCC asks for ~100. */
  ackDelayMs: z.number().int().min(0).max(5000).optional(),
  /** BCC character stuffing, as configured on the ComDevice. */
  characterStuffing: z.boolean().optional(),
  maxFrameBytes: z.number().int().min(64).max(1_048_576).optional(),
});

/** One serial device: the protocol decides which further keys are allowed. */
export const SerialDeviceConfig = z
  .discriminatedUnion('protocol', [MasimoDeviceConfig, MedibusDeviceConfig, BbraunDeviceConfig])
  .superRefine((device, ctx) => {
    if ((device.port === undefined) === (device.tcp === undefined)) {
      ctx.addIssue({ code: 'custom', path: ['port'], message: 'give either "port" (a serial port path) or "tcp" ({ host, port }), not both' });
    }
    if (device.reconnect.maxDelayMs < device.reconnect.initialDelayMs) {
      ctx.addIssue({ code: 'custom', path: ['reconnect', 'maxDelayMs'], message: 'must be at least reconnect.initialDelayMs' });
    }
  });

export const SerialConfig = z.strictObject({
  /** Devices on serial ports or TCP terminal servers; each is opened and reopened by itself. */
  devices: z
    .array(SerialDeviceConfig)
    .max(1000)
    .default([])
    .superRefine((devices, ctx) => {
      uniqueDeviceIds(devices, ctx);
      devices.forEach((d, i) => {
        const where = d.port ?? (d.tcp ? `${d.tcp.host}:${d.tcp.port}` : '');
        const other = devices.findIndex((e, j) => j < i && (e.port ?? (e.tcp ? `${e.tcp.host}:${e.tcp.port}` : '')) === where);
        if (where !== '' && other !== -1) ctx.addIssue({ code: 'custom', path: [i, d.port ? 'port' : 'tcp'], message: `${where} is already used by device ${other}` });
      });
    }),
});

export const LogConfig = z.strictObject({
  level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
});

export const Config = z.strictObject({
  /** Where the embedded store (SQLite) and other state live. */
  dataDir: z.string().min(1).default('./data'),
  /** Zone for HL7 times sent without a UTC offset. */
  timezone: timeZone.default('Europe/Copenhagen'),
  log: LogConfig.prefault({}),
  http: HttpConfig.prefault({}),
  mllp: MllpConfig.prefault({}),
  adt: AdtConfig.prefault({}),
  registry: RegistryConfig.prefault({}),
  store: StoreConfig.prefault({}),
  mqtt: MqttConfig.prefault({}),
  fhir: FhirConfig.prefault({}),
  serial: SerialConfig.prefault({}),
});

export type Config = z.infer<typeof Config>;
export type ConfigInput = z.input<typeof Config>;
