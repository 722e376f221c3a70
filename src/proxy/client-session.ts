/**
 * One client connection: the startup phase (SSL/GSS negotiation, cancel
 * requests, the StartupMessage), the authentication exchange relayed end to
 * end to PostgreSQL, then framed relaying in both directions. Only the few
 * message types dfgate must see are decoded; everything else is forwarded as
 * slices of the chunks it arrived in.
 *
 * Session mode: the connection that authenticated the client serves it until
 * it leaves. Transaction mode: that connection joins its pool after login
 * (pool.ts), and the client is lent one from the first message of each
 * transaction until its ReadyForQuery says idle; what the client keeps across
 * transactions is carried by PooledClient (pooled.ts). The df.* edge sees the
 * client only through EdgeHost, the same in both modes.
 * https://www.postgresql.org/docs/current/protocol-flow.html
 */
import type net from 'node:net';
import { SqlState } from '../db/sqlstate.js';
import { AuthRelay, ownBackendKey } from './auth-relay.js';
import { ClientPump, forward } from './client-pump.js';
import { Conversation, Ledger } from './conversation.js';
import { EdgeInterceptor, type EdgeHost, type EdgeOptions } from './edge/intercept.js';
import { PoolError, type ServerPools } from './pool.js';
import { ClientConnection, type ClientContext } from './client-conn.js';
import { Lender, LENDER_INSPECT } from './lender.js';
import { decodeParameterStatus, type ErrorFields } from './protocol/backend.js';
import {
  Backend,
  CLIENT_INSPECT_MAX,
  Frontend,
  isFrontendType,
  isSmallFrontendType,
  MAX_AUTH_MESSAGE,
  MAX_HELD_BEFORE_LOGIN,
  SMALL_MESSAGE_LIMIT,
} from './protocol/codes.js';
import { Framer, type Piece } from './protocol/frame.js';
import { ASYNC_MESSAGES, SERVER_INSPECT } from './session-messages.js';
import { encodeFrontend, unknownTypeError } from './protocol/frontend.js';
import { ProtocolError, SilentClose } from './protocol/reader.js';
import { ServerConn, type ServerSink } from './server-conn.js';
import type { StartupIdentity } from './startup.js';
import { connectUpstream, type UpstreamTarget } from './upstream.js';

export interface SessionContext extends EdgeOptions, ClientContext {
  readonly upstream: UpstreamTarget;
  readonly connectTimeoutMs: number;
  readonly maxMessageSize: number;
  /** Transaction mode: the pools server connections are lent from (undefined: session mode). */
  readonly pools?: ServerPools | undefined;
  /** Called once a StartupMessage arrives: may this client be admitted? */
  admit(session: Session): ErrorFields | undefined;
  closed(session: Session): void;
}

export class Session extends ClientConnection implements EdgeHost {
  /** The client message whose header was just read is longer than any authentication message. */
  private authTooLong = false;
  /** Reading from the client is paused until login completes (MAX_HELD_BEFORE_LOGIN). */
  private heldUntilLogin = false;
  /** Server parameters reported to the client by ParameterStatus (client_encoding, standard_conforming_strings, ...). */
  readonly serverParams = new Map<string, string>();
  readonly ledger = new Ledger();
  readonly conversation = new Conversation(() => this.ensureServer());
  private readonly edge: EdgeInterceptor;
  /** Transaction mode: what the client keeps across server connections. */
  private lender: Lender | undefined;
  /** The server connection serving the client now (transaction mode: only inside a transaction). */
  private server: ServerConn | undefined;
  private clientFramer: Framer | undefined;
  private readonly auth = new AuthRelay();
  private unregisterKey: (() => void) | undefined;
  /** The pid of the cancel key the client holds (EdgeHost). */
  cancelPid = 0;
  private readonly pendingClient: Buffer[] = [];
  private readonly pump: ClientPump;
  /** A ReadyForQuery was relayed: see whether the connection can go back to its pool. */
  private maybeIdle = false;
  /** The server waits for the client's COPY data (CopyInResponse, until ReadyForQuery). */
  private copyIn = false;

