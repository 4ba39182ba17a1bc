import { describe, expect, it } from 'vitest';
import { Backoff, backoffDelay, DEFAULT_BACKOFF, sleep } from '../../src/reconnect.js';

describe('reconnect backoff', () => {
  const noJitter = { ...DEFAULT_BACKOFF, jitter: 0 };

  it('doubles from 500 ms and stops at the 30 s cap', () => {
    const delays = Array.from({ length: 10 }, (_, i) => backoffDelay(i + 1, noJitter));
    expect(delays).toEqual([500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]);
    expect(backoffDelay(10_000, noJitter)).toBe(30000);
  });

  it('spreads each delay by the jitter fraction, never past the cap', () => {
    expect(backoffDelay(1, DEFAULT_BACKOFF, () => 0)).toBe(400);
    expect(backoffDelay(1, DEFAULT_BACKOFF, () => 0.999999)).toBe(600);
    expect(backoffDelay(20, DEFAULT_BACKOFF, () => 0.999999)).toBe(30000);
    expect(backoffDelay(20, DEFAULT_BACKOFF, () => 0)).toBe(24000);
  });

  it('counts failures until reset', () => {
    const b = new Backoff(noJitter);
    expect([b.next(), b.next(), b.next()]).toEqual([500, 1000, 2000]);
    expect(b.attempts).toBe(3);
    b.reset();
    expect(b.next()).toBe(500);
  });

  it('refuses settings that cannot work, naming them', () => {
    expect(() => new Backoff({ ...DEFAULT_BACKOFF, factor: 0.5 })).toThrow(/"factor"/);
    expect(() => new Backoff({ ...DEFAULT_BACKOFF, maxDelayMs: 100 })).toThrow(/"maxDelayMs"/);
    expect(() => new Backoff({ ...DEFAULT_BACKOFF, jitter: 2 })).toThrow(/"jitter"/);
    expect(() => new Backoff({ ...DEFAULT_BACKOFF, initialDelayMs: -1 })).toThrow(/"initialDelayMs"/);
  });

  it('sleeps, and wakes at once on abort', async () => {
    expect(await sleep(5)).toBe(true);
    const controller = new AbortController();
    const t0 = Date.now();
    const waiting = sleep(10_000, controller.signal);
    controller.abort();
    expect(await waiting).toBe(false);
    expect(Date.now() - t0).toBeLessThan(100);
    expect(await sleep(10_000, controller.signal)).toBe(false);
  });
});
