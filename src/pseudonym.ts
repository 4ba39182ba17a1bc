import { createHmac } from 'node:crypto';
import type { PatientId } from './model/measurement.js';

/**
 * A stable pseudonym for a patient identifier: HMAC-SHA-256 under a secret key, shortened.
 * Shows which readings belong to the same patient without revealing the CPR number; without
 * the key it cannot be reversed by trying the (small) space of CPR numbers.
 */
export function pseudonym(key: Buffer, patient: PatientId): string {
  return `pt-${createHmac('sha256', key).update(`${patient.system}|${patient.value}`).digest('hex').slice(0, 16)}`;
}
