/**
 * A role may lock its own instance rows (it may update their status, so
 * SELECT ... FOR UPDATE is allowed; a foreign key of a row it inserts takes
 * a KEY SHARE lock too). A hostile review found that one such lock held the
 * executor's lease renewal for every role, so other roles' leases expired
 * and their steps ran again, and that it held retention for every role
 * (docs/executor.md, "Locks a role holds"). Neither waits on such a lock now.
 */
import type pg from 'pg';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { useTestDatabase } from '../harness/db.js';
import { finished, startTestExecutor } from '../harness/executor.js';
import type { Executor } from '../../src/executor/executor.js';

const db = useTestDatabase();
let alice: pg.Client;
let mallory: pg.Client;
let executor: Executor | undefined;
let aliceIdent: string;

beforeAll(async () => {
  const a = await db.role('alice');
  aliceIdent = a.ident;
  const m = await db.role('mallory');
  alice = await db.connect(a.url);
  mallory = await db.connect(m.url);
  await db.admin.query(`CREATE TABLE public.runs (what text NOT NULL)`);
  await db.admin.query(`GRANT INSERT, SELECT ON public.runs TO ${a.ident}`);
});

afterEach(async () => {
  await executor?.stop();
  executor = undefined;
});

/** Waits until a statement LIKE `pattern` runs on some other backend. */
async function untilRunning(pattern: string, never: string): Promise<void> {
  for (let i = 0; ; i++) {
    const r = await db.admin.query(
      `SELECT 1 FROM pg_stat_activity WHERE query LIKE $1 AND state = 'active' AND pid <> pg_backend_pid()`,
      [pattern],
    );
    if (r.rowCount) return;
    if (i > 400) throw new Error(never);
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe('locks a role holds on its own instances', () => {
  it("a step that keeps its own instance locked holds back neither another role's lease renewal nor its steps", async () => {
    executor = await startTestExecutor(db.url, { leaseMs: 1500, pollMs: 100 });
    // mallory's step locks its own instance row and keeps it for 15 s
    const lock = await mallory.query<{ id: string }>(
      `SELECT df.start('WITH l AS MATERIALIZED (SELECT id FROM df.instances WHERE label = ''lockme'' FOR NO KEY UPDATE) SELECT pg_sleep(15) FROM l', 'lockme') AS id`,
    );
    const locked = lock.rows[0]?.id as string;
    await untilRunning('%pg_sleep(15)%', "mallory's step never started");
    // alice's workflow outlives her lease twice over: only renewals keep it hers
    const t0 = Date.now();
    const r = await alice.query<{ id: string }>(
      `SELECT df.start('INSERT INTO public.runs VALUES (''one'')' ~> 'SELECT pg_sleep(3.5)' ~> 'INSERT INTO public.runs VALUES (''two'')') AS id`,
    );
    const id = r.rows[0]?.id as string;
    expect((await finished(alice, id, 12_000)).status).toBe('completed');
    expect(Date.now() - t0).toBeLessThan(12_000);
    const epoch = await db.admin.query<{ e: string }>(
      'SELECT lease_epoch::text AS e FROM df.instances WHERE id = $1',
      [id],
    );
    expect(epoch.rows[0]?.e).toBe('1'); // never taken over: her lease was renewed throughout
    const runs = await db.admin.query<{ what: string }>(
      'SELECT what FROM public.runs ORDER BY what',
    );
    expect(runs.rows.map((x) => x.what)).toEqual(['one', 'two']); // each step once
    // mallory's step ends now (a df.cancel would wait for the lock her own step holds)
    await db.admin.query(
      `SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(15)%' AND pid <> pg_backend_pid()`,
    );
    expect((await finished(mallory, locked, 10_000)).status).toBe('failed');
  });

  it('a lease that lapsed under a lock while its step runs is not taken back by the executor driving it', async () => {
    await db.admin.query(`CREATE SEQUENCE public.lapse_runs`);
    await db.admin.query(`GRANT USAGE ON SEQUENCE public.lapse_runs TO ${aliceIdent}`);
    executor = await startTestExecutor(db.url, { leaseMs: 1000, pollMs: 50 });
    const r = await alice.query<{ id: string }>(
      `SELECT df.start('SELECT nextval(''public.lapse_runs''), pg_sleep(3)' ~> 'SELECT 1') AS id`,
    );
    const id = r.rows[0]?.id as string;
    await untilRunning('%lapse_runs%pg_sleep(3)%', 'the step never started');
    // someone holds the instance's row past its lease: renewals skip it, so the lease lapses
    // while the step still runs; once the lock goes, the claims (every 50 ms) see it expired
    const holder = await db.connect(db.url);
    try {
      await holder.query('BEGIN');
      await holder.query('SELECT 1 FROM df.instances WHERE id = $1 FOR NO KEY UPDATE', [id]);
      await new Promise((r) => setTimeout(r, 1_500));
      const lapsed = await db.admin.query(
        'SELECT 1 FROM df.instances WHERE id = $1 AND lease_expires_at < clock_timestamp()',
        [id],
      );
      expect(lapsed.rowCount).toBe(1);
      await holder.query('COMMIT');
    } finally {
      await holder.end();
    }
    expect((await finished(alice, id, 10_000)).status).toBe('completed');
    const after = await db.admin.query<{ e: string; n: string }>(
      `SELECT i.lease_epoch::text AS e, (SELECT last_value::text FROM public.lapse_runs) AS n
         FROM df.instances i WHERE i.id = $1`,
      [id],
    );
    // its driver kept it: one lease, the step ran once (a sequence counts a rolled-back run too)
    expect(after.rows[0]).toEqual({ e: '1', n: '1' });
  });

  it("retention deletes another role's expired instances while a role keeps one of its own locked", async () => {
    const old = async (c: pg.Client): Promise<string> => {
      const id = (await c.query<{ id: string }>(`SELECT df.start('SELECT 1') AS id`)).rows[0]
        ?.id as string;
      await db.admin.query(
        `UPDATE df.instances SET status = 'completed', completed_at = now() - interval '400 days',
                created_at = now() - interval '400 days' WHERE id = $1`,
        [id],
      );
      return id;
    };
    const hers = await old(alice);
    const his = await old(mallory);
    // mallory locks his own finished instance and keeps the transaction open
    await mallory.query('BEGIN');
    await mallory.query('SELECT id FROM df.instances WHERE id = $1 FOR UPDATE', [his]);
    try {
      await db.admin.query(`SET statement_timeout = '10s'`);
      const t0 = Date.now();
      const n = await db.admin.query<{ n: number }>('SELECT df._reconcile() AS n');
      expect(Date.now() - t0).toBeLessThan(5_000);
      expect(n.rows[0]?.n).toBeGreaterThanOrEqual(1);
      const left = await db.admin.query<{ id: string }>(
        'SELECT id FROM df.instances WHERE id = ANY ($1) ORDER BY id',
        [[hers, his]],
      );
      expect(left.rows.map((x) => x.id)).toEqual([his]); // his is left for a later round
    } finally {
      await db.admin.query(`RESET statement_timeout`);
      await mallory.query('ROLLBACK');
    }
    // once he lets go, the next round takes his too
    await db.admin.query('SELECT df._reconcile()');
    const gone = await db.admin.query('SELECT 1 FROM df.instances WHERE id = $1', [his]);
    expect(gone.rowCount).toBe(0);
  });
});
