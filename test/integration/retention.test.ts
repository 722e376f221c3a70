/** Retention (spec §12.2): expired finished instances are deleted with their rows; unfinished ones never. */
import type pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { finished, startTestExecutor } from '../harness/executor.js';

const db = useTestDatabase();
let role: TestRole;
let c: pg.Client;

beforeAll(async () => {
  role = await db.role('keep');
  c = await db.connect(role.url);
});

async function exists(id: string): Promise<boolean> {
  const r = await db.admin.query(
    `SELECT (SELECT count(*) FROM df.instances WHERE id = $1)::int AS i, (SELECT count(*) FROM df.nodes WHERE instance_id = $1)::int AS n,
            (SELECT count(*) FROM df.events WHERE instance_id = $1)::int AS e`,
    [id],
  );
  const row = r.rows[0] as { i: number; n: number; e: number };
  if (row.i === 0) expect(row.n + row.e).toBe(0); // nothing of it is left behind
  return row.i === 1;
}

const age = (id: string, days: number): Promise<unknown> =>
  db.admin.query(
    `UPDATE df.instances SET created_at = now() - make_interval(days => $2),
            completed_at = CASE WHEN completed_at IS NOT NULL THEN now() - make_interval(days => $2) END WHERE id = $1`,
    [id, days],
  );

describe('retention', () => {
  // first: the test below leaves an executor running with retention_days 0
  it('retention_max_instances applies per submitting role: one role’s volume never deletes another’s history', async () => {
    const heavy = await db.connect((await db.role('heavy')).url);
    const light = await db.connect((await db.role('light')).url);
    await db.admin.query(`UPDATE df.config SET value = '20' WHERE key = 'retention_max_instances'`);
    const start = async (cl: pg.Client, n: number): Promise<string[]> =>
      (
        await cl.query<{ id: string }>(
          `SELECT df.start('SELECT 1') AS id FROM generate_series(1, $1)`,
          [n],
        )
      ).rows.map((r) => r.id);
    const few = await start(light, 3);
    const many = await start(heavy, 25);
    try {
      // all finished; light's are older than every one of heavy's, heavy's i-th is i minutes old
      await db.admin.query(
        `UPDATE df.instances SET status = 'completed', completed_at = now() - interval '1 day' WHERE id = ANY ($1)`,
        [few],
      );
      await db.admin.query(
        `UPDATE df.instances i SET status = 'completed', completed_at = now() - make_interval(mins => u.n::int)
         FROM unnest($1::text[]) WITH ORDINALITY AS u(id, n) WHERE i.id = u.id`,
        [many],
      );
      expect((await db.admin.query(`SELECT df._reconcile() AS n`)).rows[0].n).toBe(5);
      const left = async (ids: string[]): Promise<string[]> =>
        (
          await db.admin.query<{ id: string }>(
            `SELECT id FROM df.instances WHERE id = ANY ($1) ORDER BY completed_at DESC`,
            [ids],
          )
        ).rows.map((r) => r.id);
      expect(await left(few)).toHaveLength(3);
      expect(await left(many)).toEqual(many.slice(0, 20));
      // a second pass deletes nothing more
      expect((await db.admin.query(`SELECT df._reconcile() AS n`)).rows[0].n).toBe(0);
    } finally {
      await db.admin.query(
        `UPDATE df.config SET value = '10000' WHERE key = 'retention_max_instances'`,
      );
      await db.admin.query(`DELETE FROM df.instances WHERE id = ANY ($1)`, [[...few, ...many]]);
    }
  });

  it('deletes finished instances past retention_days or beyond the newest retention_max_instances, never unfinished ones', async () => {
    const ex = await startTestExecutor(db.url);
    const old = (await c.query(`SELECT df.start('SELECT 1') AS id`)).rows[0].id;
    const recent = (await c.query(`SELECT df.start('SELECT 2') AS id`)).rows[0].id;
    const waiting = (await c.query(`SELECT df.start(df.wait_for_signal('never')) AS id`)).rows[0]
      .id;
    await finished(c, old);
    await finished(c, recent);
    const cancelled = (await c.query(`SELECT df.start(df.sleep(3600)) AS id`)).rows[0].id;
    await c.query(`SELECT df.cancel($1)`, [cancelled]);
    await age(old, 40);
    await age(waiting, 400);
    await age(cancelled, 31);
    expect((await db.admin.query(`SELECT df._reconcile() AS n`)).rows[0].n).toBe(2);
    expect([await exists(old), await exists(cancelled)]).toEqual([false, false]);
    expect([await exists(recent), await exists(waiting)]).toEqual([true, true]);
    // the cap: only the newest N finished instances stay
    const newer = (await c.query(`SELECT df.start('SELECT 3') AS id`)).rows[0].id;
    await finished(c, newer);
    await db.admin.query(`UPDATE df.config SET value = '1' WHERE key = 'retention_max_instances'`);
    expect((await db.admin.query(`SELECT df._reconcile() AS n`)).rows[0].n).toBe(1);
    expect([await exists(recent), await exists(newer), await exists(waiting)]).toEqual([
      false,
      true,
      true,
    ]);
    // not callable by users
    await expect(c.query(`SELECT df._reconcile()`)).rejects.toMatchObject({ code: '42501' });
    // the executor runs it every reconcile_interval_seconds
    await db.admin.query(`UPDATE df.config SET value = '0' WHERE key = 'retention_days'`);
    await db.admin.query(
      `UPDATE df.config SET value = '1' WHERE key = 'reconcile_interval_seconds'`,
    );
    await ex.stop();
    await startTestExecutor(db.url);
    const deadline = Date.now() + 10_000;
    while ((await exists(newer)) && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 100));
    expect(await exists(newer)).toBe(false);
    expect(await exists(waiting)).toBe(true);
  }, 30_000);
});
