/**
 * Server connections lent per transaction (--pool-mode transaction).
 *
 * A pool holds the connections of one (role, database, startup settings);
 * the pools of one role and database (startup settings apart) hold at most
 * --pool-size together, so a role cannot multiply its share by logging in
 * with different settings. Pools grow only from real logins: a client's startup and authentication
 * are relayed to PostgreSQL on a fresh connection, which then joins the pool
 * of what it authenticated as, so dfgate never holds a password. That
 * verifying connection needs a place among its role's (--pool-size) and
 * overall (--max-server-connections): if there is none, an idle connection
 * of the pool (or of another pool of the role, or overall of any pool) is
 * closed to make room, else the login waits like any client. A client waiting longer than --pool-timeout gets
 * 53300. Connections idle for --server-idle-timeout are closed, except the
 * last one of a pool that still has clients (nothing could replace it but a
 * new login). A connection given back in the middle of a transaction (its
 * client went away) is rolled back first, or closed; one where a statement
 * dfgate did not look at ran gets DISCARD ALL before it is lent again.
 */
import type { Logger } from 'pino';
import { SqlState } from '../db/sqlstate.js';
import { metrics } from '../metrics.js';
import { Backend } from './protocol/codes.js';
import { encodeFrontend } from './protocol/frontend.js';
import type { ServerConn } from './server-conn.js';

export interface PoolOptions {
  readonly log: Logger;
  readonly poolSize: number;
  readonly maxServerConnections: number;
  readonly poolTimeoutMs: number;
  /** 0: never close idle connections. */
  readonly serverIdleTimeoutMs: number;
  /** Sends a cancel request for a backend dfgate is closing while it may be busy. */
  readonly cancel?: (pid: number, key: Buffer) => void;
}

/** An error for the client, with PostgreSQL's fields. */
export class PoolError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly hint?: string,
  ) {
    super(message);
  }
}

interface Waiter {
  /** 'lend': wants a connection; 'login': wants room for a verifying connection. */
  readonly kind: 'lend' | 'login';
  readonly resolve: (conn: ServerConn | undefined) => void;
  readonly timer: NodeJS.Timeout;
}

/** The pools of one role and database, whatever their startup settings: they share --pool-size. */
class Family {
  /** Connections of its pools plus logins that hold a place. */
  open = 0;
  readonly pools = new Set<Pool>();
  constructor(readonly key: string) {}
}

class Pool {
  /** Connections of this pool (idle and lent) plus logins that hold a place. */
  open = 0;
  /** Connections of this pool that logged in and joined it (open without the logins). */
  conns = 0;
  /** Of those, the ones being reset after their client left (not usable until it ends). */
  readonly resetting = new Set<ServerConn>();
  readonly idle: ServerConn[] = [];
  readonly waiters: Waiter[] = [];
  /** Logged-in clients of this pool. */
  clients = 0;
  constructor(
    readonly key: string,
    readonly family: Family,
  ) {}
}

/** A pool key's role and database (startup.ts: a JSON array of user, database, settings). */
function familyKey(key: string): string {
  try {
    const k: unknown = JSON.parse(key);
    if (Array.isArray(k)) return JSON.stringify(k.slice(0, 2));
  } catch {
    // not startup.ts's form: a family of its own
  }
  return key;
}

export class ServerPools {
  private readonly pools = new Map<string, Pool>();
  private readonly families = new Map<string, Family>();
  /** Logins waiting for room, in every pool (a release looks for them only when there are some). */
  private loginsWaiting = 0;
  /** Server connections of all pools, and places held by logins. */
  private total = 0;
  private readonly sweeper: NodeJS.Timeout | undefined;
  private closing = false;

  constructor(private readonly opts: PoolOptions) {
    if (opts.serverIdleTimeoutMs > 0) {
      this.sweeper = setInterval(
        () => this.sweep(),
        Math.max(50, Math.min(opts.serverIdleTimeoutMs / 2, 10_000)),
      );
      this.sweeper.unref();
    }
  }

  private pool(key: string): Pool {
    let p = this.pools.get(key);
    if (!p) {
      const fk = familyKey(key);
      let f = this.families.get(fk);
      if (!f) {
        f = new Family(fk);
        this.families.set(fk, f);
      }
      p = new Pool(key, f);
      f.pools.add(p);
      this.pools.set(key, p);
    }
    return p;
  }

  /** One more connection (or login's place) in `p`. */
  private occupy(p: Pool): void {
    p.open++;
    p.family.open++;
    this.total++;
  }

  /** One connection (or login's place) fewer in `p`. */
  private vacate(p: Pool): void {
    p.open--;
    p.family.open--;
    this.total--;
  }

