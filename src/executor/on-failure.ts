/**
 * on_failure (df.start): when an instance fails, its on_failure workflow is
 * started as the instance's role, through df.start on a step connection of
 * that role, with the variables failed_instance_id and failed_error added to
 * the role's variables for that start only (df.vars is changed and restored
 * inside the transaction, so no other session sees it). The idempotency key
 * `dfgate:on_failure:<id>` makes a repeat after a crash return the same child.
 */
import type { Logger } from 'pino';
import { isRetryable } from './step-errors.js';
import type { StepIdentity, StepPool } from './steps.js';
import type { InstanceRow } from './store.js';

/** The child's id, or null (no on_failure, or it cannot start: logged, and the instance fails anyway). */
export async function startOnFailure(
  steps: StepPool,
  inst: InstanceRow,
  error: string,
  log: Logger,
  started: () => void,
): Promise<string | null> {
  const graph = inst.options?.['on_failure'];
  if (typeof graph !== 'string' || inst.role_name === null) return null;
  const identity: StepIdentity = { roleName: inst.role_name, roleOid: inst.role_oid };
  let conn;
  try {
    conn = await steps.acquire(identity);
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
      `UPDATE df.vars SET value = NULL WHERE owner = quote_ident(current_user)::regrole AND name = ANY ($1)`,
      [Object.keys(vars)],
    );
    await c.query('SELECT df._purge_vars()'); // removes them (a role may not DELETE from df.vars)
    for (const r of saved)
      await c.query(
        `INSERT INTO df.vars (name, value, owner) VALUES ($1, $2, quote_ident(current_user)::regrole)`,
        [r.name, r.value],
      );
    await c.query('COMMIT');
    log.info({ child }, 'on_failure workflow started');
    started();
    return child;
  } catch (err) {
    await c.query('ROLLBACK').catch(() => undefined);
    if (isRetryable(err)) throw err;
    log.warn({ err: (err as Error).message }, 'on_failure workflow could not be started');
    return null;
  } finally {
    await steps.release(identity, conn);
  }
}
