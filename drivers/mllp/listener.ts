import { createServer, type Server, type Socket } from 'node:net';
import { buildAck, type AckCode, type AckTarget } from '../../src/codec/hl7.js';
import { encodeFrame, MllpDecoder, type MllpError } from '../../src/codec/mllp.js';
import { decodePcd01, type Pcd01Header } from '../../src/codec/pcd01.js';
import { DriverState, messageDigest, type Driver, type DriverContext, type DriverStatus } from '../../src/driver.js';
import { ErrorCode, GatewayError, type Problem } from '../../src/errors.js';
import type { DeadLetterInput } from '../../src/model/dead-letter.js';

export interface MllpListenerOptions {
  readonly host: string;
  /** 0 picks a free port (tests); read the bound one with `port()`. */
  readonly port: number;
  readonly maxMessageBytes: number;
  readonly maxConnections: number;
  /** Unanswered messages per connection before reading from it pauses (backpressure). */
  readonly maxInFlight: number;
  /** Close connections idle this long (ms); 0 = never. */
  readonly idleTimeoutMs: number;
}

/** How long `stop()` waits for in-flight messages to be committed and answered. */
const STOP_GRACE_MS = 5_000;

/** The listener's counters (one set per listener, shared by its connections and handler). */
export interface MllpCounters {
  connections: number;
  messages: number;
  accepted: number;
  rejected: number;
  errors: number;
  duplicates: number;
  deadLetters: number;
  framingErrors: number;
}

/** What a message handler may use of the connection a frame came in on. */
export interface MllpSession {
  /** `mllp 10.1.2.3:5123`. */
  readonly source: string;
  readonly ctx: DriverContext;
  readonly counters: MllpCounters;
  noteError(code: string): void;
  /** Keeps refused input as a dead letter; false when even that could not be stored. */
  deadLetter(letter: DeadLetterInput): Promise<boolean>;
}

/**
 * What one kind of HL7 message means to the gateway. The listener owns framing, per-connection
 * ordering of ACKs and backpressure; the handler turns one frame into its effect and its ACK.
 */
export interface MllpMessageHandler {
  /** Driver name in status and logs (`mllp` for PCD-01, `adt`). */
  readonly name: string;
  /**
   * Applies one message and resolves with its ACK, only once the effect is durable. Answers
   * every failure itself (AE/AR and a dead letter): it never rejects for bad input.
   */
  handle(frame: Buffer, received: number, session: MllpSession): Promise<Buffer>;
  /** The MSH of an oversized frame's head (what the listener kept of it), for its AR. */
  headerOf(head: Buffer, session: MllpSession): { readonly target: AckTarget | null; readonly controlId: string | null };
}

/**
 * HL7 v2 over MLLP: a TCP listener that hands each message to its `MllpMessageHandler` and
 * answers it with the handler's original-mode ACK only after the handler's effect is durable.
 * The default handler is IHE PCD-01 (ORU^R01 readings, submitted and committed); the ADT one
 * (drivers/mllp/adt.ts) applies admits/transfers/discharges to bed occupancy.
 *
 * Per connection, messages may be pipelined: each is decoded as it arrives, commits proceed in
 * the store's group commit, and ACKs are written strictly in arrival order. A message that
 * cannot be understood is answered AE/AR with an ERR segment and kept as a dead letter; the
 * connection keeps working. A store failure is answered AE (the sender keeps the message and
 * retries) — never AA.
 */
export class MllpListener implements Driver {
  readonly name: string;
  private server: Server | null = null;
  private readonly connections = new Set<MllpConnection>();
  private state: DriverState = DriverState.STOPPED;
  private since = Date.now();
  private lastError: string | null = null;
  private boundPort = 0;
  readonly counters: MllpCounters = {
    connections: 0,
    messages: 0,
    accepted: 0,
    rejected: 0,
    errors: 0,
    duplicates: 0,
    deadLetters: 0,
    framingErrors: 0,
  };

  /** `handler` defaults to IHE PCD-01 (ORU^R01/R40/R42 → readings); drivers/mllp/adt.ts is the other one. */
  constructor(
    private readonly options: MllpListenerOptions,
    private readonly ctx: DriverContext,
    private readonly handler: MllpMessageHandler = PCD01_HANDLER,
  ) {
    this.name = handler.name;
  }

