/** The web console's server (docs/ui.md): login, sessions, CSRF, RLS, actions, live updates, paging. */
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { finished, startTestExecutor } from '../harness/executor.js';
import { parseConfig } from '../../src/config.js';
import { startUi, type UiServer } from '../../src/ui/server.js';

const db = useTestDatabase();
let ui: UiServer;
let alice: TestRole;
let bob: TestRole;
let carol: TestRole;
let dave: TestRole;
let base: string;

beforeAll(async () => {
  alice = await db.role('alice');
  bob = await db.role('bob');
  carol = await db.role('carol', { grant: false });
  dave = await db.role('dave');
  const executor = await startTestExecutor(db.url);
  ui = await startUi({
    listen: { host: '127.0.0.1', port: 0 },
    upstream: db.url,
    log: pino({ level: process.env['DFGATE_TEST_LOG'] ?? 'silent' }),
    executor,
    maxLoginFailures: 3,
  });
  base = `http://127.0.0.1:${ui.port}`;
});
afterAll(async () => {
  await ui?.close();
});

interface Browser {
  cookie: string;
  csrf: string;
}

async function login(role: TestRole): Promise<Browser> {
  const r = await fetch(`${base}/api/login`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ role: role.name, password: role.password }),
  });
  expect(r.status).toBe(200);
  const cookie = (r.headers.get('set-cookie') ?? '').split(';')[0] as string;
  const body = (await r.json()) as { csrf: string };
  return { cookie, csrf: body.csrf };
}

async function api(
  b: Browser | undefined,
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: Record<string, unknown>; headers: Headers }> {
  const h: Record<string, string> = { ...headers };
  if (b) h['Cookie'] = b.cookie;
  if (method !== 'GET') {
    h['Content-Type'] ??= 'application/json';
    if (b && !('X-CSRF-Token' in h)) h['X-CSRF-Token'] = b.csrf;
  }
  const r = await fetch(`${base}${path}`, {
    method,
    headers: h,
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await r.text();
  let parsed: Record<string, unknown> = {};
  try {
    parsed = JSON.parse(text) as Record<string, unknown>;
  } catch {
    parsed = { text };
  }
  return { status: r.status, body: parsed, headers: r.headers };
}

describe('configuration', () => {
  it('--ui-listen / DFGATE_UI_LISTEN turn the console on; it is off by default', () => {
    const up = ['--upstream', 'postgres://u@127.0.0.1/db'];
    expect(parseConfig(up, {}).uiListen).toBeUndefined();
    expect(parseConfig([...up, '--ui-listen', '127.0.0.1:6433'], {}).uiListen).toEqual({
      host: '127.0.0.1',
      port: 6433,
    });
    expect(parseConfig(up, { DFGATE_UI_LISTEN: ':7000' }).uiListen).toEqual({
      host: '127.0.0.1',
      port: 7000,
    });
    expect(() => parseConfig([...up, '--ui-listen', 'nope'], {})).toThrow(
      /--ui-listen must be HOST:PORT/,
    );
  });
});

describe('login and sessions', () => {
  it('a wrong password gets a clear error and no session; repeated failures are rate-limited', async () => {
    const r = await fetch(`${base}/api/login`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ role: bob.name, password: 'wrong' }),
    });
    expect(r.status).toBe(401);
    expect(r.headers.get('set-cookie')).toBeNull();
    expect(await r.json()).toMatchObject({ error: 'wrong role or password' });
    for (let i = 0; i < 2; i++)
      await api(undefined, 'POST', '/api/login', { role: bob.name, password: 'wrong' });
    const limited = await api(undefined, 'POST', '/api/login', {
      role: bob.name,
      password: bob.password,
    });
    expect(limited.status).toBe(429);
    expect(Number(limited.headers.get('retry-after'))).toBeGreaterThan(0);
  });

  it('sets an HttpOnly SameSite=Strict cookie, keeps the session server-side, and logs out', async () => {
    const r = await fetch(`${base}/api/login`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ role: alice.name, password: alice.password }),
    });
    const cookie = r.headers.get('set-cookie') ?? '';
    expect(cookie).toMatch(
      /^dfgate_session=[A-Za-z0-9_-]{43}; Path=\/; HttpOnly; SameSite=Strict$/,
    );
    const b = {
      cookie: cookie.split(';')[0] as string,
      csrf: ((await r.json()) as { csrf: string }).csrf,
    };
    expect((await api(b, 'GET', '/api/session')).body).toMatchObject({
      role: alice.name,
      usage: true,
    });
    expect((await api(b, 'POST', '/api/logout', {})).status).toBe(200);
    expect((await api(b, 'GET', '/api/session')).status).toBe(401);
    expect((await api(b, 'GET', '/api/instances')).status).toBe(401);
  });

  it('a role without df.grant_usage logs in but is told it has no access', async () => {
    const b = await login(carol);
    expect((await api(b, 'GET', '/api/session')).body).toMatchObject({ usage: false });
    const r = await api(b, 'GET', '/api/instances');
    expect(r.status).toBe(403);
    expect(r.body['code']).toBe('no_usage');
  });
});

