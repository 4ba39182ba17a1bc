/**
 * Builds small HL7 v2 ADT messages for tests, written by us: MSH, EVN (EVN-6 = when it
 * happened), PID (CPR in PID-3), PV1 (PV1-3 bed `ward^room^bed`, PV1-6 prior bed).
 */
export interface TestAdtOptions {
  readonly event: 'A01' | 'A02' | 'A03' | 'A04' | 'A08' | 'A11' | 'A12' | 'A13';
  readonly controlId: string;
  readonly cpr: string;
  /** When it happened, epoch ms (EVN-6). */
  readonly time: number;
  /** `ICU/1/3`. */
  readonly bed?: string;
  readonly priorBed?: string;
}

/** `20261121101455+0000` for an epoch-ms time, in UTC. */
export function hl7Utc(ms: number): string {
  return `${new Date(ms).toISOString().replace(/[-:T]/g, '').slice(0, 14)}+0000`;
}

const location = (bed: string | undefined) => (bed === undefined ? '' : bed.split('/').join('^'));

export function adtMessage(o: TestAdtOptions): Buffer {
  const structure = o.event === 'A12' ? 'ADT_A12' : o.event === 'A02' ? 'ADT_A02' : o.event === 'A03' ? 'ADT_A03' : o.event === 'A11' ? 'ADT_A09' : 'ADT_A01';
  const segments = [
    `MSH|^~\\&|EPJ|RH|MDI|RH|${hl7Utc(o.time)}||ADT^${o.event}^${structure}|${o.controlId}|P|2.6|||AL|NE||UNICODE UTF-8`,
    `EVN|${o.event}|${hl7Utc(o.time)}||||${hl7Utc(o.time)}`,
    `PID|||${o.cpr}^^^&1.2.208.176.1.2&ISO^NNDNK||Ærø^Søren||19900101|M`,
    `PV1||I|${location(o.bed)}|||${location(o.priorBed)}`,
  ];
  return Buffer.from(`${segments.join('\r')}\r`, 'utf8');
}
