/**
 * What an instance's driver keeps while it holds the lease: the events it has
 * seen, the node stamps as last written (written in the background, in
 * order), and the instance's retry policy.
 */
import type { RetryPolicy, Stamp, EventKind, StoredEvent } from './core.js';
import type { ControlStore, InstanceRow, LoadedInstance, StampRows } from './store.js';
import type { Premark } from './carry.js';
import { instanceTooLarge } from './claim-sql.js';
import { buildGraph, type Graph } from './graph.js';

export /** A node's stamp as last written (`attempts`: the status_details retry keys this driver wrote). */
interface StoredStamp {
  status: string;
  stamp: string | null;
  attempts?: string;
}

export /** The retry policy in an instance's options (undefined: one attempt). */
function retryPolicy(options: Record<string, unknown> | null): RetryPolicy | undefined {
  const given = Number(options?.['max_attempts'] ?? 1);
  // df.start takes any positive integer: one past what a double holds reads as Infinity
  const max = given === Infinity ? Number.MAX_SAFE_INTEGER : given;
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
  /** How many times `dirty` was set (markDirty): a load clears it only if nothing was written meanwhile. */
  writes: number;
  /** Node stamps being written (not awaited before dispatching steps; awaited before finishing or parking). */
  stamps: Promise<void> | undefined;
  /** Next attempts a committed checkpoint already marked (carry.ts), by activation key. */
  premarks: Map<string, Premark>;
  /** A committed checkpoint completed the instance (carry.ts). */
  finished: boolean;
  /** Bytes of the graph's step texts and of `events` held (claim-sql.ts, instanceBytesMax). */
  held: number;
  /** Set when a load found the instance too large to read: what it takes, in bytes. */
  unread?: number;
}

/** The cache of a driver that starts now; `first`: the first step its claim marked (claim-sql.ts). */
export function newDriveCache(first?: Premark & { readonly key: string }): DriveCache {
  return {
    events: new Map(),
    lastSeq: 0,
    stored: undefined,
    inst: undefined,
    fresh: false,
    dirty: false,
    writes: 0,
    stamps: undefined,
    premarks: new Map(first ? [[first.key, first]] : []),
    finished: false,
    held: 0,
  };
}

/** Bytes an event's detail holds: its strings as UTF-8, 8 per other value. */
export function detailBytes(v: unknown): number {
  if (typeof v === 'string') return Buffer.byteLength(v);
  if (Array.isArray(v)) return v.reduce((n: number, x) => n + detailBytes(x), 8);
  if (typeof v === 'object' && v !== null)
    return Object.entries(v).reduce((n, [k, x]) => n + k.length + detailBytes(x), 8);
  return 8;
}

/** Something was written that `events` does not hold: the next tick loads, and nothing is carried till then. */
export function markDirty(cache: DriveCache): void {
  cache.dirty = true;
  cache.writes++;
}

/** Puts an event into the cache (replacing the one of its key and kind), counting what it holds. */
export function putEvent(cache: DriveCache, key: string, ev: StoredEvent): void {
  let m = cache.events.get(key);
  if (!m) cache.events.set(key, (m = new Map()));
  const old = m.get(ev.kind);
  if (old) cache.held -= detailBytes(old.detail);
  m.set(ev.kind, ev);
  cache.held += detailBytes(ev.detail);
}

/** Drops the events under the given activation-key prefixes (loop iterations summarised). */
export function dropEvents(cache: DriveCache, prefixes: readonly string[]): void {
  for (const [key, m] of [...cache.events])
    if (prefixes.some((p) => key.startsWith(p))) {
      for (const e of m.values()) cache.held -= detailBytes(e.detail);
      cache.events.delete(key);
    }
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
  // too large to come with the claim: read on its own
  if (inst.events === null || inst.graph === null) return false;
  let last = 0;
  for (const e of inst.events) last = Math.max(last, Number(e.s));
  return last === Number(inst.event_seq);
}

/** Takes a load's new events and (first load) node statuses into the cache. */
export function remember(cache: DriveCache, inst: LoadedInstance): void {
  for (const e of inst.events ?? []) {
    putEvent(cache, e.a, { seq: Number(e.s), kind: e.k, detail: e.d });
    cache.lastSeq = Math.max(cache.lastSeq, Number(e.s));
  }
  if (inst.nodes)
    cache.stored = new Map(inst.nodes.map((n) => [n.id, { status: n.st, stamp: n.sd }]));
}

/**
 * The instance as stored now, or as the claim returned it (`claimed`, the
 * first time), taken into the cache; the graph comes with the first load (one
 * round trip) and is kept in `graphs` while the lease is held. What the
 * instance takes beyond `max` bytes is not read (`unread`, see tooLarge).
 */
export async function loadInstance(
  store: ControlStore,
  graphs: Map<string, Graph>,
  id: string,
  cache: DriveCache,
  max: number,
  claimed?: LoadedInstance,
): Promise<InstanceRow | undefined> {
  // a claim's answer that lacks events committed while it ran (or was too large) is read again
  const wantGraph = !graphs.has(id);
  const inst =
    (claimed && claimReadIsCurrent(claimed) ? claimed : undefined) ??
    (await store.load(id, cache.lastSeq, cache.stored === undefined, wantGraph, max - cache.held));
  if (!inst) return undefined;
  remember(cache, inst);
  if (inst.events === null || (wantGraph && inst.graph === null)) {
    // not read: what it takes (nothing else writes its events while this lease holds)
    cache.unread = cache.held + (await store.instanceBytes(id, cache.lastSeq, wantGraph));
    return inst;
  }
  if (wantGraph) {
    graphs.set(id, buildGraph(inst.root_node, inst.graph ?? []));
    for (const n of inst.graph ?? []) cache.held += Buffer.byteLength(n.query ?? '');
  }
  return inst;
}

/** Why the driver fails an instance that takes more than `max` bytes (its graph and outcomes), or undefined. */
export function tooLarge(id: string, cache: DriveCache, max: number): string | undefined {
  if (cache.unread !== undefined) return instanceTooLarge(id, Math.max(cache.unread, max + 1), max);
  return cache.held > max ? instanceTooLarge(id, cache.held, max) : undefined;
}
