/**
 * What a SQL step's checkpoint carries (migration 0020, docs/executor.md
 * "What a step costs"). The step's result is known before its checkpoint is
 * sent, and the core is deterministic, so the driver works out what the
 * committed outcome leads to and hands it to the checkpoint: the node stamps
 * that change, the attempt marks of the SQL steps that start next, or the
 * instance's completion. They commit with the step's effect or not at all;
 * whatever is not carried is written afterwards as before.
 *
 * Only when the step is the instance's one step in flight (no other outcome
 * can land between this one and the checkpoint), and only for a completed
 * step whose consequences are plain: the workflow completes, or SQL steps
 * start next (not under a retry policy: a carried mark writes no retry keys).
 * A failure (retries, on_failure), timers, signals, HTTP steps
 * and loop summaries are left to the driver.
 */
import { runCore, type CoreInput, type EventKind, type StoredEvent } from './core.js';
import { stampRows, type StoredStamp } from './drive-cache.js';
import { newToken, tokenHash } from './token.js';

/** A next step's attempt, already marked by the checkpoint that carried it. */
export interface Premark {
  readonly token: string;
  readonly stamp: string;
  readonly attempt: number;
}

export interface Carried {
  /** The checkpoint's p_after (JSON text). */
  readonly json: string;
  /** The node stamps as the database holds them once the checkpoint commits. */
  readonly stored: ReadonlyMap<string, StoredStamp>;
  /** The marked next attempts, by activation key. */
  readonly premarks: ReadonlyMap<string, Premark>;
  /** The checkpoint completes the instance. */
  readonly finishes: boolean;
}

export interface CarryInput {
  readonly core: Omit<CoreInput, 'events' | 'now'>;
  readonly events: ReadonlyMap<string, ReadonlyMap<EventKind, StoredEvent>>;
  readonly stored: ReadonlyMap<string, StoredStamp>;
  /** The step: its activation key, node and stamp, and its result. */
  readonly key: string;
  readonly node: string;
  readonly stamp: string;
  readonly result: string;
}

/** What the checkpoint of a completed step carries, or undefined when the driver should decide afterwards. */
export function carry(input: CarryInput): Carried | undefined {
  let seq = 0;
  for (const m of input.events.values()) for (const e of m.values()) seq = Math.max(seq, e.seq);
  const events = new Map(input.events);
  const own = new Map(input.events.get(input.key) ?? []);
  own.set('done', { seq: seq + 1, kind: 'done', detail: { result: input.result } });
  events.set(input.key, own);
  const core = runCore({ ...input.core, events, now: new Date() });
  if (core.obsolete.length > 0 || core.outcome.k === 'failed') return undefined;
  const after: { stamps?: unknown[]; marks?: unknown[]; finish?: { output: string | null } } = {};
  const premarks = new Map<string, Premark>();
  const stored = new Map(input.stored);
  stored.set(input.node, { status: 'completed', stamp: input.stamp });
  // the step's own node is written by the checkpoint; a stamp of it differs only in what a
  // retry policy adds (the attempt, the last error), and then it is carried too
  const starting = new Set<string>();
  if (core.outcome.k === 'done') after.finish = { output: core.outcome.result };
  else {
    const next = core.actions.flatMap((a) => (a.a === 'sql' && a.key !== input.key ? [a] : []));
    if (next.length === 0 || next.length !== core.actions.length) return undefined;
    // under a retry policy the driver marks them: its mark writes the attempt's status_details keys
    if (input.core.retry) return undefined;
    const marks: unknown[] = [];
    for (const a of next) {
      const stamp = core.stamps.get(a.node)?.stamp ?? `${input.core.instanceId}::1`;
      const token = newToken();
      premarks.set(a.key, { token, stamp, attempt: a.attempt });
      marks.push({
        node: a.node,
        activation: a.key,
        token_hash: tokenHash(token),
        stamp,
        attempt: a.attempt,
      });
      stored.set(a.node, { status: 'running', stamp });
      starting.add(a.node);
    }
    after.marks = marks;
  }
  const rows = stampRows(core.stamps, stored, starting);
  if (rows)
    after.stamps = rows.ids.map((id, i) => ({
      id,
      status: rows.statuses[i],
      result: rows.results[i],
      stamp: rows.stamps[i],
      extra: rows.extra[i],
    }));
  return { json: JSON.stringify(after), stored, premarks, finishes: after.finish !== undefined };
}
