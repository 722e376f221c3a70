/**
 * df.start(..., transaction_mode => 'new') through the proxy: the instance
 * is started on dfgate's own connection as the session's login role, and
 * committed on its own (docs/proxy.md).
 */
import { SqlState } from '../../db/sqlstate.js';
import type { StartParam } from '../../dsl/edge.js';
import type { StartNewRequest } from '../../contract/start-new.js';
import { refusal } from './errors.js';
import type { EdgeHost } from './intercept.js';

/** An error with PostgreSQL's fields, as thrown by startNew. */
interface PgErrorLike {
  readonly code?: string;
  readonly message: string;
  readonly hint?: string;
  readonly detail?: string;
}

/** The new instance's id, or the error for the client ('server': let the server answer the statement). */
export type NewOutcome =
  | { readonly id: string; readonly error?: undefined }
  | { readonly error: 'server' | ReadonlyMap<string, string> };

/** Checks the session's role, then starts the instance on dfgate's own connection. */
export async function runNew(
  host: EdgeHost,
  startNew: ((req: StartNewRequest) => Promise<string>) | undefined,
  args: Map<StartParam, string | null>,
): Promise<NewOutcome> {
  if (!startNew)
    return {
      error: refusal(
        SqlState.FeatureNotSupported,
        "df.start(..., transaction_mode => 'new') needs dfgate's executor, which this dfgate runs without",
      ),
    };
  const user = host.user;
  const who = await host.conversation.whoAmI();
  if (who === undefined) return { error: 'server' }; // e.g. an aborted transaction: the server says so
  if (who !== user)
    return {
      error: refusal(
        SqlState.InsufficientPrivilege,
        `df.start(..., transaction_mode => 'new') starts the instance as the session's login role "${user}", but this session has switched to role "${who}"`,
        "RESET ROLE first, or use transaction_mode => 'caller' to start as the current role inside your transaction.",
      ),
    };
  try {
    const id = await startNew({ login: user, database: host.database, args });
    return { id };
  } catch (err) {
    const e = err as PgErrorLike;
    return { error: refusal(e.code ?? SqlState.InternalError, e.message, e.hint) };
  }
}