describe('as a role, under row-level security', () => {
  it('a console query that waits past the 15 s statement timeout ends with 57014', async () => {
    const a = await db.connect(alice.url);
    const id = (await a.query(`SELECT df.start(df.wait_for_signal('never', 3600)) AS id`)).rows[0]
      .id as string;
    await a.end();
    // another session holds the instance's row: df.cancel waits for it
    const holder = await db.connect(db.url);
    await holder.query('BEGIN');
    await holder.query(`SELECT 1 FROM df.instances WHERE id = $1 FOR UPDATE`, [id]);
    try {
      const b = await login(alice);
      const r = await api(b, 'POST', `/api/instances/${id}/cancel`, {});
      expect(r.status).not.toBe(200);
      expect(r.body['code']).toBe('57014');
    } finally {
      await holder.query('ROLLBACK');
      await holder.end();
    }
  }, 60_000);

  it('an instance written by hand whose nodes are not a tree: its page answers at once', async () => {
    // each THEN names the next as both children (migration 0040): shown, not walked
    const a = await db.connect(alice.url);
    const id = 'f0f0f0f0';
    await a.query('BEGIN');
    await a.query(`INSERT INTO df.instances (id, root_node) VALUES ($1, 'f1000000')`, [id]);
    await a.query(
      `INSERT INTO df.nodes (instance_id, id, node_type, left_node, right_node)
       SELECT $1, to_hex(x'f1000000'::int + g), 'THEN', to_hex(x'f1000000'::int + g + 1), to_hex(x'f1000000'::int + g + 1)
         FROM generate_series(0, 39) g`,
      [id],
    );
    await a.query(
      `INSERT INTO df.nodes (instance_id, id, node_type, query) VALUES ($1, 'f1000028', 'SQL', 'SELECT 1')`,
      [id],
    );
    await a.query('COMMIT');
    await a.end();
    const b = await login(alice);
    const detail = await api(b, 'GET', `/api/instances/${id}`);
    expect(detail.status).toBe(200);
    expect(String(detail.body['explain'])).toContain('its nodes do not form one tree');
  });

  it("lists only the role's instances; another role's id answers 404, page and API", async () => {
    const a = await db.connect(alice.url);
    const bc = await db.connect(bob.url);
    const mine = (await a.query(`SELECT df.start('SELECT 1', 'mine') AS id`)).rows[0].id as string;
    const theirs = (await bc.query(`SELECT df.start('SELECT 2', 'theirs') AS id`)).rows[0]
      .id as string;
    const b = await login(alice);
    const list = await api(b, 'GET', '/api/instances');
    const ids = (list.body['rows'] as Array<{ id: string }>).map((r) => r.id);
    expect(ids).toContain(mine);
    expect(ids).not.toContain(theirs);
    expect((await api(b, 'GET', `/api/instances/${theirs}`)).status).toBe(404);
    expect((await api(b, 'GET', `/api/instances/${mine}`)).status).toBe(200);
    const page = await fetch(`${base}/instances/${theirs}`, { headers: { Cookie: b.cookie } });
    expect(page.status).toBe(404);
    expect(
      (await fetch(`${base}/instances/${mine}`, { headers: { Cookie: b.cookie } })).status,
    ).toBe(200);
    expect((await api(b, 'POST', `/api/instances/${theirs}/cancel`, {})).status).toBe(404);
    expect(await finished(bc, theirs)).toMatchObject({ status: 'completed' });
  });

  it('refuses writes without the CSRF token or from another origin', async () => {
    const b = await login(alice);
    const src = { source: `'SELECT 1'` };
    expect((await api(b, 'POST', '/api/start', src, { 'X-CSRF-Token': 'nope' })).status).toBe(403);
    expect(
      (await api(b, 'POST', '/api/start', src, { Origin: 'http://evil.example' })).status,
    ).toBe(403);
    expect(
      (await api(b, 'POST', '/api/start', src, { 'Sec-Fetch-Site': 'cross-site' })).status,
    ).toBe(403);
    // without TLS the console's origin is http://; https:// is another origin (ui-tls.test.ts: the reverse)
    const check = { source: `'SELECT 1'` };
    expect((await api(b, 'POST', '/api/check', check, { Origin: base })).status).toBe(200);
    expect(
      (await api(b, 'POST', '/api/check', check, { Origin: `https://127.0.0.1:${ui.port}` }))
        .status,
    ).toBe(403);
    expect((await api(b, 'POST', '/api/start', src, { 'Content-Type': 'text/plain' })).status).toBe(
      415,
    );
  });

  it('checks DSL with positions, starts, signals and cancels as the role', async () => {
    const b = await login(alice);
    const bad = await api(b, 'POST', '/api/check', { source: `'SELECT 1'\n  ~> df.nope(1)` });
    expect(bad.body).toEqual({
      ok: false,
      error: { line: 2, column: 6, message: 'function df.nope() does not exist' },
    });
    const syntax = await api(b, 'POST', '/api/check', { source: `'SELECT 1' ~> (` });
    expect(syntax.body).toMatchObject({ ok: false, error: { line: 1, column: 15 } });
    const good = await api(b, 'POST', '/api/check', { source: `'SELECT 1' ~> 'SELECT 2'` });
    expect(good.body).toMatchObject({ ok: true });
    const started = await api(b, 'POST', '/api/start', {
      source: `df.wait_for_signal('go', 3600) |=> 'g' ~> 'SELECT $g AS got'`,
      label: 'ui-signal',
    });
    expect(started.status).toBe(200);
    const id = started.body['id'] as string;
    const a = await db.connect(alice.url);
    expect(
      (await a.query(`SELECT submitted_by::text AS r, label FROM df.instances WHERE id = $1`, [id]))
        .rows[0],
    ).toEqual({ r: alice.name, label: 'ui-signal' });
    const badPayload = await api(b, 'POST', `/api/instances/${id}/signal`, {
      name: 'go',
      payload: '{',
    });
    expect(badPayload.status).toBe(400);
    const sig = await api(b, 'POST', `/api/instances/${id}/signal`, {
      name: 'go',
      payload: '{"ok":true}',
    });
    expect(sig.status).toBe(200);
    expect(await finished(a, id)).toMatchObject({ status: 'completed' });
    const detail = await api(b, 'GET', `/api/instances/${id}`);
    expect((detail.body['signals'] as Array<{ name: string }>)[0]).toMatchObject({
      name: 'go',
      sent_by: alice.name,
    });
    expect(String(detail.body['explain'])).toContain(`Instance: ${id}`);
    const again = await api(b, 'POST', `/api/instances/${id}/signal`, {
      name: 'go',
      payload: '{}',
    });
    expect(again.status).toBe(409);

    const loop = await api(b, 'POST', '/api/start', { source: `@> df.sleep(0.05)` });
    const lid = loop.body['id'] as string;
    const c = await api(b, 'POST', `/api/instances/${lid}/cancel`, {});
    expect(c.body['message']).toMatch(new RegExp(`^Instance ${lid} cancelled`));
    expect(await finished(a, lid)).toMatchObject({ status: 'cancelled' });
  });

  it('serves pages with a CSP without unsafe-inline and no inline script', async () => {
    const r = await fetch(`${base}/instances`);
    const csp = r.headers.get('content-security-policy') ?? '';
    expect(csp).toContain("script-src 'self'");
    expect(csp).not.toContain('unsafe-inline');
    expect(r.headers.get('x-content-type-options')).toBe('nosniff');
    expect(r.headers.get('strict-transport-security')).toBeNull(); // HSTS only under TLS
    const html = await r.text();
    expect(html).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/);
    expect(html).not.toMatch(/\son[a-z]+=/i);
  });
});