  constructor(
    client: net.Socket,
    private readonly ctx: SessionContext,
  ) {
    super(client, ctx);
    this.edge = new EdgeInterceptor(this, ctx);
    // the getters below read the live fields
    const session = this;
    this.pump = new ClientPump({
      get client() {
        return session.client;
      },
      get isClosed() {
        return session.isClosed;
      },
      get server() {
        return session.server;
      },
      ensureServer: () => this.ensureServer(),
      serverNow: () => (this.lender ? this.lender.lendNow() : this.server),
      failed: (err) => this.protocolFailure(err),
      drained: () => {
        this.lender?.releaseIfIdle();
        // the client half-closed while messages waited in the pump: pass the half-close on now
        if (this.clientGone && !this.lender && this.server && !this.server.closed)
          this.server.halfClose();
      },
    });
    this.attachClient(client);
  }

  /** Idle: no transaction open and nothing outstanding. */
  get idle(): boolean {
    return (
      this.phase === 'ready' &&
      this.txStatus === 'I' &&
      this.ledger.received >= this.ledger.expected &&
      (this.clientFramer?.atBoundary ?? true)
    );
  }

  /** The backend serving the client now (transaction mode: undefined between transactions). */
  get backend(): ServerConn | undefined {
    return this.server;
  }

  protected attachClient(sock: net.Socket): void {
    sock.on('data', (chunk: Buffer) => this.onClientData(chunk));
    sock.on('error', (err) => this.log.debug({ err: err.message }, 'client socket error'));
    sock.on('close', () => {
      this.clientGone = true;
      this.clientLeft();
      this.close('client closed');
    });
    // The client finished sending: pass the half-close on and keep relaying answers.
    sock.on('end', () => {
      this.clientGone = true;
      if (this.lender && this.phase === 'ready' && this.copyIn) {
        // nothing will end the COPY but dfgate: the pool resets the connection (CopyFail)
        this.clientLeft();
        this.close('client ended during COPY FROM STDIN');
      } else if (this.lender && this.phase === 'ready' && this.lender.countable) {
        this.clientLeft();
        this.pump.push([this.closeWhenAnswered('client ended')]);
      } else if (this.server && !this.server.closed && this.phase !== 'closed') {
        // messages still queued behind a deferred one (a df.start compiling) go first
        if (!this.pump.busy) this.server.halfClose();
      } else this.close('client ended');
    });
  }

  private onClientData(chunk: Buffer): void {
    try {
      if (this.phase === 'startup') this.onStartupData(chunk);
      else if (this.phase === 'connecting') this.pendingClient.push(chunk);
      else if (this.clientFramer && !this.pendingFatal) {
        this.pump.push(this.clientFramer.push(chunk));
        if (this.clientFramer.failed) this.clientFramingFailed(this.clientFramer.failed);
        else if (this.phase === 'auth' && this.clientFramer.held > MAX_HELD_BEFORE_LOGIN) {
          // a large message sent before login waits for it (resumed on the first ReadyForQuery)
          this.heldUntilLogin = true;
          this.client.pause();
        }
      }
    } catch (err) {
      this.protocolFailure(err);
    }
  }

