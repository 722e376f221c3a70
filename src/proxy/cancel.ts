/**
 * Cancel keys dfgate has relayed. In session mode BackendKeyData passes
 * through unchanged, so a client's CancelRequest carries the upstream's own
 * key; in transaction mode the client gets a key of dfgate's own, resolved
 * to the backend it holds when the cancel arrives. A cancel is forwarded
 * only when dfgate gave out that key (never to an arbitrary backend: dfgate is
 * no cancel-key oracle), over a fresh connection negotiated like any other.
 * https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-CANCELING-REQUESTS
 */
import type { Logger } from 'pino';
import { encodeStartup } from './protocol/frontend.js';
import { connectUpstream, type UpstreamTarget } from './upstream.js';

/** Cancel requests forwarded by this process so far (a batch tells a statement timeout from a cancel). */
let forwardedCount = 0;
export function cancelsForwarded(): number {
  return forwardedCount;
}

/**
 * Client cancel pids whose cancels are dropped for now: a message whose
 * starts committed as one batch and whose answers dfgate is still relaying
 * (edge/batch.ts). On a direct connection the message has finished, and a
 * cancel that arrives then cancels nothing.
 */
const shielded = new Map<number, number>();
export function shieldCancels(pid: number): () => void {
  shielded.set(pid, (shielded.get(pid) ?? 0) + 1);
  let done = false;
  return () => {
    if (done) return;
    done = true;
    const n = (shielded.get(pid) ?? 1) - 1;
    if (n > 0) shielded.set(pid, n);
    else shielded.delete(pid);
  };
}

function keyOf(pid: number, key: Buffer): string {
  return `${pid}:${key.toString('hex')}`;
}

/** Where a cancel request with a key dfgate gave out goes at this moment (undefined: nowhere). */
export type CancelResolver = () =>
  | {
      readonly pid: number;
      readonly key: Buffer;
      readonly target: UpstreamTarget;
      /** The request reached the server (or failed): the backend may serve another client. */
      readonly done?: () => void;
    }
  | undefined;

export class CancelRegistry {
  private readonly keys = new Map<string, UpstreamTarget>();
  /** Transaction mode: keys of dfgate's own, each resolved to the backend its client holds. */
  private readonly resolvers = new Map<string, CancelResolver>();

  constructor(
    private readonly log: Logger,
    private readonly connectTimeoutMs: number,
  ) {}

  add(pid: number, key: Buffer, target: UpstreamTarget): () => void {
    const k = keyOf(pid, key);
    this.keys.set(k, target);
    return () => {
      this.keys.delete(k);
    };
  }

  /** A key dfgate gave a client (transaction mode); `resolve` names the backend to cancel. */
  addResolver(pid: number, key: Buffer, resolve: CancelResolver): () => void {
    const k = keyOf(pid, key);
    this.resolvers.set(k, resolve);
    return () => {
      this.resolvers.delete(k);
    };
  }

  get size(): number {
    return this.keys.size + this.resolvers.size;
  }

  /** Forwards a cancel request if the key is one dfgate relayed; silently ignores it otherwise. */
  async forward(pid: number, key: Buffer): Promise<boolean> {
    const k = keyOf(pid, key);
    if (shielded.has(pid) && (this.resolvers.has(k) || this.keys.has(k))) {
      this.log.debug({ pid }, 'cancel request for a message already finished ignored');
      return false;
    }
    const resolver = this.resolvers.get(k);
    if (resolver) {
      const to = resolver();
      if (!to) {
        this.log.debug({ pid }, 'cancel request for a client between transactions ignored');
        return false;
      }
      try {
        return await this.send(to.pid, to.key, to.target);
      } finally {
        to.done?.();
      }
    }
    const target = this.keys.get(k);
    if (!target) {
      this.log.debug({ pid }, 'cancel request with an unknown key ignored');
      return false;
    }
    return this.send(pid, key, target);
  }

  /**
   * Sends the request and, as libpq's PQcancel does, keeps the connection open
   * until the server closes it (it has then acted on the request), at most
   * --connect-timeout. Closing first is no help to PostgreSQL and crashes
   * PgBouncer 1.18 in front of it (`disconnect_client(): bad client state: 0`
   * on the half-close while it forwards the cancel; the chained topology in
   * docs/proxy.md).
   */
  async send(pid: number, key: Buffer, target: UpstreamTarget): Promise<boolean> {
    try {
      const up = await connectUpstream(target, this.connectTimeoutMs);
      const socket = up.socket;
      socket.on('error', () => undefined);
      const closed = new Promise<void>((resolve) => {
        const timer = setTimeout(() => socket.destroy(), this.connectTimeoutMs);
        socket.once('close', () => {
          clearTimeout(timer);
          resolve();
        });
      });
      socket.resume();
      forwardedCount++;
      socket.write(encodeStartup({ type: 'CancelRequest', pid, key }));
      this.log.info({ pid }, 'cancel request forwarded');
      await closed;
      return true;
    } catch (err) {
      this.log.warn({ pid, err: (err as Error).message }, 'could not forward a cancel request');
      return false;
    }
  }
}
