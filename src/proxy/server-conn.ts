/**
 * One connection from dfgate to PostgreSQL (a backend): its socket and
 * framing, and what dfgate knows of its state: the transaction status of its
 * last ReadyForQuery, the parameters it reported, its cancel key, the
 * statements and settings dfgate put there, and whether it must be checked
 * before it is lent again. Who reads its traffic (a client session, or the
 * pool while it resets the connection) is its `sink`, which can change
 * between transactions in transaction mode.
 */
import type net from 'node:net';
import type { Logger } from 'pino';
import { decodeBackendKey, decodeParameterStatus } from './protocol/backend.js';
import { Backend } from './protocol/codes.js';
import { Framer } from './protocol/frame.js';
import { encodeFrontend } from './protocol/frontend.js';
import { ProtocolError } from './protocol/reader.js';
import type { UpstreamSocket } from './upstream.js';

/** Whoever reads a server connection's traffic. */
export interface ServerSink {
  /** Whether a server message of this type must be handed over whole (see Framer). */
  inspect(type: number): boolean;
  /** An inspected message: a replacement, null to drop it, undefined to relay it as is. */
  message(type: number, body: Buffer): Buffer | null | undefined;
  /**
   * An inspected message too long to assemble (a body over SERVER_INSPECT_MAX
   * bytes), never handed to `message`: `head` is the first SERVER_INSPECT_MAX
   * bytes of its body, `length` the whole body's. It cannot be replaced: null
   * drops it as it streams, undefined (and a sink without this) relays it
   * unchanged.
   */
  truncated?(type: number, head: Buffer, length: number): null | undefined;
  /** Framed bytes for the client, in order. */
  relay(pieces: Buffer[]): void;
  /** The connection closed (by the server, or the network). */
  closed(): void;
}

/**
 * The longest body of a server message dfgate assembles to look into. Any
 * login can make PostgreSQL send an ErrorResponse or NoticeResponse of up to
 * 1 GB (`RAISE EXCEPTION '%', repeat('x', 400000000)`); a longer one streams
 * through and is looked at through its first bytes. 256 KiB holds every field
 * dfgate reads (PostgreSQL sends S, V and C first) and the longest born claim
 * taken (edge/born.ts), and is decoded in well under a millisecond.
 */
export const SERVER_INSPECT_MAX = 256 * 1024;

/** Messages PostgreSQL never sends that long, which dfgate must read whole. */
const READ_WHOLE = new Set<number>([
  Backend.Authentication,
  Backend.BackendKeyData,
  Backend.ReadyForQuery,
]);

const OWN_INSPECT = new Uint8Array(256);
for (const t of [
  Backend.BackendKeyData,
  Backend.ParameterStatus,
  Backend.ReadyForQuery,
  Backend.ErrorResponse,
]) {
  OWN_INSPECT[t] = 1;
}

let nextId = 1;

export class ServerConn {
  readonly id = nextId++;
  readonly socket: net.Socket;
  /** The connection to PostgreSQL is encrypted. */
  readonly tls: boolean;
  sink: ServerSink | undefined;
  /** From the last ReadyForQuery: I (idle), T (in a transaction) or E (failed transaction). */
  txStatus = 'I';
  /** Parameters the server reported (ParameterStatus). */
  readonly params = new Map<string, string>();
  /** The backend's own cancel key (BackendKeyData). */
  pid = 0;
  key: Buffer | undefined;
  /** Transaction mode: statements prepared here under dfgate's names. */
  readonly prepared = new Set<string>();
  /** Transaction mode: names that may or may not exist here (their Parse was in a batch that failed). */
  readonly uncertain = new Set<string>();
  /** Transaction mode: settings applied here with SET (name → the SQL value text). */
  readonly settings = new Map<string, string>();
  /** Transaction mode: the client whose unnamed statement this connection holds. */
  unnamedOwner: object | undefined;
  /** Transaction mode: cancel requests for this backend still on their way to the server. */
  private cancelling = 0;
  /** Transaction mode: runs once no cancel request is on its way (a deferred return to the pool). */
  private afterCancels: (() => void) | undefined;
  /** An error passed on this connection: check it before lending it again. */
  suspect = false;
  /**
   * Transaction mode: a statement dfgate did not look at (in a client message too
   * long to assemble) may have left session state here: DISCARD ALL before it is
   * lent again (ServerPools.release).
   */
  stateUnknown = false;
  /** The server sent FATAL or the socket closed. */
  closed = false;
  /** Transaction mode: when it went idle in its pool (ms since epoch). */
  idleSince = 0;
  /** Transaction mode: the connection holds a place in its pool (pool.ts), until it leaves it once. */
  pooled = false;
  private readonly framer: Framer;