describe('live updates', () => {
  it("one LISTEN per process; a role's stream gets its own changes only", async () => {
    const a = await login(alice);
    const b = await login(dave);
    const open = async (br: Browser): Promise<{ events: string[]; stop: () => void }> => {
      const ac = new AbortController();
      const r = await fetch(`${base}/api/events`, {
        headers: { Cookie: br.cookie },
        signal: ac.signal,
      });
      const events: string[] = [];
      const reader = (r.body as ReadableStream<Uint8Array>).getReader();
      void (async () => {
        const dec = new TextDecoder();
        try {
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            events.push(dec.decode(value));
          }
        } catch {
          // aborted
        }
      })();
      return { events, stop: () => ac.abort() };
    };
    const sa = await open(a);
    const sb = await open(b);
    const listeners = await db.admin.query(
      `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'dfgate:ui-listen'`,
    );
    expect(listeners.rows[0].n).toBe(1);
    const ac = await db.connect(alice.url);
    const id = (await ac.query(`SELECT df.start('SELECT 1', 'live') AS id`)).rows[0].id as string;
    await finished(ac, id);
    const deadline = Date.now() + 5000;
    while (!sa.events.join('').includes(id) && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 50));
    expect(sa.events.join('')).toContain(id);
    expect(sb.events.join('')).not.toContain(id);
    sa.stop();
    sb.stop();
  });
});

