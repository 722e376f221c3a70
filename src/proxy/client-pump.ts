/**
 * Client → server relaying with order kept: pieces go straight to the server
 * connection when nothing waits; otherwise they queue behind a Deferred (an
 * edge decision, a private conversation) or behind the lending of a server
 * connection (transaction mode), and the client is paused until the queue is
 * empty. Backpressure: a reader is paused while its writer needs to drain.
 *
 * At most SLICE bytes are written per turn of the event loop (transaction
 * mode holds a long Query until it has looked at all of it, then sends it
 * as session mode would have forwarded it, chunk by chunk as it arrived): a
 * single write of a megabyte to a loopback socket does the receiving side's
 * TCP work inside the same syscall and held the event loop, and so every
 * other client, for 5-30 ms (issue 13).
 */
import type net from 'node:net';
import type { Piece } from './protocol/frame.js';
import { isLate, isMapped } from './pooled.js';
import type { ServerConn } from './server-conn.js';

export interface PumpHost {
  readonly client: net.Socket;
  readonly isClosed: boolean;
  /** The server connection attached now, if any. */
  readonly server: ServerConn | undefined;
  /** The connection to write to, lending one if need be (undefined: none, stop). */
  ensureServer(): Promise<ServerConn | undefined>;
  /** A connection attached now without waiting, if one is at hand. */
  serverNow(): ServerConn | undefined;
  failed(err: unknown): void;
  /** The queue ran empty. */
  drained(): void;
}

/** Writes pieces to `to`; pauses `from` until `to` drains if it must. */
export function forward(
  pieces: Buffer[],
  to: net.Socket,
  from: net.Socket,
  isClosed: () => boolean,
): void {
  if (pieces.length === 0 || to.destroyed) return;
  if (pieces.length === 1) {
    to.write(pieces[0] as Buffer);
  } else {
    to.cork();
    for (const p of pieces) to.write(p);
    to.uncork();
  }
  if (to.writableNeedDrain && !from.isPaused()) {
    from.pause();
    to.once('drain', () => {
      if (!isClosed()) from.resume();
    });
  }
}

/** The most written to a socket in one turn of the event loop (a socket read's size). */
export const SLICE = 64 * 1024;

/** Resolves on the next turn of the event loop, once `socket` can take more (or is gone). */
function nextTurn(socket: net.Socket): Promise<void> {
  if (!socket.writableNeedDrain || socket.destroyed)
    return new Promise((resolve) => setImmediate(resolve));
  return new Promise((resolve) => {
    const done = (): void => {
      socket.off('drain', done);
      socket.off('close', done);
      resolve();
    };
    socket.once('drain', done);
    socket.once('close', done);
  });
}

export class ClientPump {
  private readonly queue: Piece[] = [];
  private pumping = false;

  constructor(private readonly host: PumpHost) {}

  /** Something is queued or being decided. */
  get busy(): boolean {
    return this.pumping || this.queue.length > 0;
  }

  /** Client → server: straight through, unless something must wait. */
  push(pieces: Piece[]): void {
    const conn = this.queue.length === 0 ? this.host.serverNow() : undefined;
    if (conn) {
      let i = 0;
      const out: Buffer[] = [];
      for (; i < pieces.length; i++) {
        const p = pieces[i] as Piece;
        if (Buffer.isBuffer(p)) out.push(p);
        else if (isLate(p)) out.push(...p.late(conn));
        else break;
      }
      // at most SLICE bytes go out now; the rest follows through the queue, a slice per turn
      let n = 0;
      for (let size = 0; n < out.length && (size += (out[n] as Buffer).length) <= SLICE;) n++;
      if (n < out.length) this.queue.push(...out.splice(n));
      forward(out, conn.socket, this.host.client, () => this.host.isClosed);
      pieces = pieces.slice(i);
    }
    if (pieces.length === 0 && this.queue.length === 0) return;
    this.queue.push(...pieces);
    void this.pump();
  }

  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    const host = this.host;
    host.client.pause();
    /** Bytes written since the last turn of the event loop. */
    let sent = 0;
    try {
      while (this.queue.length > 0 && !host.isClosed) {
        const p = this.queue.shift() as Piece;
        let out: Buffer[];
        if (Buffer.isBuffer(p)) out = [p];
        else if (isLate(p)) {
          const c = await host.ensureServer();
          out = c ? p.late(c) : [];
        } else {
          out = await p();
          if (isMapped(p)) {
            const c = await host.ensureServer();
            out = c ? p.mapped(c, out) : [];
          }
        }
        if (out.length === 0) continue;
        const conn = await host.ensureServer();
        if (!conn || conn.closed || host.isClosed) break;
        for (const b of out)
          for (let at = 0; at < b.length; at += SLICE) {
            if (sent >= SLICE) {
              await nextTurn(conn.socket);
              sent = 0;
              if (conn.closed || host.isClosed) return;
            }
            const part = b.length > SLICE ? b.subarray(at, at + SLICE) : b;
            conn.write(part);
            sent += part.length;
          }
      }
    } catch (err) {
      host.failed(err);
    } finally {
      this.pumping = false;
      if (!host.isClosed) {
        host.client.resume();
        host.drained();
      }
    }
  }
}
