/**
 * Statements sent to a step connection as one simple Query message
 * (docs/executor.md, "One round trip per step"). PostgreSQL runs them in
 * order and stops at the first error; statements after a COMMIT that an
 * error skipped never run. Written as a node-postgres submittable, so the
 * client routes every answer here and queues its next query until the
 * message's ReadyForQuery. A message over `wireLimit(cap)` bytes (bounded.ts)
 * destroys the connection; rows are dropped as they come, so their total is
 * not bounded. Each statement must be complete on its own (sqlcheck.ts decides
 * which step texts may be one of them); a newline ends each, so a trailing
 * `--` comment ends there.
 */
import type { Socket } from 'node:net';
import type pg from 'pg';
import { ResultTooLargeError, WireGuard, wireLimit } from './bounded.js';

/** How a group ended: all done, or the first statement that failed and its error. */
export interface TripOutcome {
  /** Index of the failed statement (statements complete in order), or -1. */
  readonly failedAt: number;
  readonly error: unknown;
  /** The first column of the last row each statement sent, as text. */
  readonly firstValue: ReadonlyMap<number, string | null>;
}

/** Runs `statements` on `c` in one Query message; resolves when it has ended. */
export function runTrip(
  c: pg.Client,
  statements: readonly string[],
  cap: number,
): Promise<TripOutcome> {
  return new Promise<TripOutcome>((resolve) => {
    const sock = (c as unknown as { connection: { stream: Socket } }).connection.stream;
    // rows of a trip are dropped as they come (a rule's): only each message's size is bounded
    const guard = new WireGuard(wireLimit(cap), () => sock.destroy(), false);
    const firstValue = new Map<number, string | null>();
    let index = 0;
    let ended = false;
    const end = (failedAt: number, error: unknown): void => {
      if (ended) return;
      ended = true;
      sock.off('data', guard.scan);
      resolve({
        failedAt,
        error: guard.tripped !== undefined ? new ResultTooLargeError(cap, guard.tripped) : error,
        firstValue,
      });
    };
    const submittable = {
      submit(): void {
        sock.prependListener('data', guard.scan);
        const text = Buffer.from(statements.join('\n;\n') + '\0', 'utf8');
        const head = Buffer.alloc(5);
        head.write('Q', 0);
        head.writeInt32BE(4 + text.length, 1);
        sock.write(Buffer.concat([head, text]));
      },
      handleRowDescription(): void {},
      handleDataRow(msg: { fields: Array<string | null> }): void {
        firstValue.set(index, msg.fields[0] ?? null);
      },
      handleCommandComplete(): void {
        index++;
      },
      handleEmptyQuery(): void {
        index++;
      },
      handlePortalSuspended(): void {
        // not asked for (no row limit)
      },
      handleCopyInResponse(): void {
        // no statement of a trip copies (sqlcheck.ts): never answered, the connection is dropped
        sock.destroy();
      },
      handleCopyData(): void {},
      handleError(err: unknown): void {
        end(index, err);
      },
      handleReadyForQuery(): void {
        end(-1, undefined);
      },
    };
    c.query(submittable as unknown as pg.QueryConfig);
  });
}