  /** Numbers for logs, metrics and tests. */
  stats(): { total: number; idle: number; waiting: number; pools: number } {
    let idle = 0;
    let waiting = 0;
    for (const p of this.pools.values()) {
      idle += p.idle.length;
      waiting += p.waiters.length;
    }
    return { total: this.total, idle, waiting, pools: this.pools.size };
  }

  clientJoined(key: string): void {
    this.pool(key).clients++;
  }

  clientLeft(key: string): void {
    const p = this.pools.get(key);
    if (!p) return;
    p.clients--;
    // its pool's last connection can now be spared for a login waiting for room
    if (this.loginsWaiting > 0) this.handOnRoom(p);
  }

  /**
   * Room for a login's verifying connection in pool `key`. Resolves once there
   * is room (the caller then connects, and calls adopt or loginFailed).
   */
  async login(key: string): Promise<void> {
    const p = this.pool(key);
    const room = this.roomFor(p);
    if (room) {
      this.occupy(p);
      await room;
      return;
    }
    await this.wait(p, 'login');
  }

  /**
   * Is there room for one more connection in `p`, closing an idle one if need
   * be? Undefined if not; else resolves once the closed one is gone, so that
   * the server never sees more connections than the limits allow.
   */
  private roomFor(p: Pool): Promise<void> | undefined {
    const size = this.opts.poolSize;
    if (p.family.open < size && this.total < this.opts.maxServerConnections)
      return Promise.resolve();
    if (p.family.open >= size) {
      // the role's share: an idle connection of this pool, else the longest-idle one of
      // another pool of the role, that its pool can spare
      const own = p.idle[0];
      if (own && spare(p)) return this.evict(p, own);
      const v = longestIdle([...p.family.pools].filter(spare));
      if (v) return this.evict(v.from, v.conn);
      // a login to a pool whose only connection its clients still need: one place over the
      // role's share while it authenticates (release closes the surplus), never over the total
      if (p.conns >= 1 && p.family.open === size && this.total < this.opts.maxServerConnections)
        return Promise.resolve();
      return undefined;
    }
    // overall limit: the longest-idle connection a pool can spare, else wait
    const v = longestIdle([...this.pools.values()].filter(spare));
    return v ? this.evict(v.from, v.conn) : undefined;
  }

  private evict(p: Pool, c: ServerConn): Promise<void> {
    p.idle.splice(p.idle.indexOf(c), 1);
    this.forget(p, c);
    c.terminate();
    return gone(c);
  }

  /** An idle connection leaves its pool (at most once): one place fewer in use. */
  private forget(p: Pool, c: ServerConn): void {
    if (unpool(p, c)) this.vacate(p);
  }

