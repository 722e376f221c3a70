/** The executor's options (set from the CLI in src/config.ts), and the cron rule it runs timers by. */
import { Cron } from 'croner';
import pg from 'pg';
import type { Logger } from 'pino';
import type { ControlStore } from './store.js';
import { isRetryable } from './step-errors.js';
import type { StepAuth } from './steps.js';

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
  /** Due parked instances locked and fired per batch (src/executor/timers.ts; default 500). */
  readonly timerBatch?: number;
}

/** The next time the cron expression matches after `after` (UTC). */
export function nextCron(expr: string, after: Date): Date {
  const next = new Cron(expr, { timezone: 'UTC', paused: true }).nextRun(after);
  if (!next) throw new Error('the expression never matches');
  return next;
}

/**
 * How long a control statement waits for a row lock before it fails (lock_timeout).
 * dfgate's own statements hold their locks for milliseconds, but a role may lock its
 * own instance rows (it may update their status) and keep them locked as long as it
 * likes: a control statement that met such a lock would hold one of the control
 * connections every role shares. Past this it fails instead; the instance it was
 * for is taken up again when its lease expires (docs/executor.md, "Locks a role holds").
 */
export const CONTROL_LOCK_TIMEOUT_MS = 5000;

const GENERIC_PLANS = `-c plan_cache_mode=force_generic_plan -c lock_timeout=${CONTROL_LOCK_TIMEOUT_MS}`;
/**
 * Attempt marks commit without waiting for their WAL flush (docs/executor.md,
 * "Commits that do not wait"): the checkpoint that depends on a mark commits
 * later and its own flush carries the mark's, since WAL is flushed in order;
 * a mark lost in a crash took nothing with it that another write relies on.
 * Claims wait: a claim lost in a crash would let another executor claim the
 * instance at the same lease epoch, which the lost claimer's writes still fence by.
 */
const NO_FLUSH_WAIT = `${GENERIC_PLANS} -c synchronous_commit=off`;

/** The executor's connections to the database, besides the step connections. */
export interface ControlPools {
  /** Every control statement but the two below. */
  readonly control: pg.Pool;
  /** The claims, one at a time. */
  readonly claimer: pg.Pool;
  /** The attempt marks, one batch at a time (marks.ts); the only commits that do not wait for their flush. */
  readonly marker: pg.Pool;
  end(): Promise<void>;
}

/**
 * The executor's control connections: a pool for every control statement,
 * one connection for the claim (claims run one at a time) and one for the
 * attempt marks. All keep the generic plans of their prepared statements:
 * left to itself, PostgreSQL re-plans the claim at every call (its generic
 * plan is estimated dearer than the custom ones, which take ~1 ms to plan
 * and 0.1 ms to run), and the attempt marks at 70% of the calls (0.24 ms to
 * plan, as long as running them: an array of a few rows looks cheaper than
 * the ten a generic plan assumes). Every control statement reaches its rows
 * by key or through a partial index, whatever the values. A generic plan made
 * while df.instances was small is remade when the table has grown
 * (statistics.ts). The mark connection does not wait for its commits' WAL
 * flush (NO_FLUSH_WAIT).
 */
export function controlPools(url: string, log: Logger): ControlPools {
  const pool = (max: number, options: string, what: string): pg.Pool => {
    const p = new pg.Pool({
      connectionString: url,
      max,
      application_name: 'dfgate:executor',
      options,
    } as pg.PoolConfig);
    p.on('error', (err) => log.warn({ err: err.message }, `${what} connection error`));
    return p;
  };
  const control = pool(6, GENERIC_PLANS, 'control');
  const claimer = pool(1, GENERIC_PLANS, 'claim');
  const marker = pool(1, NO_FLUSH_WAIT, 'attempt mark');
  return {
    control,
    claimer,
    marker,
    async end() {
      await Promise.all([control, claimer, marker].map((p) => p.end().catch(() => undefined)));
    },
  };
}

/** Refuses a read-only standby as the control URL; a connection dropped meanwhile is retried. */
export async function requirePrimary(store: ControlStore, log: Logger): Promise<void> {
  // a connection dropped while starting (a restart, pg_terminate_backend) is retried, not fatal
  let ro: boolean | undefined;
  for (let attempt = 1; ; attempt++) {
    try {
      ro = await store.isStandby();
      break;
    } catch (err) {
      if (!isRetryable(err) || attempt >= 30) throw err;
      log.warn({ err: (err as Error).message }, 'executor start: connection lost; retrying');
      await new Promise((r) => setTimeout(r, Math.min(100 * attempt, 1000)));
    }
  }
  if (ro) {
    throw new Error(
      'the executor URL points at a read-only standby: use the primary (add target_session_attrs=read-write to a multi-host URL)',
    );
  }
}