  /**
   * A client message that cannot be framed: like PostgreSQL, answer everything
   * sent before it first (session mode: the upstream gets Terminate right after
   * the last good message and finishes its replies), then send the FATAL and close.
   */
  private clientFramingFailed(err: Error): void {
    // while authenticating too (session mode): the server answers what came before, as
    // PostgreSQL reads in order
    if (this.phase !== 'ready' && (this.lender || !this.server || this.phase === 'closed')) {
      this.protocolFailure(err);
      return;
    }
    this.pendingFatal = err instanceof SilentClose ? 'silent' : this.errorFields(err);
    if (err instanceof SilentClose) this.logSilent(err);
    this.client.pause();
    this.clientTerminated = true;
    if (this.lender) {
      // the server connection stays: wait for the answers so far, then end the client
      const until = this.ledger.expected;
      this.pump.push([
        async () => {
          await Promise.race([
            this.ledger.wait(until, this.isClosed),
            new Promise((r) => setTimeout(r, 2000)),
          ]);
          setImmediate(() => this.endPending());
          return this.ledger.batchLen > 0 ? [encodeFrontend({ type: 'Flush' })] : [];
        },
      ]);
    } else {
      // after whatever still waits in the queue, in order
      this.pump.push([encodeFrontend({ type: 'Terminate' })]);
    }
    setTimeout(() => this.endPending(), 10_000).unref();
  }

  protected loggingIn(who: StartupIdentity, body: Buffer, rest: Buffer): void {
    if (this.ctx.pools) this.lender = this.makeLender(this.ctx.pools, who.poolKey);
    const refused = this.ctx.admit(this);
    if (refused) {
      this.fatal(refused);
      return;
    }
    this.phase = 'connecting';
    if (rest.length > 0) this.pendingClient.push(rest);
    void this.connect(Buffer.concat([Buffer.from([0, 0, 0, 0]), body]));
  }

  protected get serverAtBoundary(): boolean {
    return this.server?.atBoundary ?? true;
  }

  private async connect(startupPacket: Buffer): Promise<void> {
    startupPacket.writeInt32BE(startupPacket.length, 0);
    this.client.pause();
    let conn: ServerConn;
    try {
      if (this.lender) {
        await this.lender.login();
        if (this.phase === 'closed') {
          this.loginFailed();
          return;
        }
      }
      conn = new ServerConn(
        await connectUpstream(this.ctx.upstream, this.ctx.connectTimeoutMs),
        this.log,
      );
      if (this.phase === 'closed') {
        conn.destroy();
        this.loginFailed();
        return;
      }
    } catch (err) {
      this.loginFailed();
      if (err instanceof PoolError) {
        this.fatal(this.errorFields(err));
        return;
      }
      this.log.warn({ err: (err as Error).message }, 'cannot reach the upstream server');
      this.fatal({
        severity: 'FATAL',
        code: SqlState.UnableToConnect,
        message: `dfgate could not connect to the upstream server: ${(err as Error).message}`,
      });
      return;
    }
    this.phase = 'auth';
    this.attach(conn);
    this.clientFramer = new Framer(
      {
        inspect: (t, len) =>
          (t === Frontend.Password && this.phase === 'auth' && !this.authTooLong) ||
          this.edge.watches(t, len) ||
          (this.lender !== undefined && LENDER_INSPECT[t] === 1),
        header: (t, len) => {
          if (!isFrontendType(t)) throw unknownTypeError(t);
          // PostgreSQL refuses a longer authentication message on its header (silently or
          // with 28P01, by method): it goes through unassembled so that the server does
          this.authTooLong = len > MAX_AUTH_MESSAGE;
          if (len > SMALL_MESSAGE_LIMIT && isSmallFrontendType(t))
            throw new SilentClose('invalid message length', {
              field: `length ${len} for type ${JSON.stringify(String.fromCharCode(t))}`,
            });
          this.ledger.header(t);
          this.lender?.pooled.header(t);
          if (t === Frontend.Terminate) this.clientTerminated = true;
        },
        message: (t, body, raw) => this.inspectClient(t, body, raw),
        // transaction mode looks at a long Query or Parse as it arrives
        part: (t, src, from, to, first) => {
          if (this.phase === 'ready') this.lender?.part(t, src, from, to, first);
        },
        assembled: (t, parts) =>
          this.lender && this.phase === 'ready' ? this.lender.assembled(t, parts) : undefined,
        // one over CLIENT_INSPECT_MAX streams through, seen through its first bytes
        truncated: (t, head, _length, framed) =>
          this.lender && this.phase === 'ready'
            ? this.lender.long(t, head, framed)
            : this.edge.cutStatement(t, head),
      },
      this.ctx.maxMessageSize,
      CLIENT_INSPECT_MAX,
    );
    conn.write(startupPacket);
    conn.socket.resume();
    const pending = this.pendingClient.splice(0);
    for (const chunk of pending) this.onClientData(chunk);
    this.client.resume();
  }

