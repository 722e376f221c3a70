/**
 * Due timers in batches (docs/executor.md, "Due timers in batches"; issue 12
 * item 7). A timer used to fire only when its instance was claimed and
 * driven, so 10,000 timers due at one instant fired no faster than the
 * executor ran their next steps. Here, a batch locks a fair share of the due
 * parked instances, replays each with the deterministic core exactly as the
 * driver would, and in one statement records the `done` event of every
 * timer the core finds due and makes the instances ready for the ordinary
 * claim, which then runs their next steps as slots and leases allow.
 *
 * Also the executor's one wake-up timer for the earliest parked wake_at it
 * knows of.
 */
import type { Logger } from 'pino';
import { runCore, type EventKind, type StoredEvent } from './core.js';
import { retryPolicy } from './drive-cache.js';
import { buildGraph } from './graph.js';
import { nextCron } from './options.js';
import { unrunnable } from './claim-sql.js';
import type {
  DueInstance,
  MadeReady,
  ReadyInstance,
  TimerFire,
  TimerStore,
} from './timer-store.js';

/** Instances locked and fired per batch (one transaction) by default. */
export const DEFAULT_TIMER_BATCH = 500;

export interface DueTimerOptions {
  readonly log: Logger;
  /** Instances per batch. */
  readonly batch: number;
  /** How long a batch's transaction may sit idle before PostgreSQL ends it (the lease length). */
  readonly stallMs: number;
  readonly maxLoopIterations: number;
  /** Instances a batch made ready (their timers fired): the claim should look for them. */
  readonly onReady: (ready: readonly MadeReady[]) => void;
  /** A wake-up timer fired: look for work (the general claim). */
  readonly onDue: () => void;
  /** The earliest future wake_at of a parked instance (the next wake-up), or null. */
  readonly nextWakeAt: () => Promise<Date | null>;
}

/** What one batch did. */
export interface BatchOutcome {
  /** Due instances it locked (fewer than the batch size: fewer are due, or others hold them). */
  readonly locked: number;
  readonly ready: readonly MadeReady[];
  /** Timers whose `done` event it recorded. */
  readonly fired: number;
}

/**
 * The timers of one locked instance that the driver would fire now: the
 * core's armed timer actions due at `now`, in the core's order (the order
 * in which the driver records them). None when the driver would do
 * something else first: the instance is finished by its events, its role is
 * gone or a superuser, or its variables too large (the driver fails it), or its graph cannot be
 * replayed, or its graph and events are too large to come with the batch (the driver reads them).
 */
export function dueTimers(row: DueInstance, now: Date, maxLoopIterations: number): TimerFire[] {
  if (unrunnable(row.id, row) !== undefined || row.rolsuper !== false || !row.graph || !row.events)
    return [];
  const events = new Map<string, Map<EventKind, StoredEvent>>();
  for (const e of row.events) {
    let m = events.get(e.a);
    if (!m) events.set(e.a, (m = new Map()));
    m.set(e.k, { seq: Number(e.s), kind: e.k, detail: e.d });
  }
  const retry = retryPolicy(row.options);
  let core;
  try {
    core = runCore({
      graph: buildGraph(row.root_node, row.graph),
      instanceId: row.id,
      label: row.label,
      vars: row.vars,
      events,
      now,
      maxLoopIterations,
      nextCron,
      ...(retry ? { retry } : {}),
    });
  } catch {
    return []; // the driver reports it
  }
  if (core.outcome.k !== 'blocked') return [];
  const out: TimerFire[] = [];
  for (const a of core.actions)
    if (a.a === 'timer' && a.armed && a.at.getTime() <= now.getTime())
      out.push({ key: a.key, node: a.node, result: a.result });
  return out;
}

export class DueTimers {
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  /** The one timer for the earliest wake_at this process knows of. */
  private nextWake: { at: number; timer: NodeJS.Timeout } | undefined;

  constructor(
    private readonly store: TimerStore,
    private readonly opts: DueTimerOptions,
  ) {}

  /**
   * Fires what is due: batch after batch until one finds nothing left to
   * take, one run at a time (a kick during a run starts another after it). A
   * run that finds nothing due costs one cheap read.
   */
  kick(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.run().finally(() => {
      this.running = undefined;
      if (this.again) {
        this.again = false;
        this.kick();
      }
    });
  }

  private async run(): Promise<void> {
    try {
      if (!(await this.store.anyDue())) return;
      while (!this.stopped) {
        const b = await this.fireBatch();
        // a batch short of its size may only mean that claims held some of the due ones
        if (b.ready.length === 0) return;
        this.opts.onReady(b.ready);
      }
    } catch (err) {
      // the claim's due source still takes them one by one; the next kick tries again
      this.opts.log.warn({ err: (err as Error).message }, 'due timer batch failed');
    }
  }

  /** One batch: lock, read, replay, fire, commit. */
  async fireBatch(): Promise<BatchOutcome> {
    return await this.store.batch(this.opts.stallMs, async (c) => {
      const ids = await this.store.lockDue(c, this.opts.batch);
      if (ids.length === 0) return { locked: 0, ready: [], fired: 0 };
      const rows = await this.store.readDue(c, ids);
      const plan: ReadyInstance[] = rows.map((row) => {
        // due by the database's clock (the lock's test) or by this process's
        const now = new Date(Math.max(Date.now(), new Date(row.read_at).getTime()));
        return {
          id: row.id,
          epoch: String(row.lease_epoch),
          seq: String(row.event_seq),
          timers: dueTimers(row, now, this.opts.maxLoopIterations),
        };
      });
      const ready = await this.store.fire(c, plan);
      const fired = ready.reduce((n, r) => n + r.fired, 0);
      return { locked: ids.length, ready, fired };
    });
  }

  /**
   * A parked timer or retry backoff due soon is acted on when due, not at
   * the next poll after it (a hint only: any executor may take it then). One
   * timer for the earliest due time this process knows of, never one per
   * instance; when it fires, the next one comes from the wake_at index.
   */
  wakeAt(at: Date): void {
    const due = at.getTime();
    if (this.stopped || due - Date.now() > 600_000) return;
    if (this.nextWake && this.nextWake.at <= due) return;
    if (this.nextWake) clearTimeout(this.nextWake.timer);
    const timer = setTimeout(
      () => {
        this.nextWake = undefined;
        this.kick();
        this.opts.onDue();
        this.opts.nextWakeAt().then(
          (next) => next && this.wakeAt(next),
          () => undefined, // the poll is the safety net
        );
      },
      Math.max(0, due - Date.now()) + 5,
    );
    timer.unref();
    this.nextWake = { at: due, timer };
  }

  /** No further batch starts; waits for the one under way. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.nextWake) clearTimeout(this.nextWake.timer);
    this.nextWake = undefined;
    await this.running;
  }
}
