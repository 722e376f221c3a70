/**
 * The Start page's live validation (/api/check and /api/start): the check
 * of src/dsl/check-expression.ts, run in the compile worker the proxy uses
 * for df.start statements, in turns by role, for any expression longer than
 * a few KiB. Parsing and validating 256 KiB takes 100-150 ms, which on the
 * event loop would hold up every session the process relays.
 */
import { checkNow, type CheckResult } from '../dsl/check-expression.js';
import { checkInPool } from '../dsl/edge-pool.js';
import { loadParser } from '../dsl/parser.js';

export { MAX_SOURCE_BYTES, type CheckError, type CheckResult } from '../dsl/check-expression.js';

/** Expressions up to this many characters are checked on the calling thread (well under 1 ms). */
export const CHECK_INLINE_MAX = 4 * 1024;

/** What the check of `source` says; `owner` takes its turn in the compile worker. */
export async function checkExpression(source: string, owner: string): Promise<CheckResult> {
  const pooled = source.length > CHECK_INLINE_MAX ? checkInPool(source, owner) : undefined;
  if (pooled) {
    const r = await pooled;
    if (r !== 'abandoned') return r;
    return {
      ok: false,
      error: {
        line: 1,
        column: 1,
        message: 'the expression took too long to check; start it from SQL instead',
      },
    };
  }
  await loadParser();
  return checkNow(source);
}