  async start(): Promise<void> {
    if (this.server) return;
    this.setState(DriverState.STARTING);
    const server = createServer({ noDelay: true }, (socket) => this.accept(socket));
    server.maxConnections = this.options.maxConnections;
    server.on('error', (err) => {
      this.lastError = err.message;
      this.ctx.log.error({ err, listener: this.name }, 'mllp listener error');
    });
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      server.once('error', onError);
      server.listen(this.options.port, this.options.host, () => {
        server.off('error', onError);
        resolve();
      });
    }).catch((err: NodeJS.ErrnoException) => {
      this.setState(DriverState.DOWN);
      this.lastError = err.code ?? err.message;
      throw new Error(`${this.name}: cannot listen on ${this.options.host}:${this.options.port}: ${err.message}`);
    });
    this.server = server;
    const address = server.address();
    this.boundPort = typeof address === 'object' && address ? address.port : this.options.port;
    this.setState(DriverState.UP);
    this.ctx.log.info({ host: this.options.host, port: this.boundPort, listener: this.name }, 'mllp listening');
  }

  port(): number {
    return this.boundPort;
  }

  /** Whether the connection a batch's `source` names is still open (device health; O(open connections)). */
  isOpen(source: string): boolean {
    for (const c of this.connections) if (c.source === source) return true;
    return false;
  }

  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = null;
    // Stop accepting first; connections already open finish what they have received.
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    await Promise.all([...this.connections].map((c) => c.finish(STOP_GRACE_MS)));
    await closed;
    this.setState(DriverState.STOPPED);
  }

  status(): DriverStatus {
    return {
      name: this.name,
      kind: 'mllp',
      state: this.state,
      lastError: this.lastError,
      since: this.since,
      counters: { ...this.counters, open: this.connections.size },
    };
  }

  private accept(socket: Socket): void {
    this.counters.connections++;
    const connection = new MllpConnection(socket, this.options, this.ctx, this, this.handler);
    this.connections.add(connection);
    socket.once('close', () => this.connections.delete(connection));
  }

  private setState(state: DriverState): void {
    this.state = state;
    this.since = Date.now();
  }

  /** Called by connections; kept here so status() has one set of counters. */
  noteError(code: string): void {
    this.lastError = code;
  }
}

/** One sender's connection: decoder, in-order ACK queue, backpressure. */
class MllpConnection implements MllpSession {
  private readonly decoder: MllpDecoder;
  readonly source: string;
  readonly counters: MllpCounters;
  /** The ACK of every message received so far, chained so they are written in order. */
  private tail: Promise<void> = Promise.resolve();
  private inFlight = 0;
  private paused = false;
  private closed = false;

