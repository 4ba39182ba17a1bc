/**
 * HL7 v2 ADT (A01 admit, A02 transfer, A03 discharge, A04 register, A08 update, A11 cancel
 * admit, A12 cancel transfer, A13 cancel discharge) → `AdtEvent`, for bed occupancy.
 *
 * MSH-9 is `ADT^A01`, usually with the structure (`ADT^A01^ADT_A01`, `ADT^A04^ADT_A01`,
 * `ADT^A12^ADT_A12`, …); the structure is not checked: every supported event has the segments
 * read here (MSH, EVN, PID, PV1). The patient is PID-3's CPR (read exactly as PCD-01 reads it,
 * src/codec/hl7-patient.ts), the bed PV1-3 as `ward/room/bed` (the same key PCD-01 readings get),
 * the prior bed PV1-6, the visit PV1-19. When it happened: EVN-6 (event occurred), else PV1-44
 * (admit) / PV1-45 (discharge) where they apply, else EVN-2 (recorded), else MSH-7; a time
 * without an offset takes MSH-7's offset when MSH-7 states one, else the configured zone.
 *
 * Never throws on bad input. Problem messages name segments and fields, never the CPR number or
 * names. Off the hot path (ADT traffic is a few messages per bed per day): plain field reads.
 *
 * Spec: HL7 v2.6 chapter 3 (3.3.1–3.3.13 events, 3.4 EVN/PID/PV1), table 0357.
 */
import { Buffer } from 'node:buffer';
import { ErrorCode } from '../errors.js';
import { CPR_SYSTEM } from '../model/measurement.js';
import { ADT_EVENTS, type AdtEvent, type AdtEventType } from '../registry/types.js';
import { ackTarget, Hl7ErrorCondition, Hl7Message, hl7Problem, type AckTarget, type Hl7ParseOptions, type Hl7Problem, type Hl7Segment } from './hl7.js';
import { readLocation, readPatient } from './hl7-patient.js';
import { fixedOffset, hl7TimeHasOffset, parseHl7TimeBytes, zoneOffsets, type Hl7TimeOut, type TimeZoneRule, type ZoneOffsets } from './hl7-time.js';

export interface AdtOptions {
  /** Zone for times without an offset: IANA name or `ZoneOffsets`. Default `Europe/Copenhagen`. */
  readonly timezone?: string | ZoneOffsets;
  /** Character set assumed when MSH-18 is empty. */
  readonly defaultCharset?: string;
}

/** The MSH of an ADT message: what the ACK and the dead letter need. */
export interface AdtHeader extends AckTarget {
  /** MSH-3.1 (namespace id), else MSH-4.1: the actor is `adt:<sender>`. */
  readonly sender: string;
  /** MSH-3 and MSH-4 as text, for duplicate detection. */
  readonly sendingApplication: string;
  readonly sendingFacility: string;
  /** MSH-9.1 (`ADT`). */
  readonly messageCode: string;
  /** MSH-10, trimmed. */
  readonly controlId: string;
}

export interface AdtResult {
  /** `null` when the message has no usable MSH. */
  readonly header: AdtHeader | null;
  /** The event, `null` exactly when `fatal` is set. */
  readonly event: AdtEvent | null;
  /** Warnings (a bad EVN-6 with a usable fallback, …). */
  readonly problems: Hl7Problem[];
  /** Why the message cannot be applied, else `null`. */
  readonly fatal: Hl7Problem | null;
}

const SUPPORTED = new Set<string>(ADT_EVENTS);
/** Events that place the patient in a bed: PV1-3 is required. */
const NEEDS_BED = new Set<AdtEventType>(['A01', 'A02', 'A04']);

/** Decodes one ADT message from its bytes. */
export function decodeAdt(bytes: Uint8Array, options: AdtOptions = {}): AdtResult {
  const parse: Hl7ParseOptions | undefined = options.defaultCharset === undefined ? undefined : { defaultCharset: options.defaultCharset };
  return decodeAdtMessage(Hl7Message.parse(bytes, 0, bytes.length, parse), options);
}

