/**
 * The executor (DESIGN.md §4): claims runnable committed instances under a
 * lease with an epoch, replays each with the deterministic core, performs the
 * actions it asks for (SQL steps on step connections, timers, signal
 * deliveries, loop summaries), writes node stamps, and parks or finishes the
 * instance. Any number of executors may run against one database; they
 * coordinate only through row locks, leases and epochs.
 */
import { randomBytes, createHash } from 'node:crypto';
import { Cron } from 'croner';
import pg from 'pg';
import type { Logger } from 'pino';
import {
  runCore,
  type Action,
  type EventKind,
  type RetryPolicy,
  type Stamp,
  type StoredEvent,
} from './core.js';
import { buildGraph, type Graph, type NodeRow } from './graph.js';
import { compactJson } from './encode.js';
import { loadParser } from './sqlcheck.js';
import { metrics } from '../metrics.js';
import { HttpStepError, idempotencyKey, sendHttp } from './http.js';
import type { StartNewRequest } from '../proxy/session.js';
import { runSqlStep, StepPool, isRetryable, type StepAuth, type StepIdentity } from './steps.js';
import { FairSlots } from './slots.js';

export interface ExecutorOptions {
  /** The executor's control login (member of df_executor). */
  readonly controlUrl: string;
  readonly log: Logger;
  readonly stepAuth: StepAuth;
  /** Secret the step login passwords are derived from (same on every dfgate process). */
  readonly stepSecret: string;
  readonly leaseMs: number;
  readonly pollMs: number;
  readonly maxConcurrentSteps: number;
  readonly maxConcurrentInstances: number;
  /**
   * How long a step waits for a free slot before it may fail (spec §12:
   * execution_acquire_timeout); it fails only when its role got no slot because
   * more roles want slots than there are (src/executor/slots.ts).
   */
  readonly slotTimeoutMs?: number;
  /** At most this many steps of one role at once (0: no cap besides the fair share). */
  readonly maxStepsPerRole?: number;
  /**
   * Step slots, and instance leases, kept for roles that have none here, so a
   * newly active role starts at once while another fills the executor (default 1).
   */
  readonly slotReserve?: number;
  /** statement_timeout for every step (0: none, as in pg_durable). */
  readonly stepTimeoutMs?: number;
  /** A SQL step's result may take at most this many bytes (its JSON text); over it the step fails. */
  readonly maxResultBytes?: number;
  readonly maxLoopIterations: number;
}

interface InstanceRow {
  readonly id: string;
  readonly label: string | null;
  readonly root_node: string;
  readonly status: string;
  readonly role_name: string | null;
  readonly role_oid: number;
  readonly rolsuper: boolean | null;
  readonly vars: Record<string, string>;
  readonly lease_epoch: string;
  /** df.start's options (max_attempts, max_backoff_seconds, on_failure). */
  readonly options: Record<string, unknown> | null;
}

/** The retry policy in an instance's options (undefined: one attempt). */
function retryPolicy(options: Record<string, unknown> | null): RetryPolicy | undefined {
  const max = Number(options?.['max_attempts'] ?? 1);
  if (!Number.isInteger(max) || max <= 1) return undefined;
  const secs = Number(options?.['max_backoff_seconds']);
  return { maxAttempts: max, maxBackoffMs: Number.isFinite(secs) && secs > 0 ? secs * 1000 : null };
}

const WAKE_CHANNEL = 'dfgate_wake';

/** What a driver keeps between ticks while it holds an instance's lease (nobody else writes these meanwhile). */
interface DriveCache {
  readonly events: Map<string, Map<EventKind, StoredEvent>>;
  lastSeq: number;
  stored: Map<string, StoredStamp> | undefined;
}

/** A node's stamp as last written (`attempts`: the status_details retry keys this driver wrote). */
interface StoredStamp {
  status: string;
  stamp: string | null;
  attempts?: string;
}

const RECORD_EVENT = 'SELECT df._record_event($1, $2, $3, $4, $5, $6::jsonb)';

/** Records an executor-side event (lease-checked by df._record_event) on a pool or a client in a transaction. */
async function recordEvent(
  db: pg.Pool | pg.ClientBase,
  id: string,
  epoch: number,
  a: { readonly key: string; readonly node: string },
  kind: EventKind,
  detail: Record<string, unknown>,
): Promise<void> {
  await db.query(RECORD_EVENT, [id, epoch, a.node, a.key, kind, JSON.stringify(detail)]);
}

