/**
 * What one tenant's console requests may cost the process every tenant
 * shares (a hostile review): an instance page reads at most 64 KiB of each
 * text and refuses an instance too large to show; logins are counted before
 * the database answers them and a NUL never reaches the startup packet; a
 * client's malformed path or over-nested expression is its own error (400),
 * not an internal one.
 */
import http from 'node:http';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { FIELD_MAX } from '../../src/ui/queries.js';
import { startUi, type UiServer } from '../../src/ui/server.js';

const db = useTestDatabase();
const uis: UiServer[] = [];
let mallory: TestRole;
let bob: TestRole;
let alice: TestRole;

beforeAll(async () => {
  mallory = await db.role('mallory');
  bob = await db.role('bob');
  alice = await db.role('alice');
});

afterAll(async () => {
  await Promise.all(uis.map((u) => u.close()));
});

/** A console of its own (default limits: 5 failed logins per role a minute, 20 per address). */
async function freshUi(): Promise<string> {
  const ui = await startUi({
    listen: { host: '127.0.0.1', port: 0 },
    upstream: db.url,
    log: pino({ level: process.env['DFGATE_TEST_LOG'] ?? 'silent' }),
  });
  uis.push(ui);
  return `http://127.0.0.1:${ui.port}`;
}

const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });

/** POST /api/login, on a connection of its own. */
function login(
  base: string,
  role: string,
  password: string,
): Promise<{ status: number; cookie: string; csrf: string }> {
  const body = JSON.stringify({ role, password });
  return new Promise((resolve, reject) => {
    const req = http.request(
      `${base}/api/login`,
      {
        method: 'POST',
        agent,
        headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) },
      },
      (res) => {
        let text = '';
        res.on('data', (d: Buffer) => (text += d.toString()));
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            cookie: String(res.headers['set-cookie'] ?? '').split(';')[0] ?? '',
            csrf: res.statusCode === 200 ? ((JSON.parse(text) as { csrf: string }).csrf ?? '') : '',
          }),
        );
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

/** A hand-written instance of `nodes` SQL nodes, each with a query of `chars` characters. */
async function handWritten(
  role: TestRole,
  id: string,
  nodes: number,
  chars: number,
): Promise<void> {
  const c = await db.connect(role.url);
  await c.query('BEGIN');
  await c.query(`INSERT INTO df.instances (id, root_node, label) VALUES ($1, '00000000', 'big')`, [
    id,
  ]);
  await c.query(
    `INSERT INTO df.nodes (instance_id, id, node_type, query)
     SELECT $1, lpad(to_hex(x), 8, '0'), 'SQL', 'SELECT 1 -- ' || repeat('x', $3)
       FROM generate_series(0, $2 - 1) x`,
    [id, nodes, chars],
  );
  await c.query('COMMIT');
}

describe('an instance page', () => {
  it('reads at most 64 KiB of each text: 25 nodes of 9 MB each come back as 1.6 MB', async () => {
    const base = await freshUi();
    await handWritten(mallory, 'dead0001', 25, 9 * 1024 * 1024);
    const s = await login(base, mallory.name, mallory.password);
    expect(s.status).toBe(200);
    const res = await fetch(`${base}/api/instances/dead0001`, { headers: { Cookie: s.cookie } });
    const text = await res.text();
    expect(res.status).toBe(200);
    // read whole, the page was 236 MB of JSON (dfgate at 3.7 GB with four views at once)
    expect(text.length).toBeLessThan(4 * 1024 * 1024);
    const page = JSON.parse(text) as { nodes: Array<{ query: string; substituted: unknown }> };
    expect(page.nodes).toHaveLength(25);
    for (const n of page.nodes) {
      expect(n.query.length).toBe(FIELD_MAX);
      expect(n.substituted).toBeNull();
    }
  }, 120_000);

  it('refuses an instance too large to show even cut (413), without reading it', async () => {
    const base = await freshUi();
    // 300 nodes of 70 kB: 19 MB of text cut at 64 KiB each, past the 16 Mi characters a page shows
    await handWritten(mallory, 'dead0002', 300, 70_000);
    const s = await login(base, mallory.name, mallory.password);
    const res = await fetch(`${base}/api/instances/dead0002`, { headers: { Cookie: s.cookie } });
    expect(res.status).toBe(413);
    expect(((await res.json()) as { error: string }).error).toMatch(
      /^instance dead0002 is too large to show here \(300 nodes, \d+ characters of step text, results and errors\); read it with df\.instance_nodes$/,
    );
  }, 120_000);
});

describe('console logins', () => {
  it('150 wrong passwords at once for one role: 5 reach the database, the rest get 429', async () => {
    const base = await freshUi();
    const answers = await Promise.all(
      Array.from({ length: 150 }, (_, i) => login(base, bob.name, `wrong-${i}`)),
    );
    const tally: Record<number, number> = {};
    for (const a of answers) tally[a.status] = (tally[a.status] ?? 0) + 1;
    // counted after the database answered, 24 were checked (more than the address's 20)
    expect(tally).toEqual({ 401: 5, 429: 145 });
  }, 60_000);

  it('a role name with a NUL is refused (400): no second limiter key, no parameters smuggled', async () => {
    const base = await freshUi();
    for (let i = 0; i < 5; i++)
      expect((await login(base, alice.name, `wrong-${i}`)).status).toBe(401);
    expect((await login(base, alice.name, alice.password)).status).toBe(429);
    const forged = `${alice.name}\u0000application_name\u0000x`;
    expect((await login(base, forged, alice.password)).status).toBe(400);
    expect((await login(base, alice.name, `${alice.password}\u0000`)).status).toBe(400);
  }, 60_000);
});

describe("a client's own mistakes", () => {
  it('a malformed %-escape in a path is 400, not an internal error', async () => {
    const base = await freshUi();
    const s = await login(base, mallory.name, mallory.password);
    for (const p of [
      '/api/instances/%E0%A4%A',
      '/instances/%ZZ',
      '/api/instances/%E0%A4%A/cancel',
    ]) {
      const res = await fetch(`${base}${p}`, { headers: { Cookie: s.cookie } });
      expect(res.status, p).toBe(400);
    }
  });

  it('an expression nested past the stack is a check error, not an internal one', async () => {
    const base = await freshUi();
    const s = await login(base, mallory.name, mallory.password);
    const source = ('('.repeat(120_000) + "'SELECT 1'" + ')'.repeat(120_000)).slice(
      0,
      256 * 1024 - 10,
    );
    const res = await fetch(`${base}/api/check`, {
      method: 'POST',
      headers: { Cookie: s.cookie, 'Content-Type': 'application/json', 'X-CSRF-Token': s.csrf },
      body: JSON.stringify({ source }),
    });
    expect(res.status).toBe(200);
    expect(((await res.json()) as { ok: boolean; error?: string }).ok).toBe(false);
  });
});