describe('change notifications', () => {
  it('a role that listens on dfgate_ui hears instance ids, never whose they are', async () => {
    const spy = await db.connect(dave.url);
    const heard: string[] = [];
    spy.on('notification', (n) => {
      if (n.channel === 'dfgate_ui') heard.push(n.payload ?? '');
    });
    await spy.query('LISTEN dfgate_ui');
    const ac = await db.connect(alice.url);
    const id = (
      await ac.query(`SELECT df.start(df.wait_for_signal('go') ~> 'SELECT 1', 'heard') AS id`)
    ).rows[0].id as string;
    await ac.query(`SELECT df.signal($1, 'go')`, [id]);
    await finished(ac, id);
    const deadline = Date.now() + 5000;
    while (!heard.join('').includes(id) && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 50));
    expect(heard.join('')).toContain(id);
    for (const p of heard) {
      expect(Object.keys(JSON.parse(p) as object)).toEqual(['i']);
      expect(p).not.toContain(alice.name);
    }
    await spy.end();
    await ac.end();
  });
});

describe('keyset pages over 100,000 instances', () => {
  it('answers a page, a deep page and filtered pages in under 100 ms server-side', async () => {
    await db.admin.query(`SET session_replication_role = replica`); // no triggers: bulk fixture
    await db.admin.query(
      `INSERT INTO df.instances (id, label, root_node, submitted_by, status, created_at)
       SELECT lpad(to_hex(i), 8, '0'), 'bulk-' || (i % 10), lpad(to_hex(i), 8, '0'), $1::regrole,
              (ARRAY['completed','failed','cancelled','running','pending'])[1 + i % 5],
              now() - make_interval(secs => i)
         FROM generate_series(1, 100000) AS i`,
      [alice.name],
    );
    await db.admin.query(
      `INSERT INTO df.nodes (id, instance_id, node_type, query, submitted_by)
       SELECT lpad(to_hex(i), 8, '0'), lpad(to_hex(i), 8, '0'), 'SQL', 'SELECT 1', $1::regrole
         FROM generate_series(1, 100000) AS i`,
      [alice.name],
    );
    await db.admin.query(`SET session_replication_role = origin`);
    await db.admin.query(`ANALYZE df.instances`);
    const b = await login(alice);
    const timing = (h: Headers): number =>
      Number(/dur=([\d.]+)/.exec(h.get('server-timing') ?? '')?.[1]);
    let r = await api(b, 'GET', '/api/instances');
    let next = r.body['next'] as string;
    for (let i = 0; i < 20; i++) {
      r = await api(b, 'GET', `/api/instances?after=${next}`);
      next = r.body['next'] as string;
    }
    expect((r.body['rows'] as unknown[]).length).toBe(50);
    expect(timing(r.headers)).toBeLessThan(100);
    const counts = (await api(b, 'GET', '/api/counts')).body as Record<string, number>;
    expect(Object.values(counts).reduce((x, y) => x + y, 0)).toBeGreaterThanOrEqual(100000);
    expect((await api(b, 'GET', '/api/counts?label=bulk-3')).body).toEqual({
      pending: 0,
      running: 10000,
      completed: 0,
      failed: 0,
      cancelled: 0,
    });
    for (const q of ['status=failed', 'label=bulk-3', 'id=000f', 'status=running&label=bulk-3']) {
      const f = await api(b, 'GET', `/api/instances?${q}`);
      expect(f.status).toBe(200);
      expect(timing(f.headers)).toBeLessThan(100);
      const more = await api(b, 'GET', `/api/instances?${q}&after=${f.body['next'] as string}`);
      if (f.body['next']) expect(timing(more.headers)).toBeLessThan(100);
    }
    // pages do not overlap and keep the order
    const p1 = await api(b, 'GET', '/api/instances?label=bulk-3');
    const p2 = await api(
      b,
      'GET',
      `/api/instances?label=bulk-3&after=${p1.body['next'] as string}`,
    );
    const ids1 = (p1.body['rows'] as Array<{ id: string }>).map((x) => x.id);
    const ids2 = (p2.body['rows'] as Array<{ id: string }>).map((x) => x.id);
    expect(ids1.filter((x) => ids2.includes(x))).toEqual([]);
  });
});
