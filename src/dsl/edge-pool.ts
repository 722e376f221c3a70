/**
 * Compiling df.start statements off the proxy's event loop: a small pool of
 * worker threads (edge-worker.ts) runs libpg-query and the DSL evaluation, so
 * a costly statement of one session never stalls the others. Statements
 * over the edge's limits, cached ones and statements that cannot be sent to a
 * worker are answered at once. A job that runs past its budget ends its
 * worker (a new one starts) and the statement is left to the database, where
 * the in-database df.start does the same work. Jobs wait in turns by owner
 * (the client's role): one role's many costly statements hold back another
 * role's at most by the one job running.
 */
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import {
  analyze,
  ANALYZE_MAX,
  BATCH_MAX,
  cachedEdge,
  checkBound,
  rememberEdge,
  toEdge,
  type BoundProblem,
  type Edge,
} from './edge.js';
import { UNPARSED, type StepPlan } from '../executor/sqlcheck.js';
import type { CheckResult } from './check-expression.js';
import type { EdgeAnswer, EdgeJob } from './edge-worker.js';
import { FairQueue } from './fair-queue.js';

/** A compile job running longer than this is abandoned: the statement goes to the database unchanged. */
export const COMPILE_BUDGET_MS = 2000;

/**
 * A step text's check (planInPool) may run this long: a 16 MiB comment
 * takes about 0.4 s, 16 MiB of list elements much longer; past it the step
 * is refused, never run unchecked.
 */
export const STEP_CHECK_BUDGET_MS = 30_000;

/**
 * A worker that has not said it is ready this long after it was started
 * (its parser hangs while loading, say) is ended and counted as one that
 * could not start: the statements waiting for it go to the database
 * unchanged, and a new worker is tried.
 */
export const WORKER_START_MS = 15_000;

const PASS: Edge = { kind: 'pass' };

/** A queued job: what the worker is sent, what to do with its answer, and the answer when it is abandoned. */
interface Job {
  readonly id: number;
  /** The turn it waits in. */
  readonly owner: string;
  readonly send: EdgeJob;
  /** How long it may run (default COMPILE_BUDGET_MS). */
  readonly budgetMs?: number;
  /** When it must have ended (ms since epoch): a worker takes it only before, and stops it then. */
  readonly deadline?: number;
  answered(m: EdgeAnswer): void;
  abandoned(): void;
}

/**
 * The compiled worker script. From dist/ it sits next to this module; when
 * the sources run directly (vitest), the build in dist/ is used.
 */
function workerUrl(): URL | undefined {
  for (const rel of ['./edge-worker.js', '../../dist/src/dsl/edge-worker.js']) {
    const u = new URL(rel, import.meta.url);
    if (existsSync(fileURLToPath(u))) return u;
  }
  return undefined;
}

class Slot {
  private worker: Worker | undefined;
  private current: { job: Job; timer: NodeJS.Timeout } | undefined;
  private ready = false;
  /** The current worker said it was ready once: a death after that is its job's doing, not its start's. */
  private started = false;

  constructor(
    private readonly url: URL,
    private readonly next: () => Job | undefined,
    private readonly failed: (started: boolean) => void,
    /** A worker did not start in time: what waits for one is left to the database. */
    private readonly stalled: () => void,
  ) {}

  get busy(): boolean {
    return this.current !== undefined;
  }

  private spawn(): Worker {
    const w = new Worker(this.url);
    this.ready = false;
    this.started = false;
    const startup = setTimeout(() => {
      if (this.worker !== w || this.ready) return;
      void w.terminate();
      this.stalled();
      this.lost();
    }, WORKER_START_MS);
    startup.unref();
    w.on('message', (m: EdgeAnswer | 'ready') => {
      // a worker already replaced may still deliver what it posted before it ended
      if (this.worker !== w) return;
      if (m === 'ready') {
        clearTimeout(startup);
        this.ready = true;
        this.started = true;
        this.pull();
        return;
      }
      const cur = this.current;
      if (!cur || cur.job.id !== m.id) return;
      clearTimeout(cur.timer);
      this.current = undefined;
      cur.job.answered(m);
      this.pull();
    });
    // a worker already replaced (its job ran past its budget) ends unheeded: the current one is not its
    w.on('error', () => {
      if (this.worker === w) this.lost();
    });
    w.on('exit', () => {
      clearTimeout(startup);
      if (this.worker === w) this.lost();
    });
    // after the listeners: attaching a 'message' listener refs the worker's port again
    w.unref();
    this.worker = w;
    return w;
  }

  /** The worker died or was ended: its job goes to the database, a new worker takes the rest. */
  private lost(): void {
    const cur = this.current;
    this.current = undefined;
    this.worker = undefined;
    this.ready = false;
    if (cur) {
      clearTimeout(cur.timer);
      cur.job.abandoned();
    }
    this.failed(this.started);
  }

