/**
 * One client connection and its upstream connection (session mode): the
 * startup phase (SSL/GSS negotiation, cancel requests, the StartupMessage),
 * the authentication exchange relayed end to end, then framed relaying in
 * both directions. Only the few message types dfgate must see are decoded;
 * everything else is forwarded as slices of the chunks it arrived in.
 * https://www.postgresql.org/docs/current/protocol-flow.html
 */
import type net from 'node:net';
import { Duplex } from 'node:stream';
import tls from 'node:tls';
import type { Logger } from 'pino';
import { randomBytes } from 'node:crypto';
import { isUtf8 } from 'node:buffer';
import {
  ANALYZE_BYTES_MAX,
  edgeSkips,
  literal,
  type BoundProblem,
  type Edge,
  type EdgeError,
  type NewCall,
  type StartParam,
} from '../dsl/edge.js';
import type { StartNewRequest } from '../contract/start-new.js';
import { analyzeSoon, checkBoundSoon } from '../dsl/edge-pool.js';
import { metrics } from '../metrics.js';
import { encodeErrorFieldMap } from './protocol/backend.js';
import type { CancelRegistry } from './cancel.js';
import {
  decodeAuth,
  decodeBackendKey,
  decodeErrorFields,
  decodeParameterStatus,
  encodeAuthSASL,
  encodeError,
  type ErrorFields,
} from './protocol/backend.js';
import {
  AuthCode,
  Backend,
  Frontend,
  isFrontendType,
  isSmallFrontendType,
  MAX_AUTH_MESSAGE,
  MAX_HELD_BEFORE_LOGIN,
  MAX_STARTUP_PACKET,
  SMALL_MESSAGE_LIMIT,
} from './protocol/codes.js';
import {
  Framer,
  MessageTooLarge,
  StartupFramer,
  type Deferred,
  type Piece,
} from './protocol/frame.js';
import {
  decodeAuthMessage,
  decodeFrontend,
  decodeStartup,
  encodeFrontend,
  unknownTypeError,
  type AuthMessage,
  type FrontendMessage,
} from './protocol/frontend.js';
import { ProtocolError, SilentClose } from './protocol/reader.js';
import { SqlState } from './protocol/sqlstate.js';
import { connectUpstream, type UpstreamTarget } from './upstream.js';

export interface SessionContext {
  readonly log: Logger;
  readonly upstream: UpstreamTarget;
  readonly connectTimeoutMs: number;
  /** From accept until the session is ready (SSL, startup packet, authentication); then closed silently. */
  readonly startupTimeoutMs: number;
  readonly maxMessageSize: number;
  readonly tls: tls.SecureContext | undefined;
  readonly cancels: CancelRegistry;
  /** Called once a StartupMessage arrives: may this client be admitted? */
  admit(session: Session): ErrorFields | undefined;
  /** Called when a transaction that mentioned df.* ends (ReadyForQuery back to idle): wakes the executor in-process. */
  readonly onDfCommit?: (() => void) | undefined;
  /** Validate and compile df.start calls before they reach the database (DESIGN.md §2 path 2). */
  readonly edgeValidation?: boolean | undefined;
  /**
   * Runs df.start(..., transaction_mode => 'new') on a connection of dfgate's
   * own as `login`, committed on its own; resolves to the instance id. Errors
   * carry PostgreSQL's fields (code, message, hint).
   */
  readonly startNew?: ((req: StartNewRequest) => Promise<string>) | undefined;
  closed(session: Session): void;
}

type Phase = 'startup' | 'connecting' | 'auth' | 'ready' | 'closed';

// the contract with the executor lives in a neutral module (src/contract/start-new.ts)
export type { StartNewRequest };

/** An error with PostgreSQL's fields, as thrown by startNew. */
interface PgErrorLike {
  readonly code?: string;
  readonly message: string;
  readonly hint?: string;
  readonly detail?: string;
}

/** What to do with a server message while dfgate talks to the server itself. */
type Private = (type: number, body: Buffer) => 'swallow' | 'pass';

/** A server ErrorResponse dfgate provoked (it names the nonce) and what the client sees instead. */
interface ErrorSwap {
  readonly fields: ReadonlyMap<string, string> | null;
  readonly untilRfq: number;
}

const TEXT_OID = 25;
const ASYNC_MESSAGES = new Set<number>([
  Backend.NoticeResponse,
  Backend.ParameterStatus,
  Backend.NotificationResponse,
]);

const SERVER_INSPECT = new Uint8Array(256);
for (const t of [
  Backend.Authentication,
  Backend.BackendKeyData,
  Backend.ParameterStatus,
  Backend.ReadyForQuery,
  Backend.ErrorResponse,
]) {
  SERVER_INSPECT[t] = 1;
}
const TLS_HANDSHAKE = 0x16;

const DF_MARKS = ['df.', 'DF.', 'Df.', 'dF.', '"df".'].map((m) => Buffer.from(m));

/** Does a Query or Parse body mention df. (any case, or quoted)? Native scans only. */
export function mentionsDf(body: Buffer): boolean {
  for (const m of DF_MARKS) if (body.indexOf(m) >= 0) return true;
  return false;
}

let nextId = 1;

