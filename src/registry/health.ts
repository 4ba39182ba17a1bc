/**
 * Device health: per device, when it was last heard, how much it sends, how much of it was
 * refused, whether its transport connection is up, and how far its clock is from ours. A bound
 * device that goes quiet, a clock that drifts and a connection that drops each raise ONE event
 * (stored in `device_events`, logged, counted) on the change, not one per check.
 *
 * Two paths, kept apart on purpose:
 * - `noteBatch` runs on the ingest path after every commit: O(1), no SQL, no allocation after
 *   the first batch of a device (its state is a few fixed-size arrays).
 * - `check(now)` runs from a timer every few seconds: it compares the state with the registry
 *   (bound? expected interval?) and the drivers (connection), and writes the events.
 *
 * Nothing here holds patient data: a device id, counts and times only.
 */
import type Database from 'better-sqlite3';
import type { Logger } from '../log.js';
import { DeviceEventLog, type DeviceEventQuery, type DeviceHealthEvent, type DeviceHealthEventType, DEVICE_EVENT_TYPES } from './health-events.js';

export { DEVICE_EVENT_TYPES, type DeviceEventQuery, type DeviceHealthEvent, type DeviceHealthEventType } from './health-events.js';

/** What one committed batch says about one device (the ingest path's `DeviceBatchStats`). */
export interface HealthBatch {
  /** Arrival time, epoch ms. */
  readonly received: number;
  /** Newest reading time of this device in the batch, or null when it had none. */
  readonly newestReadingTime: number | null;
  readonly readings: number;
  /** Parts of the batch refused (dead letters). */
  readonly rejects: number;
  /** `mllp 10.1.2.3:5123`, `serial /dev/ttyUSB0`, `mqtt-broker <client id>`. */
  readonly source: string;
}

export type ConnectionState = 'connected' | 'disconnected' | 'unknown';

export interface DeviceHealthOptions {
  /** The store's database (`SqliteStore.database()`): events go to its `device_events` table. */
  readonly db: Database.Database;
  readonly log: Logger;
  /** Ids of the registry's active devices: the ones whose silence is watched. */
  readonly activeDevices: () => Iterable<string>;
  /** Whether the device is bound (to a bed or a patient) at `now` (bindings module). */
  readonly isBound: (deviceId: string, now: number) => boolean;
  /** The device's expected interval (ms) from its registry record; null: the default. */
  readonly expectedIntervalMs?: (deviceId: string) => number | null;
  /** Config `registry.expectedIntervalSeconds` × 1000. */
  readonly defaultExpectedIntervalMs: number;
  /** Config `registry.clockDriftLimitSeconds` × 1000 (snapshot, metrics, `clock-drift` events). */
  readonly clockDriftLimitMs: number;
  /** The transport's view of the connection a batch came in on (`connectionResolver`). */
  readonly connectionOf?: (source: string) => ConnectionState;
  /** How often the timer runs `check` (ms); default 5 s. */
  readonly checkIntervalMs?: number;
  /**
   * A device that is not watched and not heard for this long (ms) is forgotten (it leaves the
   * API and /metrics), so ids that came and went — or junk ids from a misconfigured sender —
   * do not accumulate. Default 24 h.
   */
  readonly forgetAfterMs?: number;
  /** Gateway start: a bound device never heard since counts as silent from here. Default: construction. */
  readonly startedAt?: number;
  readonly now?: () => number;
}

/** What the API and /metrics show per device. */
export interface DeviceHealthSnapshot {
  readonly device: string;
  /** ISO-8601 UTC, null when never heard since the gateway started. */
  readonly lastSeen: string | null;
  readonly messages: number;
  readonly readings: number;
  readonly errors: number;
  readonly ratePerMinute: number;
  readonly connection: ConnectionState;
  /** Arrival minus reading time (s): positive = the device clock is behind (or delivery late). */
  readonly clockOffsetSeconds: number | null;
  readonly clockDrifting: boolean;
  readonly silent: boolean;
  /** ISO-8601: when it was last heard (or the gateway start) before going silent. */
  readonly silentSince: string | null;
  /** Last connection it sent on (no payload, no patient data). */
  readonly source: string | null;
}

const MINUTE_MS = 60_000;
const DAY_MS = 24 * 60 * MINUTE_MS;

/**
 * Message rate: 5 one-minute slots indexed by arrival minute, rather than an EWMA. A slot
 * window answers "how many messages in the last 5 minutes", which an engineer can check
 * against the device's configured send interval; it falls to 0 by itself when the device stops
 * (an EWMA only moves when updated, so it would need time decay on read anyway); and it costs
 * 10 numbers per device.
 */