/** Decodes an ADT message already read with `Hl7Message.parse`. */
export function decodeAdtMessage(msg: Hl7Message, options: AdtOptions = {}): AdtResult {
  const problems: Hl7Problem[] = [];
  const target = ackTarget(msg);
  const msh = msg.header;
  if (msg.fatal !== null || target === null || msh === null) {
    return { header: null, event: null, problems, fatal: msg.fatal ?? fieldProblem(ErrorCode.HL7_NO_MSH, Hl7ErrorCondition.SEGMENT_SEQUENCE_ERROR, 'MSH', 'no MSH segment') };
  }
  const header: AdtHeader = {
    ...target,
    sender: msh.get(3, 1).trim() || msh.get(4, 1).trim() || 'unknown',
    sendingApplication: msh.get(3, 1).trim(),
    sendingFacility: msh.get(4, 1).trim(),
    messageCode: msh.get(9, 1).trim(),
    controlId: msh.get(10).trim(),
  };
  const fail = (p: Hl7Problem): AdtResult => ({ header, event: null, problems: withWarnings(msg, problems), fatal: p });

  // HL7 v2.3 and older senders may leave MSH-9.2 empty and name the event in EVN-1 only.
  const trigger = target.trigger.trim() || (msg.firstSegment('EVN')?.get(1).trim() ?? '');
  if (header.messageCode === '') return fail(fieldProblem(ErrorCode.HL7_MISSING_FIELD, Hl7ErrorCondition.REQUIRED_FIELD_MISSING, 'MSH-9', 'MSH-9 (message type) is empty'));
  if (header.messageCode !== 'ADT') {
    return fail(
      fieldProblem(ErrorCode.HL7_UNSUPPORTED_MESSAGE, Hl7ErrorCondition.UNSUPPORTED_MESSAGE_TYPE, 'MSH-9', `message type ${header.messageCode} is not accepted here (expected ADT)`),
    );
  }
  if (!SUPPORTED.has(trigger)) {
    return fail(
      fieldProblem(
        ErrorCode.HL7_UNSUPPORTED_MESSAGE,
        Hl7ErrorCondition.UNSUPPORTED_EVENT_CODE,
        'MSH-9',
        `trigger event ADT^${trigger.slice(0, 8)} is not accepted here (expected ${ADT_EVENTS.join(', ')})`,
      ),
    );
  }
  const type = trigger as AdtEventType;
  if (header.controlId === '') problems.push(hl7Problem(ErrorCode.HL7_MISSING_FIELD, Hl7ErrorCondition.REQUIRED_FIELD_MISSING, 'MSH-10', 'MSH-10 (message control id) is empty', 'W'));

  // Times: MSH-7's stated offset is the sender's local offset (HL7 v2.6 2.A.22).
  const configured: ZoneOffsets = options.timezone === undefined ? zoneOffsets() : typeof options.timezone === 'string' ? zoneOffsets(options.timezone) : options.timezone;
  let zone: TimeZoneRule = configured;
  if (msh.locate(7, 1, 1, 1) && hl7TimeHasOffset(msg.bytes, msh.leafStart, msh.leafEnd)) {
    const t = timeOf(msh, 7, configured);
    if (t !== null) zone = fixedOffset(t.tzOffset);
  }

  const pid = msg.firstSegment('PID');
  if (pid === null) return fail(fieldProblem(ErrorCode.HL7_MISSING_SEGMENT, Hl7ErrorCondition.SEGMENT_SEQUENCE_ERROR, 'PID', 'the message has no PID segment'));
  const patient = readPatient(msg, pid, problems);
  if (patient === null) return fail(fieldProblem(ErrorCode.HL7_MISSING_FIELD, Hl7ErrorCondition.REQUIRED_FIELD_MISSING, 'PID-3', 'PID-3 has no patient identifier'));
  if (patient.system !== CPR_SYSTEM) {
    return fail(
      fieldProblem(
        ErrorCode.HL7_MISSING_FIELD,
        Hl7ErrorCondition.REQUIRED_FIELD_MISSING,
        'PID-3',
        'PID-3 has no CPR number (a CX with assigning authority 1.2.208.176.1.2 or identifier type NNDNK)',
      ),
    );
  }

  const pv1 = msg.firstSegment('PV1');
  const bed = pv1 === null ? null : readLocation(pv1, 3);
  const priorBed = pv1 === null ? null : readLocation(pv1, 6);
  if (NEEDS_BED.has(type) && bed === null) {
    return fail(
      pv1 === null
        ? fieldProblem(ErrorCode.HL7_MISSING_SEGMENT, Hl7ErrorCondition.SEGMENT_SEQUENCE_ERROR, 'PV1', `ADT^${type} needs a PV1 segment with the bed (PV1-3)`)
        : fieldProblem(ErrorCode.HL7_MISSING_FIELD, Hl7ErrorCondition.REQUIRED_FIELD_MISSING, 'PV1-3', `ADT^${type} needs the bed in PV1-3`),
    );
  }
  if (type === 'A12' && priorBed === null) {
    return fail(fieldProblem(ErrorCode.HL7_MISSING_FIELD, Hl7ErrorCondition.REQUIRED_FIELD_MISSING, 'PV1-6', 'ADT^A12 needs the prior location in PV1-6'));
  }
  const visitText = pv1 === null ? '' : pv1.get(19, 1).trim();

  const time = eventTime(msg, type, zone, problems);
  if (time === null) {
    return fail(fieldProblem(ErrorCode.HL7_BAD_TIME, Hl7ErrorCondition.DATA_TYPE_ERROR, 'EVN-6', 'no valid event time in EVN-6, EVN-2 or MSH-7'));
  }

  const event: AdtEvent = {
    type,
    patient,
    bed,
    priorBed,
    time,
    visit: visitText === '' ? null : visitText,
    sender: header.sender,
    controlId: header.controlId,
  };
  return { header, event, problems: withWarnings(msg, problems), fatal: null };
}