  /** Takes the next queued job if idle. */
  pull(): void {
    if (this.current) return;
    const w = this.worker ?? this.spawn();
    if (!this.ready) return;
    const job = this.next();
    if (!job) return;
    const timer = setTimeout(() => {
      const cur = this.current;
      this.current = undefined;
      this.worker = undefined;
      void w.terminate();
      if (cur) cur.job.abandoned();
      this.pull();
    }, budgetOf(job));
    timer.unref();
    this.current = { job, timer };
    w.postMessage(job.send);
  }
}

/** How long a job may run once a worker takes it. */
function budgetOf(job: Job): number {
  if (job.deadline !== undefined) return Math.max(1, job.deadline - Date.now());
  return job.budgetMs ?? COMPILE_BUDGET_MS;
}

class Pool {
  private readonly queue = new FairQueue<Job>();
  private readonly slots: Slot[] = [];
  private nextId = 1;

  /**
   * Workers that died before they were ready, since a worker last answered:
   * past a few in a row (workers that cannot start) the pool stops trying and
   * statements go to the database unchanged. A worker that dies while running
   * a job (whatever a statement made it do) is replaced and never counted, so
   * no tenant's statements can make the pool give up.
   */
  private deaths = 0;

  get size(): number {
    return this.slots.length;
  }

  constructor(url: URL, size: number) {
    for (let i = 0; i < size; i++)
      this.slots.push(
        new Slot(
          url,
          () => this.next(),
          (started) => {
            if (!started && ++this.deaths > 5) {
              // no worker starts again: what waits is abandoned (left to the database)
              this.broken = true;
              this.abandonQueued();
              return;
            }
            this.kick();
          },
          () => this.abandonQueued(true),
        ),
      );
  }

  broken = false;

  /**
   * What waits for a worker goes to the database unchanged. On a stalled
   * start (`stalled`) a step's check keeps its place for the next worker:
   * abandoned, it would refuse the step, not hand it on.
   */
  private abandonQueued(stalled = false): void {
    const kept: Job[] = [];
    for (let j = this.queue.shift(); j; j = this.queue.shift())
      if (stalled && 'step' in j.send) kept.push(j);
      else j.abandoned();
    for (const j of kept) this.queue.push(j.owner, j);
  }

  private next(): Job | undefined {
    for (let j = this.queue.shift(); j; j = this.queue.shift()) {
      if (j.deadline === undefined || Date.now() < j.deadline) return j;
      j.abandoned();
    }
    return undefined;
  }

  /** Queues a job for `owner`'s turn: `answer` turns the worker's answer into the result, `otherwise` stands when it is abandoned. */
  private ask<T>(
    owner: string,
    send: (id: number) => EdgeJob,
    answer: (m: EdgeAnswer) => T,
    otherwise: T,
    limits: { readonly budgetMs?: number; readonly deadline?: number } = {},
  ): Promise<T> {
    return new Promise((resolve) => {
      const id = this.nextId++;
      this.queue.push(owner, {
        ...limits,
        id,
        owner,
        send: send(id),
        answered: (m) => {
          this.deaths = 0;
          resolve(answer(m));
        },
        abandoned: () => resolve(otherwise),
      });
      this.kick();
    });
  }

  run(sql: string, extended: boolean, owner: string): Promise<Edge> {
    return this.ask(
      owner,
      (id) => ({ id, sql, extended }),
      (m) => {
        if (!('analysis' in m)) return PASS;
        const e = toEdge(sql, m.analysis);
        rememberEdge(sql, extended, e);
        return e;
      },
      PASS,
    );
  }

  check(bound: readonly string[], owner: string): Promise<BoundProblem | undefined> {
    // abandoned: the in-database df.start checks it
    return this.ask(
      owner,
      (id) => ({ id, bound }),
      (m) => ('problem' in m ? (m.problem ?? undefined) : undefined),
      undefined,
    );
  }

  /** A step text's plan, or why its check threw; undefined when the worker ran past its budget or died. */
  plan(step: string, owner: string): Promise<StepPlan | { failed: string } | undefined> {
    return this.ask<StepPlan | { failed: string } | undefined>(
      owner,
      (id) => ({ id, step }),
      // the one object the plan cache knows as a text it must not keep
      (m) =>
        'plan' in m
          ? m.unparsed
            ? UNPARSED
            : m.plan
          : 'failed' in m
            ? { failed: m.failed }
            : undefined,
      undefined,
      { budgetMs: STEP_CHECK_BUDGET_MS },
    );
  }

  /** The console's check of an expression; undefined when the worker ran past its budget or died. */
  checkExpr(source: string, owner: string): Promise<CheckResult | undefined> {
    return this.ask(
      owner,
      (id) => ({ id, check: source }),
      (m) => ('checked' in m ? m.checked : undefined),
      undefined,
    );
  }

