/** A raw protocol client for tests that need exact messages: connect, log in, read what comes back. */
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import { decodeErrorFields } from '../../src/proxy/protocol/backend.js';
import { encodeFrontend, encodeStartup } from '../../src/proxy/protocol/frontend.js';

export interface Raw {
  readonly sock: net.Socket;
  /** Resolves with all messages up to and including the first one matching. */
  until(pred: (t: string, body: Buffer) => boolean): Promise<Array<[string, Buffer]>>;
  closed: Promise<void>;
}

export function raw(p: number): Promise<Raw> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: '127.0.0.1', port: p });
    let buf = Buffer.alloc(0);
    const queue: Array<[string, Buffer]> = [];
    let waiter: (() => void) | undefined;
    const closed = new Promise<void>((r) => sock.once('close', () => r()));
    sock.on('error', () => undefined);
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 5 && buf.length >= buf.readInt32BE(1) + 1) {
        const len = buf.readInt32BE(1);
        queue.push([String.fromCharCode(buf[0] as number), buf.subarray(5, len + 1)]);
        buf = buf.subarray(len + 1);
      }
      waiter?.();
    });
    sock.once('connect', () =>
      resolve({
        sock,
        closed,
        async until(pred) {
          const out: Array<[string, Buffer]> = [];
          for (;;) {
            while (queue.length) {
              const m = queue.shift() as [string, Buffer];
              out.push(m);
              if (pred(m[0], m[1])) return out;
            }
            const more = new Promise<void>((r) => (waiter = r));
            const done = await Promise.race([more.then(() => false), closed.then(() => true)]);
            if (done && queue.length === 0) return out;
          }
        },
      }),
    );
    sock.once('error', reject);
  });
}

export function errorOf(msgs: Array<[string, Buffer]>): Record<string, string> | undefined {
  const e = msgs.find(([t]) => t === 'E');
  return e ? Object.fromEntries(decodeErrorFields(e[1])) : undefined;
}

/** A protocol 3.0 StartupMessage for `user` on `database`, with any further parameters. */
export function startupMessage(
  user: string,
  database: string,
  extra: ReadonlyArray<readonly [string, string]> = [],
): Buffer {
  return encodeStartup({
    type: 'StartupMessage',
    version: 196608,
    params: [['user', user], ['database', database], ...extra],
  });
}

/** Connects and logs in with a StartupMessage (a trust login), returning once ReadyForQuery arrives. */
export async function loggedIn(
  port: number,
  user: string,
  database: string,
  extra: ReadonlyArray<readonly [string, string]> = [],
): Promise<Raw> {
  const r = await raw(port);
  r.sock.write(startupMessage(user, database, extra));
  await r.until((t) => t === 'Z');
  return r;
}

/**
 * Logs in with `startup` (a trust login), sends `payload` in the given pieces
 * (each its own write, a few ms apart), then Terminate and a half-close, and
 * returns every byte the server sent after the login's ReadyForQuery, once
 * the connection closes.
 */
export function exchange(
  port: number,
  startup: Buffer,
  pieces: readonly Buffer[],
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: '127.0.0.1', port });
    sock.setNoDelay(true);
    let buf = Buffer.alloc(0);
    let after: Buffer[] | undefined;
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error('connection hung'));
    }, 20_000);
    sock.on('error', () => undefined);
    sock.on('data', (d: Buffer) => {
      if (after) {
        after.push(d);
        return;
      }
      buf = Buffer.concat([buf, d]);
      let pos = 0;
      while (pos + 5 <= buf.length && pos + 1 + buf.readInt32BE(pos + 1) <= buf.length) {
        const t = buf[pos];
        pos += 1 + buf.readInt32BE(pos + 1);
        if (t === 0x5a) {
          after = [buf.subarray(pos)];
          void (async () => {
            for (const p of pieces) {
              if (sock.destroyed) return;
              sock.write(p);
              await new Promise((r) => setTimeout(r, 3));
            }
            if (!sock.destroyed) sock.end(Buffer.from([0x58, 0, 0, 0, 4]));
          })();
          return;
        }
      }
    });
    sock.once('connect', () => sock.write(startup));
    sock.on('close', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(after ?? []));
    });
  });
}

/**
 * The messages in `bytes`, one per line: the type, then an ErrorResponse's or
 * NoticeResponse's fields other than F, L and R (source file, line, routine,
 * which only a server sends), other bodies in hex.
 */
export function render(bytes: Buffer): string {
  const out: string[] = [];
  let pos = 0;
  while (pos + 5 <= bytes.length) {
    const t = String.fromCharCode(bytes[pos] as number);
    const len = bytes.readInt32BE(pos + 1);
    const body = bytes.subarray(pos + 5, pos + 1 + len);
    if (t === 'E' || t === 'N') {
      const f = [...decodeErrorFields(body)].filter(([k]) => !'FLR'.includes(k));
      out.push(`${t} ${f.map(([k, v]) => `${k}=${v}`).join(' | ')}`);
    } else out.push(`${t} ${body.toString('hex')}`);
    pos += 1 + len;
  }
  if (pos !== bytes.length) out.push(`<${bytes.length - pos} trailing bytes>`);
  return out.join('\n');
}

