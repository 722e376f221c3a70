/** Executor operations: slot and step timeouts, dfgate roles, the proxy's in-process wake, a PostgreSQL restart mid-run. */
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { Executor } from '../../src/executor/executor.js';
import { embeddedBinDir, startCluster } from '../../src/pg/cluster.js';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { startTestProxy, viaPort } from '../harness/dfgate.js';
import { finished, startTestExecutor } from '../harness/executor.js';

const db = useTestDatabase();
let role: TestRole;
let c: pg.Client;

beforeAll(async () => {
  role = await db.role('ops');
  c = await db.connect(role.url);
});

async function nodeError(id: string): Promise<string> {
  const r = await c.query(
    `SELECT result #>> '{}' AS e FROM df.nodes WHERE instance_id = $1 AND status = 'failed' AND node_type = 'SQL'`,
    [id],
  );
  return r.rows[0]?.e ?? '';
}

describe('limits', () => {
  it('a step that waits too long for a slot fails with the spec message; --step-timeout cancels long statements', async () => {
    const ex = await startTestExecutor(db.url, {
      maxConcurrentSteps: 1,
      slotTimeoutMs: 300,
      stepTimeoutMs: 1500,
    });
    const slow = (await c.query(`SELECT df.start('SELECT pg_sleep(1)') AS id`)).rows[0].id;
    await new Promise((r) => setTimeout(r, 100));
    // more roles want a slot than there are slots: the role that got none fails after the timeout
    const other = await db.connect((await db.role('ops_other')).url);
    const starved = (await other.query(`SELECT df.start('SELECT 1') AS id`)).rows[0].id;
    // a step of the role holding the slot queues behind it instead (docs/executor.md, "Fairness")
    const queued = (await c.query(`SELECT df.start('SELECT 1') AS id`)).rows[0].id;
    expect((await finished(other, starved)).status).toBe('failed');
    expect(
      (
        await other.query(
          `SELECT result #>> '{}' AS e FROM df.nodes WHERE instance_id = $1 AND status = 'failed'`,
          [starved],
        )
      ).rows[0]?.e,
    ).toBe(
      'pg_durable: connection limit reached (max_user_connections=1). Timed out after 0s waiting for an available execution slot.',
    );
    expect((await finished(c, slow)).status).toBe('completed');
    expect((await finished(c, queued)).status).toBe('completed');
    const tooLong = (await c.query(`SELECT df.start('SELECT pg_sleep(5)') AS id`)).rows[0].id;
    expect((await finished(c, tooLong)).status).toBe('failed');
    expect(await nodeError(tooLong)).toContain('canceling statement due to statement timeout');
    await ex.stop();
  });
});

