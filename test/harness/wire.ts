/** A raw protocol client for tests that need exact messages: connect, log in, read what comes back. */
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

/** Parse, Bind and Execute of `sql` as the unnamed statement and portal (no parameters), without a Sync. */
export function unnamedExecute(sql: string): Buffer {
  return Buffer.concat([
    encodeFrontend({ type: 'Parse', name: '', sql, paramTypes: [] }),
    encodeFrontend({
      type: 'Bind',
      portal: '',
      statement: '',
      paramFormats: [],
      params: [],
      resultFormats: [],
    }),
    encodeFrontend({ type: 'Execute', portal: '', maxRows: 0 }),
  ]);
}
