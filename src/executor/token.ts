/** Attempt tokens: the executor keeps the token, the database only its hash (DESIGN.md §4). */
import { createHash, randomFillSync } from 'node:crypto';

export function tokenHash(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

const TOKEN_BYTES = 24;
/** Random bytes for 170 tokens at a time: one call to the CSPRNG instead of one per step; each byte is used once. */
const pool = Buffer.alloc(TOKEN_BYTES * 170);
let next = pool.length;

/** A new attempt token: 24 random bytes, base64url. */
export function newToken(): string {
  if (next + TOKEN_BYTES > pool.length) {
    randomFillSync(pool);
    next = 0;
  }
  const t = pool.toString('base64url', next, next + TOKEN_BYTES);
  next += TOKEN_BYTES;
  return t;
}
