/**
 * Seeded randomness for the simulators and fuzzers: the same seed gives the same traffic, so
 * a failure can be replayed from the seed it prints.
 */

export type Rng = () => number;

/** mulberry32: a small, fast 32-bit PRNG; good enough for traffic and fuzzing, not for secrets. */
export function mulberry32(seed: number): Rng {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Derives independent seeds (one per device) from one seed: splitmix32's finaliser. */
export function mixSeed(seed: number, salt: number): number {
  let z = (seed ^ Math.imul(salt + 1, 0x9e3779b9)) >>> 0;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
  return (z ^ (z >>> 16)) >>> 0;
}

/** A standard normal deviate (Box–Muller). */
export function gaussian(rnd: Rng): number {
  const u = 1 - rnd(); // (0, 1]: log(0) never happens
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rnd());
}

/** An integer in [0, n). */
export const randomInt = (rnd: Rng, n: number): number => Math.floor(rnd() * n);
