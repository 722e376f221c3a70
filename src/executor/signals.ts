/** Signal delivery (spec §6.9, DESIGN.md §5 Q1). */
import type pg from 'pg';
import type { Action } from './core.js';
import { compactJson } from './encode.js';
import { DEFAULT_MAX_RESULT_BYTES } from './bounded.js';
import type { RunnerContext } from './context.js';

/**
 * The oldest unconsumed signal of that name, locked, with its payload's size
 * and, when it fits in `maxBytes`, its text: the payload is a tenant's and
 * may be far larger than the process should hold (docs/executor.md,
 * "Result size"), so an oversized one is never read into memory. The inner
 * query picks the row before any payload is converted.
 */
const TAKE_SIGNAL = `SELECT s.id, octet_length(t.x) AS bytes, CASE WHEN octet_length(t.x) <= $3 THEN t.x END AS payload_text
   FROM (SELECT id FROM df.signals WHERE instance_id = $1 AND signal_name = $2 AND consumed_at IS NULL
          ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) l
   JOIN df.signals s ON s.id = l.id
  CROSS JOIN LATERAL (SELECT s.payload::text AS x OFFSET 0) t`;

interface Taken {
  readonly id: string;
  readonly bytes: number;
  readonly payload_text: string | null;
}

/** Why a wait failed on a signal whose data passed the limit. */
export function signalTooLarge(name: string, bytes: number, cap: number): string {
  return `signal '${name}' carries ${bytes} bytes of data, more than the limit of ${cap} bytes; the signal was consumed and the wait failed (raise the limit with dfgate --max-result-bytes, DFGATE_MAX_RESULT_BYTES)`;
}

/**
 * A signal reaches every wait pending for its name; each wait takes the
 * oldest unconsumed one. Waits whose timeout passed get a timed-out result.
 * A signal whose data is larger than the result limit (--max-result-bytes) fails the waits it reaches
 * (and is consumed, so it cannot fail them again). One transaction; true
 * when any wait got an outcome.
 */
export async function deliverSignals(
  ctx: Pick<RunnerContext, 'store' | 'maxResultBytes'>,
  id: string,
  epoch: number,
  waits: ReadonlyMap<string, ReadonlyArray<Extract<Action, { a: 'signal' }>>>,
  now: Date,
): Promise<boolean> {
  const { store } = ctx;
  const maxBytes = ctx.maxResultBytes ?? DEFAULT_MAX_RESULT_BYTES;
  return await store.transaction(async (c) => {
    let delivered = false;
    for (const [name, list] of waits) {
      const sig = (await c.query<Taken>(TAKE_SIGNAL, [id, name, maxBytes])).rows[0];
      if (sig) {
        const data = sig.payload_text;
        for (const w of list) {
          if (data === null)
            await store.recordEvent(
              id,
              epoch,
              w,
              'failed',
              {
                error: signalTooLarge(name, Number(sig.bytes), maxBytes),
              },
              c,
            );
          else {
            const result = `{"signal_name":${JSON.stringify(name)},"timed_out":false,"data":${compactJson(data)}}`;
            await store.recordEvent(id, epoch, w, 'done', { result }, c);
          }
        }
        await consumeSignal(c, sig.id, list[0]?.node ?? null);
        delivered = true;
      } else {
        for (const w of list) {
          if (w.timeoutAt && w.timeoutAt.getTime() <= now.getTime()) {
            const result = `{"signal_name":${JSON.stringify(name)},"timed_out":true,"data":null}`;
            await store.recordEvent(id, epoch, w, 'done', { result }, c);
            delivered = true;
          }
        }
      }
    }
    return delivered;
  });
}

async function consumeSignal(
  c: pg.ClientBase,
  signalId: string,
  node: string | null,
): Promise<void> {
  await c.query(`UPDATE df.signals SET consumed_at = now(), consumed_by = $2 WHERE id = $1`, [
    signalId,
    node,
  ]);
}
