/**
 * The chained topology: client → dfgate → PgBouncer 1.18 (pool_mode =
 * transaction, a pool of 2) → PostgreSQL, with dfgate in either pool mode and
 * its executor connected to PostgreSQL directly (--executor-url). What works:
 * simple and extended (unnamed) protocol, transactions, df.start through the
 * edge with the instance completing, transaction_mode => 'new', df.signal and
 * df.cancel, cancel requests. What does not, shown deterministically by pinning PgBouncer's
 * other backend with clients of its own: named prepared statements and
 * session SET across transactions (PgBouncer moves the session to another
 * backend), and LISTEN (silently deaf in session mode, refused with 0A000 in
 * transaction mode). docs/proxy.md, "dfgate in front of PgBouncer".
 */
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { spawnDfgate, viaPort, type DfgateProcess } from '../harness/dfgate.js';
import { finished } from '../harness/executor.js';
import { startPgBouncer, type PgBouncer } from '../harness/pgbouncer.js';

const db = useTestDatabase();
/** PgBouncer's pool for (app, db): two backends, so a test can pin one of them. */
const BOUNCER_POOL = 2;
let app: TestRole;
let bouncer: PgBouncer;
/** app's URL through PgBouncer, without dfgate. */
let bouncerUrl: string;
/** Highest number of app's backends seen in pg_stat_activity since the last reset. */
let peak = 0;

