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
import { edgeCheck, raiseStatement } from '../dsl/edge.js';
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
  MAX_STARTUP_PACKET,
} from './protocol/codes.js';
import { Framer, MessageTooLarge, StartupFramer } from './protocol/frame.js';
import {
  decodeAuthMessage,
  decodeStartup,
  encodeFrontend,
  type AuthMessage,
} from './protocol/frontend.js';
import { ProtocolError } from './protocol/reader.js';
import { SqlState } from './protocol/sqlstate.js';
import { connectUpstream, type UpstreamTarget } from './upstream.js';

export interface SessionContext {
  readonly log: Logger;
  readonly upstream: UpstreamTarget;
  readonly connectTimeoutMs: number;
  readonly maxMessageSize: number;
  readonly tls: tls.SecureContext | undefined;
  readonly cancels: CancelRegistry;
  /** Called once a StartupMessage arrives: may this client be admitted? */
  admit(session: Session): ErrorFields | undefined;
  /** Called when a transaction that mentioned df.* ends (ReadyForQuery back to idle): wakes the executor in-process. */
  readonly onDfCommit?: (() => void) | undefined;
  /** Validate constant DSL of df.start calls in simple queries before they reach the database. */
  readonly edgeValidation?: boolean | undefined;
  closed(session: Session): void;
}

type Phase = 'startup' | 'connecting' | 'auth' | 'ready' | 'closed';

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
  /** Queries and Syncs sent whose ReadyForQuery has not come back. */
  private outstanding = 0;
  private sawFatal = false;
  private clientTerminated = false;
  private draining = false;
  private readonly pendingClient: Buffer[] = [];
  /** A client protocol error to report once the upstream has answered what came before it. */
  private pendingFatal: ErrorFields | undefined;
  /** The current transaction sent a statement that mentions df.* */
  private sawDf = false;
  /** Position to put into the next ErrorResponse (edge validation). */
  private fixPosition: number | undefined;

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
  }

  /** Idle: no transaction open and nothing outstanding. */
  get idle(): boolean {
    return (
      this.phase === 'ready' &&
      this.txStatus === 'I' &&
      this.outstanding === 0 &&
      (this.clientFramer?.atBoundary ?? true)
    );
  }

  private attachClient(sock: net.Socket): void {
    sock.on('data', (chunk: Buffer) => this.onClientData(chunk));
    sock.on('error', (err) => this.log.debug({ err: err.message }, 'client socket error'));
    sock.on('close', () => this.close('client closed'));
    // The client finished sending: pass the half-close on and keep relaying answers.
    sock.on('end', () => {
      if (this.upstream && !this.upstream.destroyed && this.phase !== 'closed') this.upstream.end();
      else this.close('client ended');
    });
  }

  private onClientData(chunk: Buffer): void {
    try {
      if (this.phase === 'startup') this.onStartupData(chunk);
      else if (this.phase === 'connecting') this.pendingClient.push(chunk);
      else if (this.upstream && this.clientFramer && !this.pendingFatal) {
        this.forward(this.clientFramer.push(chunk), this.upstream, this.client);
        if (this.clientFramer.failed) this.clientFramingFailed(this.clientFramer.failed);
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
    if (this.phase !== 'ready' || !this.upstream) {
      this.protocolFailure(err);
      return;
    }
    this.pendingFatal = this.errorFields(err);
    this.client.pause();
    this.clientTerminated = true;
    this.upstream.write(encodeFrontend({ type: 'Terminate' }));
    setTimeout(() => {
      if (this.pendingFatal) this.fatal(this.pendingFatal);
    }, 10_000).unref();
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
      return { severity: 'FATAL', code: SqlState.ProtocolViolation, message: err.message };
    this.log.error({ err }, 'internal error in session');
    return {
      severity: 'FATAL',
      code: SqlState.InternalError,
      message: 'internal error in dfgate; see its log',
    };
  }

  private protocolFailure(err: unknown): void {
    this.fatal(this.errorFields(err));
  }

  // ---- startup phase --------------------------------------------------

  private onStartupData(chunk: Buffer): void {
    const framer = this.startup as StartupFramer;
    if (
      framer.buffered === 0 &&
      chunk[0] === TLS_HANDSHAKE &&
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
        if (got.rest.length > 0)
          throw new ProtocolError(`received unencrypted data after ${packet.type}`);
        if (packet.type === 'SSLRequest' && this.ctx.tls) {
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
      inspect: (t) => SERVER_INSPECT[t] === 1,
      message: (t, body) => this.onServerMessage(t, body),
    });
    this.clientFramer = new Framer(
      {
        inspect: (t) =>
          (t === Frontend.Password && this.phase === 'auth') ||
          ((t === Frontend.Query || t === Frontend.Parse) &&
            (this.ctx.onDfCommit !== undefined || this.ctx.edgeValidation === true)),
        header: (t) => {
          if (!isFrontendType(t)) {
            throw new ProtocolError(
              `invalid frontend message type ${JSON.stringify(String.fromCharCode(t))} (0x${t.toString(16)})`,
            );
          }
          if (t === Frontend.Query || t === Frontend.Sync || t === Frontend.FunctionCall)
            this.outstanding++;
          else if (t === Frontend.Terminate) this.clientTerminated = true;
        },
        message: (t, body) => this.onClientMessage(t, body),
      },
      this.ctx.maxMessageSize,
    );
    upstream.on('data', (chunk: Buffer) => {
      try {
        this.forward((this.serverFramer as Framer).push(chunk), this.client, upstream);
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
    switch (type) {
      case Backend.ReadyForQuery: {
        this.txStatus = String.fromCharCode(body[0] ?? 0x49);
        if (this.sawDf && this.txStatus === 'I') {
          this.sawDf = false;
          this.ctx.onDfCommit?.();
        }
        if (this.outstanding > 0) this.outstanding--;
        if (this.phase === 'auth') {
          this.phase = 'ready';
          this.outstanding = 0;
          this.log.debug('session ready');
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
        if (this.fixPosition !== undefined) {
          const pos = this.fixPosition;
          this.fixPosition = undefined;
          const fixed = new Map(
            [...fields].filter(([k]) => !['W', 'P', 'p', 'q', 'F', 'L', 'R'].includes(k)),
          );
          fixed.set('P', String(pos));
          return encodeErrorFieldMap(fixed);
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

  /** Client messages dfgate looks into: Query and Parse (df.* mentions, edge validation) and the password exchange. */
  private onClientMessage(type: number, body: Buffer): Buffer | null | undefined {
    if (type === Frontend.Query || type === Frontend.Parse) {
      if (!mentionsDf(body)) return undefined;
      this.sawDf = true;
      if (
        type === Frontend.Query &&
        this.ctx.edgeValidation &&
        this.serverParams.get('client_encoding') === 'UTF8'
      ) {
        const err = edgeCheck(body.toString('utf8', 0, Math.max(0, body.length - 1)));
        if (err) {
          // the server raises the same error (so its transaction state matches); its
          // ErrorResponse then gets the position inside the client's own statement
          this.fixPosition = err.position;
          return encodeFrontend({ type: 'Query', sql: raiseStatement(err) });
        }
      }
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

  private onUpstreamClosed(): void {
    if (this.phase === 'closed') return;
    if (this.pendingFatal) {
      if (this.sawFatal) this.close('upstream closed after its own FATAL');
      else this.fatal(this.pendingFatal);
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
    this.log.info({ code: e.code, msg: e.message }, 'closing client connection with an error');
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