  constructor(
    private readonly socket: Socket,
    private readonly options: MllpListenerOptions,
    readonly ctx: DriverContext,
    private readonly listener: MllpListener,
    private readonly handler: MllpMessageHandler,
  ) {
    this.counters = listener.counters;
    this.source = `mllp ${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
    this.decoder = new MllpDecoder({
      maxMessageBytes: options.maxMessageBytes,
      onFrame: (frame) => this.onFrame(frame),
      onError: (error) => this.onFramingError(error),
    });
    socket.on('data', (chunk: Buffer) => this.decoder.push(chunk));
    socket.on('end', () => {
      this.decoder.end();
      // Half-close: answer what was received, then close our side.
      void this.tail.then(() => socket.end());
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      // Peers vanish (ECONNRESET, EPIPE): that ends this connection only.
      this.ctx.log.debug({ source: this.source, code: err.code }, 'mllp connection error');
    });
    socket.on('close', () => {
      this.closed = true;
    });
    if (options.idleTimeoutMs > 0) {
      socket.setTimeout(options.idleTimeoutMs, () => {
        if (this.inFlight === 0) socket.end();
      });
    }
    ctx.log.debug({ source: this.source }, 'mllp connection opened');
  }

  /** Waits (bounded) for every received message to be answered, then closes. */
  async finish(graceMs: number): Promise<void> {
    this.decoder.end();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.tail, new Promise<void>((r) => (timer = setTimeout(r, graceMs)))]);
    clearTimeout(timer);
    if (!this.closed) {
      this.socket.end();
      this.socket.destroySoon();
    }
  }

  private onFrame(frame: Buffer): void {
    // The decoder may hand out a view into a socket chunk; the ACK is built later, so the
    // handler copies only what it keeps (decoders extract strings, dead letters copy bytes).
    const received = Date.now();
    this.listener.counters.messages++;
    this.enqueue(this.handler.handle(frame, received, this));
  }

  noteError(code: string): void {
    this.listener.noteError(code);
  }

  /** Keeps refused input; false when even that could not be stored. */
  async deadLetter(letter: DeadLetterInput): Promise<boolean> {
    try {
      const result = await this.ctx.submit({
        received: Date.now(),
        source: this.source,
        message: null,
        measurements: [],
        rejects: [letter],
      });
      this.listener.counters.deadLetters += result.deadLetters;
      this.ctx.log.warn(
        { source: this.source, code: letter.code, location: letter.location, controlId: letter.controlId, bytes: letter.raw.length },
        `input refused: ${letter.reason}`,
      );
      return true;
    } catch (err) {
      this.ctx.log.error({ source: this.source, code: letter.code, err }, 'dead letter could not be stored');
      return false;
    }
  }

  private onFramingError(error: MllpError): void {
    this.listener.counters.framingErrors++;
    this.listener.noteError(error.code);
    const letter: DeadLetterInput = {
      code: error.code,
      reason: error.message,
      location: '',
      controlId: null,
      raw: Buffer.from(error.head),
    };
    if (error.code === ErrorCode.MLLP_FRAME_TOO_LARGE) {
      // Answer AR so the sender does not wait forever; its MSH-10 is in the head we kept.
      const head = this.handler.headerOf(error.head, this);
      const problem: Problem = { code: error.code, message: error.message, location: '', hl7Code: '207' };
      this.listener.counters.rejected++;
      this.enqueue(this.deadLetter({ ...letter, controlId: head.controlId }).then(() => buildAck(head.target, 'AR', [problem])));
      return;
    }
    // Garbage and truncated frames have no message to answer: keep them and move on.
    void this.deadLetter(letter);
  }

  private enqueue(ack: Promise<Buffer>): void {
    this.inFlight++;
    if (this.inFlight >= this.options.maxInFlight && !this.paused) {
      this.paused = true;
      this.socket.pause();
    }
    this.tail = this.tail
      .then(() => ack)
      .then(
        (bytes) => {
          if (!this.closed) this.socket.write(encodeFrame(bytes));
        },
        (err: unknown) => {
          // handle() answers every failure itself; reaching here is a bug, not bad input.
          this.ctx.log.error({ source: this.source, err }, 'mllp: no ACK could be built');
        },
      )
      .finally(() => {
        this.inFlight--;
        if (this.paused && this.inFlight < this.options.maxInFlight / 2) {
          this.paused = false;
          this.socket.resume();
        }
      });
  }
}

/** Sender identity for duplicate detection: MSH-3 and MSH-4 (HL7 v2.6 2.10.3: unique per sender). */
function senderOf(header: Pcd01Header): string {
  return `${header.sendingApplication}|${header.sendingFacility}`;
}

/** HL7 table 0357: 200–203 (unsupported type/event/processing id/version) are rejections (AR). */
export function rejectsForGood(problem: Problem): boolean {
  return problem.hl7Code.startsWith('2') && problem.hl7Code !== '207';
}

export function storeProblem(): Problem {
  return {
    code: ErrorCode.STORE_FAILED,
    message: 'the gateway could not store the message; send it again later',
    location: '',
    hl7Code: '207',
  };
}

// ---------------------------------------------------------------------------------------------
// IHE PCD-01: readings (the benchmarked hot path: decodePcd01 straight on the frame)

/** ORU^R01/R40/R42 → Measurements, ACKed after the durable commit. */
export const PCD01_HANDLER: MllpMessageHandler = {
  name: 'mllp',
  handle: handlePcd01,
  headerOf(head, session) {
    const header = decodePcd01(head, { timezone: session.ctx.timezone }).header;
    return { target: header, controlId: header?.controlId ?? null };
  },
};

async function handlePcd01(frame: Buffer, received: number, session: MllpSession): Promise<Buffer> {
  const decoded = decodePcd01(frame, { timezone: session.ctx.timezone });
  const header = decoded.header;
  if (decoded.fatal !== null) {
    const code: AckCode = rejectsForGood(decoded.fatal) ? 'AR' : 'AE';
    session.counters.rejected++;
    const stored = await session.deadLetter({
      code: decoded.fatal.code,
      reason: decoded.fatal.message,
      location: decoded.fatal.location,
      controlId: header?.controlId ?? null,
      raw: Buffer.from(frame),
    });
    const problems = stored ? [decoded.fatal] : [decoded.fatal, storeProblem()];
    return buildAck(header, code, problems);
  }
  const h = header!;
  const rejects: DeadLetterInput[] = decoded.rejectedRows.map((row) => ({
    code: row.problem.code,
    reason: row.problem.message,
    location: row.problem.location,
    controlId: h.controlId,
    raw: Buffer.from(row.raw),
  }));
  try {
    const result = await session.ctx.submit({
      received,
      source: session.source,
      message: { sender: senderOf(h), controlId: h.controlId, digest: messageDigest(frame) },
      measurements: decoded.measurements,
      rejects,
    });
    if (result.duplicate) session.counters.duplicates++;
    session.counters.accepted++;
    session.counters.deadLetters += result.deadLetters;
    // Accepted: the rows that were refused are reported as warnings, not as an error
    // that would make the sender retransmit the good rows.
    return buildAck(h, 'AA', decoded.problems);
  } catch (err) {
    session.counters.errors++;
    const code = err instanceof GatewayError ? err.code : ErrorCode.STORE_FAILED;
    session.noteError(code);
    session.ctx.log.error({ source: session.source, controlId: h.controlId, code, err }, 'message not stored; answered AE');
    return buildAck(h, 'AE', [storeProblem()]);
  }
}
