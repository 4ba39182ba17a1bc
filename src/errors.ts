/**
 * The error-code registry. Every error the gateway reports about input or I/O carries one of
 * these stable codes; tests and callers match on `code`, never on message text. A code is
 * never reused for another meaning. Messages must not contain personal data (CPR numbers,
 * names): say where the problem is (segment/field), not what the patient data was.
 */
export const ErrorCode = {
  // MLLP framing
  MLLP_FRAME_TOO_LARGE: 'MDI_ERR_MLLP_FRAME_TOO_LARGE',
  MLLP_GARBAGE: 'MDI_ERR_MLLP_GARBAGE',
  MLLP_TRUNCATED: 'MDI_ERR_MLLP_TRUNCATED',
  // HL7 v2 structure
  HL7_NO_MSH: 'MDI_ERR_HL7_NO_MSH',
  HL7_BAD_DELIMITERS: 'MDI_ERR_HL7_BAD_DELIMITERS',
  HL7_MISSING_FIELD: 'MDI_ERR_HL7_MISSING_FIELD',
  HL7_BAD_CHARSET: 'MDI_ERR_HL7_BAD_CHARSET',
  HL7_UNSUPPORTED_MESSAGE: 'MDI_ERR_HL7_UNSUPPORTED_MESSAGE',
  HL7_BAD_TIME: 'MDI_ERR_HL7_BAD_TIME',
  HL7_BAD_VALUE: 'MDI_ERR_HL7_BAD_VALUE',
  HL7_BAD_SEGMENT: 'MDI_ERR_HL7_BAD_SEGMENT',
  /** A segment the message needs is absent (an ORU without OBX). */
  HL7_MISSING_SEGMENT: 'MDI_ERR_HL7_MISSING_SEGMENT',
  /** A segment was broken over several lines (a capture that wrapped it); the lines were joined. */
  HL7_WRAPPED_SEGMENT: 'MDI_ERR_HL7_WRAPPED_SEGMENT',
  // Normalization / validation
  MAPPING_UNKNOWN_UNIT: 'MDI_ERR_MAPPING_UNKNOWN_UNIT',
  MAPPING_BAD_ROW: 'MDI_ERR_MAPPING_BAD_ROW',
  VALUE_NOT_NUMERIC: 'MDI_ERR_VALUE_NOT_NUMERIC',
  VALUE_IMPLAUSIBLE: 'MDI_ERR_VALUE_IMPLAUSIBLE',
  // Serial transport (serial ports and TCP terminal servers that carry serial protocols)
  SERIAL_PORT_NOT_FOUND: 'MDI_ERR_SERIAL_PORT_NOT_FOUND',
  SERIAL_OPEN_FAILED: 'MDI_ERR_SERIAL_OPEN_FAILED',
  SERIAL_DISCONNECTED: 'MDI_ERR_SERIAL_DISCONNECTED',
  SERIAL_NO_DATA: 'MDI_ERR_SERIAL_NO_DATA',
  // Masimo ASCII 1 lines
  MASIMO_LINE_TOO_LONG: 'MDI_ERR_MASIMO_LINE_TOO_LONG',
  MASIMO_BAD_LINE: 'MDI_ERR_MASIMO_BAD_LINE',
  MASIMO_GARBLED: 'MDI_ERR_MASIMO_GARBLED',
  MASIMO_BAD_VALUE: 'MDI_ERR_MASIMO_BAD_VALUE',
  MASIMO_BAD_TIME: 'MDI_ERR_MASIMO_BAD_TIME',
  // Dräger MEDIBUS frames and session
  MEDIBUS_BAD_CHECKSUM: 'MDI_ERR_MEDIBUS_BAD_CHECKSUM',
  MEDIBUS_FRAME_TOO_LARGE: 'MDI_ERR_MEDIBUS_FRAME_TOO_LARGE',
  MEDIBUS_GARBAGE: 'MDI_ERR_MEDIBUS_GARBAGE',
  MEDIBUS_TRUNCATED: 'MDI_ERR_MEDIBUS_TRUNCATED',
  MEDIBUS_BAD_DATA: 'MDI_ERR_MEDIBUS_BAD_DATA',
  MEDIBUS_TIMEOUT: 'MDI_ERR_MEDIBUS_TIMEOUT',
  MEDIBUS_UNEXPECTED_RESPONSE: 'MDI_ERR_MEDIBUS_UNEXPECTED_RESPONSE',
  // B. Braun BCC frames and session
  BCC_BAD_CHECKSUM: 'MDI_ERR_BCC_BAD_CHECKSUM',
  BCC_BAD_LENGTH: 'MDI_ERR_BCC_BAD_LENGTH',
  BCC_BAD_FRAME: 'MDI_ERR_BCC_BAD_FRAME',
  BCC_BAD_STUFFING: 'MDI_ERR_BCC_BAD_STUFFING',
  BCC_FRAME_TOO_LARGE: 'MDI_ERR_BCC_FRAME_TOO_LARGE',
  BCC_GARBAGE: 'MDI_ERR_BCC_GARBAGE',
  BCC_TRUNCATED: 'MDI_ERR_BCC_TRUNCATED',
  BCC_BAD_RECORD: 'MDI_ERR_BCC_BAD_RECORD',
  BCC_TIMEOUT: 'MDI_ERR_BCC_TIMEOUT',
  BCC_DEVICE_ERROR: 'MDI_ERR_BCC_DEVICE_ERROR',
  // MQTT (embedded broker and external-broker client)
  MQTT_BAD_PAYLOAD: 'MDI_ERR_MQTT_BAD_PAYLOAD',
  MQTT_PAYLOAD_TOO_LARGE: 'MDI_ERR_MQTT_PAYLOAD_TOO_LARGE',
  MQTT_BAD_TIME: 'MDI_ERR_MQTT_BAD_TIME',
  MQTT_UNKNOWN_CODE: 'MDI_ERR_MQTT_UNKNOWN_CODE',
  MQTT_BAD_TOPIC: 'MDI_ERR_MQTT_BAD_TOPIC',
  MQTT_CONNECT_FAILED: 'MDI_ERR_MQTT_CONNECT_FAILED',
  MQTT_DISCONNECTED: 'MDI_ERR_MQTT_DISCONNECTED',
  MQTT_SUBSCRIBE_FAILED: 'MDI_ERR_MQTT_SUBSCRIBE_FAILED',
  MQTT_AUTH_FAILED: 'MDI_ERR_MQTT_AUTH_FAILED',
  MQTT_NOT_AUTHORIZED: 'MDI_ERR_MQTT_NOT_AUTHORIZED',
  // FHIR charting (src/sinks/fhir/errors.ts names them FhirErrorCode.*)
  FHIR_NETWORK: 'MDI_ERR_FHIR_NETWORK',
  FHIR_UNAVAILABLE: 'MDI_ERR_FHIR_UNAVAILABLE',
  FHIR_REJECTED: 'MDI_ERR_FHIR_REJECTED',
  FHIR_AUTH: 'MDI_ERR_FHIR_AUTH',
  FHIR_CONFIG: 'MDI_ERR_FHIR_CONFIG',
  FHIR_BAD_RESPONSE: 'MDI_ERR_FHIR_BAD_RESPONSE',
  FHIR_UNCHARTABLE: 'MDI_ERR_FHIR_UNCHARTABLE',
  FHIR_PATIENT_UNKNOWN: 'MDI_ERR_FHIR_PATIENT_UNKNOWN',
  FHIR_EXPIRED: 'MDI_ERR_FHIR_EXPIRED',
  FHIR_UNBOUND: 'MDI_ERR_FHIR_UNBOUND',
  FHIR_OUTBOX: 'MDI_ERR_FHIR_OUTBOX',
  FHIR_DUPLICATE: 'MDI_ERR_FHIR_DUPLICATE',
  // Device registry, bindings, ADT and API access
  REGISTRY_NOT_FOUND: 'MDI_ERR_REGISTRY_NOT_FOUND',
  REGISTRY_CONFLICT: 'MDI_ERR_REGISTRY_CONFLICT',
  REGISTRY_INVALID: 'MDI_ERR_REGISTRY_INVALID',
  /** A binding or bed occupancy would overlap another one of the same device or bed. */
  BINDING_OVERLAP: 'MDI_ERR_BINDING_OVERLAP',
  /** An ADT event that cannot be applied (cancel of an unknown admit, no location, …). */
  ADT_NOT_APPLICABLE: 'MDI_ERR_ADT_NOT_APPLICABLE',
  AUTH_MISSING: 'MDI_ERR_AUTH_MISSING',
  AUTH_INVALID: 'MDI_ERR_AUTH_INVALID',
  AUTH_FORBIDDEN: 'MDI_ERR_AUTH_FORBIDDEN',
  // Configuration and storage
  CONFIG_INVALID: 'MDI_ERR_CONFIG_INVALID',
  STORE_FAILED: 'MDI_ERR_STORE_FAILED',
  STORE_CLOSED: 'MDI_ERR_STORE_CLOSED',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

export class GatewayError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'GatewayError';
    this.code = code;
  }
}

/**
 * A problem found in one piece of input, with its HL7 location when there is one.
 * `location` uses HL7 notation: `OBX[3]-5` is field 5 of the third OBX segment,
 * `MSH-9` a field of the (single) MSH.
 */
export interface Problem {
  readonly code: ErrorCode;
  readonly message: string;
  /** HL7 location (`OBX[3]-5`), or a byte offset description for non-HL7 input; '' if none. */
  readonly location: string;
  /** HL7 table 0357 error condition code (`102` data type error, `100` segment sequence, …). */
  readonly hl7Code: string;
}
