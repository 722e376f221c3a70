/**
 * Dispatching one SQL action of an instance's driver (executor.ts): the
 * step runs (sql-step.ts) while the driver goes on; its committed outcome
 * goes into the driver's cache, and its checkpoint carries what follows
 * from it when it can (carry.ts).
 */
import type { Logger } from 'pino';
import { carry, type Carried } from './carry.js';
import type { Action, CoreInput, EventKind } from './core.js';
import type { RunnerContext } from './context.js';
import { markDirty, putEvent, type DriveCache, type StoredStamp } from './drive-cache.js';
import { DEFAULT_MAX_RESULT_BYTES } from './bounded.js';
import { instanceBytesMax } from './claim-sql.js';
import { sqlStep } from './sql-step.js';
import type { RecordedEvent } from './steps.js';
import type { InstanceRow } from './store.js';

export interface SqlDispatch {
  readonly id: string;
  readonly epoch: number;
  readonly inst: InstanceRow;
  readonly a: Extract<Action, { a: 'sql' }>;
  /** The node's stamp. */
  readonly stamp: string;
  /** Under a retry policy: the attempt's status_details keys (JSON), written with its mark. */
  readonly retry?: string | undefined;
  readonly log: Logger;
  readonly cache: DriveCache;
  /** The driver's steps in flight, by activation key (this one is added by the caller). */
  readonly inFlight: Map<string, Promise<void>>;
  /** The core's input but for the events and the time. */
  readonly core: Omit<CoreInput, 'events' | 'now'>;
}

export function dispatchSql(ctx: RunnerContext, d: SqlDispatch): Promise<void> {
  const { a, cache, stamp: st, inFlight } = d;
  const stored = cache.stored as Map<string, StoredStamp>;
  const events = cache.events;
  const premark = cache.premarks.get(a.key);
  cache.premarks.delete(a.key);
  // what the attempt's mark writes: a premarked first attempt's mark carried no retry keys
  const written = d.retry && !premark ? { attempts: d.retry } : {};
  stored.set(a.node, { status: 'running', stamp: st, ...written });
  let cached = false;
  let carried: Carried | undefined;
  const after = async (result: string): Promise<string | undefined> => {
    carried = undefined;
    // another step of this instance in flight could land its outcome first
    if (inFlight.size !== 1 || !inFlight.has(a.key)) return undefined;
    // written since the last load and not in `events` (a loop's iteration summarised and its
    // events dropped, say): replaying them would carry an older iteration's stamps and marks
    if (cache.dirty) return undefined;
    // an outcome that takes the instance past what the executor holds fails it (executor.ts)
    const max = instanceBytesMax(ctx.maxResultBytes ?? DEFAULT_MAX_RESULT_BYTES);
    if (cache.held + Buffer.byteLength(result) > max) return undefined;
    // stamps still on their way could land after the checkpoint's own and undo them
    const pending = cache.stamps;
    if (pending) {
      try {
        await pending;
      } catch {
        return undefined;
      }
      if (cache.stamps !== pending) return undefined;
    }
    carried = carry({ core: d.core, events, stored, key: a.key, node: a.node, stamp: st, result });
    return carried?.json;
  };
  // the checkpoint writes the node's final status and stamp: nothing left for writeStamps
  const recorded = (status: 'completed' | 'failed', event: RecordedEvent | undefined): void => {
    stored.set(a.node, { status, stamp: st });
    if (status === 'completed' && carried) {
      for (const [node, s] of carried.stored) stored.set(node, s);
      for (const [key, p] of carried.premarks) cache.premarks.set(key, p);
      if (carried.finishes) cache.finished = true;
    }
    carried = undefined;
    if (!event) return;
    // the committed event, as the next load would read it (lastSeq stays: a load still
    // reads every event after it, including any written elsewhere meanwhile)
    const kind: EventKind = status === 'completed' ? 'done' : 'failed';
    putEvent(cache, a.key, { seq: event.seq, kind, detail: event.detail });
    cached = true;
    cache.fresh = true;
  };
  return sqlStep(ctx, d.id, d.epoch, d.inst, a, st, d.log, {
    recorded,
    after,
    ...(premark ? { premark } : {}),
    ...(d.retry ? { retry: d.retry } : {}),
  }).finally(() => {
    inFlight.delete(a.key);
    if (!cached) markDirty(cache);
  });
}
