import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { EncodedGroup, EncodedResults } from './commit-group.js';

/** What the writer thread is started with. */
export interface WriterSettings {
  readonly file: string;
  readonly synchronous: 'full' | 'normal';
}

export type WriterRequest = { readonly type: 'apply'; readonly group: EncodedGroup } | { readonly type: 'close' };

export type WriterReply =
  | { readonly type: 'committed'; readonly results: EncodedResults }
  | { readonly type: 'failed'; readonly message: string }
  | { readonly type: 'closed' };

interface Waiting {
  resolve(reply: WriterReply): void;
  reject(err: Error): void;
}

/**
 * The event loop's handle on the store's writer thread (`writer-thread.ts`). One request at a
 * time: the store sends the next group when the previous one is answered, so groups grow
 * while the writer is busy and each costs one transaction and one fsync. A writer that dies
 * fails its request (the caller answers "not stored") and is started again for the next one.
 */
export class StoreWriter {
  private worker: Worker | null = null;
  private waiting: Waiting | null = null;

  constructor(private readonly settings: WriterSettings) {}

  /** Commits `group` in one transaction; resolves with its results once it is durable. */
  async write(group: EncodedGroup): Promise<EncodedResults> {
    const reply = await this.request({ type: 'apply', group });
    if (reply.type === 'committed') return reply.results;
    throw new Error(reply.type === 'failed' ? reply.message : `unexpected writer reply '${reply.type}'`);
  }

  /** Closes the writer's connection and ends its thread (after the write in flight is answered). */
  async close(): Promise<void> {
    const worker = this.worker;
    if (worker === null) return;
    if (this.waiting !== null) throw new Error('the store writer is busy: close it once its write is answered');
    const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
    await this.request({ type: 'close' }).catch(() => undefined);
    // Answered (which unrefs it); the thread still has to end before close() is done.
    worker.ref();
    await exited;
  }

  private request(request: WriterRequest): Promise<WriterReply> {
    if (this.waiting !== null) return Promise.reject(new Error('the store writer is busy (one request at a time)'));
    const worker = (this.worker ??= this.start());
    return new Promise<WriterReply>((resolve, reject) => {
      this.waiting = { resolve, reject };
      // Only an unanswered request keeps the process alive; an idle writer never does.
      worker.ref();
      worker.postMessage(request);
    });
  }

  private start(): Worker {
    const worker = spawnWriterThread(this.settings);
    worker.unref();
    worker.on('message', (reply: WriterReply) => {
      if (this.worker === worker) this.settle((w) => w.resolve(reply));
    });
    // A thread that failed is finished: the next request starts another. Events of a thread
    // already given up on are ignored.
    worker.on('error', (err) => this.abandon(worker, new Error(`store writer thread failed: ${err.message}`, { cause: err })));
    worker.on('exit', (code) => this.abandon(worker, new Error(`store writer thread exited (code ${code})`)));
    return worker;
  }

  private abandon(worker: Worker, err: Error): void {
    if (this.worker !== worker) return;
    this.worker = null;
    this.settle((w) => w.reject(err));
  }

  private settle(how: (w: Waiting) => void): void {
    const waiting = this.waiting;
    if (waiting === null) return;
    this.waiting = null;
    this.worker?.unref();
    how(waiting);
  }
}

/**
 * Starts `writer-thread.js` next to this module. Run from the TypeScript sources (tests,
 * benches, `tsx`), the thread has no TypeScript loader of its own, so it registers tsx first.
 */
function spawnWriterThread(settings: WriterSettings): Worker {
  const here = fileURLToPath(import.meta.url);
  const fromSources = here.endsWith('.ts');
  const url = new URL(fromSources ? './writer-thread.ts' : './writer-thread.js', import.meta.url);
  if (!fromSources) return new Worker(url, { workerData: settings });
  const bootstrap = `import('tsx/esm/api').then(({ register }) => { register(); return import(${JSON.stringify(url.href)}); });`;
  return new Worker(bootstrap, { eval: true, workerData: settings });
}
