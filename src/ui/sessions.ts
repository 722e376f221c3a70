/**
 * Console sessions (docs/ui.md): one database connection per logged-in
 * browser, opened with the role's password, which is dropped as soon as the
 * connection is authenticated. The session id lives in an HttpOnly cookie; the
 * server keeps everything else. Idle sessions are closed after a timeout.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import pg from 'pg';
import type { ConnectionOptions } from 'node:tls';
import { targetFromUrl } from '../proxy/upstream.js';

export interface Session {
  readonly id: string;
  /** The role as PostgreSQL spells it in regrole text (quoted when needed). */
  readonly role: string;
  /** The role name as typed (and as current_user returns it). */
  readonly user: string;
  readonly csrf: string;
  /** USAGE on schema df: false means the console shows the "no access" page. */
  readonly usage: boolean;
  /** Sees every role's rows (superuser, BYPASSRLS or member of the executor group). */
  readonly seesAll: boolean;
  readonly db: pg.Client;
  lastSeen: number;
}

export class LoginError extends Error {
  override readonly name = 'LoginError';
  constructor(
    message: string,
    readonly status: number,
    readonly code: string,
  ) {
    super(message);
  }
}

/** Where sessions connect: the upstream's host, port, database and TLS settings, never its user. */
export interface DbTarget {
  readonly host: string;
  readonly port: number;
  readonly database: string;
  readonly ssl: false | ConnectionOptions;
}

