/**
 * The web console (`--ui-listen HOST:PORT`, docs/ui.md): static assets built
 * by `npm run build` (dist/ui), a JSON API that queries the database as the
 * logged-in role, and server-sent events for live updates. Plain node:http
 * (node:https with --tls-cert/--tls-key).
 */
import { existsSync, readFileSync } from 'node:fs';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import https from 'node:https';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import type { HostPort } from '../config.js';
import type { Executor } from '../executor/executor.js';
import { checkExpression, MAX_SOURCE_BYTES } from './check.js';
import { LiveHub } from './live.js';
import {
  BadRequest,
  instanceDetail,
  listInstances,
  overview,
  parseFilter,
  processCounters,
  statusCounts,
  TooLarge,
  visible,
} from './queries.js';
import {
  dbTargetFromUrl,
  LoginError,
  LoginLimiter,
  sameToken,
  SessionStore,
  type Session,
} from './sessions.js';

export interface UiOptions {
  readonly listen: HostPort;
  /** The upstream URL: sessions use its host, port, database and TLS mode; the LISTEN uses it whole. */
  readonly upstream: string;
  readonly log: Logger;
  readonly tlsCert?: string | undefined;
  readonly tlsKey?: string | undefined;
  readonly executor?: Executor | undefined;
  /** Close sessions idle this long (default 30 minutes). */
  readonly idleTimeoutMs?: number;
  readonly maxSessions?: number;
  /** Failed logins allowed per role name in `loginWindowMs` (default 5 per minute); 4 times as many per client address. */
  readonly maxLoginFailures?: number;
  readonly loginWindowMs?: number;
  /** Built assets (default: dist/ui of this package). */
  readonly assetsDir?: string;
}

export interface UiServer {
  readonly port: number;
  readonly url: string;
  readonly sessions: SessionStore;
  readonly live: LiveHub;
  close(): Promise<void>;
}

const COOKIE = 'dfgate_session';
/** Status counts are reused this long per session (they scan every visible row). */
const COUNT_CACHE_MS = 1000;
const MAX_BODY = 1024 * 1024;

const CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "font-src 'self'",
  "connect-src 'self'",
  "manifest-src 'self'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

const TYPES: Record<string, string> = {
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.map': 'application/json',
};

/** The first directory holding a built index.html: dist/ui next to dist/src, or <repo>/dist/ui from src/. */
function findAssets(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const candidates = [path.resolve(here, '../../ui'), path.resolve(here, '../../dist/ui')];
  for (const c of candidates) if (existsSync(path.join(c, 'index.html'))) return c;
  throw new Error(
    `the console's assets are not built (looked in ${candidates.join(', ')}); run npm run build`,
  );
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly code = 'error',
  ) {
    super(message);
  }
}

/** HTTP status for a PostgreSQL error raised by the role's own statement. */
function statusOfSqlstate(code: string | undefined): number {
  if (!code) return 500;
  if (code === '42501') return 403;
  if (code === 'P0002') return 404;
  if (code === '55000') return 409;
  if (code.startsWith('22') || code.startsWith('42') || code === 'P0001' || code === '0A000')
    return 400;
  return 500;
}

function cookies(req: IncomingMessage): Map<string, string> {
  const out = new Map<string, string>();
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0) out.set(part.slice(0, eq).trim(), part.slice(eq + 1).trim());
  }
  return out;
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim();
  if (type !== 'application/json')
    throw new HttpError(415, 'send application/json', 'content_type');
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > MAX_BODY) throw new HttpError(413, 'request body too large', 'too_large');
    chunks.push(c as Buffer);
  }
  try {
    const v = JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
    if (typeof v === 'object' && v !== null && !Array.isArray(v))
      return v as Record<string, unknown>;
  } catch {
    // fall through
  }
  throw new HttpError(400, 'the body must be a JSON object', 'bad_json');
}

/** A path segment, decoded; a malformed %-escape is the client's error (400), not ours. */
function segment(raw: string): string {
  try {
    return decodeURIComponent(raw);
  } catch {
    throw new HttpError(400, 'malformed %-escape in the path', 'bad_path');
  }
}

function str(body: Record<string, unknown>, key: string, max = 10_000): string {
  const v = body[key];
  if (typeof v !== 'string') throw new HttpError(400, `${key} must be a string`, 'bad_field');
  if (v.length > max) throw new HttpError(400, `${key} is too long`, 'bad_field');
  return v;
}

