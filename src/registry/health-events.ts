import type Database from 'better-sqlite3';

export const DEVICE_EVENT_TYPES = ['silent', 'resumed', 'clock-drift', 'connection-lost', 'connection-restored'] as const;
export type DeviceHealthEventType = (typeof DEVICE_EVENT_TYPES)[number];

/** One device health event. `detail` holds numbers and codes only: never patient data. */
export interface DeviceHealthEvent {
  readonly id: number;
  /** Epoch ms. */
  readonly time: number;
  readonly device: string;
  readonly type: DeviceHealthEventType;
  readonly detail: Readonly<Record<string, string | number | boolean | null>>;
}

export interface DeviceEventQuery {
  readonly device?: string;
  readonly type?: DeviceHealthEventType;
  /** Epoch ms, inclusive. */
  readonly since?: number;
  readonly limit: number;
}

const SCHEMA = `
-- Device health events (silence, clock drift, connection): what biomedical engineering reads
-- after the fact. Append-only, small (one row per state change, not per check).
CREATE TABLE IF NOT EXISTS device_events (
  id INTEGER PRIMARY KEY,
  time INTEGER NOT NULL,
  device TEXT NOT NULL,
  type TEXT NOT NULL,
  detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS device_events_device ON device_events (device, id);
CREATE INDEX IF NOT EXISTS device_events_time ON device_events (time);
`;

interface Row {
  id: number;
  time: number;
  device: string;
  type: DeviceHealthEventType;
  detail: string;
}

/**
 * The `device_events` table in the store's SQLite file. Each `append` is its own small
 * transaction (durable when it returns); it runs from the health timer, never on the ingest
 * path.
 */
export class DeviceEventLog {
  private readonly insert;

  constructor(private readonly db: Database.Database) {
    db.exec(SCHEMA);
    this.insert = db.prepare('INSERT INTO device_events (time, device, type, detail) VALUES (?, ?, ?, ?)');
  }

  append(event: Omit<DeviceHealthEvent, 'id'>): DeviceHealthEvent {
    const info = this.insert.run(event.time, event.device, event.type, JSON.stringify(event.detail));
    return { id: Number(info.lastInsertRowid), ...event };
  }

  /** Newest first. */
  query(q: DeviceEventQuery): DeviceHealthEvent[] {
    const where: string[] = [];
    const params: (string | number)[] = [];
    if (q.device !== undefined) {
      where.push('device = ?');
      params.push(q.device);
    }
    if (q.type !== undefined) {
      where.push('type = ?');
      params.push(q.type);
    }
    if (q.since !== undefined) {
      where.push('time >= ?');
      params.push(q.since);
    }
    const sql = `SELECT id, time, device, type, detail FROM device_events${where.length ? ` WHERE ${where.join(' AND ')}` : ''} ORDER BY id DESC LIMIT ?`;
    const rows = this.db.prepare(sql).all(...params, q.limit) as Row[];
    return rows.map((r) => ({ id: r.id, time: r.time, device: r.device, type: r.type, detail: JSON.parse(r.detail) as DeviceHealthEvent['detail'] }));
  }

  /** Events per type ever recorded (seeds the metric counters so they survive a restart). */
  countsByType(): Map<DeviceHealthEventType, number> {
    const rows = this.db.prepare('SELECT type, count(*) AS n FROM device_events GROUP BY type').all() as { type: DeviceHealthEventType; n: number }[];
    return new Map(rows.map((r) => [r.type, r.n]));
  }
}
