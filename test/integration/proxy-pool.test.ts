/**
 * Transaction pooling (--pool-mode transaction) with real clients: node-postgres
 * (named prepared statements included), psql and pgbench through a pool of 10,
 * never more than 10 server connections (sampled in pg_stat_activity); a client
 * killed mid-transaction; cancels; settings; refusals; pool exhaustion.
 */
import { spawn, spawnSync } from 'node:child_process';
import net from 'node:net';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeFrontend } from '../../src/proxy/protocol/frontend.js';
import type { ProxyServer } from '../../src/proxy/server.js';
import { clientBin } from '../harness/bins.js';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { startTestProxy, viaPort } from '../harness/dfgate.js';
import { errorOf, loggedIn } from '../harness/wire.js';

const db = useTestDatabase();
let app: TestRole;
let trust: TestRole;
let proxy: ProxyServer;
let url: string;
/** Highest number of server connections of the test roles seen so far. */
let peak = 0;
let sampler: NodeJS.Timeout | undefined;

beforeAll(async () => {
  app = await db.role('app');
  trust = await db.role('trust', { grant: false });
  await db.admin.query(`GRANT dfgate_trust_logins TO ${trust.ident}`);
  await db.admin.query(`GRANT CREATE ON DATABASE ${db.name} TO ${app.ident}`);
  await db.admin.query(`CREATE TABLE pooled (id int, who text)`);
  await db.admin.query(`GRANT ALL ON pooled TO ${app.ident}, ${trust.ident}`);
  proxy = await startTestProxy(db.url, {
    poolMode: 'transaction',
    poolSize: 10,
    maxServerConnections: 10,
    poolTimeoutMs: 60_000,
  });
  url = viaPort(app.url, proxy.port);
  const watch = new pg.Client({ connectionString: db.url });
  watch.on('error', () => undefined);
  await watch.connect();
  let busy = false;
  sampler = setInterval(() => {
    if (busy) return;
    busy = true;
    watch
      .query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = $1`, [app.name])
      .then((r) => {
        peak = Math.max(peak, r.rows[0].n as number);
      })
      .catch(() => undefined)
      .finally(() => (busy = false));
  }, 10);
  afterAll(async () => {
    clearInterval(sampler);
    await watch.end();
  });
});

function run(
  bin: string,
  args: string[],
  env: NodeJS.ProcessEnv,
): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const child = spawn(bin, args, { env: { ...process.env, PAGER: '', ...env } });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 240_000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    });
    child.stdin.end('');
  });
}

function hasPsycopg2(): boolean {
  return (
    spawnSync('/usr/bin/python3', ['-c', 'import psycopg2'], { encoding: 'utf8' }).status === 0
  );
}

describe('transaction pooling with a pool of 10', () => {
  it('200 concurrent node-postgres clients with named prepared statements: 0 errors, at most 10 server connections', async () => {
    const clients = await Promise.all(
      Array.from({ length: 200 }, async (_, i) => {
        const c = new pg.Client({ connectionString: url, application_name: `pool-${i}` });
        await c.connect();
        return c;
      }),
    );
    const errors: unknown[] = [];
    await Promise.all(
      clients.map(async (c, i) => {
        try {
          for (let k = 0; k < 5; k++) {
            const r = await c.query({ name: 'plus', text: 'SELECT $1::int + 1 AS n', values: [i] });
            expect(r.rows[0].n).toBe(i + 1);
            await c.query('BEGIN');
            await c.query({
              name: 'ins',
              text: 'INSERT INTO pooled VALUES ($1, $2)',
              values: [i, 'x'],
            });
            const mine = await c.query({
              name: 'mine',
              text: 'SELECT count(*)::int AS n FROM pooled WHERE id = $1',
              values: [i],
            });
            expect(mine.rows[0].n).toBe(k + 1);
            await c.query('COMMIT');
            expect((await c.query('SHOW application_name')).rows[0].application_name).toBe(
              `pool-${i}`,
            );
          }
        } catch (err) {
          errors.push(err);
        }
      }),
    );
    await Promise.all(clients.map((c) => c.end()));
    expect(errors).toEqual([]);
    expect(peak).toBeGreaterThan(0);
    expect(peak).toBeLessThanOrEqual(10);
    const total = await db.admin.query('SELECT count(*)::int AS n FROM pooled');
    expect(total.rows[0].n).toBe(1000);
  }, 120_000);

  it('pgbench -M simple, extended and prepared with 100 clients: 0 errors, at most 10 server connections', async () => {
    const pgbench = clientBin('pgbench');
    const env = { PGPASSWORD: app.password };
    const init = await run(pgbench, ['-i', '-s', '1', '-q', app.url], env);
    expect(init.code, init.err).toBe(0);
    // pgbench -i connected directly: its backend may still be on its way out when pgbench has
    // exited, and the sampler counts every backend of the role (the pool's idle connections
    // carry the first test's application names, never pgbench's)
    for (let i = 0; i < 500; i++) {
      const left = await db.admin.query(
        `SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = $1 AND application_name = 'pgbench'`,
        [app.name],
      );
      if (left.rows[0].n === 0) break;
      await new Promise((res) => setTimeout(res, 20));
    }
    peak = 0;
    const u = new URL(url);
    const conn = ['-h', '127.0.0.1', '-p', u.port, '-U', app.name, db.name];
    for (const mode of ['simple', 'extended', 'prepared']) {
      // -M prepared prepares each statement synchronously (PQprepare) the first time, inside
      // its transaction: a thread that drives several clients then blocks on one of them while
      // the others hold every server connection, so that mode gets a thread per client
      const threads = mode === 'prepared' ? '100' : '4';
      const r = await run(
        pgbench,
        ['-M', mode, '-c', '100', '-j', threads, '-t', '20', ...conn],
        env,
      );
      expect(r.code, `${mode}: ${r.err}`).toBe(0);
      expect(r.out).toMatch(/number of failed transactions: 0 \(0\.000%\)/);
      expect(r.out).toContain('number of transactions actually processed: 2000/2000');
    }
    expect(peak).toBeLessThanOrEqual(10);
  }, 300_000);

  it('psql runs a multi-statement script', async () => {
    const r = await run(
      clientBin('psql'),
      [
        '-X',
        '-v',
        'ON_ERROR_STOP=1',
        '-At',
        '-d',
        url,
        '-c',
        'SELECT 1; SELECT 2',
        '-c',
        'BEGIN; SELECT 3; COMMIT',
      ],
      {},
    );
    expect(r.code, r.err).toBe(0);
    expect(r.out.trim().split('\n')).toEqual(['1', '2', 'BEGIN', '3', 'COMMIT']);
  });

  it.runIf(hasPsycopg2())(
    'psycopg2 (Debian python3-psycopg2): 50 threads, parameters, a named cursor, SET kept',
    async () => {
      const script = `
import sys, threading, psycopg2
dsn = sys.argv[1]
errors = []
def work(i):
    try:
        c = psycopg2.connect(dsn)
        cur = c.cursor()
        cur.execute("SET statement_timeout = '4321ms'")
        c.commit()
        for k in range(10):
            cur.execute("INSERT INTO pooled VALUES (%s, %s)", (10000 + i, 'py'))
            cur.execute("SELECT count(*) FROM pooled WHERE id = %s", (10000 + i,))
            assert cur.fetchone()[0] == k + 1
            c.commit()
            cur.execute("SHOW statement_timeout")
            assert cur.fetchone()[0] == '4321ms'
            c.commit()
        named = c.cursor(name='cur_%d' % i)
        named.execute("SELECT g FROM generate_series(1, 1000) g")
        assert sum(r[0] for r in named) == 500500
        named.close()
        c.commit()
        c.close()
    except Exception as e:
        errors.append(repr(e))
ts = [threading.Thread(target=work, args=(i,)) for i in range(50)]
for t in ts: t.start()
for t in ts: t.join()
print('errors', len(errors), errors[:3])
sys.exit(1 if errors else 0)
`;
      peak = 0;
      const r = await run('/usr/bin/python3', ['-c', script, url], {});
      expect(r.code, r.out + r.err).toBe(0);
      expect(r.out).toContain('errors 0');
      expect(peak).toBeLessThanOrEqual(10);
    },
    120_000,
  );

  it('carries SET and reported parameters to whichever connection a client gets', async () => {
    const a = await db.connect(url);
    const b = await db.connect(url);
    await a.query(`SET statement_timeout = '1234ms'`);
    await a.query(`SET search_path = pg_catalog, public`);
    await a.query(`SET TIME ZONE 'Asia/Tokyo'`);
    // a SET in a rolled-back transaction does not stick
    await a.query('BEGIN');
    await a.query(`SET lock_timeout = '777ms'`);
    await a.query('ROLLBACK');
    for (let i = 0; i < 30; i++) {
      // b churns through the pool meanwhile
      await Promise.all([b.query('SELECT pg_sleep(0.001)'), b.query('SELECT 1')]);
      const s = await a.query(
        `SELECT current_setting('statement_timeout') AS st, current_setting('search_path') AS sp, current_setting('TimeZone') AS tz, current_setting('lock_timeout') AS lt`,
      );
      expect(s.rows[0]).toEqual({
        st: '1234ms',
        sp: 'pg_catalog, public',
        tz: 'Asia/Tokyo',
        lt: '0',
      });
      const t = await b.query(
        `SELECT current_setting('statement_timeout') AS st, current_setting('TimeZone') AS tz`,
      );
      expect(t.rows[0].st).toBe('0');
      expect(t.rows[0].tz).not.toBe('Asia/Tokyo');
    }
    await a.query('RESET statement_timeout');
    expect((await a.query(`SHOW statement_timeout`)).rows[0].statement_timeout).toBe('0');
  });

  it('refuses what cannot follow a client with 0A000 naming --pool-mode', async () => {
    const c = await db.connect(url);
    for (const sql of [
      'LISTEN chan',
      'SELECT pg_advisory_lock(42)',
      'BEGIN; DECLARE cur CURSOR WITH HOLD FOR SELECT 1; COMMIT',
      'CREATE TEMP TABLE t_tmp (n int)',
      `PREPARE p1 AS SELECT 1`,
    ]) {
      await expect(c.query(sql), sql).rejects.toMatchObject({
        code: '0A000',
        message: expect.stringContaining('--pool-mode transaction'),
      });
    }
    // what stays inside one transaction works
    await c.query('BEGIN');
    await c.query('SELECT pg_advisory_xact_lock(42)');
    await c.query('CREATE TEMP TABLE t_tmp (n int) ON COMMIT DROP');
    await c.query('COMMIT');
    // a string or comment mentioning LISTEN is no statement
    expect((await c.query(`SELECT 'LISTEN x' AS s -- LISTEN`)).rows[0].s).toBe('LISTEN x');
  });

  it('finds what it refuses or carries anywhere in a multi-statement query of almost 1 MiB', async () => {
    // the longest it assembles (CLIENT_INSPECT_MAX); longer ones: proxy-large-client.test.ts
    const c = await db.connect(url);
    const n = 1024 * 1024 - 64 * 1024;
    const big = `'${'x'.repeat(n)}'`;
    for (const hidden of [
      'LISTEN chan',
      '/* a comment first */ LISTEN chan',
      'SELECT pg_advisory_lock(42)',
      'PREPARE p2 AS SELECT 1',
    ])
      await expect(
        c.query(`SELECT length(${big}); SELECT 2; ${hidden}; SELECT 3`),
        hidden,
      ).rejects.toMatchObject({ code: '0A000' });
    // nothing of a refused query ran: the server refused it whole
    expect(
      (await c.query(`SELECT count(*)::int AS n FROM pg_listening_channels()`)).rows[0].n,
    ).toBe(0);
    // a SET at its end is carried to whichever connection the client gets next
    await c.query(`SELECT length(${big}); SET statement_timeout = '4321ms'`);
    const other = await db.connect(url);
    for (let i = 0; i < 12; i++) {
      await Promise.all([other.query('SELECT pg_sleep(0.001)'), other.query('SELECT 1')]);
      expect((await c.query('SHOW statement_timeout')).rows[0].statement_timeout).toBe('4321ms');
    }
    // in a literal it is no statement
    const r = await c.query(`SELECT length(${big}) AS n, 'x; LISTEN chan' AS s`);
    expect(r.rows[0]).toEqual({ n, s: 'x; LISTEN chan' });
  });

  it('a client killed mid-transaction leaves its connection rolled back and reusable', async () => {
    const small = await startTestProxy(db.url, { poolMode: 'transaction', poolSize: 1 });
    const via = viaPort(app.url, small.port);
    const b = await db.connect(via);
    const a = new pg.Client({ connectionString: via });
    a.on('error', () => undefined);
    await a.connect();
    await a.query('BEGIN');
    await a.query(`INSERT INTO pooled VALUES (-1, 'killed')`);
    const pid = (await a.query('SELECT pg_backend_pid() AS p')).rows[0].p as number;
    (a as unknown as { connection: { stream: net.Socket } }).connection.stream.destroy();
    // b gets the very same backend (the pool has one), rolled back and idle
    const r = await b.query(
      `SELECT pg_backend_pid() AS p, (SELECT count(*)::int FROM pooled WHERE id = -1) AS n`,
    );
    expect(r.rows[0]).toEqual({ p: pid, n: 0 });
    await b.query('BEGIN');
    await b.query(`INSERT INTO pooled VALUES (-2, 'kept')`);
    await b.query('COMMIT');
    expect(
      (await db.admin.query(`SELECT count(*)::int AS n FROM pooled WHERE id = -2`)).rows[0].n,
    ).toBe(1);
  });

  it('a cancel reaches the query of the client that sent it, and nothing else', async () => {
    const a = await db.connect(url);
    const b = await db.connect(url);
    const qa = a.query('SELECT pg_sleep(5)');
    const qb = b.query('SELECT pg_sleep(0.8) AS slept');
    await new Promise((r) => setTimeout(r, 200));
    const started = Date.now();
    const canceller = new pg.Client({ connectionString: url });
    (canceller as unknown as { cancel(c: pg.Client, q: unknown): void }).cancel(
      a,
      (a as unknown as { activeQuery: unknown }).activeQuery,
    );
    await expect(qa).rejects.toMatchObject({ code: '57014' });
    expect(Date.now() - started).toBeLessThan(1500);
    expect((await qb).rows[0]).toEqual({ slept: '' });
    expect((await a.query('SELECT 1 AS ok')).rows[0].ok).toBe(1);
  });

  it('a pool that stays exhausted answers 53300 with a hint naming the flags', async () => {
    const tiny = await startTestProxy(db.url, {
      poolMode: 'transaction',
      poolSize: 1,
      poolTimeoutMs: 300,
    });
    const holder = await loggedIn(tiny.port, trust.name, db.name);
    const waiter = await loggedIn(tiny.port, trust.name, db.name);
    holder.sock.write(encodeFrontend({ type: 'Query', sql: 'BEGIN' }));
    await holder.until((t) => t === 'Z');
    waiter.sock.write(encodeFrontend({ type: 'Query', sql: 'SELECT 1' }));
    const e = errorOf(await waiter.until((t) => t === 'E'));
    expect(e).toMatchObject({ C: '53300', V: 'FATAL' });
    expect(e?.['H']).toMatch(/--pool-size.*--max-server-connections/);
    holder.sock.write(encodeFrontend({ type: 'Query', sql: 'COMMIT' }));
    await holder.until((t) => t === 'Z');
  });
});
