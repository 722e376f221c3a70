/**
 * dfgate's own conversation with a server on a client's behalf: the ledger of
 * ReadyForQuery messages the client's traffic will get and has got (so that
 * dfgate can wait until everything before a message was answered), and the
 * private exchanges dfgate holds on the connection the client is using
 * (`whoAmI`, ending an unfinished batch, preparing a helper statement).
 * https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-EXT-QUERY
 */
import { Backend, Frontend } from './protocol/codes.js';
import { encodeFrontend, type FrontendMessage } from './protocol/frontend.js';
import type { ServerConn } from './server-conn.js';

/**
 * What to do with a server message while dfgate talks to the server itself.
 * `cut`: `body` is only the first bytes of a message too long to inspect
 * whole (ServerSink.truncated); swallowed or passed on, it is never replaced.
 */
export type Private = (type: number, body: Buffer, cut: boolean) => 'swallow' | 'pass';

/** Counts of a client's ReadyForQuery messages and of its unfinished extended-protocol batch. */
export class Ledger {
  /** ReadyForQuery messages the client's Query/Sync/FunctionCall messages will get, and those relayed so far. */
  expected = 0;
  received = 0;
  /**
   * A Query or FunctionCall arrived inside an unfinished extended-protocol
   * batch: whether it gets a ReadyForQuery depends on how that batch ended, so
   * the count above can no longer be trusted to wait on.
   */
  unsure = false;
  /** Extended-protocol messages since the last Sync (risky: one that executes or binds), and before the current one. */
  batchLen = 0;
  batchRisky = false;
  prevLen = 0;
  prevRisky = false;
  private waiters: Array<{ readonly n: number; readonly resolve: () => void }> = [];

  /** Counts a client message at its header, before it is forwarded. */
  header(t: number): void {
    this.prevLen = this.batchLen;
    this.prevRisky = this.batchRisky;
    // authentication messages are answered by the login itself, never by a ReadyForQuery of theirs
    if (t === Frontend.Password) return;
    if (t === Frontend.CopyData || t === Frontend.CopyDone || t === Frontend.CopyFail) return;
    if ((t === Frontend.Query || t === Frontend.FunctionCall) && this.batchLen > 0)
      this.unsure = true; // skipped by the server if the open batch failed
    if (t === Frontend.Query || t === Frontend.Sync || t === Frontend.FunctionCall) {
      this.expected++;
      this.batchLen = 0;
      this.batchRisky = false;
    } else if (t !== Frontend.Terminate) {
      this.batchLen++;
      if (t !== Frontend.Parse && t !== Frontend.Describe && t !== Frontend.Close)
        this.batchRisky = this.batchRisky || t !== Frontend.Flush;
    }
  }

  /** Everything the client sent was answered (ReadyForQuery included) and no batch is open. */
  get settled(): boolean {
    return this.received >= this.expected && this.batchLen === 0;
  }

  /** A ReadyForQuery was relayed to the client. */
  relayed(): number {
    const n = ++this.received;
    if (this.waiters.length) {
      const ready = this.waiters.filter((w) => w.n <= n);
      this.waiters = this.waiters.filter((w) => w.n > n);
      for (const w of ready) w.resolve();
    }
    return n;
  }

  /** Resolves once `n` ReadyForQuery messages have been relayed (everything before was answered). */
  wait(n: number, closed: boolean): Promise<void> {
    if (this.received >= n || closed) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ n, resolve }));
  }

  /** The session closed: nobody waits any longer. */
  abandon(): void {
    for (const w of this.waiters.splice(0)) w.resolve();
  }
}

/** Private exchanges on the server connection a client is using. */
export class Conversation {
  private handler: Private | undefined;
  private abandonCurrent: (() => void) | undefined;

  /** `server` gives the connection to talk on (acquiring one in transaction mode). */
  constructor(private readonly server: () => Promise<ServerConn | undefined>) {}

  get active(): boolean {
    return this.handler !== undefined;
  }

  /** Offers a server message to the ongoing exchange (`cut`: see Private); true if dfgate swallowed it. */
  offer(type: number, body: Buffer, cut = false): boolean {
    return this.handler !== undefined && this.handler(type, body, cut) === 'swallow';
  }

  /** Ends the ongoing exchange early (the connection closed). */
  abandon(): void {
    this.abandonCurrent?.();
  }

  /** Sends messages of dfgate's own; `handler` sees the answers. Resolves undefined if there is no server. */
  async talk<T>(
    messages: FrontendMessage[],
    handler: (done: (v: T) => void) => Private,
  ): Promise<T> {
    const conn = await this.server();
    return new Promise<T>((resolve) => {
      if (!conn || conn.closed) {
        resolve(undefined as T);
        return;
      }
      const finish = (v: T): void => {
        this.handler = undefined;
        this.abandonCurrent = undefined;
        resolve(v);
      };
      this.handler = handler(finish);
      this.abandonCurrent = () => finish(undefined as T);
      conn.write(Buffer.concat(messages.map(encodeFrontend)));
    });
  }

  /** The session's current_user, asked on its own connection (undefined if that fails, e.g. 25P02). */
  whoAmI(): Promise<string | undefined> {
    const name = '__dfgate_who';
    return this.talk<string | undefined>(
      [
        { type: 'Close', kind: 'S', name },
        { type: 'Parse', name, sql: 'SELECT current_user::text', paramTypes: [] },
        {
          type: 'Bind',
          portal: name,
          statement: name,
          paramFormats: [],
          params: [],
          resultFormats: [],
        },
        { type: 'Execute', portal: name, maxRows: 0 },
        { type: 'Close', kind: 'P', name },
        { type: 'Close', kind: 'S', name },
        { type: 'Sync' },
      ],
      (done) => {
        let user: string | undefined;
        let failed = false;
        return (t, body, cut) => {
          if (
            t === Backend.DataRow &&
            !cut &&
            body.readInt16BE(0) === 1 &&
            body.readInt32BE(2) >= 0
          )
            user = body.toString('utf8', 6, 6 + body.readInt32BE(2));
          else if (t === Backend.ErrorResponse) failed = true;
          else if (t === Backend.ReadyForQuery) done(failed ? undefined : user);
          return 'swallow';
        };
      },
    );
  }

  /** Ends the client's unfinished batch here (everything in it gets answered); true if it failed. */
  endBatch(): Promise<boolean> {
    return this.talk<boolean>([{ type: 'Sync' }], (done) => {
      let failed = false;
      return (t) => {
        if (t === Backend.ErrorResponse) failed = true;
        if (t !== Backend.ReadyForQuery) return 'pass';
        done(failed);
        return 'swallow';
      };
    });
  }

  /** Prepares a statement of dfgate's own without ending the batch (Flush); its answers are swallowed. */
  prepareHelper(name: string, sql: string, paramTypes: readonly number[]): Promise<void> {
    return this.talk<void>(
      [
        { type: 'Close', kind: 'S', name },
        { type: 'Parse', name, sql, paramTypes },
        { type: 'Flush' },
      ],
      (done) => {
        let n = 0;
        return (t) => {
          if (t === Backend.ErrorResponse) {
            done();
            return 'pass';
          }
          if (++n === 2) done();
          return 'swallow';
        };
      },
    );
  }
}