/** A Bind of the unnamed statement to the unnamed portal, no parameters. */
export function unnamedBind(): Buffer {
  return encodeFrontend({
    type: 'Bind',
    portal: '',
    statement: '',
    paramFormats: [],
    params: [],
    resultFormats: [],
  });
}

/** Parse, Bind and Execute of `sql` as the unnamed statement and portal (no parameters), without a Sync. */
export function unnamedExecute(sql: string): Buffer {
  return Buffer.concat([
    encodeFrontend({ type: 'Parse', name: '', sql, paramTypes: [] }),
    unnamedBind(),
    encodeFrontend({ type: 'Execute', portal: '', maxRows: 0 }),
  ]);
}

/** Message boundaries of a backend stream, from headers only (bodies are never kept). */
export class Headers {
  private head = Buffer.alloc(0);
  private left = 0;
  private type = 0;
  readonly types: string[] = [];

  /** Feeds bytes; the offset just past the first ReadyForQuery completed in them, or -1. */
  feed(d: Buffer): number {
    let pos = 0;
    while (pos < d.length) {
      if (this.left > 0) {
        const n = Math.min(this.left, d.length - pos);
        pos += n;
        this.left -= n;
        if (this.left === 0 && this.type === 0x5a) return pos;
        continue;
      }
      const n = Math.min(5 - this.head.length, d.length - pos);
      this.head = Buffer.concat([this.head, d.subarray(pos, pos + n)]);
      pos += n;
      if (this.head.length < 5) break;
      this.type = this.head[0] as number;
      this.types.push(String.fromCharCode(this.type));
      this.left = this.head.readInt32BE(1) - 4;
      this.head = Buffer.alloc(0);
    }
    return -1;
  }
}

/** What the server sent up to and including a ReadyForQuery: the message types, and the bytes' length and SHA-256. */
export interface Answer {
  readonly types: string[];
  readonly length: number;
  readonly sha256: string;
}

/**
 * A raw protocol client that logs in (trust) and reads each answer as it
 * streams, keeping only its hash, so that the test process never holds it.
 * `send` writes its pieces in order, waiting for the socket to drain (so a
 * generator of pieces is never all in memory), and resolves with the answer
 * up to the first ReadyForQuery.
 */
export async function hashingClient(port: number, user: string, database: string) {
  const sock = net.connect({ host: '127.0.0.1', port });
  sock.on('error', () => undefined);
  await once(sock, 'connect');
  let sink: ((d: Buffer) => void) | undefined;
  sock.on('data', (d: Buffer) => sink?.(d));
  const closed = new Promise<void>((r) => sock.once('close', () => r()));
  const send = (pieces: Iterable<Buffer>): Promise<Answer> =>
    new Promise((resolve, reject) => {
      const headers = new Headers();
      const hash = createHash('sha256');
      let length = 0;
      void closed.then(() => reject(new Error('connection closed')));
      sink = (d) => {
        const end = headers.feed(d);
        const part = end < 0 ? d : d.subarray(0, end);
        hash.update(part);
        length += part.length;
        if (end < 0) return;
        sink = undefined;
        resolve({ types: headers.types, length, sha256: hash.digest('hex') });
      };
      void (async () => {
        for (const p of pieces) {
          if (sock.destroyed) return;
          if (!sock.write(p)) await Promise.race([once(sock, 'drain'), closed]);
        }
      })();
    });
  await send([startupMessage(user, database)]);
  return {
    sock,
    send,
    query: (sql: string) => send([encodeFrontend({ type: 'Query', sql })]),
    end: () => sock.end(encodeFrontend({ type: 'Terminate' })),
  };
}

/**
 * A message of `type` whose body is `prefix`, then `size` bytes of `fill`,
 * then `suffix`, in pieces of at most 1 MiB (the body is never all in memory).
 */
export function* longMessage(
  type: string,
  prefix: Buffer,
  size: number,
  suffix: Buffer,
  fill = 'x',
): Generator<Buffer> {
  const head = Buffer.alloc(5);
  head[0] = type.charCodeAt(0);
  head.writeInt32BE(4 + prefix.length + size + suffix.length, 1);
  yield Buffer.concat([head, prefix]);
  const chunk = Buffer.alloc(Math.min(size, 1024 * 1024), fill);
  for (let left = size; left > 0; left -= chunk.length)
    yield left >= chunk.length ? chunk : chunk.subarray(0, left);
  yield suffix;
}

/** Sends a simple Query and returns every message up to its ReadyForQuery. */
export async function simpleQuery(c: Raw, sql: string): Promise<Array<[string, Buffer]>> {
  c.sock.write(encodeFrontend({ type: 'Query', sql }));
  return c.until((t) => t === 'Z');
}

/** The first column of each DataRow among `msgs`, as text ('NULL' for a null). */
export function dataRows(msgs: Array<[string, Buffer]>): string[] {
  return msgs
    .filter(([t]) => t === 'D')
    .map(([, b]) => {
      const n = b.readInt32BE(2);
      return n < 0 ? 'NULL' : b.toString('utf8', 6, 6 + n);
    });
}
