/**
 * The startup phase's decisions, apart from the sockets they act on: what to
 * answer an SSLRequest or GSSENCRequest, whether a StartupMessage may go on,
 * and which pool its connection belongs to in transaction mode.
 * https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-START-UP
 */
import { SqlState } from '../db/sqlstate.js';
import type { ErrorFields } from './protocol/backend.js';

export type EncryptionDecision =
  | { readonly kind: 'tls' }
  | { readonly kind: 'refuse' }
  | { readonly kind: 'fatal'; readonly answer: boolean; readonly error: ErrorFields };

/** An SSLRequest or GSSENCRequest; `rest`: bytes that came right after it. */
export function encryptionDecision(
  type: 'SSLRequest' | 'GSSENCRequest',
  rest: number,
  haveTls: boolean,
): EncryptionDecision {
  if (rest > 0) {
    // PostgreSQL answers the request, then refuses the bytes that came with it
    return {
      kind: 'fatal',
      answer: !(type === 'SSLRequest' && haveTls),
      error: {
        severity: 'FATAL',
        code: SqlState.ProtocolViolation,
        message:
          type === 'SSLRequest'
            ? 'received unencrypted data after SSL request'
            : 'received unencrypted data after GSSAPI encryption request',
        detail:
          'This could be either a client-software bug or evidence of an attempted man-in-the-middle attack.',
      },
    };
  }
  return type === 'SSLRequest' && haveTls ? { kind: 'tls' } : { kind: 'refuse' };
}

export interface StartupIdentity {
  readonly user: string;
  readonly database: string;
  /**
   * Transaction mode: the pool of this login. Startup parameters PostgreSQL
   * does not report back (options, extra_float_digits, search_path, ...) are
   * part of it, so that RESET on a pooled connection returns to the very
   * values this client started with.
   */
  readonly poolKey: string;
}

/** Parameters dfgate keeps in step per client through ParameterStatus; they do not split pools. */
const NEUTRAL = new Set([
  'user',
  'database',
  'application_name',
  'fallback_application_name',
  'client_encoding',
  'datestyle',
  'timezone',
  'intervalstyle',
]);

/** Who a StartupMessage logs in as, or why it cannot go on. */
export function startupIdentity(
  params: ReadonlyMap<string, string>,
): StartupIdentity | { readonly error: ErrorFields } {
  const user = params.get('user') ?? '';
  const database = params.get('database') ?? user;
  const repl = params.get('replication');
  if (repl !== undefined && !['false', 'off', 'no', '0'].includes(repl.toLowerCase()))
    return {
      error: {
        severity: 'FATAL',
        code: SqlState.FeatureNotSupported,
        message: 'replication connections are not supported through dfgate',
        hint: 'Connect replication clients directly to the PostgreSQL server.',
      },
    };
  if (!user)
    return {
      error: {
        severity: 'FATAL',
        code: SqlState.InvalidAuthorization,
        message: 'no PostgreSQL user name specified in startup packet',
      },
    };
  const extra = [...params]
    .filter(([k]) => !NEUTRAL.has(k.toLowerCase()) && k !== 'replication')
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const poolKey = JSON.stringify([user, database, ...extra]);
  return { user, database, poolKey };
}
