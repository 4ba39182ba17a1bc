/**
 * Device secrets for the embedded broker, stored hashed with scrypt (RFC 7914) in the form
 *
 *   scrypt$<N>$<r>$<p>$<salt base64>$<hash base64>
 *
 * Until the device registry exists the hashes live in the config (`mqtt.broker.devices[]`);
 * `mdi mqtt-hash-password` prints one. Plain passwords are never stored, logged or kept after
 * the check.
 */
import { randomBytes, scrypt as scryptCb, timingSafeEqual, type ScryptOptions } from 'node:crypto';

/** scrypt cost parameters: N = 2^14, r = 8, p = 1 (the OWASP minimum; ~30–50 ms per check on one core). */
export const SCRYPT_DEFAULTS = Object.freeze({ N: 16384, r: 8, p: 1 });
const KEY_BYTES = 32;
const SALT_BYTES = 16;
// A hash naming a huge N would let a config typo (or a hostile config) stall every connect and
// take gigabytes: accept only costs up to 2^20 and 128·N·r ≤ 256 MiB.
const MAX_N = 1 << 20;
const MAX_MEM = 256 * 1024 * 1024;
const FORMAT = /^scrypt\$(\d{1,8})\$(\d{1,3})\$(\d{1,3})\$([A-Za-z0-9+/=]{8,64})\$([A-Za-z0-9+/=]{16,128})$/;

function scrypt(password: Buffer, salt: Buffer, keylen: number, options: ScryptOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => scryptCb(password, salt, keylen, options, (err, key) => (err ? reject(err) : resolve(key))));
}

/** A parsed secret hash. */
interface ParsedHash {
  readonly N: number;
  readonly r: number;
  readonly p: number;
  readonly salt: Buffer;
  readonly hash: Buffer;
}

/** Parses a stored hash; null when it is not one this module wrote (or its cost is unsafe). */
function parse(stored: string): ParsedHash | null {
  const m = FORMAT.exec(stored);
  if (m === null) return null;
  const N = Number(m[1]);
  const r = Number(m[2]);
  const p = Number(m[3]);
  if (N < 2 || N > MAX_N || (N & (N - 1)) !== 0 || r < 1 || p < 1 || p > 16 || 128 * N * r > MAX_MEM) return null;
  return { N, r, p, salt: Buffer.from(m[4]!, 'base64'), hash: Buffer.from(m[5]!, 'base64') };
}

/** True when `stored` is a well-formed hash this module can check. */
export function isSecretHash(stored: string): boolean {
  return parse(stored) !== null;
}

/** Hashes a device secret for the config. */
export async function hashSecret(password: string, cost: { N: number; r: number; p: number } = SCRYPT_DEFAULTS): Promise<string> {
  const salt = randomBytes(SALT_BYTES);
  const hash = await scrypt(Buffer.from(password, 'utf8'), salt, KEY_BYTES, { ...cost, maxmem: MAX_MEM + 1024 * 1024 });
  return `scrypt$${cost.N}$${cost.r}$${cost.p}$${salt.toString('base64')}$${hash.toString('base64')}`;
}

// Checked against when the device is unknown, so an unknown id costs as long as a wrong
// password and connect timing does not tell which device ids exist.
const DUMMY: ParsedHash = { ...SCRYPT_DEFAULTS, salt: Buffer.alloc(SALT_BYTES, 1), hash: Buffer.alloc(KEY_BYTES, 0) };

/**
 * Checks `password` against `stored` (null: unknown device; the check still runs for the same
 * time and fails). Constant-time comparison; never throws.
 */
export async function verifySecret(password: Buffer | string, stored: string | null): Promise<boolean> {
  const parsed = (stored !== null ? parse(stored) : null) ?? DUMMY;
  try {
    const key = await scrypt(typeof password === 'string' ? Buffer.from(password, 'utf8') : password, parsed.salt, parsed.hash.length, {
      N: parsed.N,
      r: parsed.r,
      p: parsed.p,
      maxmem: MAX_MEM + 1024 * 1024,
    });
    return stored !== null && parsed !== DUMMY && timingSafeEqual(key, parsed.hash);
  } catch {
    return false;
  }
}
