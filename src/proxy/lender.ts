/**
 * Transaction mode for one client session: lending it a server connection
 * from the first message of a transaction, preparing that connection for it
 * (health check after an error, its settings), giving the connection back
 * once its ReadyForQuery says idle and nothing is outstanding, and what
 * becomes of the connection when the client leaves. Client messages pass
 * through the edge first, then through PooledClient (pooled.ts).
 */
import type { Logger } from 'pino';
import type { Conversation, Ledger } from './conversation.js';
import type { EdgeInterceptor } from './edge/intercept.js';
import { nonceName } from './edge/errors.js';
import type { ServerPools } from './pool.js';
import { late, PooledClient } from './pooled.js';
import { Backend, Frontend } from './protocol/codes.js';
import type { Cut, Piece } from './protocol/frame.js';
import { encodeFrontend } from './protocol/frontend.js';
import { ProtocolError } from './protocol/reader.js';
import type { ServerConn } from './server-conn.js';
import type { ScanOptions } from './sql-scan.js';

/** What the lender sees of its session. */
export interface LenderHost {
  readonly log: Logger;
  readonly isReady: boolean;
  readonly isClosed: boolean;
  /** The connection attached now. */
  readonly server: ServerConn | undefined;
  attach(conn: ServerConn): void;
  detach(): void;
  readonly conversation: Conversation;
  readonly ledger: Ledger;
  readonly serverParams: ReadonlyMap<string, string>;
  /** Nothing queued or being decided, no partial client message, no pending FATAL. */
  readonly quiet: boolean;
  readonly edge: EdgeInterceptor;
  /** The client is done: close it once its answers so far reached it. */
  closeWhenAnswered(reason: string): Piece;
}

export class Lender {
  readonly pooled = new PooledClient();
  /** The login's own connection holds a place in its pool until it joins or fails. */
  private loginPending = false;
  private joined = false;

  constructor(
    private readonly pools: ServerPools,
    readonly key: string,
    private readonly host: LenderHost,
  ) {}

  /** Room in the pool for this login's verifying connection (waits; may throw PoolError). */
  async login(): Promise<void> {
    await this.pools.login(this.key);
    this.loginPending = true;
  }

  /** The verifying connection never joined (refused, or the client left first). */
  loginFailed(): void {
    if (!this.loginPending) return;
    this.loginPending = false;
    this.pools.loginFailed(this.key);
  }

  /** The client logged in. */
  ready(): void {
    this.joined = true;
    this.pools.clientJoined(this.key);
  }

  /**
   * An idle connection attached at once, when it needs no check and no
   * settings (the common case: no waiting, no round trip); else undefined.
   */
  lendNow(): ServerConn | undefined {
    const host = this.host;
    if (host.server || !host.isReady) return host.server;
    const conn = this.pools.lendNow(this.key);
    if (!conn) return undefined;
    if (conn.closed || conn.suspect || this.pooled.syncSql(conn, host.serverParams) !== undefined) {
      this.pools.release(this.key, conn);
      return undefined;
    }
    host.attach(conn);
    return conn;
  }

  /** The connection to write to: the attached one, or one lent from the pool (waiting if need be). */
  async ensure(): Promise<ServerConn | undefined> {
    const host = this.host;
    if (host.server || !host.isReady) return host.server;
    for (;;) {
      const conn = await this.pools.lend(this.key);
      if (host.isClosed || host.server) {
        // closed meanwhile, or lent by another caller of this session
        this.pools.release(this.key, conn);
        return host.server;
      }
      host.attach(conn);
      if (await this.prepare(conn)) return conn;
      // the client left during the check: closed() has already given the connection back
      if (host.isClosed || host.server !== conn) return undefined;
      host.detach();
      this.pools.discard(this.key, conn);
    }
  }