const RATE_SLOTS = 5;

/**
 * Clock offset: the MINIMUM of the samples (arrival − newest reading time) over the last
 * `CLOCK_SLOTS` minutes in which the device sent anything ("active minutes"), one slot per
 * active minute holding that minute's minimum.
 *
 * Why the minimum: delivery delay, a device that reports a reading some seconds after taking
 * it, and replayed old data all make a sample LARGER than the true offset, never smaller. So
 * the smallest recent sample is the best bound on the clock itself; a median would be pulled
 * by a long backlog (a monitor resending an hour of buffered readings sends hundreds of
 * messages, which would outvote the live ones).
 *
 * Why active minutes and not the last N minutes of wall time: after a network outage the
 * device resends its backlog in a burst — seconds, a minute or two — right after a silence.
 * With a wall-time window the pre-outage samples would have expired and the burst alone would
 * make the estimate (an hour "behind"). With active minutes the slots from before the outage
 * are still there, so a burst shorter than `CLOCK_SLOTS` active minutes cannot move the
 * estimate up; live data resumes within it and the estimate stays the live offset.
 *
 * Trade-offs: a clock that jumps AHEAD shows at once (a negative sample cannot come from
 * delay); one that jumps BEHIND, or is corrected after being ahead, shows after
 * `CLOCK_SLOTS` active minutes. A backlog trickled over more than `CLOCK_SLOTS` active minutes
 * would be taken for a clock behind: devices do not resend that slowly in practice.
 */
const CLOCK_SLOTS = 10;

/** Per-device state; arrays allocated once, at the first batch. */
class DeviceState {
  lastSeen: number | null = null;
  firstSeen: number | null = null;
  messages = 0;
  readings = 0;
  errors = 0;
  source: string | null = null;
  readonly rateMinute = new Float64Array(RATE_SLOTS).fill(-1);
  readonly rateCount = new Float64Array(RATE_SLOTS);
  readonly clockMin = new Float64Array(CLOCK_SLOTS).fill(Number.NaN);
  clockMinute = -1;
  clockIndex = -1;
  // Event state, owned by check().
  /** When it became watched (bound and active): silence is not counted from before. Null: not watched. */
  watchedSince: number | null = null;
  silent = false;
  /** When silence began: the last time heard before it (or the gateway start). */
  silentSince = 0;
  drifting = false;
  /** Connection as seen by the previous check (events on change only). */
  connection: ConnectionState = 'unknown';
  /** `lastSeen` at the previous check: data since then means its connection was up meanwhile. */
  seenAtCheck: number | null = null;
  /** Consecutive checks that saw it disconnected after being connected. */
  disconnectedChecks = 0;
  connectionLost = false;
}

/** A lost connection is reported after this many consecutive checks see it down (a reconnect is not an outage). */
const CONNECTION_DEBOUNCE_CHECKS = 2;

export class DeviceHealth {
  private readonly devices = new Map<string, DeviceState>();
  private readonly events: DeviceEventLog;
  private readonly eventCounts = new Map<DeviceHealthEventType, number>();
  private readonly now: () => number;
  private readonly startedAt: number;
  private timer: NodeJS.Timeout | null = null;
  private checked = false;

  constructor(private readonly options: DeviceHealthOptions) {
    this.events = new DeviceEventLog(options.db);
    this.now = options.now ?? Date.now;
    this.startedAt = options.startedAt ?? this.now();
    const stored = this.events.countsByType();
    for (const type of DEVICE_EVENT_TYPES) this.eventCounts.set(type, stored.get(type) ?? 0);
  }

  /** Ingest path: one committed batch of one device. Must not throw; O(1), no SQL. */
  noteBatch(deviceId: string, b: HealthBatch): void {
    let s = this.devices.get(deviceId);
    if (s === undefined) {
      s = new DeviceState();
      this.devices.set(deviceId, s);
    }
    const t = b.received;
    if (s.firstSeen === null) s.firstSeen = t;
    // Batches of several connections commit in any order: last seen never goes back.
    if (s.lastSeen === null || t > s.lastSeen) s.lastSeen = t;
    s.messages++;
    s.readings += b.readings;
    s.errors += b.rejects;
    s.source = b.source;

    const minute = Math.floor(t / MINUTE_MS);
    const r = minute % RATE_SLOTS;
    if (s.rateMinute[r] !== minute) {
      s.rateMinute[r] = minute;
      s.rateCount[r] = 0;
    }
    s.rateCount[r]!++;

    const reading = b.newestReadingTime;
    if (reading !== null && Number.isFinite(reading)) {
      const sample = t - reading;
      // A batch arriving out of order (minute < clockMinute) folds into the current slot.
      if (minute > s.clockMinute) {
        s.clockMinute = minute;
        s.clockIndex = (s.clockIndex + 1) % CLOCK_SLOTS;
        s.clockMin[s.clockIndex] = sample;
      } else if (!(sample >= s.clockMin[s.clockIndex]!)) {
        s.clockMin[s.clockIndex] = sample;
      }
    }
  }

