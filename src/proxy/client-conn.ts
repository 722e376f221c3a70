/**
 * The client's side of a session: its socket (and TLS), the startup phase
 * (SSL/GSS negotiation, cancel requests, the StartupMessage), the startup
 * timeout, errors towards the client and shutdown. What happens once a
 * StartupMessage names a login is the subclass's (client-session.ts).
 * https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-START-UP
 */
import type net from 'node:net';
import tls from 'node:tls';
import type { Logger } from 'pino';
import { SqlState } from '../db/sqlstate.js';
import { metrics } from '../metrics.js';
import type { CancelRegistry } from './cancel.js';
import { upgradeClient } from './client-tls.js';
import { PoolError } from './pool.js';
import { encodeError, type ErrorFields } from './protocol/backend.js';
import { MAX_STARTUP_PACKET } from './protocol/codes.js';
import { MessageTooLarge, StartupFramer } from './protocol/frame.js';
import { decodeStartup } from './protocol/frontend.js';
import { ProtocolError, SilentClose } from './protocol/reader.js';
import { encryptionDecision, startupIdentity, type StartupIdentity } from './startup.js';

export type Phase = 'startup' | 'connecting' | 'auth' | 'ready' | 'closed';

/** What the client side needs of the proxy. */
export interface ClientContext {
  readonly log: Logger;
  /** From accept until the session is ready (SSL, startup packet, authentication); then closed silently. */
  readonly startupTimeoutMs: number;
  readonly tls: tls.SecureContext | undefined;
  readonly cancels: CancelRegistry;
}

const TLS_HANDSHAKE = 0x16;
let nextId = 1;

export abstract class ClientConnection {
  readonly id = nextId++;
  phase: Phase = 'startup';
  log: Logger;
  user = '';
  database = '';
  /** Transaction status from the last ReadyForQuery: I, T or E. */
  txStatus = 'I';
  protected startup: StartupFramer | undefined = new StartupFramer(MAX_STARTUP_PACKET);
  protected sawFatal = false;
  protected clientTerminated = false;
  /** The client half-closed (FIN) or its socket closed: a later upstream close is its doing. */
  protected clientGone = false;
  /** The client sent an SSLRequest / a GSSENCRequest (each is answered once). */
  private sslDone = false;
  private gssDone = false;
  protected startupTimer: NodeJS.Timeout | undefined;
  protected draining = false;
  /**
   * A client protocol error to report once the upstream has answered what came
   * before it ('silent': close without a word, as PostgreSQL does for bad lengths).
   */
  protected pendingFatal: ErrorFields | 'silent' | undefined;

  constructor(
    protected client: net.Socket,
    protected readonly base: ClientContext,
  ) {
    this.log = base.log.child({
      conn: this.id,
      remote: `${client.remoteAddress ?? 'local'}:${client.remotePort ?? 0}`,
    });
    client.setNoDelay(true);
    this.startupTimer = setTimeout(() => this.startupTimedOut(), base.startupTimeoutMs);
    this.startupTimer.unref();
  }

  get isClosed(): boolean {
    return this.phase === 'closed';
  }

  /** Idle: no transaction open and nothing outstanding. */
  abstract get idle(): boolean;
  /** Between server messages (an error may be written to the client). */
  protected abstract get serverAtBoundary(): boolean;
  /** Listens to the client socket (again, after TLS). */
  protected abstract attachClient(sock: net.Socket): void;
  /** A StartupMessage named a login: admit it and connect (`body`: the packet without its length). */
  protected abstract loggingIn(who: StartupIdentity, body: Buffer, rest: Buffer): void;
  abstract close(reason: string): void;

  /**
   * --startup-timeout expired before the session was established. Like
   * PostgreSQL at authentication_timeout, close without sending anything.
   */
  private startupTimedOut(): void {
    if (this.phase === 'ready' || this.phase === 'closed') return;
    metrics.clientsRefused.inc({ reason: 'startup_timeout' });
    this.log.info(
      { phase: this.phase, timeoutMs: this.base.startupTimeoutMs },
      'closing a client that did not finish startup and authentication within --startup-timeout',
    );
    this.close('startup timeout');
    this.client.destroy();
  }

