/**
 * Builds small IHE PCD-01 ORU^R01 messages for tests, written by us. Segments end with `\r`
 * unless `lineEnd` says otherwise; `charset` picks MSH-18 and the byte encoding.
 */
export interface TestMessageOptions {
  controlId: string;
  device?: string;
  /** OBX rows after the MDS row: [code^refid^MDC, value type, value, unit, containment]. */
  rows?: [string, string, string, string, string][];
  charset?: 'utf8' | 'latin1';
  lineEnd?: '\r' | '\r\n' | '\n';
  cpr?: string;
  time?: string;
  messageType?: string;
}

export const HR_ROW: [string, string, string, string, string] = [
  '147842^MDC_ECG_HEART_RATE^MDC',
  'NM',
  '88',
  '264864^MDC_DIM_BEAT_PER_MIN^MDC',
  '1.1.1.1',
];
export const SPO2_ROW: [string, string, string, string, string] = [
  '150456^MDC_PULS_OXIM_SAT_O2^MDC',
  'NM',
  '97',
  '262688^MDC_DIM_PERCENT^MDC',
  '1.2.1.1',
];

export function pcd01Message(o: TestMessageOptions): Buffer {
  const device = o.device ?? '0012A0FFFE3B7C01';
  const time = o.time ?? '20261121101455+0100';
  const charset = o.charset ?? 'utf8';
  const rows = o.rows ?? [HR_ROW, SPO2_ROW];
  const segments = [
    `MSH|^~\\&|MONITOR^${device}^EUI-64|ICU|MDI|HOSPITAL|${time}||${o.messageType ?? 'ORU^R01^ORU_R01'}|${o.controlId}|P|2.6|||AL|NE||${charset === 'utf8' ? 'UNICODE UTF-8' : '8859/1'}|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO`,
    `PID|||${o.cpr ?? '0101901234'}^^^&1.2.208.176.1.2&ISO^NNDNK||Ærø^Søren||19900101|M`,
    'PV1||I|ICU^12^1',
    `OBR|1|${o.controlId}^MDI|${o.controlId}^MDI|182777000^monitoring of patient^SCT|||${time}`,
    `OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||${device}^^${device}^EUI-64`,
    ...rows.map(
      ([code, type, value, unit, containment], i) => `OBX|${i + 2}|${type}|${code}|${containment}|${value}|${unit}|||||R|||${time}`,
    ),
  ];
  const text = segments.join(o.lineEnd ?? '\r') + (o.lineEnd ?? '\r');
  return Buffer.from(text, charset);
}
