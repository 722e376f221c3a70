/**
 * The backend messages dfgate builds itself (ErrorResponse) or looks into
 * (Authentication, BackendKeyData, ParameterStatus, ReadyForQuery,
 * ErrorResponse). Everything else from the server is forwarded unread.
 */
import { AuthCode, Backend } from './codes.js';
import { Reader, Writer } from './reader.js';
import type { SqlStateCode } from '../../db/sqlstate.js';

export interface ErrorFields {
  readonly severity: 'ERROR' | 'FATAL';
  readonly code: SqlStateCode | string;
  readonly message: string;
  readonly detail?: string;
  readonly hint?: string;
  /** 1-based character position in the client's statement. */
  readonly position?: number;
}

/** ErrorResponse ('E'): https://www.postgresql.org/docs/current/protocol-error-fields.html */
export function encodeError(e: ErrorFields): Buffer {
  const w = new Writer();
  w.byte(0x53).cstring(e.severity); // S: localized severity
  w.byte(0x56).cstring(e.severity); // V: severity, never localized
  w.byte(0x43).cstring(e.code); // C: SQLSTATE
  w.byte(0x4d).cstring(e.message); // M
  if (e.detail !== undefined) w.byte(0x44).cstring(e.detail); // D
  if (e.hint !== undefined) w.byte(0x48).cstring(e.hint); // H
  if (e.position !== undefined) w.byte(0x50).cstring(String(e.position)); // P
  w.byte(0);
  return w.finish(Backend.ErrorResponse);
}

/**
 * The fields of an ErrorResponse or NoticeResponse body, keyed by field letter.
 * `cut`: the body is only the first bytes of a longer message (one too long to
 * inspect whole, see Framer's `truncated`); the fields that are complete in it
 * are returned, and the one cut off is left out, never returned truncated.
 * PostgreSQL sends S, V and C (severity and SQLSTATE) first, before M.
 */
export function decodeErrorFields(body: Buffer, cut = false): Map<string, string> {
  if (cut) return decodeCutFields(body);
  const r = new Reader(body);
  const out = new Map<string, string>();
  for (;;) {
    const code = r.byte('field type');
    if (code === 0) break;
    out.set(String.fromCharCode(code), r.cstring('field value'));
  }
  return out;
}

function decodeCutFields(head: Buffer): Map<string, string> {
  const out = new Map<string, string>();
  for (let pos = 0; pos < head.length && head[pos] !== 0;) {
    const end = head.indexOf(0, pos + 1);
    if (end < 0) break; // the field the cut went through
    out.set(String.fromCharCode(head[pos] as number), head.toString('utf8', pos + 1, end));
    pos = end + 1;
  }
  return out;
}

export type AuthRequest =
  | { readonly code: typeof AuthCode.SASL; readonly mechanisms: readonly string[] }
  | { readonly code: number };

export function decodeAuth(body: Buffer): AuthRequest {
  const r = new Reader(body);
  const code = r.int32('authentication code');
  if (code !== AuthCode.SASL) return { code };
  const mechanisms: string[] = [];
  for (;;) {
    const m = r.cstring('SASL mechanism');
    if (m === '') break;
    mechanisms.push(m);
  }
  return { code, mechanisms };
}

export function encodeAuthSASL(mechanisms: readonly string[]): Buffer {
  const w = new Writer().int32(AuthCode.SASL);
  for (const m of mechanisms) w.cstring(m);
  return w.byte(0).finish(Backend.Authentication);
}

export function decodeParameterStatus(body: Buffer): readonly [string, string] {
  const r = new Reader(body);
  return [r.cstring('parameter name'), r.cstring('parameter value')];
}

/** BackendKeyData: pid and a secret key of 4 bytes (protocol 3.0) up to 256 (3.2). */
export function decodeBackendKey(body: Buffer): { readonly pid: number; readonly key: Buffer } {
  const r = new Reader(body);
  const pid = r.int32('process id');
  return { pid, key: Buffer.from(r.rest()) };
}

export function encodeReadyForQuery(status: 'I' | 'T' | 'E'): Buffer {
  return new Writer().byte(status.charCodeAt(0)).finish(Backend.ReadyForQuery);
}

/** Re-encodes ErrorResponse fields (keyed by field letter), in order. */
export function encodeErrorFieldMap(fields: ReadonlyMap<string, string>): Buffer {
  const w = new Writer();
  for (const [k, v] of fields) w.byte(k.charCodeAt(0)).cstring(v);
  w.byte(0);
  return w.finish(Backend.ErrorResponse);
}
