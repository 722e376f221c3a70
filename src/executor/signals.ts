/** Signal delivery (spec §6.9, DESIGN.md §5 Q1). */
import type { Action } from './core.js';
import { compactJson } from './encode.js';
import type { ControlStore } from './store.js';

/**
 * A signal reaches every wait pending for its name; each wait takes the
 * oldest unconsumed one. Waits whose timeout passed get a timed-out result.
 * One transaction; true when any wait got an outcome.
 */
export async function deliverSignals(
  store: ControlStore,
  id: string,
  epoch: number,
  waits: ReadonlyMap<string, ReadonlyArray<Extract<Action, { a: 'signal' }>>>,
  now: Date,
): Promise<boolean> {
  return await store.transaction(async (c) => {
    let delivered = false;
    for (const [name, list] of waits) {
      const sig = await store.takeSignal(c, id, name);
      if (sig) {
        const data = sig.payload_text;
        for (const w of list) {
          const result = `{"signal_name":${JSON.stringify(name)},"timed_out":false,"data":${compactJson(data)}}`;
          await store.recordEvent(id, epoch, w, 'done', { result }, c);
        }
        await store.consumeSignal(c, sig.id, list[0]?.node ?? null);
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