describe('dfgate roles', () => {
  it('prints the SQL that provisions every granted role’s step login (verifiers only)', async () => {
    const cli = path.resolve('dist/src/cli.js');
    const noSecret = spawnSync(process.execPath, [cli, 'roles', '--upstream', db.url], {
      encoding: 'utf8',
      env: { ...process.env, DFGATE_STEP_SECRET: '' },
    });
    expect(noSecret.status).toBe(2);
    const r = spawnSync(process.execPath, [cli, 'roles', '--upstream', db.url], {
      encoding: 'utf8',
      env: { ...process.env, DFGATE_STEP_SECRET: 'roles-secret' },
    });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain(`GRANT "${role.name}" TO "dfgate_step_`);
    expect(r.stdout).toMatch(/PASSWORD 'SCRAM-SHA-256\$4096:/);
    expect(r.stdout).not.toContain('roles-secret');
    await db.admin.query(r.stdout);
    // the printed logins work for an executor using the same secret
    const ex = await startTestExecutor(db.url, { stepSecret: 'roles-secret' });
    const id = (await c.query(`SELECT df.start('SELECT current_user AS u') AS id`)).rows[0].id;
    expect((await finished(c, id)).result).toBe(
      `{"rows": [{"u": "${role.name}"}], "row_count": 1}`,
    );
    await ex.stop();
  });
});

describe('logs', () => {
  it('a failed instance is logged at info, a completed one only at debug (docs/operations.md)', async () => {
    const lines = async (level: 'info' | 'debug'): Promise<Array<Record<string, unknown>>> => {
      const out: string[] = [];
      const dest = { write: (s: string) => void out.push(s) };
      const ex = await startTestExecutor(db.url, { log: pino({ level }, dest) });
      const ok = (await c.query(`SELECT df.start('SELECT 1') AS id`)).rows[0].id;
      const bad = (await c.query(`SELECT df.start('SELECT 1/0') AS id`)).rows[0].id;
      expect((await finished(c, ok)).status).toBe('completed');
      expect((await finished(c, bad)).status).toBe('failed');
      await ex.stop();
      return out
        .map((l) => JSON.parse(l) as Record<string, unknown>)
        .filter((l) => l['msg'] === 'instance finished' && [ok, bad].includes(l['instance']))
        .map(({ level: n, instance, status }) => ({ level: n, ok: instance === ok, status }));
    };
    expect(await lines('info')).toEqual([{ level: 30, ok: false, status: 'failed' }]);
    expect(await lines('debug')).toEqual(
      expect.arrayContaining([
        { level: 30, ok: false, status: 'failed' },
        { level: 20, ok: true, status: 'completed' },
      ]),
    );
  });
});

describe('the proxy wakes the executor in-process', () => {
  it('after a transaction that mentioned df.* ends, not before', async () => {
    let wakes = 0;
    const proxy = await startTestProxy(db.url, { onDfCommit: () => wakes++ });
    const p = await db.connect(viaPort(role.url, proxy.port));
    await p.query('SELECT 1');
    expect(wakes).toBe(0);
    await p.query('BEGIN');
    await p.query(`SELECT df.start('SELECT 1')`);
    await p.query('SELECT 2');
    expect(wakes).toBe(0);
    await p.query('COMMIT');
    expect(wakes).toBe(1);
    const st = await p.query({ text: `SELECT "df".status($1) AS s`, values: ['00000000'] });
    expect(st.rows).toEqual([{ s: null }]);
    expect(wakes).toBe(2);
  });
});

describe('PostgreSQL restarted mid-run', () => {
  const base = mkdtempSync(path.join(tmpdir(), 'dfgate-restart-'));
  chmodSync(base, 0o755);
  afterAll(() => rmSync(base, { recursive: true, force: true }));

  it('the executor reconnects and every instance completes, each step exactly once', async () => {
    const binDir = inject('pgBinDir') || (await embeddedBinDir());
    let cluster = await startCluster({
      baseDir: base,
      binDir,
      password: 'restart-pw',
      settings: { fsync: 'off' },
    });
    const port = cluster.port;
    const admin = new pg.Client({ connectionString: cluster.url() });
    await admin.connect();
    const { migrate } = await import('../../src/db/migrate.js');
    await migrate(admin);
    await admin.query(
      `CREATE ROLE r_user LOGIN PASSWORD 'r-pw'; GRANT CREATE ON SCHEMA public TO r_user; SET client_min_messages = warning; SELECT df.grant_usage('r_user')`,
    );
    await admin.end();
    const userUrl = `postgres://r_user:r-pw@127.0.0.1:${port}/postgres`;
    let u = new pg.Client({ connectionString: userUrl });
    await u.connect();
    await u.query(`CREATE TABLE effects (instance text, step int)`);
    const graph = Array.from(
      { length: 10 },
      (_, k) => `'INSERT INTO effects SELECT ''{sys_instance_id}'', ${k} FROM pg_sleep(0.02)'`,
    ).join(' ~> ');
    const ids: string[] = (
      await u.query(`SELECT df.start(${graph}) AS id FROM generate_series(1, 20)`)
    ).rows.map((r) => r.id);
    await u.end();
    const ex = new Executor({
      controlUrl: cluster.url(),
      log: pino({ level: 'silent' }),
      stepAuth: 'login',
      stepSecret: 'restart-secret',
      leaseMs: 2000,
      pollMs: 200,
      maxConcurrentSteps: 8,
      maxConcurrentInstances: 64,
      maxLoopIterations: 100_000,
    });
    await ex.start();
    await new Promise((r) => setTimeout(r, 700));
    await cluster.stop();
    await new Promise((r) => setTimeout(r, 500));
    cluster = await startCluster({
      baseDir: base,
      binDir,
      password: 'restart-pw',
      port,
      settings: { fsync: 'off' },
    });
    u = new pg.Client({ connectionString: userUrl });
    await u.connect();
    const deadline = Date.now() + 90_000;
    for (;;) {
      const n = (
        await u.query(`SELECT count(*)::int AS n FROM df.instances WHERE status = 'completed'`)
      ).rows[0].n;
      if (n === ids.length) break;
      if (Date.now() > deadline)
        throw new Error(`only ${n} of ${ids.length} completed after the restart`);
      await new Promise((r) => setTimeout(r, 200));
    }
    const bad = (
      await u.query(
        `SELECT instance, count(*)::int AS n FROM effects GROUP BY 1 HAVING count(*) <> 10 OR count(DISTINCT step) <> 10`,
      )
    ).rows;
    expect(bad).toEqual([]);
    expect(
      (await u.query(`SELECT count(DISTINCT instance)::int AS n FROM effects`)).rows[0].n,
    ).toBe(20);
    await u.end();
    await ex.stop();
    await cluster.stop();
  }, 180_000);
});
