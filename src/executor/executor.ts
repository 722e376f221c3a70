/**
 * The executor (DESIGN.md §4): claims runnable committed instances under a
 * lease with an epoch, replays each with the deterministic core, performs the
 * actions it asks for (SQL steps on step connections, timers, signal
 * deliveries, loop summaries), writes node stamps, and parks or finishes the
 * instance. Any number of executors may run against one database; they
 * coordinate only through row locks, leases and epochs.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import type { Logger } from 'pino';
import type { StartNewRequest } from '../contract/start-new.js';
import type { Lease, Started } from '../contract/started.js';
import { metrics } from '../metrics.js';
import type { RunnerContext } from './context.js';
import { tryCore, type Action, type RetryPolicy } from './core.js';
import {
  dropEvents,
  markDirty,
  flushStamps,
  loadInstance,
  queueStamps,
  retryPolicy,
  tooLarge,
  newDriveCache,
} from './drive-cache.js';
import type { Graph } from './graph.js';
import { httpStep } from './http-step.js';
import { Retention } from './retention.js';
import { deliverSignals } from './signals.js';
import { FairSlots } from './slots.js';
import { startOnFailure } from './on-failure.js';
import { dispatchSql } from './sql-dispatch.js';
import { Naps } from './naps.js';
import { ChangeNotices } from './notices.js';
import { loadParser, planAhead, stepTextMax } from './sqlcheck.js';
import { StartNew } from './start-new.js';
import { StepPool } from './steps.js';
import { claimKind, toClaim, WakeRequests } from './wake-requests.js';
import { Adoption } from './adopt.js';
import { WakeListener } from './listen.js';
import { cancelStepsOf, renewHeld } from './leases.js';
import { TimerStore } from './timer-store.js';
import { DEFAULT_TIMER_BATCH, DueTimers } from './timers.js';
import { controlPools, nextCron, requirePrimary } from './options.js';
import { instanceBytesMax, unrunnable } from './claim-sql.js';
import { DEFAULT_MAX_RESULT_BYTES } from './bounded.js';
import type { ControlPools, ExecutorOptions } from './options.js';
import { ControlStore, type LoadedInstance } from './store.js';
import { TableStatistics } from './statistics.js';

export type { ExecutorOptions } from './options.js';

export class Executor {
  readonly owner = `${process.pid}-${randomBytes(4).toString('hex')}`;
  private readonly control: pg.Pool;
  private readonly pools: ControlPools;
  private readonly steps: StepPool;
  private readonly slots: FairSlots;
  private readonly listener: WakeListener;
  private readonly active = new Map<
    string,
    { epoch: number; stepPids: Set<number>; role: number }
  >();
  private stopping = false;
  /** Ends every pending nap() (on stop). */
  private readonly naps = new Naps();
  private pumping = false;
  /** What the next claim looks for: everything ready, or instances named by their start's commit. */
  private readonly requests = new WakeRequests();
  /** The last claim may have left ready instances behind (it took all it could, or failed). */
  private backlog = true;
  private timer: NodeJS.Timeout | undefined;
  /** Due timers fired in batches, and the wake-up timer for the earliest known wake_at. */
  private readonly timers: DueTimers;
  private heartbeat: NodeJS.Timeout | undefined;
  private readonly graphs = new Map<string, Graph>();
  /** What the executor holds for one instance, in bytes (claim-sql.ts, instanceBytesMax). */
  private readonly instanceMax: number;
  /** The longest step text this executor runs, and so the longest substitution builds. */
  private readonly textMax: number;
  /** Claimed anew while the driver of an older lease was still ending: run when it has ended. */
  private readonly successors = new Map<string, LoadedInstance>();
  private readonly log: Logger;
  private readonly finished = new Set<Promise<void>>();
  private readonly store: ControlStore;
  private readonly statistics: TableStatistics;
  private readonly retention: Retention;
  private readonly notices: ChangeNotices;
  private readonly starter: StartNew;
  private readonly adoption: Adoption;
  /** Leases kept for roles that hold none here (the claim's reserve). */
  private readonly reserve: number;
  /** The capacity of the claim on its way (0: none). */
  private claiming = 0;
  private readonly ctx: RunnerContext;
  /** start() ran: only then does the executor claim instances. */
  private started = false;

  constructor(private readonly opts: ExecutorOptions) {
    this.log = opts.log;
    this.control = (this.pools = controlPools(opts.controlUrl, this.log)).control;
    this.steps = new StepPool(
      {
        controlUrl: opts.controlUrl,
        auth: opts.stepAuth,
        secret: opts.stepSecret,
        maxIdle: Math.max(8, opts.maxConcurrentSteps),
        log: this.log,
      },
      this.control,
    );
    this.slots = new FairSlots({
      slots: opts.maxConcurrentSteps,
      reserve: opts.slotReserve ?? 1,
      perRoleCap: opts.maxStepsPerRole ?? 0,
      timeoutMs: opts.slotTimeoutMs ?? 30_000,
    });
    this.store = new ControlStore(this.pools, this.owner, opts.leaseMs);
    this.instanceMax = instanceBytesMax(opts.maxResultBytes ?? DEFAULT_MAX_RESULT_BYTES);
    this.textMax = stepTextMax(opts.maxResultBytes ?? DEFAULT_MAX_RESULT_BYTES);
    this.statistics = new TableStatistics(this.control, this.log);
    this.retention = new Retention(this.store, this.log);
    this.notices = new ChangeNotices(this.store);
    // a notification is a hint only: state is re-read
    const notified = (p?: string): void => (this.requests.notified(p), this.kick());
    this.listener = new WakeListener(opts.controlUrl, this.log, notified, () => this.wake());
    this.starter = new StartNew(this.store, this.steps, (ids) => this.wake({ ids, steps: [] }));
    const max = opts.maxConcurrentInstances;
    const reserve = (this.reserve = Math.max(0, Math.min(opts.slotReserve ?? 1, max - 1)));
    this.adoption = new Adoption({
      store: this.store,
      log: this.log,
      leaseMs: opts.leaseMs,
      leasesFree: () =>
        this.stopping || !this.started || this.backlog
          ? 0
          : max - reserve - this.active.size - this.claiming,
      has: (id) => this.active.has(id),
      run: (claimed) => this.run(claimed),
      claim: () => this.wake(),
    });
    this.timers = new DueTimers(new TimerStore(this.control), {
      log: this.log,
      batch: opts.timerBatch ?? DEFAULT_TIMER_BATCH,
      stallMs: opts.leaseMs,
      maxLoopIterations: opts.maxLoopIterations,
      onReady: (ready) => {
        for (const r of ready) this.notices.touch(r.id, r.role_oid);
        this.wake();
      },
      onDue: () => this.wake(),
      nextWakeAt: () => this.store.nextWakeAt(),
    });
    this.ctx = {
      store: this.store,
      steps: this.steps,
      slots: this.slots,
      log: this.log,
      maxConcurrentSteps: opts.maxConcurrentSteps,
      slotTimeoutMs: opts.slotTimeoutMs ?? 30_000,
      stepTimeoutMs: opts.stepTimeoutMs ?? 0,
      maxResultBytes: opts.maxResultBytes,
      stopping: () => this.stopping,
      stepPids: (id) => this.active.get(id)?.stepPids,
    };
  }

  async start(): Promise<void> {
    await loadParser();
    await requirePrimary(this.store, this.log);
    this.started = true;
    await this.listener.start();
    this.timer = setInterval(() => {
      this.wake();
      this.timers.kick();
    }, this.opts.pollMs);
    this.heartbeat = setInterval(
      () => void this.renewLeases(),
      Math.max(50, Math.floor(this.opts.leaseMs / 3)),
    );
    this.retention.schedule(1000);
    this.log.info({ owner: this.owner, stepAuth: this.opts.stepAuth }, 'executor started');
    this.wake();
    this.timers.kick(); // timers that came due while no executor ran
  }

  /**
   * Asks the executor to look for work now (LISTEN, the poll, the proxy). `started`: instances
   * whose df.start just committed (a claim by id may do); without it, all that is ready.
   */
  wake(started?: Started): void {
    if (started?.leased?.length) this.adoption.adopt(started.leased, started.born);
    this.requests.add(toClaim(started));
    this.kick();
    // while the claim is on its way (written next tick), check the steps' SQL (cached by text)
    const steps = started?.steps ?? [];
    if (steps.length > 0 && this.pumping) setImmediate(() => planAhead(steps));
  }

  /** Claims now if a claim is wanted; one claim at a time, the next right after it. */
  private kick(): void {
    if (this.stopping || !this.started || this.pumping || !this.requests.pending) return;
    this.pumping = true;
    void this.pump().finally(() => {
      this.pumping = false;
      this.kick();
    });
  }

  private async pump(): Promise<void> {
    const want = this.requests.take();
    const capacity = this.opts.maxConcurrentInstances - this.active.size;
    if (capacity <= 0) {
      this.backlog = true; // woken while full: claim again as soon as an instance is done
      return;
    }
    // instances leased here per role: the claim's fair share and reserve (docs/executor.md, "Fairness")
    const held = new Map<number, number>();
    for (const a of this.active.values()) held.set(a.role, (held.get(a.role) ?? 0) + 1);
    const { reserve, slots } = this;
    const max = this.opts.maxConcurrentInstances;
    const kind = claimKind(want, this.backlog, capacity, reserve, max, slots.spare() > 0);
    if (kind === 'none') return;
    let claimed: LoadedInstance[];
    let ready = 0;
    this.claiming = capacity; // what adopting may not take meanwhile
    this.statistics.check(); // plans made on a small table are remade when it has grown
    try {
      if (kind === 'general')
        ({ rows: claimed, ready } = await this.store.claim(capacity, held, reserve, [
          ...this.active.keys(),
        ]));
      else
        claimed =
          kind === 'id'
            ? await this.store.claimStarted(want.started)
            : await this.store.claimNewcomers(want.started, [...held.keys()], capacity);
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'claim failed');
      this.backlog = true;
      return;
    } finally {
      this.claiming = 0;
    }
    // fewer than it could take: all that was ready was claimed, and what becomes ready later
    // comes with a wake (a commit, LISTEN, a timer, the poll): a finishing one need not claim
    if (kind === 'general') this.backlog = ready > claimed.length;
    this.run(claimed);
  }

  /** Drives instances leased here (claimed, or born leased and adopted), each once. */
  private run(claimed: readonly LoadedInstance[]): void {
    this.requests.claimed(claimed.map((c) => c.id));
    for (const c of claimed) {
      const epoch = Number(c.lease_epoch);
      const driving = this.active.get(c.id);
      if (driving) {
        // a newer lease of an instance whose driver is still ending (it parked, and was claimed at once)
        if (epoch > driving.epoch) this.successors.set(c.id, c);
        continue;
      }
      this.active.set(c.id, { epoch, stepPids: new Set(), role: c.role_oid });
      const p = this.drive(c.id, epoch, c)
        .catch((err: unknown) => this.log.error({ instance: c.id, err }, 'instance driver failed'))
        .finally(() => {
          // finished, parked or handed back: the console hears of it (instance triggers don't notify)
          this.notices.touch(c.id, c.role_oid);
          // the graph is cached only while this process holds the lease
          this.graphs.delete(c.id);
          this.active.delete(c.id);
          this.finished.delete(p);
          const next = this.successors.get(c.id);
          if (next) {
            this.successors.delete(c.id);
            if (!this.stopping) this.run([next]);
          }
          if (this.backlog) {
            this.requests.refill();
            this.kick();
          }
        });
      this.finished.add(p);
    }
  }

  /** The lease renewal running now, if any: a tick that comes while one runs does nothing. */
  private renewing: Promise<void> | undefined;

  private renewLeases(): Promise<void> {
    this.renewing ??= renewHeld(this.store, this.active, this.log).finally(() => {
      this.renewing = undefined;
    });
    return this.renewing;
  }

  private cancelSteps(id: string): Promise<void> {
    return cancelStepsOf(this.store, this.active.get(id));
  }

  private async finish(
    id: string,
    epoch: number,
    status: 'completed' | 'failed',
    error: string | null,
    output: string | null = null,
    onFailure: string | null = null,
  ): Promise<void> {
    await this.store.finish(id, epoch, status, error, output, onFailure);
    this.announceFinished(id, status);
  }

  private announceFinished(id: string, status: 'completed' | 'failed'): void {
    metrics.instancesFinished.inc({ status });
    const level = status === 'completed' ? 'debug' : 'info'; // docs/operations.md, "Logs"
    this.log[level]({ instance: id, status }, 'instance finished');
  }

  /** Runs one instance while this executor holds its lease. */
  private async drive(id: string, epoch: number, claimed?: LoadedInstance): Promise<void> {
    const log = this.log.child({ instance: id });
    log.debug({ epoch }, 'driving');
    const inFlight = new Map<string, Promise<void>>();
    const cache = newDriveCache(claimed?.premark);
    /** The steps in flight end and the stamps queued are written (or given up) before the driver returns. */
    const settle = async (): Promise<void> => {
      await Promise.allSettled(inFlight.values());
      await flushStamps(cache).catch(() => undefined);
    };
    for (;;) {
      if (cache.finished) {
        // the last step's checkpoint completed the instance (carry.ts)
        await settle();
        this.announceFinished(id, 'completed');
        return;
      }
      if (this.stopping) {
        // steps already running finish (or are cancelled by stop() after its timeout)
        await settle();
        return;
      }
      // after a checkpoint whose event is cached, nothing needs re-reading: dispatch at once
      // (the lease and the instance's status are checked again by the next attempt mark)
      let inst = cache.fresh && !cache.dirty ? cache.inst : undefined;
      cache.fresh = false;
      if (!inst) {
        // not cleared before the load ends: a step completing meanwhile must not carry from `events`
        const seen = cache.writes;
        inst = await loadInstance(this.store, this.graphs, id, cache, this.instanceMax, claimed);
        cache.dirty = cache.writes !== seen;
        claimed = undefined;
        cache.inst = inst;
        // a step that ended while it was read (its outcome not cached) may be missing from it: a
        // core run on it would dispatch that step again, its statement running before its mark
        // is refused. Read once more first.
        if (inst && cache.dirty) continue;
      }
      if (!inst) {
        await flushStamps(cache).catch(() => undefined);
        return;
      }
      this.notices.touch(id, inst.role_oid);
      const events = cache.events;
      if (Number(inst.lease_epoch) !== epoch || !['pending', 'running'].includes(inst.status)) {
        if (inst.status === 'cancelled') await this.cancelSteps(id);
        await settle();
        return;
      }
      const refused = unrunnable(id, inst) ?? tooLarge(id, cache, this.instanceMax);
      if (refused !== undefined) {
        await flushStamps(cache);
        await this.finish(id, epoch, 'failed', refused);
        return;
      }
      if (inst.rolsuper && !(await this.store.superuserInstancesAllowed())) {
        await flushStamps(cache);
        const why = `pg_durable blocked instance ${id}: submitted_by role "${inst.role_name}" is a superuser, but pg_durable.enable_superuser_instances is off`;
        return this.finish(id, epoch, 'failed', why);
      }
      const now = new Date();
      const base = {
        graph: this.graphs.get(id) as Graph,
        instanceId: id,
        label: inst.label,
        vars: inst.vars,
        maxLoopIterations: this.opts.maxLoopIterations,
        nextCron,
        stepTextMax: this.textMax,
        ...(retryPolicy(inst.options) ? { retry: retryPolicy(inst.options) as RetryPolicy } : {}),
      };
      const core = tryCore({ ...base, events, now });
      if (typeof core === 'string') {
        await settle();
        return this.finish(id, epoch, 'failed', core);
      }
      // SQL nodes about to start get their running stamp with their attempt mark, and one in
      // flight gets its outcome from its checkpoint: a stamp written meanwhile could land after it
      const sqlNodes = new Set(core.actions.filter((a) => a.a === 'sql').map((a) => a.node));
      queueStamps(this.store, id, cache, core.stamps, sqlNodes);
      const o = core.outcome;
      if (o.k === 'done' || o.k === 'failed') {
        await Promise.allSettled(inFlight.values());
        await flushStamps(cache);
        const child =
          o.k === 'failed'
            ? await startOnFailure(this.steps, inst, o.error, log, () => this.wake())
            : null;
        await this.finish(
          id,
          epoch,
          o.k === 'done' ? 'completed' : 'failed',
          o.k === 'failed' ? o.error : null,
          o.k === 'done' ? o.result : null,
          child,
        );
        return;
      }
      let progressed = false;
      let wakeAt: Date | null = null;
      const waiting: string[] = [];
      const signalWaits = new Map<string, Array<Extract<Action, { a: 'signal' }>>>();
      for (const a of core.actions) {
        switch (a.a) {
          case 'iter': {
            markDirty(cache);
            await this.store.recordEvent(id, epoch, a, 'iter', a.detail);
            progressed = true;
            break;
          }
          case 'backoff': {
            // like a timer: the due time is recorded first, so a restart keeps it
            if (!a.armed) {
              markDirty(cache);
              await this.store.recordEvent(id, epoch, a, 'armed', { at: a.at.toISOString() });
              progressed = true;
            } else if (!wakeAt || a.at < wakeAt) wakeAt = a.at;
            break;
          }
          case 'timer': {
            if (!a.armed) {
              markDirty(cache);
              await this.store.recordEvent(id, epoch, a, 'armed', { at: a.at.toISOString() });
              progressed = true;
            } else if (a.at.getTime() <= now.getTime()) {
              markDirty(cache);
              await this.store.recordEvent(id, epoch, a, 'done', { result: a.result });
              progressed = true;
            } else if (!wakeAt || a.at < wakeAt) wakeAt = a.at;
            break;
          }
          case 'signal': {
            if (!a.armed) {
              markDirty(cache);
              await this.store.recordEvent(id, epoch, a, 'armed', {
                at: a.timeoutAt ? a.timeoutAt.toISOString() : null,
              });
              progressed = true;
            } else {
              const list = signalWaits.get(a.name) ?? [];
              list.push(a);
              signalWaits.set(a.name, list);
            }
            break;
          }
          case 'http': {
            if (inFlight.has(a.key)) break;
            const p = httpStep(this.ctx, id, epoch, inst, a).finally(() => {
              inFlight.delete(a.key);
              markDirty(cache);
            });
            inFlight.set(a.key, p);
            progressed = true;
            break;
          }
          case 'sql': {
            if (inFlight.has(a.key)) break;
            const s = core.stamps.get(a.node);
            const stamp = s?.stamp ?? `${id}::1`;
            const retry = s?.attempts ? JSON.stringify(s.attempts) : undefined;
            const d = { id, epoch, inst, a, stamp, retry, log, cache, inFlight, core: base };
            inFlight.set(a.key, dispatchSql(this.ctx, d));
            progressed = true;
            break;
          }
        }
      }
      if (signalWaits.size > 0) {
        const [was, seen] = [cache.dirty, cache.writes];
        markDirty(cache);
        const delivered = await deliverSignals(this.ctx, id, epoch, signalWaits, now);
        // nothing delivered is nothing written: a signal wait alone does not stop carrying
        if (!delivered && cache.writes === seen + 1) cache.dirty = was;
        if (delivered) progressed = true;
        else {
          for (const [name, waits] of signalWaits) {
            waiting.push(name);
            for (const w of waits)
              if (w.timeoutAt && (!wakeAt || w.timeoutAt < wakeAt)) wakeAt = w.timeoutAt;
          }
        }
      }
      if (core.obsolete.length > 0) {
        dropEvents(cache, core.obsolete);
        markDirty(cache);
        await this.store.deleteEvents(id, core.obsolete);
      }
      if (inFlight.size > 0) {
        // wait for a step (or a short while, to notice timers and signals)
        const nap = this.naps.nap(
          Math.max(
            20,
            Math.min(this.opts.pollMs, wakeAt ? wakeAt.getTime() - Date.now() : this.opts.pollMs),
          ),
        );
        await Promise.race([...inFlight.values(), nap.done]);
        nap.cancel(); // a pending timer would keep the process alive after a shutdown
        continue;
      }
      if (progressed) continue;
      if (wakeAt && wakeAt.getTime() - Date.now() < Math.min(this.opts.pollMs, 1000)) {
        await this.naps.nap(Math.max(1, wakeAt.getTime() - Date.now())).done;
        continue;
      }
      await flushStamps(cache);
      await this.store.park(id, epoch, wakeAt, waiting);
      if (wakeAt) this.timers.wakeAt(wakeAt);
      // a signal that committed while parking would find the instance leased: look once more
      if (await this.store.hasUnconsumedSignal(id, waiting)) this.wake();
      return;
    }
  }

  /** A lease for a plain df.start through this process's proxy: born claimed (adopt.ts). */
  prelease(): Lease | undefined {
    return this.adoption.lease();
  }

  /**
   * df.start(..., transaction_mode => 'new') for the proxy: runs df.start as `login` (the
   * client session's login role) on a step connection of that role, in a transaction of its
   * own, and wakes the executor once committed.
   */
  async startNew(req: StartNewRequest): Promise<string> {
    return await this.starter.run(req);
  }

  /** For the admin port: instances driven now, and whether the executor is up (LISTEN connected). */
  stats(): { readonly activeInstances: number; readonly listening: boolean } {
    const listening = !this.stopping && this.listener.listening;
    return { activeInstances: this.active.size, listening };
  }

  /**
   * Stops claiming, lets the steps in flight finish for at most `timeoutMs`
   * (--shutdown-timeout), then cancels the ones still running (their
   * transactions roll back; whoever holds the lease next runs them again),
   * hands the leases back and closes every connection. Nothing it leaves
   * behind keeps the process alive.
   */
  async stop(timeoutMs = 30_000): Promise<void> {
    this.stopping = true;
    const timers = this.timers.stop();
    this.retention.stop();
    await this.notices.flush();
    if (this.timer) clearInterval(this.timer);
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.slots.close(); // steps waiting for a slot stop waiting; the next lease holder runs them
    this.naps.endAll(); // drivers waiting for a timer look at `stopping` now
    const drained = Promise.allSettled([...this.finished]);
    let timer: NodeJS.Timeout | undefined;
    const late = await Promise.race([
      drained.then(() => false),
      new Promise<boolean>((r) => (timer = setTimeout(() => r(true), timeoutMs))),
    ]);
    if (timer) clearTimeout(timer);
    if (late) {
      this.log.warn(
        { instances: this.active.size },
        'shutdown timeout: cancelling the steps still running',
      );
      await Promise.allSettled([...this.active.keys()].map((id) => this.cancelSteps(id)));
      // cancelled statements end at once; a backend that does not answer is not waited for long
      let t: NodeJS.Timeout | undefined;
      await Promise.race([drained, new Promise((r) => (t = setTimeout(r, 5000)))]);
      if (t) clearTimeout(t);
    }
    await timers; // a batch under way commits or rolls back first
    // hand our leases back so another executor can continue at once
    await this.store.releaseLeases().catch(() => undefined);
    await this.listener.stop();
    await this.steps.close();
    await this.pools.end();
  }
}