  constructor(
    up: UpstreamSocket,
    private readonly log: Logger,
  ) {
    this.socket = up.socket;
    this.tls = up.tls;
    this.framer = new Framer(
      {
        inspect: (t) => OWN_INSPECT[t] === 1 || (this.sink?.inspect(t) ?? true),
        message: (t, body) => this.onMessage(t, body),
        truncated: (t, head, length) => this.onTruncated(t, head, length),
      },
      Number.POSITIVE_INFINITY,
      SERVER_INSPECT_MAX,
    );
    this.socket.on('data', (chunk: Buffer) => {
      let pieces: Buffer[];
      try {
        pieces = this.framer.push(chunk) as Buffer[];
      } catch (err) {
        this.log.error({ err }, 'cannot frame server traffic');
        this.destroy();
        return;
      }
      if (this.framer.failed) {
        this.log.error({ err: this.framer.failed }, 'cannot frame server traffic');
        this.destroy();
      }
      if (pieces.length) this.sink?.relay(pieces);
    });
    this.socket.on('error', (err) => log.debug({ err: err.message }, 'server socket error'));
    this.socket.on('close', () => {
      this.closed = true;
      this.sink?.closed();
    });
  }

  /** Between messages from the server (nothing half-relayed). */
  get atBoundary(): boolean {
    return this.framer.atBoundary;
  }

  private onMessage(type: number, body: Buffer): Buffer | null | undefined {
    switch (type) {
      case Backend.ReadyForQuery:
        this.txStatus = String.fromCharCode(body[0] ?? 0x49);
        break;
      case Backend.ParameterStatus: {
        const [name, value] = decodeParameterStatus(body);
        this.params.set(name, value);
        break;
      }
      case Backend.BackendKeyData: {
        const k = decodeBackendKey(body);
        this.pid = k.pid;
        this.key = k.key;
        break;
      }
      case Backend.ErrorResponse:
        this.suspect = true;
        break;
      default:
        break;
    }
    return this.sink ? this.sink.message(type, body) : null;
  }

  /** An inspected message too long to assemble, seen through its first bytes (see ServerSink). */
  private onTruncated(type: number, head: Buffer, length: number): null | undefined {
    if (READ_WHOLE.has(type))
      throw new ProtocolError(
        `server message of type ${JSON.stringify(String.fromCharCode(type))} is ${length} bytes, longer than dfgate reads`,
      );
    if (type === Backend.ErrorResponse) this.suspect = true;
    else if (type === Backend.ParameterStatus) {
      // its value is not known: forgotten rather than kept stale
      const z = head.indexOf(0);
      if (z >= 0) this.params.delete(head.toString('utf8', 0, z));
    }
    if (!this.sink) return null;
    return this.sink.truncated ? this.sink.truncated(type, head, length) : undefined;
  }

  /**
   * Transaction mode: a cancel request for this backend is on its way. Until
   * the returned function is called (the request reached the server or
   * failed), whenNoCancels holds the backend back, so that the request never
   * lands on the query of the client the backend is lent to next.
   */
  cancelSent(): () => void {
    this.cancelling++;
    return () => {
      if (--this.cancelling > 0) return;
      const then = this.afterCancels;
      this.afterCancels = undefined;
      then?.();
    };
  }

  /** True if no cancel request is on its way; else false, and `then` runs once the last one landed. */
  whenNoCancels(then: () => void): boolean {
    if (this.cancelling === 0) return true;
    this.afterCancels = then;
    return false;
  }

  write(data: Buffer): void {
    if (!this.socket.destroyed) this.socket.write(data);
  }

  /**
   * Sends Terminate and closes. The socket is destroyed after `graceMs`
   * unless the server closed it first (a backend busy in a statement reads
   * the Terminate only once the statement ends).
   */
  terminate(graceMs = 1000): void {
    this.closed = true;
    const s = this.socket;
    if (!s.destroyed) {
      s.end(encodeFrontend({ type: 'Terminate' }));
      setTimeout(() => s.destroy(), graceMs).unref();
    }
  }

  /** Passes the client's half-close on (answers still come back). */
  halfClose(): void {
    if (!this.socket.destroyed) this.socket.end();
  }

  /** Ends the connection without Terminate (mid-message, or a half-closed client). */
  end(): void {
    this.closed = true;
    const s = this.socket;
    if (!s.destroyed) {
      s.end();
      setTimeout(() => s.destroy(), 1000).unref();
    }
  }

  destroy(): void {
    this.closed = true;
    this.socket.destroy();
  }
}
