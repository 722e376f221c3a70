/**
 * What an instance's driver keeps while it holds the lease: the events it has
 * seen, the node stamps as last written (written in the background, in
 * order), and the instance's retry policy.
 */
import type { RetryPolicy, Stamp, EventKind, StoredEvent } from './core.js';
import type { ControlStore, InstanceRow, LoadedInstance, StampRows } from './store.js';
import type { Premark } from './carry.js';

export /** A node's stamp as last written (`attempts`: the status_details retry keys this driver wrote). */
interface StoredStamp {
  status: string;
  stamp: string | null;
  attempts?: string;
}

export /** The retry policy in an instance's options (undefined: one attempt). */
function retryPolicy(options: Record<string, unknown> | null): RetryPolicy | undefined {
  const max = Number(options?.['max_attempts'] ?? 1);
  if (!Number.isInteger(max) || max <= 1) return undefined;
  const secs = Number(options?.['max_backoff_seconds']);
  return { maxAttempts: max, maxBackoffMs: Number.isFinite(secs) && secs > 0 ? secs * 1000 : null };
}

export /** What a driver keeps between ticks while it holds an instance's lease (nobody else writes these meanwhile). */
interface DriveCache {
  readonly events: Map<string, Map<EventKind, StoredEvent>>;
  lastSeq: number;
  stored: Map<string, StoredStamp> | undefined;
  /** The instance as last loaded. */
  inst: InstanceRow | undefined;
  /** A step's checkpoint committed and its event was put into `events` (not re-read from the database). */
  fresh: boolean;
  /**
   * Something was written since the last load that `events` does not hold
   * (an executor-side event, an HTTP outcome, a step that ended without a
   * cached event): the next tick loads.
   */
  dirty: boolean;
  /** Node stamps being written (not awaited before dispatching steps; awaited before finishing or parking). */
  stamps: Promise<void> | undefined;
  /** Next attempts a committed checkpoint already marked (carry.ts), by activation key. */
  premarks: Map<string, Premark>;
  /** A committed checkpoint completed the instance (carry.ts). */
  finished: boolean;
}

/**
 * Writes the changed stamps in the background, after any earlier write
 * (so they land in order); flushStamps awaits them and throws their error.
 */
export function queueStamps(
  store: ControlStore,
  id: string,
  cache: DriveCache,
  stamps: ReadonlyMap<string, Stamp>,
  skip: ReadonlySet<string>,
): void {
  const prev = cache.stamps ?? Promise.resolve();
  const stored = cache.stored as Map<string, StoredStamp>;
  const write = stampRows(stamps, stored, skip);
  if (!write) return;
  const p = prev.then(() => store.writeStamps(id, write));
  p.catch(() => undefined); // handled: the error is thrown by flushStamps
  cache.stamps = p;
}

export async function flushStamps(cache: DriveCache): Promise<void> {
  const p = cache.stamps;
  cache.stamps = undefined;
  if (p) await p;
}

/** The stamps that differ from what the database holds (and marks them held in `stored`). */
export function stampRows(
  stamps: ReadonlyMap<string, Stamp>,
  stored: Map<string, StoredStamp>,
  skip: ReadonlySet<string>,
): StampRows | undefined {
  const ids: string[] = [];
  const statuses: string[] = [];
  const results: Array<string | null> = [];
  const st: string[] = [];
  const extra: Array<string | null> = [];
  for (const [node, s] of stamps) {
    if (skip.has(node)) continue;
    const cur = stored.get(node);
    const attempts = s.attempts ? JSON.stringify(s.attempts) : undefined;
    if (cur && cur.status === s.status && cur.stamp === s.stamp && cur.attempts === attempts)
      continue;
    ids.push(node);
    statuses.push(s.status);
    // results are stored through jsonb (spec §6.15): JSON text as is, other text as a JSON string
    results.push(
      s.result === null ? null : s.status === 'failed' ? JSON.stringify(s.result) : s.result,
    );
    st.push(s.stamp);
    extra.push(attempts ?? null);
    stored.set(node, { status: s.status, stamp: s.stamp, ...(attempts ? { attempts } : {}) });
  }
  if (ids.length === 0) return undefined;
  // a leaf under a retry policy also shows its attempt, the last error and the next
  // attempt's time in status_details, and its attempt number in df.nodes.attempts
  return { ids, statuses, results, stamps: st, extra };
}

/**
 * Whether a claim's answer holds every event of the instance. The claim's
 * UPDATE returns the row as it locked it, but reads the events as of the
 * statement's start: an instance that a due-timer batch (timers.ts) fired
 * and made ready in between is locked in its new state with the events from
 * before (READ COMMITTED re-checks the locked row, not the subqueries). Its
 * latest event is numbered event_seq (events are deleted only below an
 * `iter` summary, which stays), so a read that lacks it is stale.
 */
export function claimReadIsCurrent(inst: LoadedInstance): boolean {
  let last = 0;
  for (const e of inst.events) last = Math.max(last, Number(e.s));
  return last === Number(inst.event_seq);
}

/** Takes a load's new events and (first load) node statuses into the cache. */
export function remember(cache: DriveCache, inst: LoadedInstance): void {
  for (const e of inst.events) {
    let m = cache.events.get(e.a);
    if (!m) cache.events.set(e.a, (m = new Map()));
    m.set(e.k, { seq: Number(e.s), kind: e.k, detail: e.d });
    cache.lastSeq = Math.max(cache.lastSeq, Number(e.s));
  }
  if (inst.nodes)
    cache.stored = new Map(inst.nodes.map((n) => [n.id, { status: n.st, stamp: n.sd }]));
}