function tokenHash(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

function nextCron(expr: string, after: Date): Date {
  const next = new Cron(expr, { timezone: 'UTC', paused: true }).nextRun(after);
  if (!next) throw new Error('the expression never matches');
  return next;
}

export class Executor {
  readonly owner = `${process.pid}-${randomBytes(4).toString('hex')}`;
  private readonly control: pg.Pool;
  private readonly steps: StepPool;
  private readonly slots: FairSlots;
  private listener: pg.Client | undefined;
  private readonly active = new Map<
    string,
    { epoch: number; stepPids: Set<number>; role: number }
  >();
  private stopping = false;
  private pumping = false;
  private pumpAgain = false;
  private timer: NodeJS.Timeout | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  private readonly graphs = new Map<string, Graph>();
  private readonly log: Logger;
  private readonly finished = new Set<Promise<void>>();
  private database: string | undefined;
  /** start() ran: only then does the executor claim instances. */
  private started = false;
  private reconcileTimer: NodeJS.Timeout | undefined;

  constructor(private readonly opts: ExecutorOptions) {
    this.log = opts.log;
    this.control = new pg.Pool({
      connectionString: opts.controlUrl,
      max: 6,
      application_name: 'dfgate:executor',
    } as pg.PoolConfig);
    this.control.on('error', (err) =>
      this.log.warn({ err: err.message }, 'control connection error'),
    );
    this.steps = new StepPool(
      {
        controlUrl: opts.controlUrl,
        auth: opts.stepAuth,
        secret: opts.stepSecret,
        maxIdle: Math.max(8, opts.maxConcurrentSteps),
      },
      this.control,
    );
    this.slots = new FairSlots({
      slots: opts.maxConcurrentSteps,
      reserve: opts.slotReserve ?? 1,
      perRoleCap: opts.maxStepsPerRole ?? 0,
      timeoutMs: opts.slotTimeoutMs ?? 30_000,
    });
  }

  async start(): Promise<void> {
    await loadParser();
    // a connection dropped while starting (a restart, pg_terminate_backend) is retried, not fatal
    let ro: boolean | undefined;
    for (let attempt = 1; ; attempt++) {
      try {
        ro = (await this.control.query<{ ro: boolean }>('SELECT pg_is_in_recovery() AS ro')).rows[0]
          ?.ro;
        break;
      } catch (err) {
        if (!isRetryable(err) || attempt >= 30) throw err;
        this.log.warn({ err: (err as Error).message }, 'executor start: connection lost; retrying');
        await new Promise((r) => setTimeout(r, Math.min(100 * attempt, 1000)));
      }
    }
    if (ro) {
      throw new Error(
        'the executor URL points at a read-only standby: use the primary (add target_session_attrs=read-write to a multi-host URL)',
      );
    }
    this.started = true;
    await this.listen();
    this.timer = setInterval(() => this.wake(), this.opts.pollMs);
    this.heartbeat = setInterval(
      () => void this.renewLeases(),
      Math.max(50, Math.floor(this.opts.leaseMs / 3)),
    );
    this.scheduleReconcile(1000);
    this.log.info({ owner: this.owner, stepAuth: this.opts.stepAuth }, 'executor started');
    this.wake();
  }

  private async listen(): Promise<void> {
    if (this.stopping) return;
    const c = new pg.Client({
      connectionString: this.opts.controlUrl,
      application_name: 'dfgate:listen',
    });
    c.on('notification', () => this.wake()); // a hint only: state is re-read
    c.on('error', () => undefined);
    c.on('end', () => {
      if (this.stopping) return;
      this.log.warn('LISTEN connection lost; reconnecting');
      setTimeout(() => void this.listen().catch(() => undefined), 500);
    });
    try {
      await c.connect();
      await c.query(`LISTEN ${WAKE_CHANNEL}`);
      this.listener = c;
      this.wake();
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'cannot LISTEN; retrying');
      setTimeout(() => void this.listen().catch(() => undefined), 1000);
    }
  }

  /** Asks the executor to look for work now (from LISTEN, the poll, or the proxy in-process). */
  wake(): void {
    if (this.stopping || !this.started) return;
    if (this.pumping) {
      this.pumpAgain = true;
      return;
    }
    this.pumping = true;
    void this.pump().finally(() => {
      this.pumping = false;
      if (this.pumpAgain && !this.stopping) {
        this.pumpAgain = false;
        this.wake();
      }
    });
  }

  private async pump(): Promise<void> {
    const capacity = this.opts.maxConcurrentInstances - this.active.size;
    if (capacity <= 0) return;
    // instances leased here per role: the claim's fair share and reserve (docs/executor.md, "Fairness")
    const held = new Map<number, number>();
    for (const a of this.active.values()) held.set(a.role, (held.get(a.role) ?? 0) + 1);
    const reserve = Math.max(
      0,
      Math.min(this.opts.slotReserve ?? 1, this.opts.maxConcurrentInstances - 1),
    );
    let claimed: Array<{ id: string; lease_epoch: string; role_oid: number }>;
    try {
      claimed = (
        await this.control.query<{ id: string; lease_epoch: string; role_oid: number }>(
          // Every ready instance gets a level: the instances its role holds here plus its turn
          // within the role. Claiming the lowest levels first fills roles up evenly (a role
          // alone takes all but the reserve); the last $6 of capacity go only to a role that
          // holds none here, one instance each.
          `WITH ready AS (
             SELECT i.id, i.submitted_by::oid::int AS role, i.created_at,
                    row_number() OVER (PARTITION BY i.submitted_by ORDER BY i.created_at, i.id) AS turn
               FROM df.instances i
              WHERE i.runnable AND i.status IN ('pending', 'running')
                AND (i.lease_expires_at IS NULL OR i.lease_expires_at < clock_timestamp())
                AND (i.wake_at IS NULL OR i.wake_at <= clock_timestamp()
                     OR EXISTS (SELECT 1 FROM df.signals s WHERE s.instance_id = i.id AND s.consumed_at IS NULL
                                   AND s.signal_name = ANY (i.waiting_signals)))
                AND (i.waiting_signals IS NULL OR i.wake_at IS NOT NULL OR cardinality(i.waiting_signals) = 0
                     OR EXISTS (SELECT 1 FROM df.signals s WHERE s.instance_id = i.id AND s.consumed_at IS NULL
                                   AND s.signal_name = ANY (i.waiting_signals)))),
           ranked AS (
             SELECT r.id, r.turn, coalesce(h.n, 0) AS held,
                    row_number() OVER (ORDER BY coalesce(h.n, 0) + r.turn, r.created_at, r.id) AS pos
               FROM ready r LEFT JOIN unnest($4::int[], $5::int[]) AS h(role, n) ON h.role = r.role
              WHERE r.turn <= $2),
           picked AS (
             (SELECT id FROM ranked WHERE pos <= $2 - $6)
             UNION ALL
             (SELECT id FROM ranked WHERE pos > $2 - $6 AND held = 0 AND turn = 1
               ORDER BY pos LIMIT least($6, $2))),
           locked AS (
             SELECT i.id FROM df.instances i JOIN picked p USING (id)
              WHERE i.lease_expires_at IS NULL OR i.lease_expires_at < clock_timestamp()
              FOR UPDATE OF i SKIP LOCKED)
           UPDATE df.instances i
              SET lease_owner = $1, lease_epoch = i.lease_epoch + 1,
                  lease_expires_at = clock_timestamp() + make_interval(secs => $3::float8 / 1000),
                  status = CASE WHEN i.status = 'pending' THEN 'running' ELSE i.status END,
                  updated_at = CASE WHEN i.status = 'pending' THEN now() ELSE i.updated_at END,
                  wake_at = NULL, waiting_signals = NULL
             FROM locked WHERE i.id = locked.id
           RETURNING i.id, i.lease_epoch, i.submitted_by::oid::int AS role_oid`,
          [this.owner, capacity, this.opts.leaseMs, [...held.keys()], [...held.values()], reserve],
        )
      ).rows;
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'claim failed');
      return;
    }
    for (const c of claimed) {
      const epoch = Number(c.lease_epoch);
      this.active.set(c.id, { epoch, stepPids: new Set(), role: c.role_oid });
      const p = this.drive(c.id, epoch)
        .catch((err: unknown) => this.log.error({ instance: c.id, err }, 'instance driver failed'))
        .finally(() => {
          // the graph is cached only while this process holds the lease
          this.graphs.delete(c.id);
          this.active.delete(c.id);
          this.finished.delete(p);
          this.wake();
        });
      this.finished.add(p);
    }
  }

  private async renewLeases(): Promise<void> {
    if (this.active.size === 0) return;
    const ids = [...this.active.keys()];
    try {
      const r = await this.control.query<{ id: string; status: string }>(
        `UPDATE df.instances SET lease_expires_at = clock_timestamp() + make_interval(secs => $3::float8 / 1000)
          WHERE id = ANY ($1) AND lease_owner = $2 RETURNING id, status`,
        [ids, this.owner, this.opts.leaseMs],
      );
      const held = new Map(r.rows.map((x) => [x.id, x.status]));
      for (const id of ids) {
        const st = held.get(id);
        if (st === 'cancelled') await this.cancelSteps(id);
        if (st === undefined)
          this.log.debug({ instance: id }, 'lease not renewed (finished, or taken over)');
      }
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'lease renewal failed');
    }
  }

  private async cancelSteps(id: string): Promise<void> {
    const a = this.active.get(id);
    if (!a) return;
    for (const pid of a.stepPids)
      await this.control.query('SELECT pg_cancel_backend($1)', [pid]).catch(() => undefined);
  }

  /** One round trip per tick: the instance, events newer than the cache holds, and (first time) node statuses. */
  private async load(id: string, cache: DriveCache): Promise<InstanceRow | undefined> {
    const inst = (
      await this.control.query<
        InstanceRow & {
          events: Array<{ a: string; k: EventKind; d: Record<string, unknown>; s: number }>;
          nodes: Array<{ id: string; st: string; sd: string | null }> | null;
          graph: NodeRow[] | null;
        }
      >(
        `SELECT i.id, i.label, i.root_node, i.status, r.rolname AS role_name, i.submitted_by::oid::int AS role_oid, r.rolsuper, i.vars, i.lease_epoch, i.options,
                (SELECT coalesce(json_agg(json_build_object('a', e.activation, 'k', e.kind, 'd', e.detail, 's', e.seq)), '[]')
                   FROM df.events e WHERE e.instance_id = i.id AND e.activation IS NOT NULL AND e.seq > $2) AS events,
                CASE WHEN $3 THEN (SELECT json_agg(json_build_object('id', n.id, 'st', n.status, 'sd', n.status_details ->> 'execution_id'))
                                     FROM df.nodes n WHERE n.instance_id = i.id) END AS nodes,
                CASE WHEN $4 THEN (SELECT json_agg(json_build_object('id', n.id, 'node_type', n.node_type, 'query', n.query,
                                     'result_name', n.result_name, 'left_node', n.left_node, 'right_node', n.right_node))
                                     FROM df.nodes n WHERE n.instance_id = i.id) END AS graph
           FROM df.instances i LEFT JOIN pg_roles r ON r.oid = i.submitted_by WHERE i.id = $1`,
        [id, cache.lastSeq, cache.stored === undefined, !this.graphs.has(id)],
      )
    ).rows[0];
    if (!inst) return undefined;
    // the graph comes with the first load (one round trip), and is cached while the lease is held
    if (!this.graphs.has(id)) this.graphs.set(id, buildGraph(inst.root_node, inst.graph ?? []));
    for (const e of inst.events) {
      let m = cache.events.get(e.a);
      if (!m) cache.events.set(e.a, (m = new Map()));
      m.set(e.k, { seq: Number(e.s), kind: e.k, detail: e.d });
      cache.lastSeq = Math.max(cache.lastSeq, Number(e.s));
    }
    if (inst.nodes)
      cache.stored = new Map(inst.nodes.map((n) => [n.id, { status: n.st, stamp: n.sd }]));
    return inst;
  }

  private async event(
    id: string,
    epoch: number,
    a: { key: string; node: string },
    kind: EventKind,
    detail: Record<string, unknown>,
  ): Promise<void> {
    await recordEvent(this.control, id, epoch, a, kind, detail);
  }

  private async writeStamps(
    id: string,
    stamps: ReadonlyMap<string, Stamp>,
    stored: Map<string, StoredStamp>,
    skip: ReadonlySet<string>,
  ): Promise<void> {
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
    if (ids.length === 0) return;
    // a leaf under a retry policy also shows its attempt, the last error and the next
    // attempt's time in status_details, and its attempt number in df.nodes.attempts
    await this.control.query(
      `UPDATE df.nodes n SET status = u.status, result = CASE WHEN u.result IS NULL THEN NULL
                                  ELSE u.result::jsonb END,
              status_details = jsonb_build_object('execution_id', u.stamp) || coalesce(u.extra::jsonb, '{}'),
              attempts = coalesce((u.extra::jsonb ->> 'attempt')::int, n.attempts), updated_at = now()
         FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) AS u(id, status, result, stamp, extra)
        WHERE n.instance_id = $1 AND n.id = u.id`,
      [id, ids, statuses, results, st, extra],
    );
  }

  private async finish(
    id: string,
    epoch: number,
    status: 'completed' | 'failed',
    error: string | null,
    output: string | null = null,
    onFailure: string | null = null,
  ): Promise<void> {
    await this.control.query(
      `UPDATE df.instances SET status = $3, error = $4, output = $6, updated_at = now(),
              completed_at = CASE WHEN $3 = 'completed' THEN now() END,
              lease_owner = NULL, lease_expires_at = NULL, wake_at = NULL, waiting_signals = NULL,
              on_failure_instance = coalesce($7, on_failure_instance)
        WHERE id = $1 AND lease_epoch = $2 AND lease_owner = $5 AND status IN ('pending', 'running')`,
      [id, epoch, status, error, this.owner, output, onFailure],
    );
    metrics.instancesFinished.inc({ status });
    this.log.info({ instance: id, status }, 'instance finished');
  }

  private async park(
    id: string,
    epoch: number,
    wakeAt: Date | null,
    signals: string[],
  ): Promise<void> {
    await this.control.query(
      `UPDATE df.instances SET lease_owner = NULL, lease_expires_at = NULL, wake_at = $3, waiting_signals = $4
        WHERE id = $1 AND lease_epoch = $2 AND lease_owner = $5`,
      [id, epoch, wakeAt, signals, this.owner],
    );
  }

  /**
   * A parked timer or retry backoff due soon is claimed when due, not at the
   * next poll after it (a hint only: any executor may claim it then).
   */
  private wakeAt(at: Date): void {
    const ms = at.getTime() - Date.now();
    if (ms > 600_000 || this.stopping) return;
    setTimeout(() => this.wake(), Math.max(0, ms) + 5).unref();
  }

  /** Runs one instance while this executor holds its lease. */
  private async drive(id: string, epoch: number): Promise<void> {
    const log = this.log.child({ instance: id });
    const inFlight = new Map<string, Promise<void>>();
    const cache: DriveCache = { events: new Map(), lastSeq: 0, stored: undefined };
    for (;;) {
      if (this.stopping) return;
      const inst = await this.load(id, cache);
      if (!inst) return;
      const events = cache.events;
      const stored = cache.stored as Map<string, StoredStamp>;
      if (Number(inst.lease_epoch) !== epoch || !['pending', 'running'].includes(inst.status)) {
        if (inst.status === 'cancelled') await this.cancelSteps(id);
        await Promise.allSettled(inFlight.values());
        return;
      }
      if (inst.role_name === null) {
        await this.finish(
          id,
          epoch,
          'failed',
          `Instance ${id}: submitted_by role no longer exists in pg_roles`,
        );
        return;
      }
      if (inst.rolsuper) {
        const allowed = (
          await this.control.query<{ v: boolean }>(
            `SELECT (value)::text::boolean AS v FROM df.config WHERE key = 'enable_superuser_instances'`,
          )
        ).rows[0]?.v;
        if (!allowed) {
          await this.finish(
            id,
            epoch,
            'failed',
            `pg_durable blocked instance ${id}: submitted_by role "${inst.role_name}" is a superuser, but pg_durable.enable_superuser_instances is off`,
          );
          return;
        }
      }
      const now = new Date();
      const core = runCore({
        graph: this.graphs.get(id) as Graph,
        instanceId: id,
        label: inst.label,
        vars: inst.vars,
        events,
        now,
        maxLoopIterations: this.opts.maxLoopIterations,
        nextCron,
        ...(retryPolicy(inst.options) ? { retry: retryPolicy(inst.options) as RetryPolicy } : {}),
      });
      // SQL nodes about to start get their running stamp with their attempt mark
      const starting = new Set(
        core.actions.filter((a) => a.a === 'sql' && !inFlight.has(a.key)).map((a) => a.node),
      );
      await this.writeStamps(id, core.stamps, stored, starting);
      const o = core.outcome;
      if (o.k === 'done' || o.k === 'failed') {
        await Promise.allSettled(inFlight.values());
        const child = o.k === 'failed' ? await this.startOnFailure(inst, o.error, log) : null;
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
            await this.event(id, epoch, a, 'iter', a.detail);
            progressed = true;
            break;
          }
          case 'timer': {
            if (!a.armed) {
              await this.event(id, epoch, a, 'armed', { at: a.at.toISOString() });
              progressed = true;
            } else if (a.at.getTime() <= now.getTime()) {
              await this.event(id, epoch, a, 'done', { result: a.result });
              progressed = true;
            } else if (!wakeAt || a.at < wakeAt) wakeAt = a.at;
            break;
          }
          case 'backoff': {
            // like a timer: the due time is recorded first, so a restart keeps it
            if (!a.armed) {
              await this.event(id, epoch, a, 'armed', { at: a.at.toISOString() });
              progressed = true;
            } else if (!wakeAt || a.at < wakeAt) wakeAt = a.at;
            break;
          }
          case 'signal': {
            if (!a.armed) {
              await this.event(id, epoch, a, 'armed', {
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
            const p = this.httpStep(id, epoch, inst, a).finally(() => inFlight.delete(a.key));
            inFlight.set(a.key, p);
            progressed = true;
            break;
          }
          case 'sql': {
            if (inFlight.has(a.key)) break;
            const st = core.stamps.get(a.node)?.stamp ?? `${id}::1`;
            stored.set(a.node, { status: 'running', stamp: st });
            // the checkpoint writes the node's final status and stamp: nothing left for writeStamps
            const recorded = (status: 'completed' | 'failed'): void =>
              void stored.set(a.node, { status, stamp: st });
            const p = this.step(id, epoch, inst, a, st, log, recorded).finally(() =>
              inFlight.delete(a.key),
            );
            inFlight.set(a.key, p);
            progressed = true;
            break;
          }
        }
      }
      if (signalWaits.size > 0) {
        const delivered = await this.deliverSignals(id, epoch, signalWaits, now);
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
        for (const key of [...events.keys()])
          if (core.obsolete.some((p) => key.startsWith(p))) events.delete(key);
        await this.control.query(
          `DELETE FROM df.events WHERE instance_id = $1 AND activation LIKE ANY ($2)`,
          [id, core.obsolete.map((p) => p.replace(/[\\%_]/g, (c) => '\\' + c) + '%')],
        );
      }
      if (inFlight.size > 0) {
        // wait for a step (or a short while, to notice timers and signals)
        await Promise.race([
          ...inFlight.values(),
          new Promise((r) =>
            setTimeout(
              r,
              Math.max(
                20,
                Math.min(
                  this.opts.pollMs,
                  wakeAt ? wakeAt.getTime() - Date.now() : this.opts.pollMs,
                ),
              ),
            ),
          ),
        ]);
        continue;
      }
      if (progressed) continue;
      if (wakeAt && wakeAt.getTime() - Date.now() < Math.min(this.opts.pollMs, 1000)) {
        await new Promise((r) =>
          setTimeout(r, Math.max(1, (wakeAt as Date).getTime() - Date.now())),
        );
        continue;
      }
      await this.park(id, epoch, wakeAt, waiting);
      if (wakeAt) this.wakeAt(wakeAt);
      // a signal that committed while parking would find the instance leased: look once more
      const late = await this.control.query(
        `SELECT 1 FROM df.signals WHERE instance_id = $1 AND consumed_at IS NULL AND signal_name = ANY ($2) LIMIT 1`,
        [id, waiting],
      );
      if (late.rowCount) this.wake();
      return;
    }
  }

  /** A signal reaches every wait pending for its name; each wait takes the oldest unconsumed one (DESIGN.md §5 Q1). */
  private async deliverSignals(
    id: string,
    epoch: number,
    waits: Map<string, Array<Extract<Action, { a: 'signal' }>>>,
    now: Date,
  ): Promise<boolean> {
    const c = await this.control.connect();
    let delivered = false;
    try {
      await c.query('BEGIN');
      for (const [name, list] of waits) {
        const sig = (
          await c.query<{ id: string; payload_text: string }>(
            `SELECT id, payload::text AS payload_text FROM df.signals WHERE instance_id = $1 AND signal_name = $2 AND consumed_at IS NULL
              ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED`,
            [id, name],
          )
        ).rows[0];
        if (sig) {
          const data = sig.payload_text;
          for (const w of list) {
            const result = `{"signal_name":${JSON.stringify(name)},"timed_out":false,"data":${compactJson(data)}}`;
            await recordEvent(c, id, epoch, w, 'done', { result });
          }
          await c.query(
            `UPDATE df.signals SET consumed_at = now(), consumed_by = $2 WHERE id = $1`,
            [sig.id, list[0]?.node ?? null],
          );
          delivered = true;
        } else {
          for (const w of list) {
            if (w.timeoutAt && w.timeoutAt.getTime() <= now.getTime()) {
              const result = `{"signal_name":${JSON.stringify(name)},"timed_out":true,"data":null}`;
              await recordEvent(c, id, epoch, w, 'done', { result });
              delivered = true;
            }
          }
        }
      }
      await c.query('COMMIT');
    } catch (err) {
      await c.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      c.release();
    }
    return delivered;
  }

  private async step(
    id: string,
    epoch: number,
    inst: InstanceRow,
    a: Extract<Action, { a: 'sql' }>,
    stamp: string,
    log: Logger,
    recorded?: (status: 'completed' | 'failed') => void,
  ): Promise<void> {
    const identity: StepIdentity = { roleName: inst.role_name as string, roleOid: inst.role_oid };
    let delay = 100;
    for (let attempt = 1; ; attempt++) {
      if (this.stopping) return;
      const token = randomBytes(24).toString('base64url');
      const marked = await this.control.query(
        `UPDATE df.nodes n SET activation = $3, attempt_token = $4, attempts = $8,
                status = 'running', result = NULL, status_details = jsonb_build_object('execution_id', $7::text), updated_at = now()
          WHERE n.instance_id = $1 AND n.id = $2
            AND EXISTS (SELECT 1 FROM df.instances i WHERE i.id = $1 AND i.lease_epoch = $5 AND i.lease_owner = $6
                          AND i.status IN ('pending', 'running'))
            AND NOT EXISTS (SELECT 1 FROM df.events e WHERE e.instance_id = $1 AND e.activation = $3 AND e.kind IN ('done', 'failed'))`,
        [id, a.node, a.key, tokenHash(token), epoch, this.owner, stamp, a.attempt],
      );
      if (marked.rowCount === 0) return; // lease lost, cancelled, or already recorded
      const slotTimeout = this.opts.slotTimeoutMs ?? 30_000;
      const slot = await this.slots.take(identity.roleOid, slotTimeout);
      if (slot === 'closed') return; // stopping: the node is run again by whoever holds the lease next
      if (slot === 'timeout') {
        await this.event(id, epoch, a, 'failed', {
          error: `pg_durable: connection limit reached (max_user_connections=${this.opts.maxConcurrentSteps}). Timed out after ${Math.round(slotTimeout / 1000)}s waiting for an available execution slot.`,
        }).catch(() => undefined);
        return;
      }
      let conn;
      try {
        conn = await this.steps.acquire(identity);
      } catch (err) {
        this.slots.give(identity.roleOid);
        const msg = (err as Error).message;
        if (isRetryable(err) && attempt < 50) {
          await new Promise((r) => setTimeout(r, delay));
          delay = Math.min(delay * 2, 5000);
          continue;
        }
        await this.event(id, epoch, a, 'failed', {
          error: `Failed to connect to database as '${identity.roleName}'. Error: ${msg}`,
        }).catch(() => undefined);
        return;
      }
      const pids = this.active.get(id)?.stepPids;
      let pid = 0;
      try {
        const out = await runSqlStep(
          conn,
          { instance: id, node: a.node, key: a.key, epoch, token, sql: a.sql, stamp },
          (p) => {
            pid = p;
            pids?.add(p);
          },
          this.opts.stepTimeoutMs ?? 0,
          this.opts.maxResultBytes,
        );
        metrics.steps.inc({
          outcome: out.k === 'retry' ? 'retried' : out.k === 'unrecorded' ? 'failed' : out.k,
        });
        if (out.k === 'done') recorded?.('completed');
        else if (out.k === 'failed') recorded?.('failed');
        else if (out.k === 'unrecorded')
          await this.recordStepFailure(id, epoch, a, out.error, pid, log);
        if (out.k === 'retry') {
          log.warn(
            { node: a.node, err: String((out.err as Error).message) },
            'step hit an infrastructure error; running it again',
          );
          // the commit may have succeeded before the connection broke: the marked update above re-checks
          await new Promise((r) => setTimeout(r, delay));
          delay = Math.min(delay * 2, 5000);
          continue;
        }
        return;
      } finally {
        pids?.delete(pid);
        await this.steps.release(identity, conn);
        this.slots.give(identity.roleOid);
      }
    }
  }

  /**
   * A SQL step failure its step connection could not checkpoint (the result
   * passed --max-result-bytes and the connection was cut, or the checkpoint
   * itself raised): its backend is cancelled if still running, and the
   * failure is recorded through the control connection, lease-checked by
   * df._record_event and only if the activation has no outcome yet. The node
   * and the instance then fail as for any step error (spec §6.13).
   */
  private async recordStepFailure(
    id: string,
    epoch: number,
    a: Extract<Action, { a: 'sql' }>,
    error: string,
    pid: number,
    log: Logger,
  ): Promise<void> {
    log.warn(
      { node: a.node, err: error },
      'step failed; recording it through the control connection',
    );
    if (pid > 0)
      await this.control
        .query(
          `SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE pid = $1 AND application_name = 'dfgate:step'`,
          [pid],
        )
        .catch(() => undefined);
    try {
      await this.control.query(
        `SELECT df._record_event($1, $2, $3, $4, 'failed', $5::jsonb)
          WHERE NOT EXISTS (SELECT 1 FROM df.events e WHERE e.instance_id = $1 AND e.activation = $4
                               AND e.kind IN ('done', 'failed'))`,
        [id, epoch, a.node, a.key, JSON.stringify({ error })],
      );
    } catch (err) {
      // the lease was lost (its new holder runs the step), or the database is unreachable (the step runs again)
      log.warn({ node: a.node, err: (err as Error).message }, 'could not record the step failure');
    }
  }

  /**
   * An HTTP step (spec §6.12): the submitter's privilege and the endpoint
   * policy are checked at every request; the result or the error is recorded
   * as the node's event. At least once: a crash before the record sends again.
   */
  private async httpStep(
    id: string,
    epoch: number,
    inst: InstanceRow,
    a: Extract<Action, { a: 'http' }>,
  ): Promise<void> {
    const multipart = a.request.kind === 'HTTP_MULTIPART';
    const fn = multipart
      ? 'df.http_multipart(text,text,jsonb,jsonb,integer)'
      : 'df.http(text,text,text,jsonb,integer)';
    const fail = async (error: string): Promise<void> => {
      metrics.steps.inc({ outcome: 'failed' });
      await this.event(id, epoch, a, 'failed', { error }).catch(() => undefined);
    };
    const r = (
      await this.control.query<{
        ok: boolean;
        enabled: unknown;
        private: unknown;
        hosts: unknown;
      }>(
        `SELECT has_function_privilege($1::oid, $2, 'EXECUTE') AS ok,
                (SELECT value FROM df.config WHERE key = 'http_enabled') AS enabled,
                (SELECT value FROM df.config WHERE key = 'http_allow_private') AS private,
                (SELECT value FROM df.config WHERE key = 'http_allow_hosts') AS hosts`,
        [inst.role_oid, fn],
      )
    ).rows[0];
    if (!r?.ok) {
      await fail(
        `Blocked: role '${inst.role_name ?? ''}' does not have EXECUTE privilege on ${multipart ? 'df.http_multipart()' : 'df.http()'}. Grant EXECUTE ON FUNCTION ${fn} TO ${inst.role_name ?? ''} to allow ${multipart ? 'multipart HTTP' : 'HTTP'} requests.`,
      );
      return;
    }
    const policy = {
      enabled: r.enabled !== false,
      allowPrivate: r.private === true,
      allowHosts: Array.isArray(r.hosts) ? r.hosts.map(String).map((h) => h.toLowerCase()) : [],
    };
    const slot = await this.slots.take(inst.role_oid);
    if (slot === 'closed') return;
    if (slot === 'timeout') {
      await fail(
        `pg_durable: connection limit reached (max_user_connections=${this.opts.maxConcurrentSteps}). Timed out waiting for an available execution slot.`,
      );
      return;
    }
    try {
      const result = await sendHttp(a.request, policy, {
        idempotencyKey: idempotencyKey(inst.id, inst.root_node, a.key),
        ...(this.opts.maxResultBytes !== undefined
          ? { maxBodyBytes: this.opts.maxResultBytes }
          : {}),
      });
      metrics.steps.inc({ outcome: 'done' });
      await this.event(id, epoch, a, 'done', { result }).catch(async (err: unknown) => {
        // a lost connection or lease: the next holder sends it again (at least once);
        // an outcome that cannot be stored fails the step once instead of re-sending forever
        if (isRetryable(err) || /^dfgate: |lease/.test(String((err as Error).message))) return;
        await fail(
          `HTTP request failed: the response could not be recorded: ${(err as Error).message}`,
        );
      });
    } catch (err) {
      if (!(err instanceof HttpStepError)) throw err;
      await fail(err.message);
    } finally {
      this.slots.give(inst.role_oid);
    }
  }

  /**
   * on_failure (df.start): when an instance fails, starts its on_failure
   * workflow as the instance's role, through df.start on a step connection of
   * that role, with the variables failed_instance_id and failed_error added to
   * the role's variables for that start only (df.vars is changed and restored
   * inside the transaction, so no other session sees it). The idempotency key
   * `dfgate:on_failure:<id>` makes a repeat after a crash return the same
   * child. Returns the child's id, or null (no on_failure, or it cannot start:
   * logged, and the instance fails anyway).
   */
  private async startOnFailure(
    inst: InstanceRow,
    error: string,
    log: Logger,
  ): Promise<string | null> {
    const graph = inst.options?.['on_failure'];
    if (typeof graph !== 'string' || inst.role_name === null) return null;
    const identity: StepIdentity = { roleName: inst.role_name, roleOid: inst.role_oid };
    let conn;
    try {
      conn = await this.steps.acquire(identity);
    } catch (err) {
      if (isRetryable(err)) throw err; // the next lease holder tries again
      log.warn({ err: (err as Error).message }, 'on_failure: no connection as the instance role');
      return null;
    }
    const c = conn.client;
    try {
      await c.query('BEGIN');
      const vars = { failed_instance_id: inst.id, failed_error: error };
      const saved = (
        await c.query<{ name: string; value: string | null }>(
          `SELECT name, value FROM df.vars WHERE owner = quote_ident(current_user)::regrole AND name = ANY ($1)`,
          [Object.keys(vars)],
        )
      ).rows;
      for (const [name, value] of Object.entries(vars))
        await c.query(
          `INSERT INTO df.vars AS v (name, value, owner) VALUES ($1, $2, quote_ident(current_user)::regrole)
           ON CONFLICT (owner, name) DO UPDATE SET value = EXCLUDED.value`,
          [name, value],
        );
      const child = (
        await c.query<{ id: string }>(
          `SELECT df.start($1::text, $2::text, idempotency_key => $3) AS id`,
          [graph, `on_failure of ${inst.id}`, `dfgate:on_failure:${inst.id}`],
        )
      ).rows[0]?.id as string;
      await c.query(
        `DELETE FROM df.vars WHERE owner = quote_ident(current_user)::regrole AND name = ANY ($1)`,
        [Object.keys(vars)],
      );
      for (const r of saved)
        await c.query(
          `INSERT INTO df.vars (name, value, owner) VALUES ($1, $2, quote_ident(current_user)::regrole)`,
          [r.name, r.value],
        );
      await c.query('COMMIT');
      log.info({ child }, 'on_failure workflow started');
      this.wake();
      return child;
    } catch (err) {
      await c.query('ROLLBACK').catch(() => undefined);
      if (isRetryable(err)) throw err;
      log.warn({ err: (err as Error).message }, 'on_failure workflow could not be started');
      return null;
    } finally {
      await this.steps.release(identity, conn);
    }
  }

  /**
   * df.start(..., transaction_mode => 'new') for the proxy: runs df.start as
   * `login` (the client session's login role) on a step connection of that
   * role, in a transaction of its own, and wakes the executor once committed.
   */
  async startNew(req: StartNewRequest): Promise<string> {
    this.database ??= (await this.control.query<{ db: string }>('SELECT current_database() AS db'))
      .rows[0]?.db;
    if (req.database !== this.database) {
      throw Object.assign(
        new Error(
          `df.start(..., transaction_mode => 'new') through dfgate works in database "${this.database ?? ''}", where its executor runs; this session is connected to "${req.database}"`,
        ),
        { code: '0A000' },
      );
    }
    const r = await this.control.query<{ oid: number }>(
      'SELECT oid::int AS oid FROM pg_roles WHERE rolname = $1',
      [req.login],
    );
    const oid = r.rows[0]?.oid;
    if (oid === undefined)
      throw Object.assign(new Error(`role "${req.login}" does not exist`), { code: '42704' });
    const identity = { roleName: req.login, roleOid: oid };
    const conn = await this.steps.acquire(identity);
    try {
      const names = [...req.args.keys()];
      const res = await conn.client.query<{ id: string }>(
        `SELECT df.start(${names.map((n, i) => `${n} => $${i + 1}`).join(', ')}) AS id`,
        names.map((n) => req.args.get(n) ?? null),
      );
      const id = res.rows[0]?.id as string;
      metrics.newModeStarts.inc();
      this.wake();
      return id;
    } finally {
      await this.steps.release(identity, conn);
    }
  }

  /** For the admin port: instances driven now, and whether the executor is up (LISTEN connected). */
  stats(): { readonly activeInstances: number; readonly listening: boolean } {
    return { activeInstances: this.active.size, listening: !this.stopping && !!this.listener };
  }

  private scheduleReconcile(ms: number): void {
    if (this.stopping) return;
    this.reconcileTimer = setTimeout(() => void this.reconcile(), ms);
    this.reconcileTimer.unref();
  }

  /**
   * Retention (spec §12.2, migration 0010): deletes expired finished
   * instances in batches, then waits reconcile_interval_seconds (re-read each
   * pass; while 0, the setting is looked at again every minute).
   */
  private async reconcile(): Promise<void> {
    let interval = 3600;
    try {
      const r = await this.control.query<{ v: string | null }>(
        `SELECT value #>> '{}' AS v FROM df.config WHERE key = 'reconcile_interval_seconds'`,
      );
      interval = Number(r.rows[0]?.v ?? 3600);
      if (!Number.isFinite(interval) || interval < 0) interval = 3600;
      for (let pass = 0; interval > 0 && pass < 1000 && !this.stopping; pass++) {
        const n = (await this.control.query<{ n: number }>('SELECT df._reconcile(5000) AS n'))
          .rows[0]?.n;
        if (!n) break;
        metrics.reconciled.inc({}, n);
        this.log.info({ deleted: n }, 'retention: deleted finished instances');
        if (n < 5000) break;
      }
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'retention pass failed');
    }
    this.scheduleReconcile(interval > 0 ? interval * 1000 : 60_000);
  }

  async stop(): Promise<void> {
    this.stopping = true;
    if (this.reconcileTimer) clearTimeout(this.reconcileTimer);
    if (this.timer) clearInterval(this.timer);
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.slots.close(); // steps waiting for a slot stop waiting; the next lease holder runs them
    await Promise.allSettled([...this.finished]);
    // hand our leases back so another executor can continue at once
    await this.control
      .query(
        `UPDATE df.instances SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner = $1`,
        [this.owner],
      )
      .catch(() => undefined);
    await this.listener?.end().catch(() => undefined);
    await this.steps.close();
    await this.control.end().catch(() => undefined);
  }
}
