/**
 * Fault injection for the EPJ stand-in: the failure modes of a real hospital FHIR endpoint that
 * the gateway's durable outbox has to survive, switchable at run time.
 *
 * Order in which they act on one FHIR request (admin endpoints are exempt from all but `down`):
 *
 *   down → (connection refused; nothing else happens)
 *   throttle → 429 + Retry-After, nothing processed
 *   errorRate → 500 / 503, nothing processed
 *   rejectAll → 422 for every resource in a write, nothing stored; reads still work
 *   (request processed normally)
 *   dropRate → the request *was* processed, then the socket is destroyed without an answer
 *   latencyMs → added before any answer above is written (also before a drop)
 *
 * `dropRate` and `latencyMs` together produce the "outcome unknown" case: the EPJ stored the
 * Observation but the gateway never heard so, which is exactly why it must use conditional create.
 */
import { z } from 'zod';

/** Schema of the fault settings; the single reference for names, units and bounds. */
export const EpjFaultsSchema = z
  .object({
    /** Real outage: the port stops listening (ECONNREFUSED) and open sockets are destroyed. */
    down: z.boolean().default(false),
    /**
     * With `down: true`: come back up by itself after this many ms. Needed when the admin API
     * shares the FHIR port and so goes down with it. Bounded to an hour so a typo cannot leave a
     * test machine with a dead port for a day.
     */
    downForMs: z.number().int().min(1).max(3_600_000).optional(),
    /** Delay added before every FHIR answer, in ms (0–10 min). */
    latencyMs: z.number().int().min(0).max(600_000).default(0),
    /** Fraction (0–1) of FHIR requests answered 500 or 503 without being processed. */
    errorRate: z.number().min(0).max(1).default(0),
    /** Status for `errorRate` failures; when unset each failure is 500 or 503 at random (seeded). */
    errorStatus: z.union([z.literal(500), z.literal(503)]).optional(),
    /** `false`, or the Retry-After seconds of a 429 answered to every FHIR request (0–1 day). */
    throttle: z.union([z.literal(false), z.number().int().min(0).max(86_400)]).default(false),
    /** Refuse every resource in a write with 422 (business-rule); nothing is stored. */
    rejectAll: z.boolean().default(false),
    /** Fraction (0–1) of FHIR requests processed and then left unanswered (socket destroyed). */
    dropRate: z.number().min(0).max(1).default(0),
  })
  .strict();

/** Fault settings in force. */
export type EpjFaults = z.infer<typeof EpjFaultsSchema>;

/** Fault settings as accepted from callers: every field optional. */
export type EpjFaultsInput = z.input<typeof EpjFaultsSchema>;

/** No faults at all. */
export const NO_FAULTS: EpjFaults = Object.freeze(EpjFaultsSchema.parse({}));

/**
 * Parses fault settings. `base` given: the input is merged into it (POST semantics); otherwise
 * omitted fields are off (PUT semantics).
 * @throws {z.ZodError} naming the offending field, on invalid input.
 */
export function parseFaults(input: unknown, base?: EpjFaults): EpjFaults {
  if (base === undefined) {
    return EpjFaultsSchema.parse(input ?? {});
  }
  // Merge first, validate the result: the strict schema then refuses unknown fields and bad
  // values in the patch. (A `.partial()` schema would not do: in zod 4 the field defaults still
  // apply inside it, so a patch would silently reset every field it does not mention.)
  const patch = input ?? {};
  if (typeof patch !== 'object' || Array.isArray(patch)) {
    return EpjFaultsSchema.parse(patch); // throws the schema's own "expected object" error
  }
  const merged: Record<string, unknown> = { ...base, ...patch };
  // downForMs only means something together with down: coming back up clears it.
  if (merged.down === false && !('downForMs' in patch)) {
    delete merged.downForMs;
  }
  return EpjFaultsSchema.parse(merged);
}

/** One line per validation problem: `errorRate: Too big: expected number to be <=1`. */
export function describeZodError(err: z.ZodError): string {
  return err.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
}

/**
 * A small, fast, seedable PRNG (mulberry32) returning floats in [0, 1). Faults need
 * reproducibility, not cryptographic quality: the same seed and the same request sequence give
 * the same failures.
 */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A UUID-shaped (version 4 layout) id drawn from `random`, for reproducible resource ids. */
export function seededUuid(random: () => number): string {
  const hex: string[] = [];
  for (let i = 0; i < 32; i++) {
    hex.push(Math.floor(random() * 16).toString(16));
  }
  hex[12] = '4';
  hex[16] = ((parseInt(hex[16] ?? '0', 16) & 0x3) | 0x8).toString(16);
  const s = hex.join('');
  return `${s.slice(0, 8)}-${s.slice(8, 12)}-${s.slice(12, 16)}-${s.slice(16, 20)}-${s.slice(20)}`;
}