  /** Estimated clock offset (ms, arrival − reading time), or null before the first reading. */
  clockOffsetMs(deviceId: string): number | null {
    const s = this.devices.get(deviceId);
    if (s === undefined) return null;
    let min = Number.POSITIVE_INFINITY;
    for (let i = 0; i < CLOCK_SLOTS; i++) {
      const v = s.clockMin[i]!;
      if (v < min) min = v;
    }
    return min === Number.POSITIVE_INFINITY ? null : min;
  }

  /** Whether the device's clock is off by more than `limitMs` either way. */
  clockDrifting(deviceId: string, limitMs: number): boolean {
    const offset = this.clockOffsetMs(deviceId);
    return offset !== null && Math.abs(offset) > limitMs;
  }

  /** Messages per minute over the last 5 minutes (over the time since first heard, when shorter, but at least a minute). */
  ratePerMinute(deviceId: string, now = this.now()): number {
    const s = this.devices.get(deviceId);
    if (s === undefined || s.firstSeen === null) return 0;
    const nowMinute = Math.floor(now / MINUTE_MS);
    const oldest = nowMinute - RATE_SLOTS + 1;
    let count = 0;
    for (let i = 0; i < RATE_SLOTS; i++) {
      const m = s.rateMinute[i]!;
      if (m >= oldest && m <= nowMinute) count += s.rateCount[i]!;
    }
    // At least a minute: a device heard twice in its first second is not at 120/min.
    const span = Math.max(MINUTE_MS, now - Math.max(oldest * MINUTE_MS, s.firstSeen));
    return Math.round((count * MINUTE_MS * 100) / span) / 100;
  }

  connection(deviceId: string): ConnectionState {
    const source = this.devices.get(deviceId)?.source ?? null;
    if (source === null || this.options.connectionOf === undefined) return 'unknown';
    return this.options.connectionOf(source);
  }

  /** The device's health, or null when it was never heard and is not watched. */
  snapshot(deviceId: string, now = this.now()): DeviceHealthSnapshot | null {
    const s = this.devices.get(deviceId);
    if (s === undefined) return null;
    const offset = this.clockOffsetMs(deviceId);
    return {
      device: deviceId,
      lastSeen: s.lastSeen === null ? null : new Date(s.lastSeen).toISOString(),
      messages: s.messages,
      readings: s.readings,
      errors: s.errors,
      ratePerMinute: this.ratePerMinute(deviceId, now),
      connection: this.connection(deviceId),
      clockOffsetSeconds: offset === null ? null : Math.round(offset) / 1000,
      clockDrifting: offset !== null && Math.abs(offset) > this.options.clockDriftLimitMs,
      silent: s.silent,
      silentSince: s.silent ? new Date(s.silentSince).toISOString() : null,
      source: s.source,
    };
  }

  /** Every device heard since start, and every watched one (bound, never heard), by id. */
  all(now = this.now()): DeviceHealthSnapshot[] {
    return [...this.devices.keys()].sort().map((id) => this.snapshot(id, now)!);
  }

  /** Stored events, newest first. */
  eventLog(query: DeviceEventQuery): DeviceHealthEvent[] {
    return this.events.query(query);
  }

  /** Events recorded per type (all time: seeded from the table at start). */
  eventTotals(): ReadonlyMap<DeviceHealthEventType, number> {
    return this.eventCounts;
  }

