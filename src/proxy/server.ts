/**
 * The listening side of the proxy, the one place that accepts sockets:
 * connection limits, TLS material, graceful shutdown.
 *
 * Every accepted socket counts against --max-client-connections from accept
 * until it closes, whether or not it ever finishes its startup packet (each
 * is bounded by --startup-timeout). A socket accepted beyond the limit still
 * gets its startup packet read, to be answered FATAL 53300 as PostgreSQL does;
 * at most another --max-client-connections of those wait at once, and any
 * further socket is closed on accept.
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import type { Logger } from 'pino';
import { loadParser } from '../dsl/parser.js';
import { metrics } from '../metrics.js';
import { CancelRegistry } from './cancel.js';
import { SqlState } from '../db/sqlstate.js';
import { Session, type SessionContext } from './client-session.js';
import { ServerPools } from './pool.js';
import type { UpstreamTarget } from './upstream.js';
import type { Started } from '../contract/started.js';

export interface ProxyOptions {
  readonly host: string;
  readonly port: number;
  readonly upstream: UpstreamTarget;
  readonly log: Logger;
  readonly maxClientConnections: number;
  readonly connectTimeoutMs: number;
  /** From accept until the session is established; default 60 s (PostgreSQL's authentication_timeout). */
  readonly startupTimeoutMs?: number | undefined;
  readonly maxMessageSize: number;
  readonly tlsCert?: string | undefined;
  readonly tlsKey?: string | undefined;
  /** In-process wake of the executor after a client transaction that mentioned df.* ended. */
  readonly onDfCommit?: ((started?: Started) => void) | undefined;
  /** A lease from the in-process executor for a plain df.start through the proxy (born claimed). */
  readonly prelease?: SessionContext['prelease'];
  /** Validate and compile df.start calls at the edge (DESIGN.md §2 path 2). */
  readonly edgeValidation?: boolean | undefined;
  /** Runs df.start(..., transaction_mode => 'new') on dfgate's own connection (the embedded executor). */
  readonly startNew?: SessionContext['startNew'];
  /** session (default): one server connection per client; transaction: lent per transaction. */
  readonly poolMode?: 'session' | 'transaction' | undefined;
  /** Transaction mode: connections per pool (default 20). */
  readonly poolSize?: number | undefined;
  /** Transaction mode: connections of all pools together (default 100). */
  readonly maxServerConnections?: number | undefined;
  /** Transaction mode: how long a client waits for a connection (default 30 s). */
  readonly poolTimeoutMs?: number | undefined;
  /** Transaction mode: idle connections are closed after this long (default 600 s; 0 never). */
  readonly serverIdleTimeoutMs?: number | undefined;
}

export interface ProxyServer {
  readonly port: number;
  /** False once shutdown began. */
  readonly accepting: boolean;
  readonly sessions: ReadonlySet<Session>;
  /** Transaction mode: the server connection pools (undefined in session mode). */
  readonly pools: ServerPools | undefined;
  /** Stops accepting, lets sessions finish up to timeoutMs, then terminates them (57P01). */
  shutdown(timeoutMs: number): Promise<void>;
}

