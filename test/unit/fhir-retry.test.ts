import { describe, expect, it } from 'vitest';
import { backoffDelay, bundleVerdict, entryVerdict, parseRetryAfter, Verdict } from '../../src/sinks/fhir/retry.js';

describe('retry policy', () => {
  it('judges a Bundle POST by status (research note §4.4)', () => {
    const table: [number, Verdict][] = [
      [200, Verdict.OK],
      [408, Verdict.RETRY],
      [429, Verdict.RETRY],
      [500, Verdict.RETRY],
      [503, Verdict.RETRY],
      [599, Verdict.RETRY],
      [401, Verdict.REAUTH],
      [403, Verdict.HALT],
      [404, Verdict.HALT],
      [415, Verdict.HALT],
      [413, Verdict.SPLIT],
      [400, Verdict.REJECT],
      [409, Verdict.REJECT],
      [412, Verdict.REJECT],
      [422, Verdict.REJECT],
    ];
    for (const [status, verdict] of table) expect(bundleVerdict(status), String(status)).toBe(verdict);
  });

  it('judges batch entries one by one; transient issue codes retry even on a 4xx', () => {
    expect(entryVerdict(201, [])).toBe(Verdict.OK);
    expect(entryVerdict(200, [])).toBe(Verdict.OK);
    expect(entryVerdict(422, ['business-rule'])).toBe(Verdict.REJECT);
    expect(entryVerdict(400, ['invalid'])).toBe(Verdict.REJECT);
    expect(entryVerdict(404, ['not-found'])).toBe(Verdict.REJECT);
    expect(entryVerdict(412, ['multiple-matches'])).toBe(Verdict.REJECT);
    expect(entryVerdict(409, ['lock-error'])).toBe(Verdict.RETRY);
    expect(entryVerdict(503, ['transient'])).toBe(Verdict.RETRY);
    expect(entryVerdict(429, [])).toBe(Verdict.RETRY);
    expect(entryVerdict(403, ['forbidden'])).toBe(Verdict.HALT);
  });

  it('backs off exponentially with equal jitter, capped', () => {
    const s = { initialDelayMs: 1000, maxDelayMs: 60_000, maxRetryAfterMs: 600_000 };
    expect(backoffDelay(1, s, () => 0)).toBe(500);
    expect(backoffDelay(1, s, () => 1)).toBe(1000);
    expect(backoffDelay(4, s, () => 0.5)).toBe(6000);
    expect(backoffDelay(30, s, () => 1)).toBe(60_000);
    expect(backoffDelay(30, s, () => 0)).toBe(30_000);
  });

  it('reads Retry-After as seconds or an HTTP date, clamped', () => {
    const now = Date.parse('2025-03-12T10:00:00Z');
    expect(parseRetryAfter('5', now, 60_000)).toBe(5000);
    expect(parseRetryAfter(['2'], now, 60_000)).toBe(2000);
    expect(parseRetryAfter('Wed, 12 Mar 2025 10:00:30 GMT', now, 60_000)).toBe(30_000);
    expect(parseRetryAfter('86400', now, 60_000)).toBe(60_000);
    expect(parseRetryAfter('soon', now, 60_000)).toBeNull();
    expect(parseRetryAfter(undefined, now, 60_000)).toBeNull();
  });
});
