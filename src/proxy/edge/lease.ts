/**
 * A plain `SELECT df.start(...)` born claimed (docs/executor.md, "The wake
 * path"): the edge's df._start_rows(<rows>, <label>) call gets the lease of
 * this process's executor as two more arguments, inserted before its closing
 * parenthesis. The edge's rewrite is cached per statement text; the lease is
 * decided per call, so it is added here.
 */
import type { Lease } from '../../contract/started.js';
import { literal } from '../../dsl/edge.js';

export interface LeasedText {
  readonly text: string;
  /** A server error position in `text` → one in the client's statement. */
  position(p: number): number;
}

/**
 * `text` (a rewrite whose position map is `position`) with `lease` passed to
 * the call whose closing parenthesis is at byte `leaseAt`; undefined when
 * that byte is not one.
 */
export function withLease(
  text: string,
  position: (p: number) => number,
  leaseAt: number,
  lease: Lease,
  /** The nonce its claim's notice is to name (born.ts), or none. */
  nonce?: string,
): LeasedText | undefined {
  const buf = Buffer.from(text, 'utf8');
  if (buf[leaseAt] !== 0x29) return undefined;
  const ins =
    `, ${literal(lease.owner)}, ${Math.trunc(lease.ms)}` + (nonce ? `, ${literal(nonce)}` : '');
  // PostgreSQL counts positions in characters (code points), from 1
  const at = [...buf.toString('utf8', 0, leaseAt)].length;
  const n = [...ins].length;
  return {
    text: buf.toString('utf8', 0, leaseAt) + ins + buf.toString('utf8', leaseAt),
    position: (p) => (p <= at ? position(p) : position(p <= at + n ? at : p - n)),
  };
}