  /**
   * Compares each device's state with the registry and the drivers and raises the events of
   * what changed. Silence is watched for active devices that are bound now; a device that
   * stops being bound (or active) while silent is simply no longer silent (no event: it did not
   * resume). A failing event write is logged; the event still counts and its state holds.
   */
  check(now = this.now()): void {
    const o = this.options;
    const watched = new Set<string>();
    for (const id of o.activeDevices()) {
      if (!o.isBound(id, now)) continue;
      watched.add(id);
      let s = this.devices.get(id);
      if (s === undefined) {
        // Bound but never heard since start: silence counts from the gateway start.
        s = new DeviceState();
        this.devices.set(id, s);
      }
      // Bound at start: watched from the start. Bound later: a grace of one interval from then.
      s.watchedSince ??= this.checked ? now : this.startedAt;
      this.checkSilence(id, s, now);
      this.checkConnection(id, s, now);
    }
    const forgetBefore = now - (o.forgetAfterMs ?? DAY_MS);
    for (const [id, s] of this.devices) {
      if (!watched.has(id) && (s.lastSeen === null || s.lastSeen < forgetBefore)) {
        // Deleting the current entry while iterating a Map is safe.
        this.devices.delete(id);
        continue;
      }
      if (!watched.has(id)) {
        s.watchedSince = null;
        s.silent = false;
        s.connectionLost = false;
        s.disconnectedChecks = 0;
      }
      this.checkClock(id, s, now);
    }
    this.checked = true;
  }

  /** Runs `check` every `checkIntervalMs` (unref'd: it never keeps the process alive). */
  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => {
      try {
        this.check();
      } catch (err) {
        this.options.log.error({ err }, 'device health check failed');
      }
    }, this.options.checkIntervalMs ?? 5_000);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  private expectedMs(id: string): number {
    return this.options.expectedIntervalMs?.(id) ?? this.options.defaultExpectedIntervalMs;
  }

  private checkSilence(id: string, s: DeviceState, now: number): void {
    // Last heard, but never before it was watched (or the gateway start).
    const heard = Math.max(s.lastSeen ?? Number.NEGATIVE_INFINITY, s.watchedSince ?? this.startedAt);
    const expected = this.expectedMs(id);
    if (s.silent) {
      if (s.lastSeen !== null && s.lastSeen > s.silentSince) {
        s.silent = false;
        this.raise(id, 'resumed', s.lastSeen, {
          silentSince: new Date(s.silentSince).toISOString(),
          silentForSeconds: Math.round((s.lastSeen - s.silentSince) / 1000),
        });
      }
      return;
    }
    if (now - heard > expected) {
      s.silent = true;
      s.silentSince = heard;
      this.raise(id, 'silent', now, {
        lastSeen: s.lastSeen === null ? null : new Date(s.lastSeen).toISOString(),
        expectedIntervalSeconds: Math.round(expected / 1000),
        silentForSeconds: Math.round((now - heard) / 1000),
      });
    }
  }

  private checkConnection(id: string, s: DeviceState, now: number): void {
    const state = this.connection(id);
    // A connection that delivered data and closed between two checks was up too: without
    // this, a sender that drops right after its last message would never count as lost.
    const sentSinceCheck = s.lastSeen !== s.seenAtCheck;
    s.seenAtCheck = s.lastSeen;
    if (state === 'connected') {
      s.disconnectedChecks = 0;
      if (s.connectionLost) {
        s.connectionLost = false;
        this.raise(id, 'connection-restored', now, { source: s.source });
      }
    } else if (state === 'disconnected' && (s.connection === 'connected' || sentSinceCheck || s.disconnectedChecks > 0)) {
      s.disconnectedChecks++;
      if (!s.connectionLost && s.disconnectedChecks >= CONNECTION_DEBOUNCE_CHECKS) {
        s.connectionLost = true;
        this.raise(id, 'connection-lost', now, { source: s.source });
      }
    }
    s.connection = state;
  }

  private checkClock(id: string, s: DeviceState, now: number): void {
    const offset = this.clockOffsetMs(id);
    const drifting = offset !== null && Math.abs(offset) > this.options.clockDriftLimitMs;
    if (drifting === s.drifting) return;
    s.drifting = drifting;
    if (drifting && offset !== null) {
      this.raise(id, 'clock-drift', now, {
        clockOffsetSeconds: Math.round(offset) / 1000,
        limitSeconds: this.options.clockDriftLimitMs / 1000,
      });
    } else {
      this.options.log.info({ device: id, clockOffsetSeconds: offset === null ? null : Math.round(offset) / 1000 }, 'device clock back within the limit');
    }
  }

  private raise(device: string, type: DeviceHealthEventType, time: number, detail: DeviceHealthEvent['detail']): void {
    this.eventCounts.set(type, (this.eventCounts.get(type) ?? 0) + 1);
    const level = type === 'resumed' || type === 'connection-restored' ? 'info' : 'warn';
    this.options.log[level]({ device, event: type, ...detail }, `device ${type}`);
    try {
      this.events.append({ time, device, type, detail });
    } catch (err) {
      this.options.log.error({ err, device, event: type }, 'device event could not be stored');
    }
  }
}
