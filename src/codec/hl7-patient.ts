/**
 * PID-3 (patient identifier, CPR when marked as one) and PV1-3 (bed key) readers shared by the
 * PCD-01 and ADT decoders, so a reading and an ADT message name the same patient and bed the
 * same way. Moved here from pcd01.ts unchanged.
 */
import { ErrorCode } from '../errors.js';
import { CPR_SYSTEM, type PatientId } from '../model/measurement.js';
import { Hl7ErrorCondition, bytesEqual, hl7Problem, type Hl7Message, type Hl7Problem, type Hl7Segment } from './hl7.js';

// CX-4 / CX-5 that mark a Danish CPR number (CPR register OID; identifier type "NNDNK").
const CPR_OID = '1.2.208.176.1.2';
const CPR_TYPE = 'NNDNK';

// An ISO OID (assigning authority in CX-4).
const OID = /^\d+(?:\.\d+)+$/;

// A PID-3 id that is a placeholder, not a patient ("Unknown Patient", "0", "N/A", `""`).
const PLACEHOLDER_ID = /^(?:unknown|ukendt|none|null|n\/?a|x+|0+|-+|\?+|"")$/i;

// ---------------------------------------------------------------------------------------------
// PID and PV1

/**
 * PID-3: the CPR number when a CX is marked as one (CX-4 holds the CPR register OID
 * 1.2.208.176.1.2, possibly as `&1.2.208.176.1.2&ISO`, or CX-5 is `NNDNK`), else the first real
 * identifier with its assigning authority as system (`urn:oid:` when CX-4 is an ISO OID).
 * Placeholders (`Unknown Patient`, ids with spaces) give `null`.
 */
export function readPatient(msg: Hl7Message, seg: Hl7Segment, problems: Hl7Problem[]): PatientId | null {
  if (!seg.fieldRange(3)) return null;
  const bytes = msg.bytes;
  const cs = msg.cs;
  const rs = msg.rs;
  const fe = seg.leafEnd;
  let fallback: PatientId | null = null;
  // One pass over PID-3: each repetition (CX) split into components 1..5 as it goes.
  let i = seg.leafStart;
  while (i <= fe) {
    let c = 1;
    let start = i;
    for (; i < fe; i++) {
      const b = bytes[i];
      if (b === rs) break;
      if (b === cs && c <= 5) {
        cx[2 * c] = start;
        cx[2 * c + 1] = i;
        c++;
        start = i + 1;
      }
    }
    if (c <= 5) {
      cx[2 * c] = start;
      cx[2 * c + 1] = i;
      c++;
    }
    for (; c <= 5; c++) cx[2 * c] = cx[2 * c + 1] = i;
    i++;
    const patient = readCx(msg, bytes, problems);
    if (patient !== null && patient.system === CPR_SYSTEM) return patient;
    if (patient !== null && fallback === null) fallback = patient;
  }
  return fallback;
}

// The CX whose components are in `cx` as a PatientId (system CPR_SYSTEM for a CPR number), or
// null for an empty or placeholder identifier.
function readCx(msg: Hl7Message, bytes: Uint8Array, problems: Hl7Problem[]): PatientId | null {
  let s1 = cx[2]!;
  let e1 = cx[3]!;
  while (s1 < e1 && bytes[s1] === 0x20) s1++;
  while (e1 > s1 && bytes[e1 - 1] === 0x20) e1--;
  if (s1 === e1) return null;
  for (let i = s1; i < e1; i++) if (bytes[i]! <= 0x20) return null;
  // CX-4 (HD): namespace & universal id & type.
  const ss = msg.ss;
  const he = cx[9]!;
  let h = cx[8]!;
  let k = 1;
  for (let i = h; i <= he && k <= 3; i++) {
    if (i < he && bytes[i] !== ss) continue;
    hd[2 * k] = h;
    hd[2 * k + 1] = i;
    k++;
    h = i + 1;
  }
  for (; k <= 3; k++) hd[2 * k] = hd[2 * k + 1] = he;
  const isCpr =
    trimmedEquals(bytes, cx[10]!, cx[11]!, CPR_TYPE) ||
    trimmedEquals(bytes, hd[4]!, hd[5]!, CPR_OID) ||
    trimmedEquals(bytes, hd[2]!, hd[3]!, CPR_OID) ||
    trimmedEquals(bytes, hd[4]!, hd[5]!, CPR_SYSTEM) ||
    trimmedEquals(bytes, hd[2]!, hd[3]!, CPR_SYSTEM);
  // Personal data: decoded without the process-wide string cache.
  const id = msg.text(s1, e1, false);
  // Placeholders never start with 1-9 (most real ids do: skip the regular expression then).
  const first = id.charCodeAt(0);
  if ((first < 0x31 || first > 0x39) && PLACEHOLDER_ID.test(id)) return null;
  if (isCpr) {
    const cpr = id.length === 11 && id[6] === '-' ? id.slice(0, 6) + id.slice(7) : id;
    let digits = cpr.length === 10;
    for (let i = 0; i < cpr.length && digits; i++) digits = cpr.charCodeAt(i) >= 0x30 && cpr.charCodeAt(i) <= 0x39;
    if (!digits) {
      problems.push(
        hl7Problem(ErrorCode.HL7_BAD_VALUE, Hl7ErrorCondition.DATA_TYPE_ERROR, 'PID-3', 'PID-3 has a CPR-marked identifier that is not 10 digits; kept as sent', 'W'),
      );
    }
    return { system: CPR_SYSTEM, value: cpr };
  }
  const ns = msg.text(hd[2]!, hd[3]!).trim();
  const uid = msg.text(hd[4]!, hd[5]!).trim();
  const uidType = msg.text(hd[6]!, hd[7]!).trim();
  let system = ns;
  if (uid !== '' && (uidType.toUpperCase() === 'ISO' || OID.test(uid))) system = `urn:oid:${uid}`;
  else if (OID.test(ns)) system = `urn:oid:${ns}`;
  else if (system === '') system = uid;
  return { system, value: id };
}

// Scratch for readPatient: [start, end) of CX components 1..5 and HD subcomponents 1..3.
const cx = new Int32Array(12);
const hd = new Int32Array(8);

// bytes[s, e) without surrounding spaces is exactly `text`.
function trimmedEquals(bytes: Uint8Array, s: number, e: number, text: string): boolean {
  while (s < e && bytes[s] === 0x20) s++;
  while (e > s && bytes[e - 1] === 0x20) e--;
  return bytesEqual(bytes, s, e, text);
}

/**
 * PV1-3 (PL): point of care / room / bed, the non-empty ones joined by `/`; `null` if none.
 * `field` reads another PL of the segment the same way (PV1-6 prior location for ADT).
 */
export function readLocation(seg: Hl7Segment, field = 3): string | null {
  let out = '';
  for (let c = 1; c <= 3; c++) {
    let part = seg.get(field, c).trim();
    if (part === '') {
      // A component sent only as subcomponents (`^^&24`): take the first non-empty one.
      for (let s = 2; s <= 4 && part === ''; s++) part = seg.get(field, c, s).trim();
    }
    if (part !== '') out = out === '' ? part : `${out}/${part}`;
  }
  return out === '' ? null : out;
}