export async function startUi(opts: UiOptions): Promise<UiServer> {
  const log = opts.log;
  const assets = opts.assetsDir ?? findAssets();
  const indexHtml = readFileSync(path.join(assets, 'index.html'));
  const tls = opts.tlsCert !== undefined && opts.tlsKey !== undefined;
  const live = new LiveHub(opts.upstream, log);
  const sessions = new SessionStore(
    {
      target: dbTargetFromUrl(opts.upstream),
      idleTimeoutMs: opts.idleTimeoutMs ?? 30 * 60_000,
      maxSessions: opts.maxSessions ?? 200,
      connectTimeoutMs: 10_000,
    },
    (s) => live.endSession(s),
  );
  const maxFailures = opts.maxLoginFailures ?? 5;
  const roleLimiter = new LoginLimiter(maxFailures, opts.loginWindowMs ?? 60_000);
  const addrLimiter = new LoginLimiter(maxFailures * 4, opts.loginWindowMs ?? 60_000);

  const countCache = new WeakMap<
    Session,
    { key: string; at: number; counts: Record<string, number> }
  >();

  const baseHeaders = (res: ServerResponse): void => {
    res.setHeader('Content-Security-Policy', CSP);
    res.setHeader('X-Content-Type-Options', 'nosniff');
    res.setHeader('Referrer-Policy', 'no-referrer');
    res.setHeader('X-Frame-Options', 'DENY');
    res.setHeader('Cross-Origin-Opener-Policy', 'same-origin');
    res.setHeader('Cross-Origin-Resource-Policy', 'same-origin');
    if (tls) res.setHeader('Strict-Transport-Security', 'max-age=31536000');
  };

  const sendJson = (res: ServerResponse, status: number, body: unknown): void => {
    res.writeHead(status, {
      'Content-Type': 'application/json; charset=utf-8',
      'Cache-Control': 'no-store',
    });
    res.end(JSON.stringify(body));
  };

  const sendIndex = (res: ServerResponse, status: number): void => {
    res.writeHead(status, {
      'Content-Type': 'text/html; charset=utf-8',
      'Cache-Control': 'no-store',
    });
    res.end(indexHtml);
  };

  const sessionCookie = (value: string, maxAge?: number): string =>
    `${COOKIE}=${value}; Path=/; HttpOnly; SameSite=Strict${tls ? '; Secure' : ''}${
      maxAge !== undefined ? `; Max-Age=${maxAge}` : ''
    }`;

  /** Writes come from this origin only: Origin (when sent) and Sec-Fetch-Site must agree. */
  const checkOrigin = (req: IncomingMessage): void => {
    const site = req.headers['sec-fetch-site'];
    if (site !== undefined && site !== 'same-origin' && site !== 'none')
      throw new HttpError(403, 'cross-site request refused', 'csrf');
    const origin = req.headers.origin;
    if (origin !== undefined && origin !== `${tls ? 'https' : 'http'}://${req.headers.host ?? ''}`)
      throw new HttpError(403, 'cross-origin request refused', 'csrf');
  };

  const requireSession = (req: IncomingMessage, write: boolean): Session => {
    const s = sessions.get(cookies(req).get(COOKIE));
    if (!s) throw new HttpError(401, 'not logged in (or the session expired)', 'no_session');
    if (write) {
      checkOrigin(req);
      const token = req.headers['x-csrf-token'];
      if (typeof token !== 'string' || !sameToken(token, s.csrf))
        throw new HttpError(403, 'missing or wrong CSRF token; reload the page', 'csrf');
    }
    if (!s.usage)
      throw new HttpError(
        403,
        `role ${s.role} has no access to dfgate workflows (df.grant_usage)`,
        'no_usage',
      );
    return s;
  };

  const api = async (req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> => {
    const p = url.pathname;
    const m = req.method ?? 'GET';
    if (p === '/api/login' && m === 'POST') {
      checkOrigin(req);
      const body = await readJson(req);
      const role = str(body, 'role', 63);
      const password = str(body, 'password', 1000);
      if (role === '') throw new HttpError(400, 'enter a role name', 'bad_login');
      // a NUL would end the name in the startup packet and smuggle parameters after it
      // (and make another limiter key for the same role)
      if (role.includes('\0') || password.includes('\0'))
        throw new HttpError(400, 'a role name or password cannot contain NUL', 'bad_login');
      const addr = [req.socket.remoteAddress ?? ''];
      const keys = [role];
      const wait = Math.max(roleLimiter.retryAfter(keys), addrLimiter.retryAfter(addr));
      if (wait > 0) {
        res.setHeader('Retry-After', String(wait));
        throw new HttpError(429, `too many failed logins; try again in ${wait} s`, 'rate_limited');
      }
      // counted as failed until it is known to have succeeded, so that concurrent guesses
      // cannot all pass the check above before the first of them fails
      const roleAt = roleLimiter.fail(keys);
      const addrAt = addrLimiter.fail(addr);
      let s: Session;
      try {
        s = await sessions.login(role, password);
      } catch (err) {
        if (!(err instanceof LoginError) || err.code !== 'bad_login') {
          roleLimiter.forget(keys, roleAt);
          addrLimiter.forget(addr, addrAt);
        }
        if (err instanceof LoginError) {
          log.info(
            { role, remote: req.socket.remoteAddress, reason: err.code },
            'console login refused',
          );
          throw new HttpError(err.status, err.message, err.code);
        }
        throw err;
      }
      addrLimiter.forget(addr, addrAt);
      roleLimiter.succeed(keys);
      log.info({ role: s.role, remote: req.socket.remoteAddress }, 'console login');
      res.setHeader('Set-Cookie', sessionCookie(s.id));
      sendJson(res, 200, { role: s.user, csrf: s.csrf, usage: s.usage });
      return;
    }
    if (p === '/api/logout' && m === 'POST') {
      checkOrigin(req);
      const id = cookies(req).get(COOKIE);
      const s = sessions.get(id);
      if (s) {
        const token = req.headers['x-csrf-token'];
        if (typeof token !== 'string' || !sameToken(token, s.csrf))
          throw new HttpError(403, 'missing or wrong CSRF token; reload the page', 'csrf');
        sessions.end(s.id);
      }
      res.setHeader('Set-Cookie', sessionCookie('', 0));
      sendJson(res, 200, { ok: true });
      return;
    }
    if (p === '/api/session' && m === 'GET') {
      const s = sessions.get(cookies(req).get(COOKIE));
      if (!s) throw new HttpError(401, 'not logged in', 'no_session');
      sendJson(res, 200, { role: s.user, csrf: s.csrf, usage: s.usage });
      return;
    }
    if (p === '/api/events' && m === 'GET') {
      const s = requireSession(req, false);
      live.subscribe(s, res);
      return;
    }
    if (p === '/api/instances' && m === 'GET') {
      const s = requireSession(req, false);
      const t0 = performance.now();
      const out = await listInstances(s.db, parseFilter(url.searchParams));
      res.setHeader('Server-Timing', `db;dur=${(performance.now() - t0).toFixed(1)}`);
      sendJson(res, 200, out);
      return;
    }
    if (p === '/api/counts' && m === 'GET') {
      const s = requireSession(req, false);
      const label = url.searchParams.get('label') || undefined;
      const key = label ?? '';
      const hit = countCache.get(s);
      if (hit && hit.key === key && Date.now() - hit.at < COUNT_CACHE_MS) {
        sendJson(res, 200, hit.counts);
        return;
      }
      const counts = await statusCounts(s.db, label);
      countCache.set(s, { key, at: Date.now(), counts });
      sendJson(res, 200, counts);
      return;
    }
    const im = /^\/api\/instances\/([^/]+)(?:\/(signal|cancel))?$/.exec(p);
    if (im) {
      const id = segment(im[1] ?? '');
      const action = im[2];
      if (!action && m === 'GET') {
        const s = requireSession(req, false);
        const d = await instanceDetail(s.db, id);
        if (!d) throw new HttpError(404, `instance ${id} not found`, 'not_found');
        sendJson(res, 200, d);
        return;
      }
      if (action && m === 'POST') {
        const s = requireSession(req, true);
        const body = await readJson(req);
        if (!(await visible(s.db, id)))
          throw new HttpError(404, `instance ${id} not found`, 'not_found');
        if (action === 'signal') {
          const name = str(body, 'name', 200).trim();
          const payload = str(body, 'payload', 100_000);
          if (name === '') throw new HttpError(400, 'the signal needs a name', 'bad_field');
          try {
            JSON.parse(payload);
          } catch (err) {
            throw new HttpError(
              400,
              `the payload is not JSON: ${(err as Error).message}`,
              'bad_json',
            );
          }
          const r = await s.db.query<{ r: string }>(`SELECT df.signal($1, $2, $3) AS r`, [
            id,
            name,
            payload,
          ]);
          opts.executor?.wake();
          sendJson(res, 200, { message: r.rows[0]?.r ?? '' });
        } else {
          const reason =
            typeof body['reason'] === 'string' && body['reason'].trim() !== ''
              ? str(body, 'reason', 1000)
              : `cancelled from the web console by ${s.user}`;
          const r = await s.db.query<{ r: string }>(`SELECT df.cancel($1, $2) AS r`, [id, reason]);
          opts.executor?.wake();
          sendJson(res, 200, { message: r.rows[0]?.r ?? '' });
        }
        return;
      }
    }
    if (p === '/api/check' && m === 'POST') {
      const s = requireSession(req, true);
      const body = await readJson(req);
      const source = str(body, 'source', MAX_SOURCE_BYTES);
      sendJson(res, 200, await checkExpression(source, `role:${s.role}`));
      return;
    }
    if (p === '/api/start' && m === 'POST') {
      const s = requireSession(req, true);
      const body = await readJson(req);
      const checked = await checkExpression(
        str(body, 'source', MAX_SOURCE_BYTES),
        `role:${s.role}`,
      );
      if (!checked.ok) {
        sendJson(res, 400, { error: checked.error.message, code: 'invalid', at: checked.error });
        return;
      }
      const label =
        typeof body['label'] === 'string' && body['label'] !== '' ? str(body, 'label', 1000) : null;
      const r = await s.db.query<{ id: string }>(`SELECT df.start($1::text, $2::text) AS id`, [
        checked.graph,
        label,
      ]);
      opts.executor?.wake();
      sendJson(res, 200, { id: r.rows[0]?.id });
      return;
    }
    if (p === '/api/overview' && m === 'GET') {
      const s = requireSession(req, false);
      const data = await overview(s.db);
      const ex = opts.executor?.stats();
      sendJson(res, 200, {
        ...data,
        process: {
          executor: ex ? { listening: ex.listening, activeInstances: ex.activeInstances } : null,
          consoleListening: live.listening,
          consoleSessions: sessions.size,
          liveStreams: live.streamCount,
          counters: processCounters(),
          uptimeSeconds: Math.round(process.uptime()),
        },
      });
      return;
    }
    throw new HttpError(p.startsWith('/api/') ? 404 : 405, 'no such API', 'not_found');
  };

  const page = async (req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> => {
    const p = url.pathname;
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('Allow', 'GET, HEAD');
      throw new HttpError(405, 'method not allowed');
    }
    if (p.startsWith('/assets/')) {
      const name = p.slice('/assets/'.length);
      const ext = path.extname(name);
      if (!/^[A-Za-z0-9._-]+$/.test(name) || !TYPES[ext]) throw new HttpError(404, 'not found');
      let data: Buffer;
      try {
        data = readFileSync(path.join(assets, name));
      } catch {
        throw new HttpError(404, 'not found');
      }
      res.writeHead(200, { 'Content-Type': TYPES[ext], 'Cache-Control': 'no-cache' });
      res.end(data);
      return;
    }
    if (['/', '/login', '/instances', '/start', '/overview'].includes(p)) {
      sendIndex(res, 200);
      return;
    }
    const im = /^\/instances\/([^/]+)$/.exec(p);
    if (im) {
      // a logged-in role gets 404 for an id it cannot see, exactly like one that does not exist
      const s = sessions.get(cookies(req).get(COOKIE));
      if (s?.usage && !(await visible(s.db, segment(im[1] ?? '')))) {
        sendIndex(res, 404);
        return;
      }
      sendIndex(res, 200);
      return;
    }
    sendIndex(res, 404);
  };

  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    baseHeaders(res);
    let url: URL;
    try {
      url = new URL(req.url ?? '/', 'http://console');
    } catch {
      sendJson(res, 400, { error: 'bad request' });
      return;
    }
    const isApi = url.pathname.startsWith('/api/');
    (isApi ? api(req, res, url) : page(req, res, url)).catch((err: unknown) => {
      let status = 500;
      let message = 'internal error; see the dfgate log';
      let code = 'internal';
      if (err instanceof HttpError) {
        status = err.status;
        message = err.message;
        code = err.code;
      } else if (err instanceof TooLarge) {
        status = 413;
        message = err.message;
        code = 'too_large';
      } else if (err instanceof BadRequest) {
        status = 400;
        message = err.message;
        code = 'bad_request';
      } else if (typeof (err as { code?: unknown }).code === 'string') {
        // a PostgreSQL error raised by the role's own statement: the role may read it
        const sqlstate = (err as { code: string }).code;
        status = statusOfSqlstate(sqlstate);
        message = (err as Error).message;
        code = sqlstate;
        if (status === 500) log.warn({ sqlstate, path: url.pathname }, message);
      } else {
        log.error({ err, path: url.pathname }, 'console request failed');
      }
      if (res.headersSent) {
        res.end();
        return;
      }
      if (isApi) sendJson(res, status, { error: message, code });
      else {
        res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8' });
        res.end(message + '\n');
      }
    });
  };

  const server = tls
    ? https.createServer(
        { cert: readFileSync(opts.tlsCert as string), key: readFileSync(opts.tlsKey as string) },
        handler,
      )
    : http.createServer(handler);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.listen.port, opts.listen.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  await live.start();
  const addr = server.address();
  const port = typeof addr === 'object' && addr !== null ? addr.port : opts.listen.port;
  const host = opts.listen.host.includes(':') ? `[${opts.listen.host}]` : opts.listen.host;
  const url = `${tls ? 'https' : 'http'}://${host}:${port}/`;
  log.info({ url }, 'web console listening');
  return {
    port,
    url,
    sessions,
    live,
    close: async () => {
      sessions.close();
      await live.stop();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}
