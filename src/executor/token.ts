/** Attempt tokens: the executor keeps the token, the database only its hash (DESIGN.md §4). */
import { createHash } from 'node:crypto';

export function tokenHash(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}
