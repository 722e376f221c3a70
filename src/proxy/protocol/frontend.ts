/**
 * Pure decoders and encoders for every message a client sends
 * (https://www.postgresql.org/docs/current/protocol-message-formats.html).
 * pg-protocol only parses backend messages; this is the other half.
 * Decoders take one complete message body and never see a socket.
 */
import { SqlState } from '../../db/sqlstate.js';
import { Frontend, ProtocolVersion, StartupCode } from './codes.js';
import { ProtocolError, Reader, SilentClose, Writer } from './reader.js';

export type StartupPacket =
  | {
      readonly type: 'StartupMessage';
      readonly version: number;
      readonly params: ReadonlyArray<readonly [string, string]>;
    }
  | { readonly type: 'SSLRequest' }
  | { readonly type: 'GSSENCRequest' }
  | { readonly type: 'CancelRequest'; readonly pid: number; readonly key: Buffer };

export type FrontendMessage =
  | { readonly type: 'Query'; readonly sql: string }
  | {
      readonly type: 'Parse';
      readonly name: string;
      readonly sql: string;
      readonly paramTypes: readonly number[];
    }
  | {
      readonly type: 'Bind';
      readonly portal: string;
      readonly statement: string;
      readonly paramFormats: readonly number[];
      readonly params: ReadonlyArray<Buffer | null>;
      readonly resultFormats: readonly number[];
    }
  | { readonly type: 'Describe'; readonly kind: 'S' | 'P'; readonly name: string }
  | { readonly type: 'Execute'; readonly portal: string; readonly maxRows: number }
  | { readonly type: 'Close'; readonly kind: 'S' | 'P'; readonly name: string }
  | { readonly type: 'Sync' }
  | { readonly type: 'Flush' }
  | { readonly type: 'Terminate' }
  | { readonly type: 'CopyData'; readonly data: Buffer }
  | { readonly type: 'CopyDone' }
  | { readonly type: 'CopyFail'; readonly message: string }
  | {
      readonly type: 'FunctionCall';
      readonly oid: number;
      readonly argFormats: readonly number[];
      readonly args: ReadonlyArray<Buffer | null>;
      readonly resultFormat: number;
    }
  /** A 'p' message; what it holds depends on the authentication exchange (see decodeAuthMessage). */
  | { readonly type: 'AuthData'; readonly data: Buffer };

export type AuthMessage =
  | { readonly type: 'PasswordMessage'; readonly password: string }
  | {
      readonly type: 'SASLInitialResponse';
      readonly mechanism: string;
      readonly data: Buffer | null;
    }
  | { readonly type: 'SASLResponse'; readonly data: Buffer };

export function assertNever(x: never): never {
  throw new Error(`unexpected value ${JSON.stringify(x)}`);
}

const BAD_LAYOUT = 'invalid startup packet layout: expected terminator as last byte';

/**
 * Decodes an untyped startup-phase packet body (after the length word).
 * Errors carry PostgreSQL's wording and SQLSTATE (ProcessStartupPacket).
 */
export function decodeStartup(body: Buffer): StartupPacket {
  const r = new Reader(body);
  const code = r.int32('protocol version');
  switch (code) {
    case StartupCode.SSLRequest:
      r.end('SSLRequest');
      return { type: 'SSLRequest' };
    case StartupCode.GSSENCRequest:
      r.end('GSSENCRequest');
      return { type: 'GSSENCRequest' };
    case StartupCode.CancelRequest: {
      const pid = r.int32('process id');
      const key = Buffer.from(r.rest());
      // PostgreSQL ignores a malformed CancelRequest and closes without answering
      if (key.length < 4 || key.length > 256)
        throw new SilentClose(`CancelRequest: invalid key length ${key.length}`);
      return { type: 'CancelRequest', pid, key };
    }
    default: {
      const major = code >>> 16;
      if (major !== 3)
        throw new ProtocolError(
          `unsupported frontend protocol ${major}.${code & 0xffff}: server supports 3.0 to 3.0`,
          { code: SqlState.FeatureNotSupported },
        );
      // name/value pairs, then a single NUL that must be the packet's last byte
      const params: Array<readonly [string, string]> = [];
      let pos = 4;
      for (;;) {
        if (pos >= body.length) throw new ProtocolError(BAD_LAYOUT);
        if (body[pos] === 0) break;
        const nameEnd = body.indexOf(0, pos);
        const valueEnd = nameEnd < 0 ? -1 : body.indexOf(0, nameEnd + 1);
        if (valueEnd < 0) throw new ProtocolError(BAD_LAYOUT);
        params.push([
          body.toString('utf8', pos, nameEnd),
          body.toString('utf8', nameEnd + 1, valueEnd),
        ]);
        pos = valueEnd + 1;
      }
      if (pos !== body.length - 1) throw new ProtocolError(BAD_LAYOUT);
      return { type: 'StartupMessage', version: code, params };
    }
  }
}