  private leftLogged = false;

  /** The client went away without Terminate: logged as its disconnect (never as an upstream loss). */
  protected clientLeft(): void {
    // once per connection: a half-close and the close after it are one departure
    if (this.phase !== 'ready' || this.clientTerminated || this.leftLogged) return;
    this.leftLogged = true;
    const busy = !this.idle;
    this.log[busy ? 'info' : 'debug'](
      { txStatus: this.txStatus, busy },
      busy
        ? 'client disconnected without Terminate while a query or transaction was open'
        : 'client disconnected without Terminate',
    );
  }

  /** Sends the pending FATAL (or nothing, if silent) and closes. */
  protected endPending(): void {
    const p = this.pendingFatal;
    if (p === undefined) return;
    if (p === 'silent') this.close('malformed client message');
    else this.fatal(p);
  }

  protected logSilent(err: SilentClose): void {
    this.log.info(
      { error: err.message, field: err.field },
      'closing client connection without a message (malformed framing, as PostgreSQL does)',
    );
  }

  protected errorFields(err: unknown): ErrorFields {
    if (err instanceof MessageTooLarge) {
      return {
        severity: 'FATAL',
        code: SqlState.ProgramLimitExceeded,
        message: `invalid message length: ${err.message}`,
      };
    }
    if (err instanceof ProtocolError)
      return { severity: 'FATAL', code: err.code, message: err.message };
    if (err instanceof PoolError)
      return {
        severity: 'FATAL',
        code: err.code,
        message: err.message,
        ...(err.hint ? { hint: err.hint } : {}),
      };
    this.log.error({ err }, 'internal error in session');
    return {
      severity: 'FATAL',
      code: SqlState.InternalError,
      message: 'internal error in dfgate; see its log',
    };
  }

  protected protocolFailure(err: unknown): void {
    if (err instanceof SilentClose) {
      this.logSilent(err);
      this.close('malformed client message');
      return;
    }
    this.fatal(this.errorFields(err));
  }

  // ---- startup phase --------------------------------------------------

  protected onStartupData(chunk: Buffer): void {
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
            { code: SqlState.FeatureNotSupported },
          );
        if (ssl) this.sslDone = true;
        else this.gssDone = true;
        const d = encryptionDecision(packet.type, got.rest.length, this.base.tls !== undefined);
        if (d.kind === 'fatal') {
          if (d.answer) this.client.write('N');
          this.fatal(d.error);
        } else if (d.kind === 'tls') {
          this.gssDone = true;
          this.client.write('S');
          this.upgrade([]);
        } else this.client.write('N');
        return;
      }
      case 'CancelRequest':
        void this.base.cancels.forward(packet.pid, packet.key);
        this.close('cancel request');
        return;
      case 'StartupMessage': {
        this.startup = undefined;
        const who = startupIdentity(new Map(packet.params));
        if ('error' in who) {
          this.fatal(who.error);
          return;
        }
        this.user = who.user;
        this.database = who.database;
        this.log = this.log.child({ user: this.user, db: this.database });
        this.loggingIn(who, got.body, got.rest);
        return;
      }
    }
  }

  /** PostgreSQL 17's sslnegotiation=direct: TLS from the first byte, ALPN "postgresql". */
  private directTls(first: Buffer): void {
    if (!this.base.tls) {
      this.log.warn(
        'client started TLS directly (sslnegotiation=direct) but dfgate has no --tls-cert; closing',
      );
      this.close('direct TLS without a certificate');
      this.client.destroy();
      return;
    }
    this.upgrade([first], true);
  }

  private upgrade(initial: Buffer[], direct = false): void {
    const secure = upgradeClient(
      this.client as net.Socket,
      this.base.tls as tls.SecureContext,
      initial,
    );
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

  /** Sends an error to the client (at a message boundary) and closes the session. */
  fatal(e: ErrorFields): void {
    if (this.phase === 'closed') return;
    this.log.info({ code: e.code, error: e.message }, 'closing client connection with an error');
    if (!this.client.destroyed && this.serverAtBoundary) this.client.write(encodeError(e));
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
}
