import type Database from 'better-sqlite3';
import type { AuditEntity, AuditEntry, AuditQuery } from './types.js';

const SCHEMA = `
-- Every registry, binding and approval change: who, when, what it was before and after.
-- Append-only; never pruned by the gateway (it is the legal record of who was bound to what).
CREATE TABLE IF NOT EXISTS audit (
  id INTEGER PRIMARY KEY,
  at INTEGER NOT NULL,
  actor TEXT NOT NULL,
  action TEXT NOT NULL,
  entity TEXT NOT NULL,
  entity_id TEXT NOT NULL,
  before TEXT,
  after TEXT
);
CREATE INDEX IF NOT EXISTS audit_entity ON audit (entity, entity_id, id);
`;

interface AuditRow {
  id: number;
  at: number;
  actor: string;
  action: string;
  entity: AuditEntity;
  entity_id: string;
  before: string | null;
  after: string | null;
}

/**
 * The audit log, in the store's SQLite file. `record` is meant to run inside the same
 * transaction as the change it describes, so a change without its audit row cannot exist.
 */
export class AuditLog {
  private readonly insert;

  constructor(private readonly db: Database.Database) {
    db.exec(SCHEMA);
    this.insert = db.prepare('INSERT INTO audit (at, actor, action, entity, entity_id, before, after) VALUES (?, ?, ?, ?, ?, ?, ?)');
  }

  record(entry: Omit<AuditEntry, 'id'>): number {
    const info = this.insert.run(
      entry.at,
      entry.actor,
      entry.action,
      entry.entity,
      entry.entityId,
      entry.before === null || entry.before === undefined ? null : JSON.stringify(entry.before),
      entry.after === null || entry.after === undefined ? null : JSON.stringify(entry.after),
    );
    return Number(info.lastInsertRowid);
  }

  /** Newest first. */
  query(q: AuditQuery): AuditEntry[] {
    const where: string[] = [];
    const params: (string | number)[] = [];
    if (q.entity !== undefined) {
      where.push('entity = ?');
      params.push(q.entity);
    }
    if (q.entityId !== undefined) {
      where.push('entity_id = ?');
      params.push(q.entityId);
    }
    if (q.actor !== undefined) {
      where.push('actor = ?');
      params.push(q.actor);
    }
    if (q.since !== undefined) {
      where.push('at >= ?');
      params.push(q.since);
    }
    params.push(q.limit);
    const rows = this.db
      .prepare(`SELECT * FROM audit ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id DESC LIMIT ?`)
      .all(...params) as AuditRow[];
    return rows.map((r) => ({
      id: r.id,
      at: r.at,
      actor: r.actor,
      action: r.action,
      entity: r.entity,
      entityId: r.entity_id,
      before: r.before === null ? null : (JSON.parse(r.before) as unknown),
      after: r.after === null ? null : (JSON.parse(r.after) as unknown),
    }));
  }
}
