/**
 * Reading a step's result under a byte cap (--max-result-bytes). Rows are
 * encoded one at a time as they arrive and never collected by node-postgres;
 * the encoded size is counted as it grows. node-postgres buffers each whole
 * protocol message before handing it on, so one huge value (a 300 MB DataRow,
 * or an error or notice of that size) is stopped earlier, at its message
 * header on the socket: the connection is destroyed at once, the backend's
 * next write fails and its transaction rolls back.
 */
import type { Socket } from 'node:net';
import pg from 'pg';
import { RESULT_HEAD, resultTail, RowEncoder, type Column } from './encode.js';

/** 4 MiB, the default of --max-result-bytes. */
export const DEFAULT_MAX_RESULT_BYTES = 4 * 1024 * 1024;

/** The step's result (or one message the server sent for it) passed the cap; its connection is gone. */
export class ResultTooLargeError extends Error {
  override readonly name = 'ResultTooLargeError';
  readonly code = '54000';
  constructor(cap: number, what: 'result' | 'message') {
    super(
      what === 'result'
        ? `SQL execution failed: the step's result exceeds the limit of ${cap} bytes; return fewer or smaller rows, or raise the limit with dfgate --max-result-bytes (DFGATE_MAX_RESULT_BYTES)`
        : `SQL execution failed: the server sent a message for the step (a row, an error or a notice) larger than the result limit allows (${cap} bytes); raise the limit with dfgate --max-result-bytes (DFGATE_MAX_RESULT_BYTES)`,
    );
  }
}

/**
 * Bytes of protocol messages one step may receive before its connection is
 * cut: per message, and for all its DataRows together. The wire form of a
 * row is at most about 2.4 times its JSON (7 bytes of row and 4 of field
 * framing against `{}`, `,` and a quoted key), so a result under the cap never
 * trips this (unless columns share a name: only the first of them is kept);
 * the encoded size is checked exactly as rows arrive.
 */
export function wireLimit(cap: number): number {
  return 3 * cap + 64 * 1024;
}

/** Scans the server-to-client byte stream for message headers (type byte, int32 length). */
export class WireGuard {
  private skip = 0;
  private readonly header = Buffer.alloc(5);
  private have = 0;
  private rowBytes = 0;
  tripped: 'result' | 'message' | undefined;

  constructor(
    private readonly limit: number,
    private readonly onTrip: () => void,
    /** Rows are kept (counted together), or dropped as they come (each message alone). */
    private readonly countRows = true,
  ) {}

  readonly scan = (chunk: Buffer): void => {
    let i = 0;
    while (i < chunk.length && this.tripped === undefined) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, chunk.length - i);
        this.skip -= n;
        i += n;
        continue;
      }
      while (this.have < 5 && i < chunk.length) this.header[this.have++] = chunk[i++] as number;
      if (this.have < 5) return;
      this.have = 0;
      const len = this.header.readInt32BE(1);
      this.skip = len - 4;
      if (this.header[0] === 0x44 /* DataRow */ && this.countRows) this.rowBytes += len + 1;
      if (len > this.limit) this.trip(this.header[0] === 0x44 ? 'result' : 'message');
      else if (this.rowBytes > this.limit) this.trip('result');
    }
  };

  trip(what: 'result' | 'message'): void {
    if (this.tripped !== undefined) return;
    this.tripped = what;
    this.onTrip();
  }
}

/** Parse, Bind and Execute of one parameterless statement (unnamed statement and portal), without a Sync. */
function extendedMessages(sql: string): Buffer {
  const text = Buffer.from(sql + '\0', 'utf8');
  const parse = Buffer.alloc(1 + 4 + 1 + text.length + 2);
  parse.write('P', 0);
  parse.writeInt32BE(parse.length - 1, 1);
  parse[5] = 0; // unnamed statement
  text.copy(parse, 6);
  parse.writeInt16BE(0, 6 + text.length); // no parameter types
  // portal "", statement "", 0 parameter formats, 0 parameters, 0 result formats
  const bind = Buffer.from([0x42, 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0]);
  // portal "", no row limit
  const execute = Buffer.from([0x45, 0, 0, 0, 9, 0, 0, 0, 0, 0]);
  return Buffer.concat([parse, bind, execute]);
}

/**
 * Runs one statement (extended protocol, no parameters, text results) on `c`
 * and returns its result text {"rows":[…],"row_count":n} of at most `cap`
 * bytes (UTF-8). Over the cap it destroys the connection (never to be used
 * again) and throws ResultTooLargeError; the statement's own errors and
 * EncodeError are thrown as they are.
 *
 * `before` (e.g. BEGIN) are sent in the same message ahead of the statement,
 * each as its own Parse/Bind/Execute, so they cost no round trip of their
 * own; the server answers them with ParseComplete, BindComplete and
 * CommandComplete, which node-postgres files as earlier results of the same
 * query (no rows). If one of them fails, the server skips the rest up to the
 * Sync and the error is thrown as the statement's would be.
 */
export async function readBounded(
  c: pg.Client,
  sql: string,
  cap: number,
  before: readonly string[] = [],
): Promise<string> {
  const sock = (c as unknown as { connection: { stream: Socket } }).connection.stream;
  const guard = new WireGuard(wireLimit(cap), () => sock.destroy());
  // ahead of node-postgres' own parser, so a huge message is seen at its header
  sock.prependListener('data', guard.scan);
  // written before node-postgres writes the statement's own messages (the client is idle here),
  // and corked until they are written too: one segment, one wake-up of the backend
  const corked = before.length > 0;
  if (corked) {
    sock.cork();
    sock.write(Buffer.concat(before.map(extendedMessages)));
  }
  const frame = RESULT_HEAD.length + resultTail(0).length;
  let enc: RowEncoder | undefined;
  const parts: string[] = [];
  let bytes = 0;
  let encodeErr: unknown;
  try {
    await new Promise<void>((resolve, reject) => {
      const q = new pg.Query({
        text: sql,
        rowMode: 'array',
        queryMode: 'extended',
      } as pg.QueryConfig);
      // a 'row' listener and no callback: node-postgres keeps no rows of its own
      q.on('row', (row: Array<string | null>, res?: { fields: pg.FieldDef[] }) => {
        if (guard.tripped !== undefined || encodeErr !== undefined) return;
        try {
          enc ??= new RowEncoder(columnsOf(res?.fields ?? []));
          const s = enc.row(row);
          bytes += Buffer.byteLength(s, 'utf8') + (parts.length > 0 ? 1 : 0);
          const n = parts.length + 1;
          if (bytes + frame + String(n).length - 1 > cap) guard.trip('result');
          else parts.push(s);
        } catch (err) {
          encodeErr = err;
        }
      });
      q.on('end', () => resolve());
      q.on('error', reject);
      try {
        c.query(q);
      } finally {
        if (corked) sock.uncork();
      }
    });
  } catch (err) {
    if (guard.tripped !== undefined) throw new ResultTooLargeError(cap, guard.tripped);
    throw err;
  } finally {
    sock.off('data', guard.scan);
  }
  if (guard.tripped !== undefined) throw new ResultTooLargeError(cap, guard.tripped);
  if (encodeErr !== undefined) throw encodeErr;
  return RESULT_HEAD + parts.join(',') + resultTail(parts.length);
}

function columnsOf(fields: readonly pg.FieldDef[]): Column[] {
  return fields.map((f) => ({ name: f.name, typeOid: f.dataTypeID }));
}
