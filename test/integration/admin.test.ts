/** The admin HTTP port: /healthz, /readyz and /metrics of a dfgate process and of an in-process executor. */
import pino from 'pino';
import { beforeAll, describe, expect, it } from 'vitest';
import { startAdmin } from '../../src/admin.js';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { spawnDfgate, viaPort, type DfgateProcess } from '../harness/dfgate.js';
import { finished, startTestExecutor } from '../harness/executor.js';

const db = useTestDatabase();
let role: TestRole;

beforeAll(async () => {
  role = await db.role('admin');
});

async function adminPort(d: DfgateProcess): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const m = /"component":"admin"[^\n]*"listen":"127\.0\.0\.1:(\d+)"/.exec(d.output());
    if (m) return Number(m[1]);
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no admin port in:\n${d.output()}`);
}

const get = (port: number, path: string, method = 'GET'): Promise<Response> =>
  fetch(`http://127.0.0.1:${port}${path}`, { method });

/** One sample of a metric (labels as written), or undefined. */
function sample(text: string, name: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line === undefined ? undefined : Number(line.slice(name.length + 1));
}

describe('the admin port of a dfgate process', () => {
  it('answers /healthz, /readyz and /metrics; counts what the proxy did', async () => {
    const d = await spawnDfgate([
      '--upstream',
      `${db.url}?sslmode=disable`,
      '--no-migrate',
      '--no-executor',
      '--admin-listen',
      '127.0.0.1:0',
    ]);
    const port = await adminPort(d);
    const h = await get(port, '/healthz');
    expect([h.status, await h.text()]).toEqual([200, 'ok\n']);
    const r = await get(port, '/readyz');
    expect(r.status).toBe(200);
    expect(await r.json()).toEqual({ ready: true, checks: { proxy: 'ok', upstream: 'ok' } });
    const c = await db.connect(viaPort(role.url, d.port));
    await c.query('BEGIN');
    await c.query(`SELECT df.start('SELECT 1' ~> 'SELECT 2')`); // rolled back: nothing left to run
    await c.query('ROLLBACK');
    await expect(c.query(`SELECT df.start(df.slep(1))`)).rejects.toMatchObject({ code: '42883' });
    const m = await get(port, '/metrics');
    expect(m.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await m.text();
    expect(text).toContain('# TYPE dfgate_edge_rewrites_total counter');
    expect(sample(text, 'dfgate_edge_rewrites_total')).toBe(1);
    // the edge leaves a call it cannot compile to the database, which raises its own error
    expect(sample(text, 'dfgate_edge_refusals_total{code="42883"}')).toBeUndefined();
    expect(sample(text, 'dfgate_client_connections_total')).toBe(1);
    expect(sample(text, 'dfgate_client_sessions')).toBe(1);
    expect(sample(text, 'dfgate_up')).toBe(1);
    expect(sample(text, 'process_resident_memory_bytes')).toBeGreaterThan(1_000_000);
    await c.end();
    expect((await get(port, '/metrics', 'POST')).status).toBe(405);
    expect((await get(port, '/nope')).status).toBe(404);
    expect(await d.stop()).toBe(0);
  });

  it('/readyz is 503 and names the problem when the upstream does not answer', async () => {
    const d = await spawnDfgate([
      '--upstream',
      'postgres://nobody@127.0.0.1:1/nowhere',
      '--no-migrate',
      '--no-executor',
      '--admin-listen',
      '127.0.0.1:0',
    ]);
    const r = await get(await adminPort(d), '/readyz');
    expect(r.status).toBe(503);
    const body = (await r.json()) as { ready: boolean; checks: Record<string, string> };
    expect(body.ready).toBe(false);
    expect(body.checks['upstream']).toMatch(/^unreachable: .*ECONNREFUSED/);
    await d.stop();
  });

  it('/readyz requests at the same moment share one upstream probe (the port has no login)', async () => {
    const d = await spawnDfgate([
      '--upstream',
      `${db.url}?sslmode=disable`,
      '--no-migrate',
      '--no-executor',
      '--admin-listen',
      '127.0.0.1:0',
    ]);
    const port = await adminPort(d);
    // sessions established to this test's database, as PostgreSQL counts them at their end
    const sessions = async (): Promise<number> => {
      await db.admin.query('SELECT pg_stat_clear_snapshot()');
      const r = await db.admin.query<{ n: string }>(
        'SELECT sessions::text AS n FROM pg_stat_database WHERE datname = current_database()',
      );
      return Number(r.rows[0]?.n);
    };
    const before = await sessions();
    const answers = await Promise.all(Array.from({ length: 100 }, () => get(port, '/readyz')));
    expect(answers.map((r) => r.status)).toEqual(answers.map(() => 200));
    await d.stop();
    await new Promise((r) => setTimeout(r, 1500));
    // one probe per request opened 100 connections (600 at once took every slot of the server)
    expect((await sessions()) - before).toBeLessThanOrEqual(3);
  });
});

describe('the admin port with an executor', () => {
  it('reports the executor ready and counts finished steps and instances', async () => {
    const ex = await startTestExecutor(db.url);
    const admin = await startAdmin(
      { host: '127.0.0.1', port: 0 },
      { upstream: db.url, executor: ex },
      pino({ level: 'silent' }),
    );
    const before = await (await get(admin.port, '/metrics')).text();
    const c = await db.connect(role.url);
    const id = (await c.query(`SELECT df.start('SELECT 1' ~> 'SELECT 2') AS id`)).rows[0].id;
    expect((await finished(c, id)).status).toBe('completed');
    const after = await (await get(admin.port, '/metrics')).text();
    const done = (t: string): number =>
      sample(t, 'dfgate_executor_steps_total{outcome="done"}') ?? 0;
    expect(done(after) - done(before)).toBe(2);
    const completed = (t: string): number =>
      sample(t, 'dfgate_executor_instances_finished_total{status="completed"}') ?? 0;
    expect(completed(after) - completed(before)).toBe(1);
    expect(await (await get(admin.port, '/readyz')).json()).toEqual({
      ready: true,
      checks: { executor: 'ok', upstream: 'ok' },
    });
    await c.end();
    await admin.close();
  });
});