export class Session {
  readonly id = nextId++;
  phase: Phase = 'startup';
  log: Logger;
  user = '';
  database = '';
  /** Transaction status from the last ReadyForQuery: I, T or E. */
  txStatus = 'I';
  /** Server parameters reported by ParameterStatus (client_encoding, standard_conforming_strings, ...). */
  readonly serverParams = new Map<string, string>();
  private upstream: net.Socket | undefined;
  private upstreamTls = false;
  private startup: StartupFramer | undefined = new StartupFramer(MAX_STARTUP_PACKET);
  private clientFramer: Framer | undefined;
  private serverFramer: Framer | undefined;
  private expectAuth: AuthMessage['type'] | undefined;
  private unregisterKey: (() => void) | undefined;
  private sawFatal = false;
  private clientTerminated = false;
  /** The client half-closed (FIN) or its socket closed: a later upstream close is its doing. */
  private clientGone = false;
  private startupTimer: NodeJS.Timeout | undefined;
  /** The client sent an SSLRequest / a GSSENCRequest (each is answered once). */
  private sslDone = false;
  private gssDone = false;
  /** The client message whose header was just read is longer than any authentication message. */
  private authTooLong = false;
  /** Reading from the client is paused until login completes (MAX_HELD_BEFORE_LOGIN). */
  private heldUntilLogin = false;
  private draining = false;
  private readonly pendingClient: Buffer[] = [];
  /**
   * A client protocol error to report once the upstream has answered what came
   * before it ('silent': close without a word, as PostgreSQL does for bad lengths).
   */
  private pendingFatal: ErrorFields | 'silent' | undefined;
  /** The current transaction sent a statement that mentions df.* */
  private sawDf = false;
  /** Client pieces waiting behind a Deferred, in order. */
  private readonly queue: Piece[] = [];
  private pumping = false;
  /** ReadyForQuery messages the client's Query/Sync/FunctionCall messages will get, and those relayed so far. */
  private rfqExpected = 0;
  private rfqReceived = 0;
  private rfqWaiters: Array<{ readonly n: number; readonly resolve: () => void }> = [];
  /**
   * A Query or FunctionCall arrived inside an unfinished extended-protocol
   * batch: whether it gets a ReadyForQuery depends on how that batch ended, so
   * the count above can no longer be trusted to wait on.
   */
  private rfqUnsure = false;
  /** Set while dfgate talks to the server on the client's connection. */
  private private: Private | undefined;
  /** Ends that conversation early (the connection closed). */
  private abandonPrivate: (() => void) | undefined;
  /** Extended-protocol messages since the last Sync (risky: one that executes or binds), and before the current one. */
  private batchLen = 0;
  private batchRisky = false;
  private prevLen = 0;
  private prevRisky = false;
  /**
   * Protocol-level statements whose Binds dfgate checks: a SELECT df.start(...,
   * transaction_mode => 'new') (`call`), or df.start calls whose workflow is a
   * parameter (`bound`: their numbers).
   */
  private readonly statements = new Map<string, StatementCheck | PendingCheck>();
  /** Errors dfgate provoked, by nonce. */
  private readonly swaps = new Map<string, ErrorSwap>();
  /** Server error positions in a rewritten statement → positions in the client's text. */
  private positionMaps: Array<{
    readonly after: number;
    readonly until: number;
    readonly map: (p: number) => number;
  }> = [];

  constructor(
    private client: net.Socket,
    private readonly ctx: SessionContext,
  ) {
    this.log = ctx.log.child({
      conn: this.id,
      remote: `${client.remoteAddress ?? 'local'}:${client.remotePort ?? 0}`,
    });
    client.setNoDelay(true);
    this.attachClient(client);
    this.startupTimer = setTimeout(() => this.startupTimedOut(), ctx.startupTimeoutMs);
    this.startupTimer.unref();
  }

  /**
   * --startup-timeout expired before the session was established. Like
   * PostgreSQL at authentication_timeout, close without sending anything.
   */
  private startupTimedOut(): void {
    if (this.phase === 'ready' || this.phase === 'closed') return;
    metrics.clientsRefused.inc({ reason: 'startup_timeout' });
    this.log.info(
      { phase: this.phase, timeoutMs: this.ctx.startupTimeoutMs },
      'closing a client that did not finish startup and authentication within --startup-timeout',
    );
    this.close('startup timeout');
    this.client.destroy();
  }

  /** Idle: no transaction open and nothing outstanding. */
  get idle(): boolean {
    return (
      this.phase === 'ready' &&
      this.txStatus === 'I' &&
      this.rfqReceived >= this.rfqExpected &&
      (this.clientFramer?.atBoundary ?? true)
    );
  }

