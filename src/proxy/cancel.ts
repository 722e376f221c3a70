/**
 * Cancel keys dfgate has relayed. BackendKeyData passes through unchanged, so
 * a client's CancelRequest carries the upstream's own key; it is forwarded
 * only when dfgate relayed that key (never to an arbitrary backend: dfgate is
 * no cancel-key oracle), over a fresh connection negotiated like any other.
 * https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-CANCELING-REQUESTS
 */
import type { Logger } from 'pino';
import { encodeStartup } from './protocol/frontend.js';
import { connectUpstream, type UpstreamTarget } from './upstream.js';

function keyOf(pid: number, key: Buffer): string {
  return `${pid}:${key.toString('hex')}`;
}

export class CancelRegistry {
  private readonly keys = new Map<string, UpstreamTarget>();

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

  get size(): number {
    return this.keys.size;
  }

  /** Forwards a cancel request if the key is one dfgate relayed; silently ignores it otherwise. */
  async forward(pid: number, key: Buffer): Promise<boolean> {
    const target = this.keys.get(keyOf(pid, key));
    if (!target) {
      this.log.debug({ pid }, 'cancel request with an unknown key ignored');
      return false;
    }
    try {
      const up = await connectUpstream(target, this.connectTimeoutMs);
      up.socket.end(encodeStartup({ type: 'CancelRequest', pid, key }));
      up.socket.resume();
      up.socket.on('error', () => undefined);
      this.log.info({ pid }, 'cancel request forwarded');
      return true;
    } catch (err) {
      this.log.warn({ pid, err: (err as Error).message }, 'could not forward a cancel request');
      return false;
    }
  }
}