// Counts are unsigned 16-bit, as PostgreSQL reads them: 0xffff is 65535, not -1.

function formats(r: Reader, what: string): number[] {
  const n = r.uint16(`${what} count`);
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push(r.int16(what));
  return out;
}

function values(r: Reader, what: string): Array<Buffer | null> {
  const n = r.uint16(`${what} count`);
  const out: Array<Buffer | null> = [];
  for (let i = 0; i < n; i++) {
    const len = r.int32(`${what} length`);
    // -1 is NULL; any other negative length reads as "insufficient data" in PostgreSQL
    if (len < -1)
      throw new ProtocolError('insufficient data left in message', {
        field: `${what} length ${len}`,
      });
    out.push(len === -1 ? null : r.bytes(len, what));
  }
  return out;
}

function kind(b: number, what: 'DESCRIBE' | 'CLOSE'): 'S' | 'P' {
  if (b === 0x53) return 'S';
  if (b === 0x50) return 'P';
  throw new ProtocolError(`invalid ${what} message subtype ${b}`);
}

/** PostgreSQL's FATAL for a type byte it does not know (it then closes the connection). */
export function unknownTypeError(type: number): ProtocolError {
  return new ProtocolError(`invalid frontend message type ${type}`);
}

/** Decodes a typed message body. Throws ProtocolError on malformed input. */
export function decodeFrontend(type: number, body: Buffer): FrontendMessage {
  const r = new Reader(body);
  let m: FrontendMessage;
  switch (type) {
    case Frontend.Query:
      m = { type: 'Query', sql: r.cstring('query') };
      break;
    case Frontend.Parse: {
      const name = r.cstring('statement name');
      const sql = r.cstring('query');
      const n = r.uint16('parameter type count');
      const paramTypes: number[] = [];
      for (let i = 0; i < n; i++) paramTypes.push(r.int32('parameter type') >>> 0);
      m = { type: 'Parse', name, sql, paramTypes };
      break;
    }
    case Frontend.Bind: {
      const portal = r.cstring('portal name');
      const statement = r.cstring('statement name');
      const paramFormats = formats(r, 'parameter format');
      const params = values(r, 'parameter');
      if (paramFormats.length > 1 && paramFormats.length !== params.length)
        throw new ProtocolError(
          `bind message has ${paramFormats.length} parameter formats but ${params.length} parameters`,
        );
      const resultFormats = formats(r, 'result format');
      m = { type: 'Bind', portal, statement, paramFormats, params, resultFormats };
      break;
    }
    case Frontend.Describe:
      m = {
        type: 'Describe',
        kind: kind(r.byte('Describe kind'), 'DESCRIBE'),
        name: r.cstring('name'),
      };
      break;
    case Frontend.Execute:
      m = { type: 'Execute', portal: r.cstring('portal name'), maxRows: r.int32('row limit') };
      break;
    case Frontend.Close:
      m = { type: 'Close', kind: kind(r.byte('Close kind'), 'CLOSE'), name: r.cstring('name') };
      break;
    case Frontend.Sync:
      m = { type: 'Sync' };
      break;
    case Frontend.Flush:
      m = { type: 'Flush' };
      break;
    case Frontend.Terminate:
      m = { type: 'Terminate' };
      break;
    case Frontend.CopyData:
      m = { type: 'CopyData', data: r.rest() };
      break;
    case Frontend.CopyDone:
      m = { type: 'CopyDone' };
      break;
    case Frontend.CopyFail:
      m = { type: 'CopyFail', message: r.cstring('error message') };
      break;
    case Frontend.FunctionCall: {
      const oid = r.int32('function oid') >>> 0;
      const argFormats = formats(r, 'argument format');
      const args = values(r, 'argument');
      m = { type: 'FunctionCall', oid, argFormats, args, resultFormat: r.int16('result format') };
      break;
    }
    case Frontend.Password:
      m = { type: 'AuthData', data: r.rest() };
      break;
    default:
      throw unknownTypeError(type);
  }
  r.end(m.type);
  return m;
}