/** EVN-6, PV1-44 (admits) / PV1-45 (discharges), EVN-2, MSH-7: the first valid one. A bad one is a warning. */
function eventTime(msg: Hl7Message, type: AdtEventType, zone: TimeZoneRule, problems: Hl7Problem[]): number | null {
  const evn = msg.firstSegment('EVN');
  const pv1 = msg.firstSegment('PV1');
  const candidates: [Hl7Segment | null, number, string][] = [[evn, 6, 'EVN-6']];
  if (type === 'A01' || type === 'A04') candidates.push([pv1, 44, 'PV1-44']);
  if (type === 'A03') candidates.push([pv1, 45, 'PV1-45']);
  candidates.push([evn, 2, 'EVN-2'], [msg.header, 7, 'MSH-7']);
  for (const [seg, field, location] of candidates) {
    if (seg === null || seg.get(field, 1).trim() === '') continue;
    const t = timeOf(seg, field, zone);
    if (t !== null) return t.ms;
    problems.push(hl7Problem(ErrorCode.HL7_BAD_TIME, Hl7ErrorCondition.DATA_TYPE_ERROR, location, `${location} is not a valid HL7 date/time; the next time field was used`, 'W'));
  }
  return null;
}

function timeOf(seg: Hl7Segment, field: number, zone: TimeZoneRule): Hl7TimeOut | null {
  // Decoded text (a wrapped segment is joined), then parsed as bytes: a time is ASCII.
  const bytes = Buffer.from(seg.get(field, 1), 'latin1');
  const out: Hl7TimeOut = { ms: 0, tzOffset: 0 };
  return parseHl7TimeBytes(bytes, 0, bytes.length, zone, out) ? out : null;
}

function fieldProblem(code: ErrorCode, hl7Code: string, location: string, message: string): Hl7Problem {
  return hl7Problem(code, hl7Code, location, message);
}

function withWarnings(msg: Hl7Message, problems: Hl7Problem[]): Hl7Problem[] {
  for (const w of msg.warnings) problems.push(w);
  return problems;
}
