/**
 * HL7 v2 ADT over MLLP: the second kind of message the MLLP listener serves. Each message is
 * decoded (src/codec/adt.ts) and applied to bed occupancy with `Bindings.applyAdt`, which is a
 * synchronous SQLite transaction: when it returns the change is durable, and only then is the
 * message answered AA. A message that cannot be understood is answered AR/AE with ERR segments
 * and kept as a dead letter; one that is understood but cannot be applied (a cancel of an admit
 * the gateway never saw) is answered AE and kept as a dead letter too, so an operator can see it.
 * Replays are harmless: applyAdt is idempotent.
 */
import { decodeAdt } from '../../src/codec/adt.js';
import { ackTarget, buildAck, Hl7Message, hl7Problem, type AckCode, type AckTarget } from '../../src/codec/hl7.js';
import { ErrorCode, GatewayError } from '../../src/errors.js';
import type { AdtEvent } from '../../src/registry/types.js';
import { rejectsForGood, storeProblem, type MllpMessageHandler, type MllpSession } from './listener.js';

/** What the handler needs of the bindings (src/registry/bindings.ts). */
export interface AdtTarget {
  applyAdt(event: AdtEvent): { readonly changed: boolean; readonly note: string };
}

/** HL7 table 0357 code 204 "Unknown key identifier": the stay a cancel names is not known. */
const UNKNOWN_KEY = '204';

export class AdtHandler implements MllpMessageHandler {
  readonly name = 'adt';

  constructor(private readonly bindings: AdtTarget) {}

  async handle(frame: Buffer, _received: number, session: MllpSession): Promise<Buffer> {
    const decoded = decodeAdt(frame, { timezone: session.ctx.timezone });
    const header = decoded.header;
    const counters = session.counters;
    if (decoded.fatal !== null || decoded.event === null) {
      const fatal = decoded.fatal!;
      counters.rejected++;
      const stored = await session.deadLetter({
        code: fatal.code,
        reason: fatal.message,
        location: fatal.location,
        controlId: header?.controlId ?? null,
        raw: Buffer.from(frame),
      });
      return buildAck(header, rejectsForGood(fatal) ? 'AR' : 'AE', stored ? [fatal] : [fatal, storeProblem()]);
    }
    const event = decoded.event;
    try {
      const result = this.bindings.applyAdt(event);
      counters.accepted++;
      if (!result.changed) counters.duplicates++;
      // The note names beds and event types only: no personal data.
      session.ctx.log.info({ source: session.source, controlId: event.controlId, event: event.type, changed: result.changed }, result.note);
      return buildAck(header, 'AA', decoded.problems);
    } catch (err) {
      if (err instanceof GatewayError && (err.code === ErrorCode.ADT_NOT_APPLICABLE || err.code === ErrorCode.REGISTRY_INVALID)) {
        // Understood but not applicable: resending it unchanged will not help (AE).
        counters.rejected++;
        const problem = hl7Problem(err.code, UNKNOWN_KEY, '', err.message);
        const stored = await session.deadLetter({ code: err.code, reason: err.message, location: '', controlId: event.controlId, raw: Buffer.from(frame) });
        const code: AckCode = 'AE';
        return buildAck(header, code, stored ? [problem] : [problem, storeProblem()]);
      }
      counters.errors++;
      const code = err instanceof GatewayError ? err.code : ErrorCode.STORE_FAILED;
      session.noteError(code);
      session.ctx.log.error({ source: session.source, controlId: event.controlId, code, err }, 'ADT not applied; answered AE');
      return buildAck(header, 'AE', [storeProblem()]);
    }
  }

  headerOf(head: Buffer): { readonly target: AckTarget | null; readonly controlId: string | null } {
    const msg = Hl7Message.parse(head, 0, head.length);
    const target = ackTarget(msg);
    return { target, controlId: target === null ? null : (msg.header?.get(10).trim() ?? null) };
  }
}