export async function startProxy(opts: ProxyOptions): Promise<ProxyServer> {
  const log = opts.log;
  if (opts.edgeValidation) await loadParser();
  const sessions = new Set<Session>();
  const cancels = new CancelRegistry(log, opts.connectTimeoutMs);
  // The wake is seen while the server's ReadyForQuery is being framed; it runs
  // once that chunk is relayed, so the client's answer never waits for a claim.
  const onDfCommit = opts.onDfCommit;
  const wakeAfterRelay =
    onDfCommit && ((started?: Started) => queueMicrotask(() => onDfCommit(started)));
  const pools =
    opts.poolMode === 'transaction'
      ? new ServerPools({
          log,
          poolSize: opts.poolSize ?? 20,
          maxServerConnections: opts.maxServerConnections ?? 100,
          poolTimeoutMs: opts.poolTimeoutMs ?? 30_000,
          serverIdleTimeoutMs: opts.serverIdleTimeoutMs ?? 600_000,
          cancel: (pid, key) => void cancels.send(pid, key, opts.upstream),
        })
      : undefined;
  const secureContext =
    opts.tlsCert && opts.tlsKey
      ? tls.createSecureContext({
          cert: readFileSync(opts.tlsCert),
          key: readFileSync(opts.tlsKey),
        })
      : undefined;
  let shuttingDown = false;
  /** Sessions counted against --max-client-connections (from accept), and those accepted beyond it. */
  const counted = new Set<Session>();
  const overLimit = new Set<Session>();
  let onAllClosed: (() => void) | undefined;
  const tooMany = (): void => {
    metrics.clientsRefused.inc({ reason: 'too_many_clients' });
    log.warn(
      { max: opts.maxClientConnections },
      'refusing a client: --max-client-connections reached',
    );
  };

  // Half-open: a client may send Terminate and FIN before reading the answers (as with PostgreSQL itself).
  const server = net.createServer({ allowHalfOpen: true }, (sock) => {
    metrics.clientConnections.inc();
    const fits = counted.size < opts.maxClientConnections;
    if (!fits && overLimit.size >= opts.maxClientConnections) {
      // as many refusals already wait for their startup packets: no more sockets
      tooMany();
      sock.on('error', () => undefined);
      sock.destroy();
      return;
    }
    const session = new Session(sock, {
      log,
      upstream: opts.upstream,
      connectTimeoutMs: opts.connectTimeoutMs,
      startupTimeoutMs: opts.startupTimeoutMs ?? 60_000,
      maxMessageSize: opts.maxMessageSize,
      tls: secureContext,
      cancels,
      onDfCommit: wakeAfterRelay,
      prelease: opts.prelease,
      edgeValidation: opts.edgeValidation,
      startNew: opts.startNew,
      pools,
      admit: (s) => {
        if (shuttingDown) {
          metrics.clientsRefused.inc({ reason: 'shutting_down' });
          return {
            severity: 'FATAL',
            code: SqlState.CannotConnectNow,
            message: 'the database system is shutting down',
          };
        }
        if (!counted.has(s)) {
          tooMany();
          return {
            severity: 'FATAL',
            code: SqlState.TooManyConnections,
            message: 'sorry, too many clients already',
          };
        }
        return undefined;
      },
      closed: (s) => {
        sessions.delete(s);
        counted.delete(s);
        overLimit.delete(s);
        if (sessions.size === 0) onAllClosed?.();
      },
    });
    if (session.phase === 'closed') return; // closed while constructing (a socket already gone)
    sessions.add(session);
    (fits ? counted : overLimit).add(session);
  });
  server.on('error', (err) => log.error({ err }, 'listener error'));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const addr = server.address();
  const port = typeof addr === 'object' && addr !== null ? addr.port : opts.port;
  log.info(
    {
      listen: `${opts.host}:${port}`,
      upstream: `${opts.upstream.host}:${opts.upstream.port}`,
      tls: Boolean(secureContext),
      poolMode: opts.poolMode ?? 'session',
    },
    'proxy listening',
  );

  return {
    port,
    sessions,
    pools,
    get accepting(): boolean {
      return !shuttingDown;
    },
    async shutdown(timeoutMs: number): Promise<void> {
      if (shuttingDown) return;
      shuttingDown = true;
      server.close();
      log.info(
        { sessions: sessions.size, timeoutMs },
        'shutting down: waiting for sessions to finish',
      );
      const allClosed = new Promise<void>((resolve) => {
        onAllClosed = resolve;
        if (sessions.size === 0) resolve();
      });
      for (const s of sessions) s.drain();
      const timer = setTimeout(() => {
        for (const s of [...sessions]) s.terminateForShutdown();
      }, timeoutMs);
      await allClosed;
      clearTimeout(timer);
      pools?.close();
      log.info('proxy stopped');
    },
  };
}