  private loginFailed(): void {
    this.lender?.loginFailed();
  }

  // ---- the server connection ------------------------------------------

  /** Makes `conn` the client's server connection; its traffic comes here. */
  private attach(conn: ServerConn): void {
    this.server = conn;
    const sink: ServerSink = {
      inspect: (t) =>
        SERVER_INSPECT[t] === 1 ||
        (t === Backend.DataRow && this.edge.wantsRow) || // a df.start's instance id
        (t === Backend.NoticeResponse && this.edge.born.armed) || // its claim (edge/born.ts)
        this.conversation.active ||
        (this.lender?.pooled.inspects(t) ?? false),
      message: (t, body) => this.onServerMessage(conn, t, body, false),
      // seen through its first bytes, relayed or swallowed, never replaced (never Z, R or K: ServerConn)
      truncated: (t, head) =>
        this.onServerMessage(conn, t, head, true) === null ? null : undefined,
      relay: (pieces) => this.relay(conn, pieces),
      closed: () => this.onServerClosed(conn),
    };
    conn.sink = sink;
  }

  /** Transaction mode: the lender sees the session through these. */
  private makeLender(pools: ServerPools, key: string): Lender {
    // the getters below read the live fields
    const session = this;
    return new Lender(pools, key, {
      get log() {
        return session.log;
      },
      get isReady() {
        return session.phase === 'ready';
      },
      get isClosed() {
        return session.isClosed;
      },
      get server() {
        return session.server;
      },
      attach: (conn) => this.attach(conn),
      detach: () => {
        this.server = undefined;
      },
      conversation: this.conversation,
      ledger: this.ledger,
      serverParams: this.serverParams,
      get quiet() {
        return session.quiet;
      },
      edge: this.edge,
      closeWhenAnswered: (reason) => this.closeWhenAnswered(reason),
    });
  }

  /** The connection to write to (transaction mode: lent from the pool, waiting if need be). */
  private ensureServer(): Promise<ServerConn | undefined> {
    return this.lender ? this.lender.ensure() : Promise.resolve(this.server);
  }

  /** Nothing queued or being decided, no partial client message, no pending FATAL. */
  get quiet(): boolean {
    return (
      !this.pump.busy && (this.clientFramer?.atBoundary ?? true) && this.pendingFatal === undefined
    );
  }

  // ---- relaying -------------------------------------------------------

  /**
   * A client message dfgate looks into. One it cannot decode (a Bind that
   * declares more parameters than it sends, a string without its NUL, ...)
   * goes to the server unchanged: the server answers it exactly as PostgreSQL
   * does (an ErrorResponse, then it skips to Sync), and the connection stays.
   */
  private inspectClient(type: number, body: Buffer, raw: Buffer): Piece | null | undefined {
    try {
      return this.onClientMessage(type, body, raw);
    } catch (err) {
      if (!(err instanceof ProtocolError)) throw err;
      this.log.debug(
        { type: String.fromCharCode(type), error: err.message, field: err.field },
        'malformed client message passed to the server, which reports it',
      );
      return undefined;
    }
  }

  /** Server → client (framed pieces of one chunk). */
  private relay(conn: ServerConn, pieces: Buffer[]): void {
    if (pieces.length) forward(pieces, this.client, conn.socket, () => this.isClosed);
    if (this.maybeIdle) {
      this.maybeIdle = false;
      this.lender?.releaseIfIdle();
    }
  }