  private wait(p: Pool, kind: Waiter['kind']): Promise<ServerConn | undefined> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const i = p.waiters.indexOf(w);
        if (i >= 0) this.unwait(p, i);
        metrics.clientsRefused.inc({ reason: 'pool_timeout' });
        reject(
          new PoolError(
            SqlState.TooManyConnections,
            kind === 'login'
              ? `no room for a new server connection of this role and database within --pool-timeout (${this.opts.poolTimeoutMs / 1000} s): all ${this.opts.poolSize} it may hold (--pool-size, shared by its logins whatever their startup parameters) are in use`
              : `no server connection became free within --pool-timeout (${this.opts.poolTimeoutMs / 1000} s): all connections of this role and database are in use`,
            `Raise --pool-size (now ${this.opts.poolSize}) or --max-server-connections (now ${this.opts.maxServerConnections}), keep transactions short, or raise --pool-timeout.`,
          ),
        );
      }, this.opts.poolTimeoutMs);
      timer.unref();
      const w: Waiter = { kind, resolve, timer };
      p.waiters.push(w);
      if (kind === 'login') this.loginsWaiting++;
    });
  }

  /** The verifying connection of a login in pool `key` authenticated: it joins the pool. */
  adopt(key: string, conn: ServerConn): void {
    const p = this.pool(key);
    conn.pooled = true;
    p.conns++;
    this.release(key, conn);
  }

  /** A login's connection failed or closed before it joined: its place is free again. */
  loginFailed(key: string): void {
    const p = this.pool(key);
    this.vacate(p);
    this.handOnRoom(p);
  }

  /** An idle connection now, without waiting (undefined if none). */
  lendNow(key: string): ServerConn | undefined {
    const p = this.pools.get(key);
    return p?.idle.pop();
  }

  /** A connection of pool `key`, waiting up to --pool-timeout. */
  async lend(key: string): Promise<ServerConn> {
    const p = this.pool(key);
    const c = p.idle.pop();
    if (c) return c;
    if (p.open === 0)
      throw new PoolError(
        SqlState.ConnectionFailure,
        'dfgate has no server connection left for this role and database (they were closed, for example by a server restart)',
        "Reconnect: dfgate's pools grow from client logins.",
      );
    const got = await this.wait(p, 'lend');
    if (!got) throw new PoolError(SqlState.ConnectionFailure, 'server connection lost');
    return got;
  }

  /** A connection comes back idle and clean: to the first waiter, or idle (reset first if its state is unknown). */
  release(key: string, conn: ServerConn): void {
    const p = this.pool(key);
    conn.sink = undefined;
    p.resetting.delete(conn);
    if (conn.closed || this.closing) {
      this.discard(key, conn);
      return;
    }
    if (
      conn.pooled &&
      p.family.open > this.opts.poolSize &&
      p.conns - p.resetting.size > 1 &&
      spare(p)
    ) {
      // a login let in one place over the role's share (roomFor): the surplus closes as soon
      // as the pool has another usable connection
      this.forget(p, conn);
      conn.terminate();
      this.handOnRoom(p);
      return;
    }
    // a cancel request of its last client still on its way: not to be lent before it lands
    if (!conn.whenNoCancels(() => this.release(key, conn))) return;
    if (conn.stateUnknown) {
      this.reset(key, conn);
      return;
    }
    // the first waiting client takes it; a waiting login only if the pool can spare it
    const first = p.waiters.findIndex((x) => x.kind === 'lend' || spare(p));
    const w = first >= 0 ? this.unwait(p, first) : undefined;
    if (w) {
      clearTimeout(w.timer);
      if (w.kind === 'lend') {
        w.resolve(conn);
        return;
      }
      // a login waits for room: this connection makes it
      this.forget(p, conn);
      conn.terminate();
      this.occupy(p);
      void gone(conn).then(() => w.resolve(undefined));
      return;
    }
    conn.idleSince = Date.now();
    conn.sink = {
      inspect: () => true,
      message: () => null, // notices and parameter changes of an idle connection
      relay: () => undefined,
      closed: () => {
        // closed by the server while idle (a restart, pg_terminate_backend, idle_session_timeout)
        const i = p.idle.indexOf(conn);
        if (i < 0) return;
        p.idle.splice(i, 1);
        this.forget(p, conn);
        this.handOnRoom(p);
      },
    };
    p.idle.push(conn);
    // a login of another pool may be waiting for room that this idle connection can make
    if (this.loginsWaiting > 0) this.handOnRoom(p);
  }

  /**
   * A connection closed or unusable: it leaves the pool. Its place stays
   * taken until the server has closed it (a backend busy in a statement reads
   * the Terminate only when the statement ends; `busy` cancels the statement
   * first), so the server never holds more connections than the limits.
   */
  discard(key: string, conn: ServerConn, busy = false): void {
    const p = this.pool(key);
    p.resetting.delete(conn);
    const i = p.idle.indexOf(conn);
    if (i >= 0) p.idle.splice(i, 1);
    if (!unpool(p, conn)) {
      // already left its pool (a second report of the same end)
      if (!conn.closed) conn.terminate();
      return;
    }
    const leave = (): void => {
      this.vacate(p);
      this.handOnRoom(p);
    };
    if (conn.socket.destroyed) {
      leave();
      return;
    }
    if (busy && conn.pid > 0 && conn.key) this.opts.cancel?.(conn.pid, conn.key);
    conn.socket.once('close', leave);
    if (!conn.closed) conn.terminate(DISCARD_GRACE_MS);
    else setTimeout(() => conn.socket.destroy(), DISCARD_GRACE_MS).unref();
  }

  /**
   * Room became free in `p`, its role's pools or overall (or an idle
   * connection can make it): waiting logins take it, those of `p`'s role
   * first; waiting clients of `p` are told if nothing is left.
   */
  private handOnRoom(p: Pool): void {
    const order = this.loginsWaiting > 0 ? [p, ...p.family.pools, ...this.pools.values()] : [];
    for (const q of new Set(order)) {
      for (;;) {
        const login = q.waiters.findIndex((w) => w.kind === 'login');
        const room = login >= 0 ? this.roomFor(q) : undefined;
        if (!room) break;
        const w = this.unwait(q, login);
        clearTimeout(w.timer);
        this.occupy(q);
        void room.then(() => w.resolve(undefined));
      }
    }
    // clients waiting to borrow from a pool with nothing left (logins wait for room)
    if (p.open === 0)
      for (let i = p.waiters.length - 1; i >= 0; i--) {
        if (p.waiters[i]?.kind !== 'lend') continue;
        const w = this.unwait(p, i);
        clearTimeout(w.timer);
        w.resolve(undefined);
      }
  }

  /** Takes waiter `i` of `p` off its queue. */
  private unwait(p: Pool, i: number): Waiter {
    const [w] = p.waiters.splice(i, 1) as [Waiter];
    if (w.kind === 'login') this.loginsWaiting--;
    return w;
  }

  /**
   * The client holding `conn` went away in the middle of something: end any
   * COPY, batch and transaction, then return it if it came back idle (else
   * close it). A connection whose session state is unknown (stateUnknown) also
   * gets DISCARD ALL, and is closed unless that completes.
   */
  reset(key: string, conn: ServerConn): void {
    if (conn.closed) {
      this.discard(key, conn);
      return;
    }
    this.pool(key).resetting.add(conn);
    const marker = `dfgate_reset_${conn.id}_${Date.now()}`;
    const timer = setTimeout(() => {
      this.opts.log.info({ server: conn.id }, 'server connection did not reset in time; closed');
      this.discard(key, conn, true);
    }, 10_000);
    timer.unref();
    let seen = false;
    const discardAll = conn.stateUnknown;
    let discarded = false;
    conn.sink = {
      inspect: () => true,
      message: (t, body) => {
        if (t === Backend.DataRow && body.includes(marker)) seen = true;
        else if (discardAll && t === Backend.CommandComplete && body.equals(DISCARD_ALL_TAG))
          discarded = true;
        else if (t === Backend.ReadyForQuery && seen) {
          clearTimeout(timer);
          seen = false;
          conn.suspect = false;
          // a simple Query drops the unnamed statement, whoever's it was
          conn.unnamedOwner = undefined;
          if (discarded) {
            // what dfgate put there is gone with it
            conn.prepared.clear();
            conn.uncertain.clear();
            conn.settings.clear();
            conn.stateUnknown = false;
          }
          setImmediate(() => {
            if (conn.txStatus === 'I' && discarded === discardAll) this.release(key, conn);
            else this.discard(key, conn);
          });
        }
        return null;
      },
      relay: () => undefined,
      closed: () => {
        clearTimeout(timer);
        this.discard(key, conn);
      },
    };
    conn.write(
      Buffer.concat([
        // CopyFail ends a COPY FROM STDIN; outside COPY the server ignores it
        encodeFrontend({ type: 'CopyFail', message: 'client of dfgate went away' }),
        encodeFrontend({ type: 'Sync' }),
        encodeFrontend({ type: 'Query', sql: 'ROLLBACK' }),
        ...(discardAll ? [encodeFrontend({ type: 'Query', sql: 'DISCARD ALL' })] : []),
        encodeFrontend({ type: 'Query', sql: `SELECT '${marker}'` }),
      ]),
    );
    this.opts.log.debug(
      { server: conn.id, discardAll },
      discardAll
        ? 'resetting a server connection whose session state dfgate does not know'
        : 'rolling back a server connection its client left',
    );
  }

  private sweep(): void {
    // evictions here free room for nobody in particular
    const cutoff = Date.now() - this.opts.serverIdleTimeoutMs;
    for (const p of this.pools.values()) {
      while (p.idle.length > 0 && (p.idle[0] as ServerConn).idleSince < cutoff) {
        if (!spare(p)) break;
        void this.evict(p, p.idle[0] as ServerConn);
      }
      if (p.open === 0 && p.clients <= 0 && p.waiters.length === 0) {
        this.pools.delete(p.key);
        p.family.pools.delete(p);
        if (p.family.pools.size === 0) this.families.delete(p.family.key);
      }
    }
  }

  /** Shutdown: close idle connections now, the rest as they come back. */
  close(): void {
    this.closing = true;
    if (this.sweeper) clearInterval(this.sweeper);
    for (const p of this.pools.values())
      for (const c of p.idle.splice(0)) {
        this.forget(p, c);
        c.terminate();
      }
  }
}