  /**
   * Warms the workers up (edge-warm.ts), one job per worker: resolves with the
   * number that finished, when all have ended (finished, or their worker
   * died) or `budgetMs` after the call, whichever comes first. A warm job
   * still queued then is dropped, and one still running is cut off at the
   * same moment (its worker replaced), so no client waits behind it.
   */
  warm(rounds: number, budgetMs: number): Promise<number> {
    const deadline = Date.now() + budgetMs;
    const jobs = this.slots.map(() =>
      this.ask(
        '',
        (id) => ({ id, warm: rounds }),
        (m) => ('warmed' in m ? 1 : 0),
        0,
        { deadline },
      ),
    );
    // the workers are unref'd: this timer holds the process open until the warm-up ends
    let timer: NodeJS.Timeout | undefined;
    let done = 0;
    const counted = Promise.all(jobs.map((j) => j.then((n) => void (done += n))));
    const expired = new Promise<void>((resolve) => (timer = setTimeout(resolve, budgetMs)));
    return Promise.race([counted, expired]).then(() => {
      clearTimeout(timer);
      return done;
    });
  }

  private kick(): void {
    for (const s of this.slots) if (!s.busy) s.pull();
  }
}

let pool: Pool | undefined;
let noPool = false;

function thePool(): Pool | undefined {
  if (pool || noPool) return pool && !pool.broken ? pool : undefined;
  const url = workerUrl();
  if (!url) {
    noPool = true;
    return undefined;
  }
  // one core stays with the event loop; the workers share the rest, up to 2
  pool = new Pool(url, Math.max(1, Math.min(2, availableParallelism() - 1)));
  return pool;
}

/**
 * What the proxy does with a statement that mentions df.: at once when the
 * answer needs no compiling (over the limits, or cached), else from the pool,
 * in `owner`'s turn.
 */
export function analyzeSoon(sql: string, extended: boolean, owner: string): Edge | Promise<Edge> {
  // only O(1) checks here: the scan of withinLimits runs in the worker too
  if (sql.length > BATCH_MAX) return PASS;
  const hit = cachedEdge(sql, extended);
  if (hit) return hit;
  const p = thePool();
  if (p) return p.run(sql, extended, owner);
  // workers that cannot start: the in-database df.start does the same work, off the event loop
  return gaveUp() ? PASS : analyze(sql, extended);
}

/** The pool gave up on its workers (Pool.broken): what they would do is left to the database. */
function gaveUp(): boolean {
  return pool?.broken === true;
}

/**
 * Warms the compile workers up before the proxy takes clients (edge-warm.ts,
 * docs/proxy.md "Compiler warm-up"): `rounds` rounds in each, within
 * `budgetMs` of the call, workers' start-up included. Resolves with how many
 * workers finished and how many there are (0 of 0 without a pool).
 */
export async function warmCompiler(
  rounds: number,
  budgetMs = 10_000,
): Promise<{ readonly done: number; readonly of: number }> {
  const p = rounds > 0 ? thePool() : undefined;
  if (!p) return { done: 0, of: 0 };
  return { done: await p.warm(rounds, budgetMs), of: p.size };
}

/** Bound values up to this many characters in all are checked on the calling thread (well under 0.1 ms). */
const BOUND_INLINE_MAX = 512;

/**
 * The start rule's verdict on the workflow values bound to df.start($n) (the
 * first refused one), at once for short values, else from the pool. Values
 * that are not text (undefined) or longer than ANALYZE_MAX are left to the
 * in-database df.start.
 */
export function checkBoundSoon(
  values: ReadonlyArray<string | undefined>,
  owner: string,
): BoundProblem | undefined | Promise<BoundProblem | undefined> {
  const todo = values.filter((v): v is string => v !== undefined && v.length <= ANALYZE_MAX);
  if (todo.length === 0) return undefined;
  const big = todo.reduce((n, v) => n + v.length, 0) > BOUND_INLINE_MAX;
  const p = big ? thePool() : undefined;
  if (p) return p.check(todo, owner);
  if (big && gaveUp()) return undefined; // the in-database df.start checks them
  for (const v of todo) {
    const problem = checkBound(v);
    if (problem) return problem;
  }
  return undefined;
}

/**
 * A long step text's plan from the pool (in `owner`'s turn), or why its
 * check threw (`failed`): 'abandoned'
 * when it ran past its budget or its worker died, undefined when there is no
 * pool (the caller checks the text itself).
 */
export function planInPool(
  step: string,
  owner: string,
): Promise<StepPlan | { failed: string } | 'abandoned'> | undefined {
  const p = thePool();
  return p ? p.plan(step, owner).then((plan) => plan ?? 'abandoned') : undefined;
}

/**
 * The console's check of an expression from the pool (in `owner`'s turn):
 * 'abandoned' when it ran past COMPILE_BUDGET_MS or its worker died,
 * undefined when there is no pool (the caller checks it itself).
 */
export function checkInPool(
  source: string,
  owner: string,
): Promise<CheckResult | 'abandoned'> | undefined {
  const p = thePool();
  return p ? p.checkExpr(source, owner).then((r) => r ?? 'abandoned') : undefined;
}
