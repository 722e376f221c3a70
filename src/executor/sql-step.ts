/**
 * Running one SQL step of an instance exactly once (DESIGN.md §4): the
 * attempt is marked through the control connection, a step slot and a step
 * connection of the submitter's role are taken, and runSqlStep (steps.ts)
 * runs the statement and its checkpoint in one transaction. Infrastructure
 * errors run the step again; a failure its step connection could not
 * checkpoint is recorded through the control connection.
 */
import type { Logger } from 'pino';
import { metrics } from '../metrics.js';
import type { Action } from './core.js';
import type { RunnerContext } from './context.js';
import { runSqlStep, type RecordedEvent, type StepIdentity } from './steps.js';
import { isRetryable } from './step-errors.js';
import type { InstanceRow } from './store.js';
import type { Premark } from './carry.js';
import { newToken, tokenHash } from './token.js';

export interface StepHooks {
  /** The step's outcome committed, with its event. */
  readonly recorded?: (status: 'completed' | 'failed', event: RecordedEvent | undefined) => void;
  /** What the checkpoint of a completed step carries (carry.ts), as JSON text. */
  readonly after?: (result: string) => Promise<string | undefined>;
  /** The first attempt, already marked by the checkpoint before it. */
  readonly premark?: Premark;
  /** Under a retry policy: the attempt's status_details keys (JSON), written with its mark. */
  readonly retry?: string;
}

export async function sqlStep(
  ctx: RunnerContext,
  id: string,
  epoch: number,
  inst: InstanceRow,
  a: Extract<Action, { a: 'sql' }>,
  stamp: string,
  log: Logger,
  hooks: StepHooks = {},
): Promise<void> {
  const { recorded, premark } = hooks;
  const identity: StepIdentity = { roleName: inst.role_name as string, roleOid: inst.role_oid };
  let delay = 100;
  for (let attempt = 1; ; attempt++) {
    if (ctx.stopping()) return;
    // the checkpoint before this step marked its first attempt already (carry.ts)
    const pre =
      attempt === 1 && premark?.stamp === stamp && premark.attempt === a.attempt
        ? premark
        : undefined;
    const token = pre?.token ?? newToken();
    // The attempt mark travels on the control connection while the statement runs: runSqlStep
    // sends it right after the statement's message (so the statement goes first) and awaits it
    // before anything commits. False: lease lost, cancelled, or already recorded (the
    // statement, if it ran, is rolled back).
    let marking: Promise<boolean> | undefined;
    const mark = (): Promise<boolean> => {
      if (!marking) {
        marking = pre
          ? Promise.resolve(true)
          : ctx.store.markAttempt(id, epoch, a, tokenHash(token), stamp, a.attempt, hooks.retry);
        marking.catch(() => undefined); // awaited where it matters; an early return leaves it unhandled
      }
      return marking;
    };
    const markedOk = (): Promise<boolean> => mark().catch(() => false);
    const slotTimeout = ctx.slotTimeoutMs;
    const slot = await ctx.slots.take(identity.roleOid, slotTimeout);
    if (slot === 'closed') {
      if (marking) await markedOk();
      return; // stopping: the node is run again by whoever holds the lease next
    }
    if (slot === 'timeout') {
      if (!(await markedOk())) return;
      await ctx.store
        .recordEvent(id, epoch, a, 'failed', {
          error: `pg_durable: connection limit reached (max_user_connections=${ctx.maxConcurrentSteps}). Timed out after ${Math.round(slotTimeout / 1000)}s waiting for an available execution slot.`,
        })
        .catch(() => undefined);
      return;
    }
    let conn;
    try {
      conn = await ctx.steps.acquire(identity);
    } catch (err) {
      ctx.slots.give(identity.roleOid);
      const msg = (err as Error).message;
      if (!(await markedOk())) return;
      if (isRetryable(err) && attempt < 50) {
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 5000);
        continue;
      }
      await ctx.store
        .recordEvent(id, epoch, a, 'failed', {
          error: `Failed to connect to database as '${identity.roleName}'. Error: ${msg}`,
        })
        .catch(() => undefined);
      return;
    }
    const pids = ctx.stepPids(id);
    let pid = 0;
    try {
      const out = await runSqlStep(
        conn,
        {
          instance: id,
          node: a.node,
          key: a.key,
          epoch,
          token,
          sql: a.sql,
          owner: `role:${inst.role_oid}`,
          stamp,
          mark,
          // alone and not yet marked, the statement goes at once, its mark on the way (steps.ts)
          oneTrip: pre !== undefined || ctx.slots.inUse() > 1,
          ...(hooks.after ? { after: hooks.after } : {}),
        },
        (p) => {
          pid = p;
          pids?.add(p);
        },
        ctx.stepTimeoutMs,
        ctx.maxResultBytes,
      );
      metrics.steps.inc({
        outcome: out.k === 'retry' ? 'retried' : out.k === 'unrecorded' ? 'failed' : out.k,
      });
      if (out.k === 'abandoned')
        log.debug({ node: a.node, key: a.key, epoch, reason: out.reason }, 'step abandoned');
      if (out.k === 'done') recorded?.('completed', out.event);
      else if (out.k === 'failed') recorded?.('failed', out.event);
      else if (out.k === 'unrecorded' && (await markedOk()))
        await recordStepFailure(ctx, id, epoch, a, out.error, pid, log);
      if (out.k === 'retry') {
        log.warn(
          { node: a.node, err: String((out.err as Error).message) },
          'step hit an infrastructure error; running it again',
        );
        // the commit may have succeeded before the connection broke: the attempt mark re-checks
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 5000);
        continue;
      }
      return;
    } finally {
      pids?.delete(pid);
      await ctx.steps.release(identity, conn);
      ctx.slots.give(identity.roleOid);
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
export async function recordStepFailure(
  ctx: RunnerContext,
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
  if (pid > 0) await ctx.store.cancelStepBackend(pid).catch(() => undefined);
  try {
    await ctx.store.recordStepFailure(id, epoch, a, error);
  } catch (err) {
    // the lease was lost (its new holder runs the step), or the database is unreachable (the step runs again)
    log.warn({ node: a.node, err: (err as Error).message }, 'could not record the step failure');
  }
}
