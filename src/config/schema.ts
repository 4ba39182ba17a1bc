import { z } from 'zod';
import { FhirSettings } from '../sinks/fhir/config.js';

/**
 * The configuration schema: the reference for every setting, its default, unit and bounds.
 * Objects are strict, so a misspelt key fails at start with its path instead of being ignored.
 * A later issue gives meaning to `mqtt.broker.port`; it is part of the schema now so configs
 * written today keep working.
 */

const port = z.number().int().min(0).max(65535);
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

export const HttpConfig = z.strictObject({
  port: port.default(8080),
  host: host.default('0.0.0.0'),
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
       * under load the fsync itself lets the next group grow). >0: wait up to this long (ms).
       */
      groupCommitMaxDelayMs: z.number().int().min(0).max(1000).default(0),
      /** Rows per group commit before it is flushed at once. */
      groupCommitMaxRows: z.number().int().min(1).max(1_000_000).default(20_000),
      /** Readings older than this are deleted from the local store; 0 keeps everything. */
      retentionDays: z.number().min(0).default(0),
    })
    .prefault({}),
});

export const MqttConfig = z.strictObject({
  broker: z
    .strictObject({
      port: port.default(1883),
    })
    .prefault({}),
});

/**
 * Charting into the EPJ over FHIR R4: the schema lives beside the forwarder
 * (`src/sinks/fhir/config.ts`); `embeddedEpj.port` is part of it.
 */
export const FhirConfig = FhirSettings;

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
  store: StoreConfig.prefault({}),
  mqtt: MqttConfig.prefault({}),
  fhir: FhirConfig.prefault({}),
});

export type Config = z.infer<typeof Config>;
export type ConfigInput = z.input<typeof Config>;
