/**
 * Errors dfgate raises at the edge: ErrorResponse fields, and the statement
 * that makes the server raise one in statement order (dfgate then swaps in
 * its own fields, see EdgeInterceptor.serverError).
 */
import { SqlState } from '../../db/sqlstate.js';
import type { EdgeError } from '../../dsl/edge.js';

export function refusal(code: string, message: string, hint?: string): Map<string, string> {
  const f = new Map<string, string>([
    ['S', 'ERROR'],
    ['V', 'ERROR'],
    ['C', code],
    ['M', message],
  ]);
  if (hint) f.set('H', hint);
  return f;
}

export function errorFields(e: EdgeError): Map<string, string> {
  const f = refusal(e.code, e.message, e.hint);
  f.set('P', String(e.position));
  return f;
}

export function mixed(): Map<string, string> {
  return refusal(
    SqlState.FeatureNotSupported,
    "df.start(..., transaction_mode => 'new') is not available on this connection: it sent a simple query inside an unfinished extended-protocol batch earlier, so dfgate cannot tell which answers are outstanding",
    'Reconnect, and send Sync before a simple query.',
  );
}

/** A statement that raises the error registered under `nonce`, in statement order. */
export function raiseNonce(nonce: string): string {
  return `DO $dfgate_edge$BEGIN RAISE EXCEPTION 'dfgate_edge_${nonce}'; END$dfgate_edge$`;
}

/** A statement name or text that makes the server fail a Parse or Bind, naming `nonce`. */
export function nonceName(nonce: string): string {
  return `dfgate_edge_${nonce}`;
}

export function quoteIdentifier(s: string): string {
  return `"${s.replace(/"/g, '""')}"`;
}
