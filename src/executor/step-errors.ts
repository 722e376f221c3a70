/**
 * Which errors of a step's connection are the infrastructure's, not the
 * step's (DESIGN.md §4 "Errors"): the step is rolled back and run again.
 */

/** Infrastructure errors: roll back and run the step again (DESIGN.md §4 "Errors"). */
export const RETRYABLE = new Set([
  '40001',
  '40P01',
  '57P01',
  '57P02',
  '57P03',
  '53300',
  '25006',
  '08000',
  '08003',
  '08006',
  '08001',
  '08004',
]);

export function isRetryable(err: unknown): boolean {
  const code = (err as { code?: string }).code;
  // a stray $1 in a step: 08P01 (protocol violation) from the Bind, a step error, not a lost connection
  if (code === '08P01' && /^bind message supplies /.test(String((err as Error).message)))
    return false;
  if (typeof code === 'string') return RETRYABLE.has(code) || code.startsWith('08');
  // a lost connection surfaces without a SQLSTATE
  return /Connection terminated|not queryable|ECONNRESET|ECONNREFUSED|EPIPE|connection.*(lost|closed)/i.test(
    String((err as Error).message),
  );
}
