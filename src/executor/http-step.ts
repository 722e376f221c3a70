/**
 * An HTTP step (spec §6.12): the submitter's privilege and the endpoint
 * policy are checked at every request; the result or the error is recorded
 * as the node's event. At least once: a crash before the record sends again.
 */
import { metrics } from '../metrics.js';
import type { Action } from './core.js';
import type { RunnerContext } from './context.js';
import { HttpStepError, idempotencyKey, sendHttp } from './http.js';
import { isRetryable } from './step-errors.js';
import type { InstanceRow } from './store.js';

export async function httpStep(
  ctx: RunnerContext,
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
    await ctx.store.recordEvent(id, epoch, a, 'failed', { error }).catch(() => undefined);
  };
  const r = await ctx.store.httpPolicy(inst.role_oid, fn);
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
  const slot = await ctx.slots.take(inst.role_oid);
  if (slot === 'closed') return;
  if (slot === 'timeout') {
    await fail(
      `pg_durable: connection limit reached (max_user_connections=${ctx.maxConcurrentSteps}). Timed out waiting for an available execution slot.`,
    );
    return;
  }
  try {
    const result = await sendHttp(a.request, policy, {
      idempotencyKey: idempotencyKey(inst.id, inst.root_node, a.key),
      ...(ctx.maxResultBytes !== undefined ? { maxBodyBytes: ctx.maxResultBytes } : {}),
    });
    metrics.steps.inc({ outcome: 'done' });
    await ctx.store.recordEvent(id, epoch, a, 'done', { result }).catch(async (err: unknown) => {
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
    ctx.slots.give(inst.role_oid);
  }
}