/** The CommandComplete body of DISCARD ALL. */
const DISCARD_ALL_TAG = Buffer.from('DISCARD ALL\0', 'latin1');

/**
 * How long a discarded connection may take to close before dfgate drops it
 * (a backend that ignores its cancel): its place is held until then.
 */
const DISCARD_GRACE_MS = 30_000;

/** Takes `c` out of its pool's count, once: false when it had already left. */
function unpool(p: Pool, c: ServerConn): boolean {
  c.sink = undefined;
  if (!c.pooled) return false;
  c.pooled = false;
  p.conns--;
  return true;
}

/** A pool can spare a connection unless it is the last one of a pool with clients. */
function spare(q: Pool): boolean {
  return q.clients <= 0 || q.conns > 1;
}

/** The longest-idle connection of `pools`, and its pool. */
function longestIdle(pools: Iterable<Pool>): { conn: ServerConn; from: Pool } | undefined {
  let best: { conn: ServerConn; from: Pool } | undefined;
  for (const q of pools) {
    const c = q.idle[0];
    if (c && (!best || c.idleSince < best.conn.idleSince)) best = { conn: c, from: q };
  }
  return best;
}

/** Resolves once the connection's socket has closed (at most 2 s). */
function gone(c: ServerConn): Promise<void> {
  if (c.socket.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, 2000);
    timer.unref();
    c.socket.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}
