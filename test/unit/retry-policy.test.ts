/** The retry policy an instance's options give (drive-cache.ts retryPolicy). */
import { describe, expect, it } from 'vitest';
import { retryPolicy } from '../../src/executor/drive-cache.js';

describe('retryPolicy', () => {
  it('one attempt without max_attempts, or with 1', () => {
    expect(retryPolicy(null)).toBeUndefined();
    expect(retryPolicy({})).toBeUndefined();
    expect(retryPolicy({ max_attempts: 1 })).toBeUndefined();
  });

  it('max_attempts over 1, with or without max_backoff_seconds', () => {
    expect(retryPolicy({ max_attempts: 3 })).toEqual({ maxAttempts: 3, maxBackoffMs: null });
    expect(retryPolicy({ max_attempts: 5, max_backoff_seconds: 30 })).toEqual({
      maxAttempts: 5,
      maxBackoffMs: 30_000,
    });
  });

  it('a max_attempts past what a double holds (JSON 1e400 reads as Infinity) still retries', () => {
    expect(JSON.parse('{"max_attempts": 1e400}').max_attempts).toBe(Infinity);
    expect(retryPolicy(JSON.parse('{"max_attempts": 1e400}'))).toEqual({
      maxAttempts: Number.MAX_SAFE_INTEGER,
      maxBackoffMs: null,
    });
  });
});
