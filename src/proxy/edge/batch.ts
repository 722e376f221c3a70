/**
 * Starts in one message (docs/proxy.md, "Starts in one message"): a simple
 * Query of many `SELECT df.start(...)` statements, sent outside a
 * transaction block, runs as one `df._start_batch` statement on the
 * session's own connection, in the session's role; then the client gets
 * each statement's answer from a query of the ids, exactly as the
 * statements would have answered. A batch the database refuses changed
 * nothing (it was one statement in autocommit), so the statements then go
 * one by one, as rewritten, and the client sees the database's own answer
 * for each; only an interruption (a cancel, a shutdown, a serialization
 * failure, ...) is reported as it came.
 */
import type { StartBatch } from '../../dsl/edge.js';
import { decodeErrorFields } from '../protocol/backend.js';
import { Backend } from '../protocol/codes.js';
import type { Conversation } from '../conversation.js';
import { quoteIdentifier } from './errors.js';
import { cancelsForwarded } from '../cancel.js';

const INSTANCE_ID = /^[0-9a-f]{8}$/;
/** SQLSTATE classes of errors that say nothing about the statements: reported, never replayed. */
const INTERRUPTIONS = new Set(['08', '40', '53', '55', '57', '58']);

/** What a batch came to: the ids in statement order, the error to report, or `replay` (go one by one). */
export type BatchOutcome =
  { readonly ids: readonly string[] } | { readonly error: ReadonlyMap<string, string> } | 'replay';

/** The client's error when the batch's outcome cannot be told (never replayed: it may have committed). */
function unknownOutcome(why: string): ReadonlyMap<string, string> {
  return new Map([
    ['S', 'ERROR'],
    ['V', 'ERROR'],
    ['C', why === 'lost' ? '08006' : 'XX000'],
    [
      'M',
      why === 'lost'
        ? 'dfgate: the server connection was lost while the starts of this message ran; whether they committed is unknown'
        : 'dfgate: the starts of this message committed, but their ids could not be read',
    ],
  ]);
}

/**
 * A statement timeout, not a cancel: statement_timeout applies to each
 * statement of a simple Query, and the batch is one statement where the
 * client sent many, so the statements go one by one instead. A cancel
 * (dfgate forwarded one meanwhile, or the server says it was a user's) is
 * reported as it came.
 */
function timedOut(error: ReadonlyMap<string, string>, cancels: number): boolean {
  return (
    error.get('C') === '57014' &&
    cancelsForwarded() === cancels &&
    !/user request/.test(error.get('M') ?? '')
  );
}

/** Runs the batch's statement on the session's connection, its answers kept from the client. */
export async function runBatch(conv: Conversation, batch: StartBatch): Promise<BatchOutcome> {
  let sent = false;
  const cancels = cancelsForwarded();
  const out = await conv.talk<BatchOutcome | undefined>(
    [{ type: 'Query', sql: batch.sql }],
    (done) => {
      sent = true;
      let ids: string[] | undefined;
      let error: Map<string, string> | undefined;
      return (t, body, cut) => {
        if (t === Backend.DataRow) ids = cut ? undefined : idArray(body);
        else if (t === Backend.ErrorResponse && !error) {
          // one too long to inspect whole still has its SQLSTATE (sent first); maybe not its text
          error = decodeErrorFields(body, cut);
          if (!error.has('M')) error.set('M', 'dfgate: the server error was too long to report');
        } else if (t === Backend.ReadyForQuery) {
          if (error)
            done(
              INTERRUPTIONS.has((error.get('C') ?? '').slice(0, 2)) && !timedOut(error, cancels)
                ? { error }
                : 'replay',
            );
          // committed: never replayed, whatever the answer looks like
          else if (body[0] !== 0x49) done({ error: unknownOutcome('ids') });
          else done(ids ? { ids } : { error: unknownOutcome('ids') });
        }
        return 'swallow';
      };
    },
  );
  // no server to send it to: the statements meet the same fate; sent and lost: unknown
  if (out === undefined) return sent ? { error: unknownOutcome('lost') } : 'replay';
  if (out !== 'replay' && 'ids' in out && out.ids.length !== batch.columns.length)
    return { error: unknownOutcome('ids') };
  return out;
}

/** The Query that answers each statement of the batch with its instance id. */
export function answerIds(batch: StartBatch, ids: readonly string[]): string {
  // pg_catalog.text: the session's search_path could name another type "text"
  return ids
    .map(
      (id, i) =>
        `SELECT '${id}'::pg_catalog.text AS ${quoteIdentifier(batch.columns[i] ?? 'start')}`,
    )
    .join(';');
}

/** A DataRow of one text[] column of instance ids (`{id,id,...}`), or undefined. */
function idArray(body: Buffer): string[] | undefined {
  if (body.length < 6 || body.readInt16BE(0) !== 1) return undefined;
  const len = body.readInt32BE(2);
  if (len < 2 || body.length !== 6 + len) return undefined;
  const text = body.toString('latin1', 6, 6 + len);
  if (!text.startsWith('{') || !text.endsWith('}')) return undefined;
  const ids = text.slice(1, -1).split(',');
  return ids.every((id) => INSTANCE_ID.test(id)) ? ids : undefined;
}
