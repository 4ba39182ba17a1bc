import { ErrorCode } from '../../errors.js';

/**
 * The FHIR forwarder's short names for its codes in the registry (`src/errors.ts`,
 * `ErrorCode.FHIR_*`; never reused). They appear in `lastError`, in dead letters (`reason`)
 * and in logs. Messages built with them name the resource, status and OperationOutcome code,
 * never patient data.
 */
export const FhirErrorCode = {
  /** The EPJ could not be reached (connection refused/reset, DNS, TLS) or did not answer in time. */
  NETWORK: ErrorCode.FHIR_NETWORK,
  /** The EPJ answered 408, 429 or 5xx: it is there but cannot take the request now. */
  UNAVAILABLE: ErrorCode.FHIR_UNAVAILABLE,
  /** The EPJ refused one resource for good (4xx other than 408/429); the OperationOutcome is kept. */
  REJECTED: ErrorCode.FHIR_REJECTED,
  /** 401/403, or the token endpoint refused us: a configuration or registration problem. */
  AUTH: ErrorCode.FHIR_AUTH,
  /** The base URL does not serve FHIR Bundles (404/405/406/415 on the Bundle POST). */
  CONFIG: ErrorCode.FHIR_CONFIG,
  /** The answer was not a FHIR batch-response we can read. */
  BAD_RESPONSE: ErrorCode.FHIR_BAD_RESPONSE,
  /** The reading cannot be expressed as a valid Observation (checked before sending). */
  UNCHARTABLE: ErrorCode.FHIR_UNCHARTABLE,
  /** `subject: resolved`: no Patient or several Patients carry the CPR identifier. */
  PATIENT_UNKNOWN: ErrorCode.FHIR_PATIENT_UNKNOWN,
  /** The reading stayed undeliverable longer than `outbox.maxAgeHours`. */
  EXPIRED: ErrorCode.FHIR_EXPIRED,
  /** `unbound: hold`: no patient was bound to the device within `holdMinutes`. */
  UNBOUND: ErrorCode.FHIR_UNBOUND,
  /** The outbox's own database work failed (the store's file); retried at the next poll. */
  OUTBOX: ErrorCode.FHIR_OUTBOX,
  /** Another outbox entry already carries the same identifier (e.g. after an interval change). */
  DUPLICATE: ErrorCode.FHIR_DUPLICATE,
} as const;
export type FhirErrorCode = (typeof FhirErrorCode)[keyof typeof FhirErrorCode];

/** An error of the FHIR forwarder with a stable {@link FhirErrorCode}. */
export class FhirError extends Error {
  readonly code: FhirErrorCode;
  /** HTTP status of the answer that caused it, when there was one. */
  readonly status: number | undefined;
  constructor(code: FhirErrorCode, message: string, options?: { cause?: unknown; status?: number }) {
    super(message, options);
    this.name = 'FhirError';
    this.code = code;
    this.status = options?.status;
  }
}
