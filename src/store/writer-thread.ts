/**
 * The store's writer thread: it owns the connection that commits readings, so the inserts,
 * the commit's fsync and the WAL checkpoints run on their own core instead of blocking the
 * event loop that reads sockets and writes ACKs. Started by `StoreWriter`; applies one group at
 * a time, in the order they arrive, and answers each with its results or its error.
 */
import { parentPort, workerData } from 'node:worker_threads';
import Database from 'better-sqlite3';
import { GroupApplier, type EncodedGroup } from './commit-group.js';
import type { WriterReply, WriterRequest, WriterSettings } from './writer.js';

const settings = workerData as WriterSettings;
const port = parentPort!;
const db = new Database(settings.file);
db.pragma('journal_mode = WAL');
db.pragma(`synchronous = ${settings.synchronous === 'normal' ? 'NORMAL' : 'FULL'}`);
// The event loop's connection writes too (registry, outbox, cursors): wait for its lock.
db.pragma('busy_timeout = 5000');
const applier = new GroupApplier(db);

port.on('message', (request: WriterRequest) => {
  if (request.type === 'close') {
    db.close();
    port.postMessage({ type: 'closed' } satisfies WriterReply);
    port.close();
    return;
  }
  let reply: WriterReply;
  try {
    reply = { type: 'committed', results: applier.apply(request.group as EncodedGroup) };
  } catch (err) {
    // Rolled back: nothing of the group is stored.
    reply = { type: 'failed', message: (err as Error).message };
  }
  port.postMessage(reply);
});