export function dbTargetFromUrl(upstream: string): DbTarget {
  const t = targetFromUrl(upstream);
  const url = new URL(upstream);
  const database =
    decodeURIComponent(url.pathname.replace(/^\//, '')) ||
    decodeURIComponent(url.username) ||
    'postgres';
  let ssl: false | ConnectionOptions = false;
  if (t.sslmode === 'require') ssl = { rejectUnauthorized: false };
  else if (t.sslmode === 'verify-ca')
    ssl = { rejectUnauthorized: true, ca: t.ca, checkServerIdentity: () => undefined };
  else if (t.sslmode === 'verify-full') ssl = { rejectUnauthorized: true, ca: t.ca };
  return { host: t.host, port: t.port, database, ssl };
}

export interface SessionOptions {
  readonly target: DbTarget;
  readonly idleTimeoutMs: number;
  readonly maxSessions: number;
  readonly connectTimeoutMs: number;
}

interface PgPasswordFields {
  password: unknown;
  connectionParameters: { password: unknown };
}

/** How long one console query may run before PostgreSQL cancels it (docs/ui.md, "Safety with hostile data"). */
export const UI_STATEMENT_TIMEOUT_MS = 15_000;
const SQLSTATE_AUTH_FAILED = new Set(['28P01', '28000']);

export class SessionStore {
  private readonly sessions = new Map<string, Session>();
  private readonly sweeper: NodeJS.Timeout;

  constructor(
    private readonly opts: SessionOptions,
    private readonly onEnd: (s: Session) => void = () => undefined,
  ) {
    this.sweeper = setInterval(
      () => this.sweep(),
      Math.min(60_000, Math.max(1000, opts.idleTimeoutMs / 4)),
    );
    this.sweeper.unref();
  }

  get size(): number {
    return this.sessions.size;
  }

  all(): IterableIterator<Session> {
    return this.sessions.values();
  }

  /** Logs in: opens the session's connection as `user`. The password is not kept. */
  async login(user: string, password: string): Promise<Session> {
    if (this.sessions.size >= this.opts.maxSessions)
      throw new LoginError('too many console sessions; try again later', 503, 'too_many_sessions');
    let secret: string | undefined = password;
    const db = new pg.Client({
      host: this.opts.target.host,
      port: this.opts.target.port,
      database: this.opts.target.database,
      ssl: this.opts.target.ssl,
      user,
      password: () => {
        const s = secret ?? '';
        secret = undefined;
        return s;
      },
      application_name: 'dfgate:ui',
      connectionTimeoutMillis: this.opts.connectTimeoutMs,
      // a page's query that runs long (an instance another role wrote by hand, say) ends
      // with an error instead of holding the session's one connection (docs/ui.md)
      statement_timeout: UI_STATEMENT_TIMEOUT_MS,
    });
    db.on('error', () => undefined);
    try {
      await db.connect();
    } catch (err) {
      secret = undefined;
      await db.end().catch(() => undefined);
      const code = (err as { code?: string }).code ?? '';
      if (SQLSTATE_AUTH_FAILED.has(code) || code === '3D000')
        throw new LoginError('wrong role or password', 401, 'bad_login');
      if (code === '42501')
        throw new LoginError(
          `role "${user}" may not connect to database "${this.opts.target.database}"`,
          403,
          'no_connect',
        );
      throw new LoginError('the database cannot be reached; try again later', 503, 'db_down');
    } finally {
      // node-postgres caches the resolved password on the client; drop it.
      const fields = db as unknown as PgPasswordFields;
      fields.password = null;
      fields.connectionParameters.password = null;
    }
    try {
      const r = await db.query<{ role: string; usage: boolean; sees_all: boolean }>(
        `SELECT current_user::regrole::text AS role,
                has_schema_privilege(current_user, 'df', 'USAGE') AS usage,
                (SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user)
                  OR pg_has_role(current_user, 'df_executor', 'MEMBER') AS sees_all`,
      );
      const row = r.rows[0] as { role: string; usage: boolean; sees_all: boolean };
      const s: Session = {
        id: randomBytes(32).toString('base64url'),
        role: row.role,
        user,
        csrf: randomBytes(24).toString('base64url'),
        usage: row.usage,
        seesAll: row.sees_all,
        db,
        lastSeen: Date.now(),
      };
      db.on('error', () => this.end(s.id));
      db.on('end', () => this.end(s.id));
      this.sessions.set(s.id, s);
      return s;
    } catch (err) {
      await db.end().catch(() => undefined);
      throw err;
    }
  }

  /** The live session of a cookie value, touched; undefined when unknown or idle too long. */
  get(id: string | undefined): Session | undefined {
    if (!id) return undefined;
    const s = this.sessions.get(id);
    if (!s) return undefined;
    if (Date.now() - s.lastSeen > this.opts.idleTimeoutMs) {
      this.end(id);
      return undefined;
    }
    s.lastSeen = Date.now();
    return s;
  }

  end(id: string): void {
    const s = this.sessions.get(id);
    if (!s) return;
    this.sessions.delete(id);
    void s.db.end().catch(() => undefined);
    this.onEnd(s);
  }

  private sweep(): void {
    const now = Date.now();
    for (const s of this.sessions.values())
      if (now - s.lastSeen > this.opts.idleTimeoutMs) this.end(s.id);
  }

  close(): void {
    clearInterval(this.sweeper);
    for (const id of [...this.sessions.keys()]) this.end(id);
  }
}

/** Constant-time comparison of two tokens. */
export function sameToken(a: string, b: string): boolean {
  const x = createHash('sha256').update(a).digest();
  const y = createHash('sha256').update(b).digest();
  return timingSafeEqual(x, y);
}

/**
 * Failed-login limiter: at most `max` failures per key in a sliding
 * `windowMs`; beyond that logins are refused (429) without touching the
 * database until the window has passed. The console keeps one per role name
 * and a looser one per client address.
 */
export class LoginLimiter {
  private readonly failures = new Map<string, number[]>();

  constructor(
    private readonly max: number,
    private readonly windowMs: number,
  ) {}

  /** Seconds until a login for these keys may be tried, or 0. */
  retryAfter(keys: readonly string[]): number {
    const now = Date.now();
    let wait = 0;
    for (const k of keys) {
      const list = (this.failures.get(k) ?? []).filter((t) => now - t < this.windowMs);
      if (list.length) this.failures.set(k, list);
      else this.failures.delete(k);
      if (list.length >= this.max)
        wait = Math.max(wait, Math.ceil(((list[0] as number) + this.windowMs - now) / 1000));
    }
    return wait;
  }

  fail(keys: readonly string[]): number {
    const now = Date.now();
    for (const k of keys) {
      const list = this.failures.get(k) ?? [];
      list.push(now);
      this.failures.set(k, list);
    }
    if (this.failures.size > 10_000) this.failures.clear();
    return now;
  }

  /** Takes back one failure noted at `at` (an attempt counted before its outcome was known). */
  forget(keys: readonly string[], at: number): void {
    for (const k of keys) {
      const list = this.failures.get(k);
      const i = list?.indexOf(at) ?? -1;
      if (list && i >= 0) list.splice(i, 1);
      if (list?.length === 0) this.failures.delete(k);
    }
  }

  succeed(keys: readonly string[]): void {
    for (const k of keys) this.failures.delete(k);
  }
}