  private attachClient(sock: net.Socket): void {
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
      if (this.upstream && !this.upstream.destroyed && this.phase !== 'closed') {
        // messages still queued behind a deferred one (a df.start compiling) go first
        if (!this.pumping && this.queue.length === 0) this.upstream.end();
      } else this.close('client ended');
    });
  }

  /** The client went away without Terminate: logged as its disconnect (never as an upstream loss). */
  private clientLeft(): void {
    if (this.phase !== 'ready' || this.clientTerminated) return;
    const busy = !this.idle;
    this.log[busy ? 'info' : 'debug'](
      { txStatus: this.txStatus, busy },
      busy
        ? 'client disconnected without Terminate while a query or transaction was open'
        : 'client disconnected without Terminate',
    );
  }

  private onClientData(chunk: Buffer): void {
    try {
      if (this.phase === 'startup') this.onStartupData(chunk);
      else if (this.phase === 'connecting') this.pendingClient.push(chunk);
      else if (this.upstream && this.clientFramer && !this.pendingFatal) {
        this.forwardClient(this.clientFramer.push(chunk));
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
   * sent before it first (the upstream gets Terminate right after the last good
   * message and finishes its replies), then send the FATAL and close.
   */
  private clientFramingFailed(err: Error): void {
    // also while authenticating: the server answers what came before (PostgreSQL reads in order)
    if (!this.upstream || this.phase === 'closed') {
      this.protocolFailure(err);
      return;
    }
    this.pendingFatal = err instanceof SilentClose ? 'silent' : this.errorFields(err);
    if (err instanceof SilentClose) this.logSilent(err);
    this.client.pause();
    this.clientTerminated = true;
    // after whatever still waits in the queue, in order
    this.forwardClient([encodeFrontend({ type: 'Terminate' })]);
    setTimeout(() => this.endPending(), 10_000).unref();
  }

  /** Sends the pending FATAL (or nothing, if silent) and closes. */
  private endPending(): void {
    const p = this.pendingFatal;
    if (p === undefined) return;
    if (p === 'silent') this.close('malformed client message');
    else this.fatal(p);
  }

  private logSilent(err: SilentClose): void {
    this.log.info(
      { error: err.message, field: err.field },
      'closing client connection without a message (malformed framing, as PostgreSQL does)',
    );
  }

  private errorFields(err: unknown): ErrorFields {
    if (err instanceof MessageTooLarge) {
      return {
        severity: 'FATAL',
        code: SqlState.ProgramLimitExceeded,
        message: `invalid message length: ${err.message}`,
      };
    }
    if (err instanceof ProtocolError)
      return { severity: 'FATAL', code: err.code, message: err.message };
    this.log.error({ err }, 'internal error in session');
    return {
      severity: 'FATAL',
      code: SqlState.InternalError,
      message: 'internal error in dfgate; see its log',
    };
  }

  private protocolFailure(err: unknown): void {
    if (err instanceof SilentClose) {
      this.logSilent(err);
      this.close('malformed client message');
      return;
    }
    this.fatal(this.errorFields(err));
  }

  // ---- startup phase --------------------------------------------------

  private onStartupData(chunk: Buffer): void {
    const framer = this.startup as StartupFramer;
    if (
      framer.buffered === 0 &&
      chunk[0] === TLS_HANDSHAKE &&
      !this.sslDone &&
      !this.gssDone &&
      !(this.client instanceof tls.TLSSocket)
    ) {
      this.directTls(chunk);
      return;
    }
    const got = framer.push(chunk);
    if (!got) return;
    const packet = decodeStartup(got.body);
    switch (packet.type) {
      case 'SSLRequest':
      case 'GSSENCRequest': {
        // Each is answered once, and neither after TLS was accepted (PostgreSQL's
        // ProcessStartupPacket); a repeat reads as an unknown protocol version. This
        // also keeps a client from nesting TLS sessions inside each other.
        const ssl = packet.type === 'SSLRequest';
        if (ssl ? this.sslDone : this.gssDone)
          throw new ProtocolError(
            `unsupported frontend protocol 1234.${ssl ? 5679 : 5680}: server supports 3.0 to 3.0`,
            { code: '0A000' },
          );
        if (ssl) this.sslDone = true;
        else this.gssDone = true;
        if (got.rest.length > 0) {
          // PostgreSQL answers the request, then refuses the bytes that came with it
          if (!(packet.type === 'SSLRequest' && this.ctx.tls)) this.client.write('N');
          this.fatal({
            severity: 'FATAL',
            code: SqlState.ProtocolViolation,
            message:
              packet.type === 'SSLRequest'
                ? 'received unencrypted data after SSL request'
                : 'received unencrypted data after GSSAPI encryption request',
            detail:
              'This could be either a client-software bug or evidence of an attempted man-in-the-middle attack.',
          });
          return;
        }
        if (packet.type === 'SSLRequest' && this.ctx.tls) {
          this.gssDone = true;
          this.client.write('S');
          this.upgradeClient([]);
        } else {
          this.client.write('N');
        }
        return;
      }
      case 'CancelRequest':
        void this.ctx.cancels.forward(packet.pid, packet.key);
        this.close('cancel request');
        return;
      case 'StartupMessage': {
        this.startup = undefined;
        const params = new Map(packet.params);
        this.user = params.get('user') ?? '';
        this.database = params.get('database') ?? this.user;
        this.log = this.log.child({ user: this.user, db: this.database });
        const repl = params.get('replication');
        if (repl !== undefined && !['false', 'off', 'no', '0'].includes(repl.toLowerCase())) {
          this.fatal({
            severity: 'FATAL',
            code: SqlState.FeatureNotSupported,
            message: 'replication connections are not supported through dfgate',
            hint: 'Connect replication clients directly to the PostgreSQL server.',
          });
          return;
        }
        if (!this.user) {
          this.fatal({
            severity: 'FATAL',
            code: SqlState.InvalidAuthorization,
            message: 'no PostgreSQL user name specified in startup packet',
          });
          return;
        }
        const refused = this.ctx.admit(this);
        if (refused) {
          this.fatal(refused);
          return;
        }
        this.phase = 'connecting';
        if (got.rest.length > 0) this.pendingClient.push(got.rest);
        void this.connect(Buffer.concat([Buffer.from([0, 0, 0, 0]), got.body]));
        return;
      }
    }
  }

  /** PostgreSQL 17's sslnegotiation=direct: TLS from the first byte, ALPN "postgresql". */
  private directTls(first: Buffer): void {
    if (!this.ctx.tls) {
      this.log.warn(
        'client started TLS directly (sslnegotiation=direct) but dfgate has no --tls-cert; closing',
      );
      this.close('direct TLS without a certificate');
      this.client.destroy();
      return;
    }
    this.upgradeClient([first], true);
  }

  private upgradeClient(initial: Buffer[], direct = false): void {
    const raw = this.client;
    raw.removeAllListeners('data');
    raw.removeAllListeners('close');
    raw.removeAllListeners('error');
    raw.on('error', () => undefined);
    let transport: net.Socket | Duplex = raw;
    if (initial.length) {
      // Bytes already read (a direct-TLS ClientHello) must reach the TLS layer:
      // wrap the socket in a JS stream that replays them first.
      const replay = new Duplex({
        read: () => undefined,
        write: (chunk: Buffer, _enc, cb) => raw.write(chunk, cb),
        final: (cb) => {
          raw.end();
          cb();
        },
      });
      replay.push(Buffer.concat(initial));
      raw.on('data', (d: Buffer) => replay.push(d));
      raw.on('end', () => replay.push(null));
      raw.on('close', () => replay.destroy());
      transport = replay;
    }
    const secure = new tls.TLSSocket(transport as net.Socket, {
      isServer: true,
      secureContext: this.ctx.tls as tls.SecureContext,
      ALPNProtocols: ['postgresql'],
    });
    this.client = secure;
    this.startup = new StartupFramer(MAX_STARTUP_PACKET);
    secure.once('secure', () => {
      if (direct && secure.alpnProtocol !== 'postgresql') {
        this.log.warn('direct TLS without ALPN "postgresql"; closing');
        this.close('direct TLS without ALPN');
        secure.destroy();
      }
    });
    this.attachClient(secure);
  }

  private async connect(startupPacket: Buffer): Promise<void> {
    startupPacket.writeInt32BE(startupPacket.length, 0);
    this.client.pause();
    try {
      const up = await connectUpstream(this.ctx.upstream, this.ctx.connectTimeoutMs);
      if (this.phase === 'closed') {
        up.socket.destroy();
        return;
      }
      this.upstream = up.socket;
      this.upstreamTls = up.tls;
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'cannot reach the upstream server');
      this.fatal({
        severity: 'FATAL',
        code: SqlState.UnableToConnect,
        message: `dfgate could not connect to the upstream server: ${(err as Error).message}`,
      });
      return;
    }
    const upstream = this.upstream;
    this.phase = 'auth';
    this.serverFramer = new Framer({
      inspect: (t) => SERVER_INSPECT[t] === 1 || this.private !== undefined,
      message: (t, body) => this.onServerMessage(t, body),
    });
    this.clientFramer = new Framer(
      {
        inspect: (t, len) =>
          (t === Frontend.Password && this.phase === 'auth' && !this.authTooLong) ||
          ((t === Frontend.Query || t === Frontend.Parse) &&
            (this.ctx.onDfCommit !== undefined || this.ctx.edgeValidation === true) &&
            this.inspectStatement(t, len)) ||
          ((t === Frontend.Bind || t === Frontend.Close) && this.statements.size > 0),
        header: (t, len) => {
          if (!isFrontendType(t)) throw unknownTypeError(t);
          // PostgreSQL refuses a longer authentication message on its header (silently or
          // with 28P01, by method): it goes through unassembled so that the server does
          this.authTooLong = len > MAX_AUTH_MESSAGE;
          if (len > SMALL_MESSAGE_LIMIT && isSmallFrontendType(t))
            throw new SilentClose('invalid message length', {
              field: `length ${len} for type ${JSON.stringify(String.fromCharCode(t))}`,
            });
          this.prevLen = this.batchLen;
          this.prevRisky = this.batchRisky;
          if (t === Frontend.CopyData || t === Frontend.CopyDone || t === Frontend.CopyFail) return;
          if ((t === Frontend.Query || t === Frontend.FunctionCall) && this.batchLen > 0)
            this.rfqUnsure = true; // skipped by the server if the open batch failed
          if (t === Frontend.Query || t === Frontend.Sync || t === Frontend.FunctionCall) {
            this.rfqExpected++;
            this.batchLen = 0;
            this.batchRisky = false;
          } else if (t === Frontend.Terminate) this.clientTerminated = true;
          else {
            this.batchLen++;
            if (t !== Frontend.Parse && t !== Frontend.Describe && t !== Frontend.Close)
              this.batchRisky = this.batchRisky || t !== Frontend.Flush;
          }
        },
        message: (t, body, raw) => this.inspectClient(t, body, raw),
      },
      this.ctx.maxMessageSize,
    );
    upstream.on('data', (chunk: Buffer) => {
      try {
        this.forward((this.serverFramer as Framer).push(chunk) as Buffer[], this.client, upstream);
      } catch (err) {
        this.log.error({ err }, 'cannot frame server traffic');
        this.close('bad server traffic');
      }
    });
    upstream.on('error', (err) => this.log.debug({ err: err.message }, 'upstream socket error'));
    upstream.on('close', () => this.onUpstreamClosed());
    upstream.write(startupPacket);
    upstream.resume();
    const pending = this.pendingClient.splice(0);
    for (const chunk of pending) this.onClientData(chunk);
    this.client.resume();
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

  /** Client → server: straight through, unless something must wait for a Deferred. */
  private forwardClient(pieces: Piece[]): void {
    const up = this.upstream as net.Socket;
    if (this.queue.length === 0 && !pieces.some((p) => typeof p === 'function')) {
      this.forward(pieces as Buffer[], up, this.client);
      return;
    }
    this.queue.push(...pieces);
    void this.pump();
  }

  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    this.client.pause();
    try {
      while (this.queue.length > 0 && this.phase !== 'closed') {
        const p = this.queue.shift() as Piece;
        const out = typeof p === 'function' ? await (p as Deferred)() : [p];
        const up = this.upstream;
        if (!up || up.destroyed || (this.phase as Phase) === 'closed') break;
        for (const b of out) up.write(b);
      }
    } catch (err) {
      this.protocolFailure(err);
    } finally {
      this.pumping = false;
      if (this.phase !== 'closed') this.client.resume();
      // the client half-closed while messages waited here: pass the half-close on now
      if (this.clientGone && this.queue.length === 0 && this.upstream && !this.upstream.destroyed)
        this.upstream.end();
    }
  }

  private forward(pieces: Buffer[], to: net.Socket, from: net.Socket): void {
    if (pieces.length === 0 || to.destroyed) return;
    if (pieces.length === 1) {
      to.write(pieces[0] as Buffer);
    } else {
      to.cork();
      for (const p of pieces) to.write(p);
      to.uncork();
    }
    if (to.writableNeedDrain && !from.isPaused()) {
      from.pause();
      to.once('drain', () => {
        if (this.phase !== 'closed') from.resume();
      });
    }
  }

  private onServerMessage(type: number, body: Buffer): Buffer | null | undefined {
    if (
      this.private &&
      !ASYNC_MESSAGES.has(type) && // notifications, notices, parameter changes: the client's
      this.private(type, body) === 'swallow'
    ) {
      if (type === Backend.ReadyForQuery) this.txStatus = String.fromCharCode(body[0] ?? 0x49);
      return null;
    }
    switch (type) {
      case Backend.ReadyForQuery: {
        this.txStatus = String.fromCharCode(body[0] ?? 0x49);
        if (this.phase !== 'auth') {
          this.rfqReceived++;
          this.settleRfq();
        }
        if (this.sawDf && this.txStatus === 'I') {
          this.sawDf = false;
          this.ctx.onDfCommit?.();
        }
        if (this.phase === 'auth') {
          this.phase = 'ready';
          clearTimeout(this.startupTimer);
          this.rfqExpected = 0;
          this.rfqReceived = 0;
          this.batchLen = 0; // the password exchange is not a batch
          this.batchRisky = false;
          this.rfqUnsure = false;
          this.log.debug('session ready');
          if (this.heldUntilLogin) {
            this.heldUntilLogin = false;
            this.client.resume();
          }
        }
        if (this.draining && this.idle) setImmediate(() => this.terminateForShutdown());
        return undefined;
      }
      case Backend.Authentication: {
        const req = decodeAuth(body);
        switch (req.code) {
          case AuthCode.SASL: {
            this.expectAuth = 'SASLInitialResponse';
            const mechs = (req as { mechanisms: readonly string[] }).mechanisms;
            // Channel binding cannot hold across a proxy that terminates TLS on both sides.
            const kept = mechs.filter((m) => !m.endsWith('-PLUS'));
            return kept.length === mechs.length ? undefined : encodeAuthSASL(kept);
          }
          case AuthCode.SASLContinue:
            this.expectAuth = 'SASLResponse';
            return undefined;
          case AuthCode.CleartextPassword:
          case AuthCode.MD5Password:
            this.expectAuth = 'PasswordMessage';
            return undefined;
          default:
            return undefined;
        }
      }
      case Backend.BackendKeyData: {
        const { pid, key } = decodeBackendKey(body);
        this.unregisterKey?.();
        this.unregisterKey = this.ctx.cancels.add(pid, key, this.ctx.upstream);
        return undefined;
      }
      case Backend.ParameterStatus: {
        const [name, value] = decodeParameterStatus(body);
        this.serverParams.set(name, value);
        return undefined;
      }
      case Backend.ErrorResponse: {
        const fields = decodeErrorFields(body);
        const nonce = /dfgate_edge_([0-9a-f]{12})/.exec(fields.get('M') ?? '')?.[1];
        const swap = nonce === undefined ? undefined : this.swaps.get(nonce);
        if (swap) {
          this.swaps.delete(nonce as string);
          return swap.fields ? encodeErrorFieldMap(swap.fields) : null;
        }
        const pos = fields.get('P');
        const pm = this.positionMaps.find(
          (m) => m.after <= this.rfqReceived && this.rfqReceived < m.until,
        );
        if (pos !== undefined && pm) {
          fields.set('P', String(pm.map(Number(pos))));
          return encodeErrorFieldMap(fields);
        }
        if (
          fields.get('V') === 'FATAL' ||
          fields.get('S') === 'FATAL' ||
          fields.get('V') === 'PANIC'
        )
          this.sawFatal = true;
        if (this.phase === 'auth')
          this.log.info({ code: fields.get('C') }, 'upstream refused the connection');
        return undefined;
      }
      default:
        return undefined;
    }
  }

  /** Client messages dfgate looks into: Query, Parse, Bind and Close (df.* calls) and the password exchange. */
  private onClientMessage(type: number, body: Buffer, raw: Buffer): Piece | null | undefined {
    if (type === Frontend.Query || type === Frontend.Parse)
      return this.onStatement(type, body, raw);
    if (type === Frontend.Bind) return this.onBind(body, raw);
    if (type === Frontend.Close) {
      const m = decodeFrontend(type, body);
      if (m.type === 'Close' && m.kind === 'S') this.statements.delete(m.name);
      return undefined;
    }
    if (type !== Frontend.Password || !this.expectAuth) return undefined;
    const m = decodeAuthMessage(body, this.expectAuth);
    if (
      m.type === 'SASLInitialResponse' &&
      m.data !== null &&
      m.data[0] === 0x79 /* y */ &&
      this.upstreamTls
    ) {
      // The client supports channel binding but dfgate hid SCRAM-SHA-256-PLUS; a TLS
      // server that supports binding must then refuse ("downgrade"), so say what to change.
      this.fatal({
        severity: 'FATAL',
        code: SqlState.InvalidAuthorization,
        message:
          "SCRAM channel binding cannot pass through dfgate: the client's TLS session ends at dfgate, and the upstream server's TLS session is a different one",
        hint: 'Connect to dfgate with channel_binding=disable (for example psql "host=... sslmode=require channel_binding=disable"), or without TLS on a trusted network.',
      });
      return null;
    }
    return undefined;
  }

  // ---- df.* at the edge (DESIGN.md §2 path 2) ---------------------------

  /**
   * Whether a Query or Parse is assembled for onStatement. One too long for
   * the edge to compile streams through like any other message (assembling,
   * scanning and writing it in one piece would hold the event loop for
   * milliseconds), counted as mentioning df.; with named prepared statements
   * to track (a Parse's name, a DEALLOCATE) it is assembled anyway.
   */
  private inspectStatement(type: number, len: number): boolean {
    if (!edgeSkips(type === Frontend.Parse, len - 4)) return true;
    if (type === Frontend.Query) this.statements.delete(''); // as onStatement would
    if (this.statements.size > 0) return true;
    this.sawDf = true;
    return false;
  }

  private onStatement(type: number, body: Buffer, raw: Buffer): Piece | null | undefined {
    const isQuery = type === Frontend.Query;
    if (this.statements.size > 0) {
      if (isQuery) {
        this.statements.delete(''); // a simple query drops the unnamed statement
        if (/deallocate|discard/i.test(body.toString('latin1'))) this.statements.clear();
      } else {
        this.statements.delete(body.toString('utf8', 0, body.indexOf(0)));
      }
    }
    if (!mentionsDf(body)) return undefined;
    this.sawDf = true;
    if (
      !this.ctx.edgeValidation ||
      this.serverParams.get('client_encoding') !== 'UTF8' ||
      this.serverParams.get('standard_conforming_strings') !== 'on'
    )
      return undefined;
    // Invalid UTF-8 goes to the server unchanged, which refuses it (22021) exactly as
    // on a direct connection; decoding it here would turn it into U+FFFD.
    const text = statementBytes(type, body);
    if (!text || text.length > ANALYZE_BYTES_MAX || !isUtf8(text)) return undefined;
    const m = decodeFrontend(type, body);
    if (m.type !== 'Query' && m.type !== 'Parse') return undefined;
    // what the outcome depends on, as of this message (later messages move the counters)
    const at: EdgeMoment = {
      rfqExpected: this.rfqExpected,
      prevLen: this.prevLen,
      prevRisky: this.prevRisky,
    };
    const e = analyzeSoon(m.sql, !isQuery);
    if (!(e instanceof Promise)) return this.applyEdge(m, e, raw, at);
    // Compiled in a worker: this message and everything after it wait in order
    // (the pump pauses the client); a Bind of this statement waits for the check.
    let pending: PendingCheck | undefined;
    if (m.type === 'Parse') {
      const name = m.name;
      const p: PendingCheck = {
        pending: e.then((done) => {
          const st = statementCheck(done, m.paramTypes);
          if (this.statements.get(name) === p) {
            if (st) this.statements.set(name, st);
            else this.statements.delete(name);
          }
          return st;
        }),
      };
      pending = p;
      this.statements.set(name, p);
    }
    return async () => {
      const done = await e;
      await pending?.pending;
      const piece = this.applyEdge(m, done, raw, at, true);
      if (piece === undefined) return [raw];
      if (piece === null) return [];
      return typeof piece === 'function' ? piece() : [piece];
    };
  }

  /** The message to forward for a statement, given the edge's answer. */
  private applyEdge(
    m: Extract<FrontendMessage, { type: 'Query' | 'Parse' }>,
    e: Edge,
    raw: Buffer,
    at: EdgeMoment,
    registered = false,
  ): Piece | null | undefined {
    if (m.type === 'Parse' && !registered) {
      const st = statementCheck(e, m.paramTypes);
      if (st) this.statements.set(m.name, st);
    }
    switch (e.kind) {
      case 'pass':
        return undefined;
      case 'rewrite': {
        metrics.edgeRewrites.inc();
        const after = m.type === 'Query' ? at.rfqExpected - 1 : at.rfqExpected;
        this.positionMaps.push({ after, until: after + 1, map: e.position });
        return encodeFrontend(
          m.type === 'Query' ? { type: 'Query', sql: e.text } : { ...m, sql: e.text },
        );
      }
      case 'error': {
        const fields = errorFields(e.error);
        const nonce = this.provoke(fields, at.rfqExpected);
        if (m.type === 'Parse') {
          // a nonce that is a syntax error: the server fails the Parse, dfgate swaps in its error
          return encodeFrontend({ ...m, sql: `dfgate_edge_${nonce}` });
        }
        const sql = Buffer.from(m.sql, 'utf8');
        const stmt = Buffer.from(raiseNonce(nonce), 'utf8');
        return encodeFrontend({
          type: 'Query',
          sql: e.only
            ? raiseNonce(nonce)
            : Buffer.concat([
                sql.subarray(0, e.statement.start),
                stmt,
                sql.subarray(e.statement.end),
              ]).toString('utf8'),
        });
      }
      case 'new':
        if (m.type === 'Parse') return undefined;
        return this.newQuery(e.call, raw, at);
    }
  }

  /** Registers an error the server is about to raise under a nonce (null fields: hide it). */
  private provoke(
    fields: ReadonlyMap<string, string> | null,
    rfqExpected = this.rfqExpected,
  ): string {
    if (fields) metrics.edgeRefusals.inc({ code: fields.get('C') ?? '' });
    const nonce = randomBytes(6).toString('hex');
    this.swaps.set(nonce, { fields, untilRfq: rfqExpected + 1 });
    return nonce;
  }

  private settleRfq(): void {
    const n = this.rfqReceived;
    if (this.rfqWaiters.length) {
      const ready = this.rfqWaiters.filter((w) => w.n <= n);
      this.rfqWaiters = this.rfqWaiters.filter((w) => w.n > n);
      for (const w of ready) w.resolve();
    }
    if (this.positionMaps.length) this.positionMaps = this.positionMaps.filter((m) => m.until > n);
    if (this.swaps.size) for (const [k, v] of this.swaps) if (v.untilRfq <= n) this.swaps.delete(k);
  }

  /** Resolves once `n` ReadyForQuery messages have been relayed (everything before was answered). */
  private waitRfq(n: number): Promise<void> {
    if (this.rfqReceived >= n || this.phase === 'closed') return Promise.resolve();
    return new Promise((resolve) => this.rfqWaiters.push({ n, resolve }));
  }

  /** Sends messages of dfgate's own on the client's connection; `handler` sees the answers. */
  private talk<T>(
    messages: FrontendMessage[],
    handler: (done: (v: T) => void) => Private,
  ): Promise<T> {
    return new Promise<T>((resolve) => {
      const up = this.upstream;
      if (!up || up.destroyed || this.phase === 'closed') {
        resolve(undefined as T);
        return;
      }
      const finish = (v: T): void => {
        this.private = undefined;
        this.abandonPrivate = undefined;
        resolve(v);
      };
      this.private = handler(finish);
      this.abandonPrivate = () => finish(undefined as T);
      up.write(Buffer.concat(messages.map(encodeFrontend)));
    });
  }

  /** The session's current_user, asked on its own connection (undefined if that fails, e.g. 25P02). */
  private whoAmI(): Promise<string | undefined> {
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
        return (t, body) => {
          if (t === Backend.DataRow && body.readInt16BE(0) === 1 && body.readInt32BE(2) >= 0)
            user = body.toString('utf8', 6, 6 + body.readInt32BE(2));
          else if (t === Backend.ErrorResponse) failed = true;
          else if (t === Backend.ReadyForQuery) done(failed ? undefined : user);
          return 'swallow';
        };
      },
    );
  }

  /** Ends the client's unfinished batch here (everything in it gets answered); true if it failed. */
  private endBatch(): Promise<boolean> {
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

  /** SELECT df.start(<constants>, transaction_mode => 'new') as a simple Query. */
  private newQuery(call: NewCall, raw: Buffer, at: EdgeMoment): Deferred {
    const before = at.rfqExpected - 1;
    const openBatch = at.prevLen > 0;
    const refuse = (f: ReadonlyMap<string, string>): Buffer[] => [
      encodeFrontend({ type: 'Query', sql: raiseNonce(this.provoke(f, at.rfqExpected)) }),
    ];
    return async () => {
      if (this.rfqUnsure) return refuse(mixed());
      await this.waitRfq(before);
      if (openBatch)
        return refuse(
          refusal(
            '0A000',
            "df.start(..., transaction_mode => 'new') cannot run inside an unfinished extended-protocol batch: send Sync first",
          ),
        );
      const args = new Map<StartParam, string | null>();
      for (const [k, a] of call.args)
        if (k !== 'transaction_mode' && 'value' in a) args.set(k, a.value);
      const r = await this.runNew(args);
      if (r.error) return r.error === 'server' ? [raw] : refuse(r.error);
      return [
        encodeFrontend({
          type: 'Query',
          sql: `SELECT ${literal(r.id)}::text AS ${quoteIdentifier(call.column)}`,
        }),
      ];
    };
  }

  /** A Bind of a SELECT df.start(..., transaction_mode => 'new') statement. */
  private onBind(body: Buffer, raw: Buffer): Piece | undefined {
    const m = decodeFrontend(Frontend.Bind, body);
    if (m.type !== 'Bind') return undefined;
    const found = this.statements.get(m.statement);
    if (!found) return undefined;
    const at: EdgeMoment = {
      rfqExpected: this.rfqExpected,
      prevLen: this.prevLen,
      prevRisky: this.prevRisky,
    };
    if ('pending' in found) {
      // its Parse is still being compiled: decide once it is (the pump keeps the order)
      return async () => {
        const st = await found.pending;
        const piece = st ? this.bindPiece(st, m, raw, at) : undefined;
        if (piece === undefined) return [raw];
        return typeof piece === 'function' ? piece() : [piece];
      };
    }
    return this.bindPiece(found, m, raw, at);
  }

  private bindPiece(
    st: StatementCheck,
    m: Extract<FrontendMessage, { type: 'Bind' }>,
    raw: Buffer,
    at: EdgeMoment,
  ): Piece | undefined {
    const refuseNow = (f: ReadonlyMap<string, string> | null): Buffer =>
      // a statement name that does not exist: the server fails the Bind, dfgate swaps in its error
      encodeFrontend({
        type: 'Bind',
        portal: m.portal,
        statement: `dfgate_edge_${this.provoke(f, at.rfqExpected)}`,
        paramFormats: [],
        params: [],
        resultFormats: [],
      });
    if (!st.call) {
      // df.start($n): the bound value is a workflow by the start rule, checked by the
      // compile worker unless short (very long ones by the in-database df.start)
      const values = (st.bound ?? []).map((n) => textParam(m, n - 1, st.paramTypes));
      const verdict = checkBoundSoon(values);
      const piece = (p: BoundProblem | undefined): Buffer | undefined =>
        p && refuseNow(refusal(p.code, p.message));
      if (!(verdict instanceof Promise)) return piece(verdict);
      return async () => [piece(await verdict) ?? raw];
    }
    const call = st.call;
    const before = at.rfqExpected;
    const prefix = { len: at.prevLen, risky: at.prevRisky };
    const refuse = (f: ReadonlyMap<string, string> | null): Buffer[] => [refuseNow(f)];
    return async () => {
      if (this.rfqUnsure) return refuse(mixed());
      await this.waitRfq(before);
      if (prefix.risky)
        return refuse(
          refusal(
            '0A000',
            "df.start(..., transaction_mode => 'new') must be the first statement executed in its batch (after a Sync)",
          ),
        );
      // answers to the batch so far (a Parse, a Describe) reach the client first; if one
      // failed, the server must skip the rest of the batch as it would have
      if (prefix.len > 0 && (await this.endBatch())) return refuse(null);
      let args: Map<StartParam, string | null>;
      try {
        args = boundArgs(call, m, st.paramTypes);
      } catch (err) {
        if (err instanceof BindRefusal) return err.server ? [raw] : refuse(err.fields);
        throw err;
      }
      const r = await this.runNew(args);
      if (r.error) return r.error === 'server' ? [raw] : refuse(r.error);
      const helper = '__dfgate_new';
      await this.talk<void>(
        [
          { type: 'Close', kind: 'S', name: helper },
          {
            type: 'Parse',
            name: helper,
            sql: `SELECT $1::text AS ${quoteIdentifier(call.column)}`,
            paramTypes: [TEXT_OID],
          },
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
      return [
        encodeFrontend({
          type: 'Bind',
          portal: m.portal,
          statement: helper,
          paramFormats: [0],
          params: [Buffer.from(r.id, 'utf8')],
          resultFormats:
            m.resultFormats.length > 1 ? [m.resultFormats[0] as number] : m.resultFormats,
        }),
      ];
    };
  }

  /** Checks the session's role, then starts the instance on dfgate's own connection. */
  private async runNew(
    args: Map<StartParam, string | null>,
  ): Promise<
    { id: string; error?: undefined } | { error: 'server' | ReadonlyMap<string, string> }
  > {
    if (!this.ctx.startNew)
      return {
        error: refusal(
          '0A000',
          "df.start(..., transaction_mode => 'new') needs dfgate's executor, which this dfgate runs without",
        ),
      };
    const who = await this.whoAmI();
    if (who === undefined) return { error: 'server' }; // e.g. an aborted transaction: the server says so
    if (who !== this.user)
      return {
        error: refusal(
          '42501',
          `df.start(..., transaction_mode => 'new') starts the instance as the session's login role "${this.user}", but this session has switched to role "${who}"`,
          "RESET ROLE first, or use transaction_mode => 'caller' to start as the current role inside your transaction.",
        ),
      };
    try {
      const id = await this.ctx.startNew({ login: this.user, database: this.database, args });
      return { id };
    } catch (err) {
      const e = err as PgErrorLike;
      return { error: refusal(e.code ?? SqlState.InternalError, e.message, e.hint) };
    }
  }

  private onUpstreamClosed(): void {
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
      (this.serverFramer?.atBoundary ?? true) &&
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

  /** Sends an error to the client (at a message boundary) and closes the session. */
  fatal(e: ErrorFields): void {
    if (this.phase === 'closed') return;
    this.log.info({ code: e.code, error: e.message }, 'closing client connection with an error');
    if (!this.client.destroyed && (this.serverFramer?.atBoundary ?? true))
      this.client.write(encodeError(e));
    this.close(e.message);
  }

  /** Graceful shutdown: close now if idle, else as soon as the session becomes idle. */
  drain(): void {
    this.draining = true;
    if (this.idle || this.phase === 'startup') this.terminateForShutdown();
  }

  terminateForShutdown(): void {
    this.fatal({
      severity: 'FATAL',
      code: SqlState.AdminShutdown,
      message: 'terminating connection due to administrator command',
    });
  }

  close(reason: string): void {
    if (this.phase === 'closed') return;
    const was = this.phase;
    this.phase = 'closed';
    clearTimeout(this.startupTimer);
    // anything waiting on the server gives up (the pump then stops)
    this.abandonPrivate?.();
    for (const w of this.rfqWaiters.splice(0)) w.resolve();
    this.unregisterKey?.();
    const up = this.upstream;
    if (up && !up.destroyed) {
      if (was === 'ready' && !this.clientTerminated && (this.clientFramer?.atBoundary ?? true))
        up.end(encodeFrontend({ type: 'Terminate' }));
      else up.end();
      setTimeout(() => up.destroy(), 1000).unref();
    }
    this.client.end();
    setTimeout(() => this.client.destroy(), 1000).unref();
    this.log.debug({ reason }, 'session closed');
    this.ctx.closed(this);
  }
}

/** A protocol-level statement whose Binds dfgate checks (see Session.statements). */
interface StatementCheck {
  readonly call?: NewCall;
  readonly bound?: readonly number[];
  readonly paramTypes: readonly number[];
}

/** A Parse still being compiled: what its Binds must check once it is. */
interface PendingCheck {
  readonly pending: Promise<StatementCheck | undefined>;
}

/** The session's counters as of a client message, for deciding about it later. */
interface EdgeMoment {
  readonly rfqExpected: number;
  readonly prevLen: number;
  readonly prevRisky: boolean;
}

function statementCheck(e: Edge, paramTypes: readonly number[]): StatementCheck | undefined {
  if (e.kind === 'new') return { call: e.call, paramTypes };
  if ((e.kind === 'pass' || e.kind === 'rewrite') && e.bound?.length)
    return { bound: e.bound, paramTypes };
  return undefined;
}

/** The statement text's bytes of a Query or Parse body (undefined if malformed). */
function statementBytes(type: number, body: Buffer): Buffer | undefined {
  let start = 0;
  if (type === Frontend.Parse) {
    const nameEnd = body.indexOf(0);
    if (nameEnd < 0) return undefined;
    start = nameEnd + 1;
  }
  const end = body.indexOf(0, start);
  return end < 0 ? undefined : body.subarray(start, end);
}

function errorFields(e: EdgeError): Map<string, string> {
  const f = refusal(e.code, e.message, e.hint);
  f.set('P', String(e.position));
  return f;
}

function refusal(code: string, message: string, hint?: string): Map<string, string> {
  const f = new Map<string, string>([
    ['S', 'ERROR'],
    ['V', 'ERROR'],
    ['C', code],
    ['M', message],
  ]);
  if (hint) f.set('H', hint);
  return f;
}

function mixed(): Map<string, string> {
  return refusal(
    '0A000',
    "df.start(..., transaction_mode => 'new') is not available on this connection: it sent a simple query inside an unfinished extended-protocol batch earlier, so dfgate cannot tell which answers are outstanding",
    'Reconnect, and send Sync before a simple query.',
  );
}

/** A statement that raises the error registered under `nonce`, in statement order. */
function raiseNonce(nonce: string): string {
  return `DO $dfgate_edge$BEGIN RAISE EXCEPTION 'dfgate_edge_${nonce}'; END$dfgate_edge$`;
}

function quoteIdentifier(s: string): string {
  return `"${s.replace(/"/g, '""')}"`;
}

class BindRefusal extends Error {
  constructor(
    readonly fields: ReadonlyMap<string, string>,
    /** Leave the Bind to the server, which reports the problem itself. */
    readonly server = false,
  ) {
    super(fields.get('M'));
  }
}

const TEXT_LIKE = new Set([0, 25, 1043, 19, 705, 1042]);

/** A Bind parameter as text (NULL and binary values of other types: undefined). */
function textParam(
  m: Extract<FrontendMessage, { type: 'Bind' }>,
  i: number,
  paramTypes: readonly number[],
): string | undefined {
  const v = m.params[i];
  if (!v || !isUtf8(v)) return undefined; // invalid UTF-8: the server refuses it (22021)
  return paramFormat(m, i) === 0 || TEXT_LIKE.has(paramTypes[i] ?? 0)
    ? v.toString('utf8')
    : undefined;
}

/** The format code of Bind parameter i (0 text, 1 binary), as the protocol assigns them. */
function paramFormat(m: Extract<FrontendMessage, { type: 'Bind' }>, i: number): number {
  return m.paramFormats.length <= 1 ? (m.paramFormats[0] ?? 0) : (m.paramFormats[i] ?? 0);
}

/** df.start's arguments of a 'new' call from the constants and the values of a Bind. */
function boundArgs(
  call: NewCall,
  m: Extract<FrontendMessage, { type: 'Bind' }>,
  paramTypes: readonly number[],
): Map<StartParam, string | null> {
  const out = new Map<StartParam, string | null>();
  for (const [name, a] of call.args) {
    if (name === 'transaction_mode') continue;
    if ('value' in a) {
      out.set(name, a.value);
      continue;
    }
    const i = a.param - 1;
    if (i < 0 || i >= m.params.length) throw new BindRefusal(new Map(), true);
    const v = m.params[i] ?? null;
    if (v === null) {
      out.set(name, null);
      continue;
    }
    // max_attempts may come as a binary integer; everything else is text
    if (paramFormat(m, i) !== 0 && name === 'max_attempts' && (v.length === 4 || v.length === 8)) {
      out.set(name, v.length === 4 ? String(v.readInt32BE(0)) : v.readBigInt64BE(0).toString());
      continue;
    }
    if (!isUtf8(v)) throw new BindRefusal(new Map(), true); // the server's 22021
    const text = textParam(m, i, paramTypes);
    if (text === undefined)
      throw new BindRefusal(
        refusal(
          '0A000',
          `df.start(..., transaction_mode => 'new') through dfgate takes ${name} in text format; this Bind sends it in binary`,
        ),
      );
    out.set(name, text);
  }
  return out;
}