  /** Health check (after an error) and this client's settings, on a connection just lent. */
  private async prepare(conn: ServerConn): Promise<boolean> {
    const sql = this.pooled.syncSql(conn, this.host.serverParams);
    if (sql === undefined && !conn.suspect) return true;
    const ok = await this.host.conversation.talk<boolean>(
      [{ type: 'Query', sql: sql ?? '' }],
      (done) => {
        let failed = false;
        return (t, body) => {
          if (t === Backend.ErrorResponse) failed = true;
          if (t === Backend.ReadyForQuery) done(!failed && body[0] === 0x49);
          return 'swallow';
        };
      },
    );
    if (!ok) {
      this.host.log.info({ server: conn.id }, 'lent server connection failed its check; closed');
      return false;
    }
    conn.suspect = false;
    this.pooled.synced(conn);
    return true;
  }

  /** Gives the connection back once the transaction is over and nothing is outstanding. */
  releaseIfIdle(): void {
    const host = this.host;
    const conn = host.server;
    if (
      !conn ||
      !host.isReady ||
      !host.quiet ||
      host.conversation.active ||
      conn.txStatus !== 'I' ||
      !host.ledger.settled ||
      !conn.atBoundary
    )
      return;
    host.detach();
    if (this.loginPending) {
      this.loginPending = false;
      this.pools.adopt(this.key, conn);
    } else this.pools.release(this.key, conn);
  }

  /** The attached connection closed under the client. */
  lost(conn: ServerConn): void {
    this.host.detach();
    this.loginPending = false;
    this.pools.discard(this.key, conn);
  }

  /**
   * The client left. Its connection (a login's own one joins its pool) goes
   * back if clean, is rolled back first if in a transaction, and is closed if
   * the client stopped mid-message.
   */
  closed(conn: ServerConn | undefined, clientAtBoundary: boolean): void {
    if (this.joined) this.pools.clientLeft(this.key);
    if (!conn) {
      this.loginFailed();
      return;
    }
    if (!this.joined) {
      // still authenticating: the connection never joins
      conn.end();
      this.loginFailed();
      return;
    }
    this.loginPending = false;
    const host = this.host;
    const clean =
      conn.txStatus === 'I' &&
      host.ledger.settled &&
      clientAtBoundary &&
      conn.atBoundary &&
      !host.conversation.active;
    if (conn.closed) this.pools.discard(this.key, conn);
    else if (clean) this.pools.release(this.key, conn);
    else if (clientAtBoundary) this.pools.reset(this.key, conn);
    else this.pools.discard(this.key, conn, true);
  }

  /** How the client's statements are lexed (standard_conforming_strings as the server reported it). */
  private get scanOptions(): ScanOptions {
    return {
      backslashQuotes: this.host.serverParams.get('standard_conforming_strings') === 'off',
    };
  }

  /** Every answer the client awaits ends with a ReadyForQuery dfgate can count. */
  get countable(): boolean {
    return !this.host.ledger.unsure && this.host.ledger.batchLen === 0;
  }

  /** Bytes [from, to) of `src` of a client message being assembled (Framer's `part`). */
  part(type: number, src: Buffer, from: number, to: number, first: boolean): void {
    if (type === Frontend.Query || type === Frontend.Parse)
      this.pooled.arriving.feed(src, from, to, first);
  }

  /**
   * A Query that spanned chunks, as the parts it arrived in: when the edge
   * does not look at it and its chunks held none of the words transaction
   * mode looks for (PooledClient.arriving), it goes out as those parts, as in
   * session mode, without being joined (undefined: look at it whole).
   */
  assembled(type: number, parts: readonly Buffer[]): Piece[] | undefined {
    if (type !== Frontend.Query || this.pooled.arriving.take() !== false) return undefined;
    const size = parts.reduce((n, p) => n + p.length, 0);
    if (this.host.edge.watches(type, size - 1)) return undefined;
    const [first, ...rest] = parts as [Buffer, ...Buffer[]];
    return [late((conn) => [...this.pooled.out(first, conn), ...rest])];
  }