beforeAll(async () => {
  app = await db.role('app');
  await db.admin.query(`CREATE TABLE chained (id int, who text)`);
  await db.admin.query(`GRANT ALL ON chained TO ${app.ident}`);
  bouncer = await startPgBouncer({
    upstreamPort: Number(new URL(db.url).port),
    users: [{ name: app.name, password: app.password }],
    poolMode: 'transaction',
    poolSize: BOUNCER_POOL,
  });
  bouncerUrl = viaPort(app.url, bouncer.port, '?sslmode=disable');
  const watch = await db.connect(db.url);
  let busy = false;
  const sampler = setInterval(() => {
    if (busy) return;
    busy = true;
    watch
      .query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = $1`, [app.name])
      .then((r) => (peak = Math.max(peak, r.rows[0].n as number)))
      .catch(() => undefined)
      .finally(() => (busy = false));
  }, 10);
  afterAll(async () => {
    clearInterval(sampler);
    await bouncer.stop();
  });
});

/** Clients of the running test, closed after it (so that a failure holds no backend). */
const opened: pg.Client[] = [];
afterEach(async () => {
  await Promise.all(opened.splice(0).map((c) => c.end().catch(() => undefined)));
});

async function connect(target: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: target });
  c.on('error', () => undefined);
  opened.push(c);
  await c.connect();
  return c;
}

/** A client of PgBouncer itself (not through dfgate). */
async function bouncerClient(): Promise<pg.Client> {
  return await connect(bouncerUrl);
}

/**
 * Occupies both of PgBouncer's backends with transactions of its own clients,
 * then ends the one that is not `pid`: the next transaction of anybody else
 * runs on the other backend. Returns the client that keeps `pid` busy.
 */
async function pinOtherBackend(pid: number): Promise<pg.Client> {
  const holders = [await bouncerClient(), await bouncerClient()];
  await Promise.all(holders.map((h) => h.query('BEGIN')));
  const pids = await Promise.all(
    holders.map(async (h) => (await h.query('SELECT pg_backend_pid() AS p')).rows[0].p as number),
  );
  expect(pids).toContain(pid);
  const i = pids.indexOf(pid);
  await (holders[1 - i] as pg.Client).query('COMMIT');
  return holders[i] as pg.Client;
}

describe.each(['session', 'transaction'] as const)(
  'client → dfgate --pool-mode %s → PgBouncer (transaction mode) → PostgreSQL',
  (mode) => {
    let dfgate: DfgateProcess;
    /** app's URL through dfgate. */
    let url: string;

    beforeAll(async () => {
      dfgate = await spawnDfgate(
        [
          // clients' logins and queries go to PgBouncer ...
          '--upstream',
          `postgres://127.0.0.1:${bouncer.port}/${db.name}?sslmode=disable`,
          // ... the executor (LISTEN, its control login and the step logins) to PostgreSQL
          '--executor-url',
          `${db.url}?sslmode=disable`,
          '--no-migrate',
          '--pool-mode',
          mode,
          // transaction mode: one server connection (a PgBouncer client), so the
          // failure cases below are deterministic
          '--pool-size',
          '1',
        ],
        { DFGATE_STEP_SECRET: 'chained-test-secret', DFGATE_POOL_MODE: mode },
      );
      url = viaPort(app.url, dfgate.port);
    });
    afterAll(async () => {
      await dfgate.stop();
    });

    it('plain queries, the extended protocol and transactions from 20 clients, on at most the PgBouncer pool', async () => {
      const clients = await Promise.all(Array.from({ length: 20 }, () => connect(url)));
      peak = 0;
      const base = mode === 'session' ? 0 : 1000;
      await Promise.all(
        clients.map(async (c, i) => {
          for (let k = 0; k < 5; k++) {
            expect((await c.query(`SELECT ${i} + ${k} AS n`)).rows[0].n).toBe(i + k);
            // parameters: an unnamed statement (Parse/Bind/Execute/Sync), one PgBouncer transaction
            const p = await c.query('SELECT $1::int * 2 AS n, $2::text AS t', [k, `c${i}`]);
            expect(p.rows[0]).toEqual({ n: k * 2, t: `c${i}` });
            await c.query('BEGIN');
            await c.query('INSERT INTO chained VALUES ($1, $2)', [base + i, mode]);
            const mine = await c.query('SELECT count(*)::int AS n FROM chained WHERE id = $1', [
              base + i,
            ]);
            expect(mine.rows[0].n).toBe(k + 1);
            await c.query('COMMIT');
          }
        }),
      );
      expect(peak).toBeGreaterThan(0);
      expect(peak).toBeLessThanOrEqual(BOUNCER_POOL);
      const n = await db.admin.query(`SELECT count(*)::int AS n FROM chained WHERE who = $1`, [
        mode,
      ]);
      expect(n.rows[0].n).toBe(100);
    });

    it('df.start through the edge, run by the executor on PostgreSQL directly', async () => {
      const c = await connect(url);
      const label = `chained-${mode}`;
      const r = await c.query(
        `SELECT df.start('SELECT 20 + 1 AS n' ~> 'SELECT 2 * 21 AS n', '${label}') AS id`,
      );
      const id = r.rows[0].id as string;
      expect(id).toMatch(/^[0-9a-f]{8}$/);
      expect(await finished(db.admin, id)).toMatchObject({ status: 'completed' });
      // a bound workflow (extended protocol) too
      const b = await c.query(`SELECT df.start($1, $2) AS id`, ['SELECT 7 AS n', label]);
      expect(await finished(db.admin, b.rows[0].id as string)).toMatchObject({
        status: 'completed',
      });
      const i = await db.admin.query(
        `SELECT count(*)::int AS n, min(submitted_by::text) AS who FROM df.instances WHERE label = $1`,
        [label],
      );
      expect(i.rows[0]).toEqual({ n: 2, who: app.name });
    });

    it("transaction_mode => 'new' commits on its own while the caller rolls back", async () => {
      const c = await connect(url);
      const label = `chained-new-${mode}`;
      await c.query('BEGIN');
      await c.query(`INSERT INTO chained VALUES (-1, 'rolled back')`);
      const r = await c.query(
        `SELECT df.start('SELECT 42 AS answer', '${label}', transaction_mode => 'new') AS id`,
      );
      await c.query('ROLLBACK');
      const id = r.rows[0].id as string;
      expect(await finished(db.admin, id)).toMatchObject({ status: 'completed' });
      const n = await db.admin.query(
        `SELECT (SELECT count(*)::int FROM df.instances WHERE label = $1) AS started,
                (SELECT count(*)::int FROM chained WHERE id = -1) AS rolled`,
        [label],
      );
      expect(n.rows[0]).toEqual({ started: 1, rolled: 0 });
      // the database's own df.start refuses 'new': only dfgate's edge runs it
      const direct = await connect(bouncerUrl);
      await expect(
        direct.query(`SELECT df.start('SELECT 1', transaction_mode => 'new')`),
      ).rejects.toThrow(/transaction_mode/);
    });

    it('df.signal and df.cancel through dfgate', async () => {
      const c = await connect(url);
      const start = async (): Promise<string> =>
        (
          await c.query(
            `SELECT df.start(df.wait_for_signal('go', 60) ~> 'SELECT 1 AS done', 'chained-signal') AS id`,
          )
        ).rows[0].id as string;
      const [a, b] = [await start(), await start()];
      await c.query('BEGIN');
      await c.query(`SELECT df.signal($1, 'go', '{"ok": true}')`, [a]);
      await c.query('COMMIT');
      expect(await finished(db.admin, a)).toMatchObject({ status: 'completed' });
      const cancelled = await c.query(`SELECT df.cancel($1, 'not needed') AS m`, [b]);
      expect(cancelled.rows[0].m).toBe(`Instance ${b} cancelled: not needed`);
      expect(await finished(db.admin, b)).toMatchObject({ status: 'cancelled' });
    });

    it('a cancel request reaches the running query through both poolers, and PgBouncer stays up', async () => {
      const c = await connect(url);
      const q = c.query('SELECT pg_sleep(10)');
      await new Promise((res) => setTimeout(res, 300));
      const started = Date.now();
      const canceller = new pg.Client({ connectionString: url });
      (canceller as unknown as { cancel(c: pg.Client, q: unknown): void }).cancel(
        c,
        (c as unknown as { activeQuery: unknown }).activeQuery,
      );
      await expect(q).rejects.toMatchObject({ code: '57014' });
      expect(Date.now() - started).toBeLessThan(3000);
      expect((await c.query('SELECT 1 AS ok')).rows[0].ok).toBe(1);
      // PgBouncer 1.18 survived it (it exited on a cancel connection that dfgate
      // half-closed right after the request: src/proxy/cancel.ts)
      const direct = await bouncerClient();
      expect((await direct.query('SELECT 1 AS ok')).rows[0].ok).toBe(1);
      expect(bouncer.output()).not.toMatch(/FATAL/);
    });

    it('a named prepared statement fails with 26000 once PgBouncer runs the next transaction on another backend', async () => {
      const c = await connect(url);
      await c.query('BEGIN');
      const first = await c.query({ name: 'twice', text: 'SELECT $1::int * 2 AS n', values: [1] });
      expect(first.rows[0].n).toBe(2);
      const pid = (await c.query('SELECT pg_backend_pid() AS p')).rows[0].p as number;
      await c.query('COMMIT');
      const holder = await pinOtherBackend(pid);
      const err = await c
        .query({ name: 'twice', text: 'SELECT $1::int * 2 AS n', values: [2] })
        .catch((e: unknown) => e);
      expect(err).toMatchObject({
        code: '26000',
        message: expect.stringMatching(/^prepared statement ".+" does not exist$/),
      });
      await holder.query('COMMIT');
      // an unnamed statement is prepared, bound and run in one PgBouncer transaction
      expect((await c.query('SELECT $1::int * 2 AS n', [3])).rows[0].n).toBe(6);
    });

    it('a session SET is lost on the next transaction and leaks to the other client of its backend', async () => {
      const c = await connect(url);
      const r = (await c.query(
        `SET statement_timeout = '4321ms'; SELECT pg_backend_pid() AS p`,
      )) as unknown as pg.QueryResult[];
      const pid = r[1]?.rows[0].p as number;
      const holder = await pinOtherBackend(pid);
      expect((await c.query('SHOW statement_timeout')).rows[0].statement_timeout).toBe('0');
      expect((await holder.query('SHOW statement_timeout')).rows[0].statement_timeout).toBe(
        '4321ms',
      );
      await holder.query('RESET statement_timeout');
      await holder.query('COMMIT');
    });

    it(
      mode === 'session'
        ? 'LISTEN is accepted but no notification arrives'
        : 'LISTEN is refused by dfgate with 0A000',
      async () => {
        const c = await connect(url);
        const got: string[] = [];
        c.on('notification', (n) => got.push(n.payload ?? ''));
        if (mode === 'transaction') {
          await expect(c.query('LISTEN chained_chan')).rejects.toMatchObject({
            code: '0A000',
            message: expect.stringContaining('--pool-mode transaction'),
          });
          return;
        }
        await c.query('LISTEN chained_chan');
        // PostgreSQL has the listener (on whichever backend ran the LISTEN) ...
        const listeners = await db.admin.query(
          `SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = $1 AND query = 'LISTEN chained_chan'`,
          [app.name],
        );
        expect(listeners.rows[0].n).toBe(1);
        await db.admin.query(`NOTIFY chained_chan, 'hello'`);
        await new Promise((res) => setTimeout(res, 500));
        await c.query('SELECT 1');
        await new Promise((res) => setTimeout(res, 200));
        // ... but the backend is back in PgBouncer's pool: nothing reaches the client
        expect(got).toEqual([]);
      },
    );
  },
);
