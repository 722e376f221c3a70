/**
 * Born claims handed over in the start's own answer (docs/executor.md, "The
 * wake path"): a plain `SELECT df.start(...)` sent on its own, outside a
 * transaction block, and born leased to this process's executor calls the
 * five-argument df._start_rows, which raises the claim (the instance as the
 * executor reads it) as a NOTICE naming a nonce drawn here. That notice is
 * kept from the client and handed to the executor with the commit's wake, so
 * the executor needs no read of its own before the first step.
 *
 * Only a notice naming the nonce of the start being answered is taken; any
 * other notice, whatever it says, goes to the client unchanged. The nonce is
 * never sent to the client.
 *
 * A claim is handed over only while at least half of its lease is left: a
 * commit that comes later than that (a synchronous standby that lags, a
 * stalled client) hands over nothing, and the executor reads the instance
 * instead, which finds it only while its lease holds (an expired lease is
 * any executor's to claim). The time counts from the call's arming, before
 * the start was sent, so it never counts short.
 */
import { randomBytes } from 'node:crypto';
import { decodeErrorFields } from '../protocol/backend.js';

const PREFIX = 'dfgate born claim ';
/** A claim larger than this is not taken (the executor reads the instance instead). */
const CLAIM_CHARS_MAX = 256 * 1024;

export class BornClaims {
  /** The nonce of the leased start being answered. */
  private nonce: string | undefined;
  /** When a claim of the armed start stops being handed over (performance.now()). */
  private until = 0;
  /** Claims taken in the current transaction, by instance id: JSON text, handed over until. */
  private readonly claims = new Map<string, { json: string; until: number }>();

  /** A nonce for the next leased start's call, whose lease lasts `leaseMs`. */
  arm(leaseMs: number): string {
    this.nonce = randomBytes(12).toString('hex');
    this.until = performance.now() + leaseMs / 2;
    return this.nonce;
  }

  /** Anything armed or taken (a server error need not call take() otherwise). */
  get holding(): boolean {
    return this.nonce !== undefined || this.claims.size > 0;
  }

  /** A notice from the server could be the answer's claim. */
  get armed(): boolean {
    return this.nonce !== undefined;
  }

  /** The start's answer is over: a claim not seen by now is not taken. */
  disarm(): void {
    this.nonce = undefined;
  }

  /**
   * A server NoticeResponse: true when it was the armed start's claim (taken,
   * not for the client). `cut`: only its first bytes were seen (a notice too
   * long to inspect whole), so it is no claim and goes to the client unchanged.
   */
  notice(body: Buffer, cut = false): boolean {
    const nonce = this.nonce;
    if (nonce === undefined || cut || body.length > CLAIM_CHARS_MAX) return false;
    const m = decodeErrorFields(body).get('M') ?? '';
    const head = `${PREFIX}${nonce} `;
    if (!m.startsWith(head)) return false;
    this.nonce = undefined;
    const json = m.slice(head.length);
    const id = /^\{"id" : "([0-9a-f]{8})"/.exec(json)?.[1];
    if (id !== undefined) this.claims.set(id, { json, until: this.until });
    return true;
  }

  /**
   * The claims of `ids` (as JSON text) taken since the last call, while half
   * of their lease is left; the rest are forgotten.
   */
  take(ids: readonly string[], now = performance.now()): string[] {
    const out: string[] = [];
    for (const id of ids) {
      const c = this.claims.get(id);
      if (c !== undefined && now < c.until) out.push(c.json);
    }
    this.claims.clear();
    this.nonce = undefined;
    return out;
  }
}