  /** A server message dfgate inspects (`cut`: only its first bytes, ServerSink.truncated). */
  private onServerMessage(
    conn: ServerConn,
    type: number,
    body: Buffer,
    cut: boolean,
  ): Buffer | null | undefined {
    if (type === Backend.NoticeResponse && this.edge.born.notice(body, cut)) return null;
    // a start whose transaction failed (at its commit, say) hands over no claim
    if (type === Backend.ErrorResponse && this.edge.born.holding) this.edge.born.take([]);
    if (
      this.conversation.active &&
      !ASYNC_MESSAGES.has(type) && // notifications, notices, parameter changes: the client's
      this.conversation.offer(type, body, cut)
    ) {
      if (type === Backend.ReadyForQuery) this.txStatus = String.fromCharCode(body[0] ?? 0x49);
      return null;
    }
    if (this.lender && this.phase === 'ready') {
      const r = this.lender.pooled.serverMessage(conn, type, body, cut);
      if (r !== undefined) return r;
    }
    switch (type) {
      case Backend.DataRow:
        if (!cut) this.edge.dataRow(body); // no instance id is that long
        return undefined;
      case Backend.ReadyForQuery:
        return this.onReady(body);
      case Backend.Authentication:
        return this.auth.request(body);
      case Backend.BackendKeyData:
        return this.onBackendKey(conn);
      case Backend.CopyInResponse:
        this.copyIn = true;
        // the client already ended (Terminate or FIN): no CopyDone will come
        if (this.lender && (this.clientGone || this.clientTerminated))
          setImmediate(() => this.close('client left during COPY FROM STDIN'));
        return undefined;
      case Backend.ParameterStatus: {
        if (cut) this.serverParams.delete(body.toString('utf8', 0, Math.max(0, body.indexOf(0))));
        else this.serverParams.set(...decodeParameterStatus(body));
        return undefined;
      }
      case Backend.ErrorResponse: {
        const r = this.edge.serverError(body, cut);
        if ('replace' in r) return r.replace;
        if (r.get('V') === 'FATAL' || r.get('S') === 'FATAL' || r.get('V') === 'PANIC')
          this.sawFatal = true;
        if (this.phase === 'auth')
          this.log.info({ code: r.get('C') }, 'upstream refused the connection');
        return undefined;
      }
      default:
        return undefined;
    }
  }

  private onReady(body: Buffer): undefined {
    this.copyIn = false;
    this.txStatus = String.fromCharCode(body[0] ?? 0x49);
    if (this.phase !== 'auth') this.edge.settle(this.ledger.relayed());
    if (this.txStatus === 'I') this.edge.transactionEnded();
    if (this.phase === 'auth') {
      this.phase = 'ready';
      clearTimeout(this.startupTimer);
      this.lender?.ready();
      this.log.debug('session ready');
      if (this.heldUntilLogin) {
        this.heldUntilLogin = false;
        this.client.resume();
      }
    }
    if (this.lender) this.maybeIdle = true;
    if (this.draining && this.idle) setImmediate(() => this.terminateForShutdown());
    return undefined;
  }

  /**
   * Session mode: the backend's key passes through (cancels go to it).
   * Transaction mode: the client gets a key of dfgate's own, and a cancel with
   * it reaches whichever backend the client holds at that moment.
   */
  private onBackendKey(conn: ServerConn): Buffer | undefined | null {
    this.unregisterKey?.();
    if (!this.lender) {
      this.cancelPid = conn.pid;
      this.unregisterKey = this.ctx.cancels.add(conn.pid, conn.key as Buffer, this.ctx.upstream);
      return undefined;
    }
    if (this.unregisterKey) return null; // one key per client
    const own = ownBackendKey();
    this.cancelPid = own.pid;
    this.unregisterKey = this.ctx.cancels.addResolver(own.pid, own.key, () => {
      const s = this.server;
      return s && s.key
        ? { pid: s.pid, key: s.key, target: this.ctx.upstream, done: s.cancelSent() }
        : undefined;
    });
    return own.message;
  }