  /**
   * A client message too long to assemble (over CLIENT_INSPECT_MAX), seen
   * through its first bytes as the rest streams: the edge's watch and the
   * client's bookkeeping (PooledClient.long). A refused Parse is dropped as it
   * streams and replaced by one the server fails, whose error dfgate swaps for
   * the refusal, as for a short one.
   */
  long(type: number, head: Buffer, framed: Buffer): Cut | undefined {
    const pooled = this.pooled.long(type, framed);
    if (pooled instanceof Map) {
      // a name longer than the bytes kept does not matter: the server fails on the text first
      const z = head.indexOf(0);
      const name = z < 0 ? 'dfgate_long' : head.toString('utf8', 0, z);
      const sql = nonceName(this.host.edge.provoke(pooled));
      return { head: encodeFrontend({ type: 'Parse', name, sql, paramTypes: [] }), drop: true };
    }
    const edge = this.host.edge.cutStatement(type, head);
    if (!edge || !pooled) return edge ?? pooled;
    return {
      head: pooled.head,
      rest: (src, from, to) => {
        edge.rest?.(src, from, to);
        pooled.rest?.(src, from, to);
      },
      end: () => [...(edge.end?.() ?? []), ...(pooled.end?.() ?? [])],
    };
  }

  /** A client message after login: the edge first, then what the client keeps across connections. */
  message(type: number, body: Buffer, raw: Buffer): Piece | null | undefined {
    const { pooled } = this;
    const edge = this.host.edge;
    /** The edge's piece; one it cannot decode goes on as is (the server reports it). */
    const safe = (f: () => Piece | null | undefined): Piece | null | undefined => {
      try {
        return f();
      } catch (err) {
        if (err instanceof ProtocolError) return undefined;
        throw err;
      }
    };
    switch (type) {
      case Frontend.Terminate:
        // a batch without Sync, or answers dfgate cannot count: the server ends as in session mode
        if (!this.countable) return undefined;
        // the server connection stays for the next client
        return this.host.closeWhenAnswered('client sent Terminate');
      case Frontend.Query: {
        const plan = pooled.query(body, 0, Math.max(0, body.indexOf(0)), this.scanOptions);
        if (plan instanceof Map) return pooled.map(edge.refuseStatement(type, body, plan));
        const piece = plan.rewrite
          ? encodeFrontend({ type: 'Query', sql: plan.rewrite })
          : edge.watches(type, body.length + 4)
            ? safe(() => edge.onStatement(type, body, raw))
            : undefined;
        return piece === null ? null : pooled.map(piece ?? raw, plan.effect);
      }
      case Frontend.Parse: {
        const start = body.indexOf(0) + 1;
        const end = Math.max(start, body.indexOf(0, start));
        const refused = pooled.parse(body, start, end, this.scanOptions);
        if (refused) return edge.refuseStatement(type, body, refused);
        const piece = edge.watches(type, body.length + 4)
          ? safe(() => edge.onStatement(type, body, raw))
          : undefined;
        return piece === null ? null : pooled.map(piece ?? raw);
      }
      case Frontend.Bind: {
        const piece = edge.watches(type) ? safe(() => edge.onBind(body, raw)) : undefined;
        return piece === null ? null : pooled.map(piece ?? raw);
      }
      case Frontend.Close:
        safe(() => {
          edge.onClose(body);
          return undefined;
        });
        return pooled.map(raw);
      case Frontend.Describe:
        return pooled.map(raw);
      case Frontend.FunctionCall:
        // a function called by OID (pg_advisory_lock, set_config, ...) is never looked at:
        // DISCARD ALL before the connection is lent again
        return late((conn) => {
          conn.stateUnknown = true;
          return [raw];
        });
      default:
        return undefined;
    }
  }
}

/** Client messages transaction mode looks into. */
export const LENDER_INSPECT = new Uint8Array(256);
for (const t of [
  Frontend.Query,
  Frontend.Parse,
  Frontend.Bind,
  Frontend.Describe,
  Frontend.Close,
  Frontend.Terminate,
  Frontend.FunctionCall,
]) {
  LENDER_INSPECT[t] = 1;
}