/** Interprets a 'p' message body given what the server asked for. */
export function decodeAuthMessage(body: Buffer, expect: AuthMessage['type']): AuthMessage {
  const r = new Reader(body);
  let m: AuthMessage;
  switch (expect) {
    case 'PasswordMessage':
      m = { type: 'PasswordMessage', password: r.cstring('password') };
      break;
    case 'SASLInitialResponse': {
      const mechanism = r.cstring('mechanism');
      const len = r.int32('initial response length');
      if (len < -1) throw new ProtocolError(`invalid SASL response length ${len}`);
      m = {
        type: 'SASLInitialResponse',
        mechanism,
        data: len === -1 ? null : r.bytes(len, 'initial response'),
      };
      break;
    }
    case 'SASLResponse':
      m = { type: 'SASLResponse', data: r.rest() };
      break;
    default:
      return assertNever(expect);
  }
  r.end(m.type);
  return m;
}

export function encodeStartup(p: StartupPacket): Buffer {
  const w = new Writer();
  switch (p.type) {
    case 'SSLRequest':
      return w.int32(StartupCode.SSLRequest).finish();
    case 'GSSENCRequest':
      return w.int32(StartupCode.GSSENCRequest).finish();
    case 'CancelRequest':
      return w.int32(StartupCode.CancelRequest).int32(p.pid).bytes(p.key).finish();
    case 'StartupMessage':
      w.int32(p.version ?? ProtocolVersion.V3_0);
      for (const [k, v] of p.params) w.cstring(k).cstring(v);
      return w.byte(0).finish();
    default:
      return assertNever(p);
  }
}

function writeValues(w: Writer, vals: ReadonlyArray<Buffer | null>): void {
  w.uint16(vals.length);
  for (const v of vals) {
    if (v === null) w.int32(-1);
    else w.int32(v.length).bytes(v);
  }
}

export function encodeFrontend(m: FrontendMessage): Buffer {
  const w = new Writer();
  switch (m.type) {
    case 'Query':
      return w.cstring(m.sql).finish(Frontend.Query);
    case 'Parse':
      w.cstring(m.name).cstring(m.sql).uint16(m.paramTypes.length);
      for (const t of m.paramTypes) w.int32(t | 0);
      return w.finish(Frontend.Parse);
    case 'Bind':
      w.cstring(m.portal).cstring(m.statement).uint16(m.paramFormats.length);
      for (const f of m.paramFormats) w.int16(f);
      writeValues(w, m.params);
      w.uint16(m.resultFormats.length);
      for (const f of m.resultFormats) w.int16(f);
      return w.finish(Frontend.Bind);
    case 'Describe':
      return w.byte(m.kind.charCodeAt(0)).cstring(m.name).finish(Frontend.Describe);
    case 'Execute':
      return w.cstring(m.portal).int32(m.maxRows).finish(Frontend.Execute);
    case 'Close':
      return w.byte(m.kind.charCodeAt(0)).cstring(m.name).finish(Frontend.Close);
    case 'Sync':
      return w.finish(Frontend.Sync);
    case 'Flush':
      return w.finish(Frontend.Flush);
    case 'Terminate':
      return w.finish(Frontend.Terminate);
    case 'CopyData':
      return w.bytes(m.data).finish(Frontend.CopyData);
    case 'CopyDone':
      return w.finish(Frontend.CopyDone);
    case 'CopyFail':
      return w.cstring(m.message).finish(Frontend.CopyFail);
    case 'FunctionCall':
      w.int32(m.oid | 0).uint16(m.argFormats.length);
      for (const f of m.argFormats) w.int16(f);
      writeValues(w, m.args);
      return w.int16(m.resultFormat).finish(Frontend.FunctionCall);
    case 'AuthData':
      return w.bytes(m.data).finish(Frontend.Password);
    default:
      return assertNever(m);
  }
}

export function encodeAuthMessage(m: AuthMessage): Buffer {
  const w = new Writer();
  switch (m.type) {
    case 'PasswordMessage':
      return w.cstring(m.password).finish(Frontend.Password);
    case 'SASLInitialResponse':
      w.cstring(m.mechanism);
      if (m.data === null) w.int32(-1);
      else w.int32(m.data.length).bytes(m.data);
      return w.finish(Frontend.Password);
    case 'SASLResponse':
      return w.bytes(m.data).finish(Frontend.Password);
    default:
      return assertNever(m);
  }
}