  /** Client messages dfgate looks into: Query, Parse, Bind and Close (df.* calls) and the password exchange. */
  private onClientMessage(type: number, body: Buffer, raw: Buffer): Piece | null | undefined {
    if (this.lender && this.phase === 'ready') return this.lender.message(type, body, raw);
    if (type === Frontend.Query || type === Frontend.Parse)
      return this.edge.onStatement(type, body, raw);
    if (type === Frontend.Bind) return this.edge.onBind(body, raw);
    if (type === Frontend.Close) {
      this.edge.onClose(body);
      return undefined;
    }
    if (type !== Frontend.Password || !this.auth.expecting) return undefined;
    const refused = this.auth.response(body, this.server?.tls ?? false);
    if (!refused) return undefined;
    this.fatal(refused);
    return null;
  }

  /**
   * Transaction mode: the client is done sending (Terminate, or FIN). Its
   * answers so far reach it first, then it is closed (the server connection stays).
   */
  closeWhenAnswered(reason: string): Piece {
    const until = this.ledger.expected;
    return async (): Promise<Buffer[]> => {
      // inside COPY FROM STDIN no answer comes until the COPY ends (onServerMessage closes then)
      if (!this.copyIn) await this.ledger.wait(until, this.isClosed);
      setImmediate(() => this.close(reason));
      return [];
    };
  }

  private onServerClosed(conn: ServerConn): void {
    if (this.server !== conn) return;
    if (this.lender && this.phase === 'ready') this.lender.lost(conn);
    this.onUpstreamClosed(conn);
  }

  private onUpstreamClosed(conn: ServerConn): void {
    if (this.phase === 'closed') return;
    if (this.pendingFatal) {
      if (this.sawFatal) this.close('upstream closed after its own FATAL');
      else this.endPending();
      return;
    }
    if (this.phase === 'auth' && !(this.clientFramer?.atBoundary ?? true)) {
      // the server refused the client's message on its header (one longer than
      // PostgreSQL reads during authentication) and closed, as it does directly
      this.close('upstream closed during a client message in authentication');
      return;
    }
    if (this.clientGone && !this.clientTerminated) {
      // the client half-closed without Terminate; the server ended the session because of it
      this.clientLeft();
      this.close('client disconnected');
      return;
    }
    if (
      !this.clientTerminated &&
      !this.sawFatal &&
      conn.atBoundary &&
      this.phase !== 'connecting'
    ) {
      this.log.warn('upstream connection lost');
      this.fatal({
        severity: 'FATAL',
        code: SqlState.ConnectionFailure,
        message:
          'server closed the connection unexpectedly (the upstream connection of dfgate was lost)',
      });
      return;
    }
    this.close('upstream closed');
  }

  // ---- ending ---------------------------------------------------------

  close(reason: string): void {
    if (this.phase === 'closed') return;
    const was = this.phase;
    this.phase = 'closed';
    clearTimeout(this.startupTimer);
    // anything waiting on the server gives up (the pump then stops)
    this.conversation.abandon();
    this.ledger.abandon();
    this.unregisterKey?.();
    const conn = this.server;
    this.server = undefined;
    if (this.lender) this.lender.closed(conn, this.clientFramer?.atBoundary ?? true);
    else if (conn) {
      if (was === 'ready' && !this.clientTerminated && (this.clientFramer?.atBoundary ?? true))
        conn.terminate();
      else conn.end();
    }
    this.client.end();
    setTimeout(() => this.client.destroy(), 1000).unref();
    this.log.debug({ reason }, 'session closed');
    this.ctx.closed(this);
  }
}
