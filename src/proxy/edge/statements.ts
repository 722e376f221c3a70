/** The protocol-level statements whose Binds the edge checks (EdgeInterceptor), and reading a statement's text. */
import type { Edge, NewCall } from '../../dsl/edge.js';
import { Frontend } from '../protocol/codes.js';

/** A protocol-level statement whose Binds dfgate checks. */
export interface StatementCheck {
  readonly call?: NewCall;
  readonly bound?: readonly number[];
  readonly paramTypes: readonly number[];
}

/** A Parse still being compiled: what its Binds must check once it is. */
export interface PendingCheck {
  readonly pending: Promise<StatementCheck | undefined>;
}

/** What the Binds of a statement the edge decided on must check (undefined: nothing). */
export function statementCheck(e: Edge, paramTypes: readonly number[]): StatementCheck | undefined {
  if (e.kind === 'new') return { call: e.call, paramTypes };
  if ((e.kind === 'pass' || e.kind === 'rewrite') && e.bound?.length)
    return { bound: e.bound, paramTypes };
  return undefined;
}

/** The statement text's bytes of a Query or Parse body (undefined if malformed). */
export function statementBytes(type: number, body: Buffer): Buffer | undefined {
  let start = 0;
  if (type === Frontend.Parse) {
    const nameEnd = body.indexOf(0);
    if (nameEnd < 0) return undefined;
    start = nameEnd + 1;
  }
  const end = body.indexOf(0, start);
  return end < 0 ? undefined : body.subarray(start, end);
}
