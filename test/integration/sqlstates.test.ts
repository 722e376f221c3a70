/** dfgate's own SQLSTATEs (docs/sqlstates.md): raised by df._complete_step, recognised by code. */
import type pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { runSqlStep } from '../../src/executor/steps.js';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { stepConn } from '../harness/executor.js';

const db = useTestDatabase();
let bob: TestRole;
let b: pg.Client;
let id: string;
let node: string;

beforeAll(async () => {
  bob = await db.role('bob');
  b = await db.connect(bob.url);
  id = (await b.query(`SELECT df.start('SELECT 1') AS id`)).rows[0].id as string;
  node = (await db.admin.query(`SELECT root_node AS n FROM df.instances WHERE id = $1`, [id]))
    .rows[0].n as string;
});

/** The state of a step in flight: lease epoch 7, attempt k1 with token 'tok'. */
async function inFlight(status = 'running'): Promise<void> {
  await db.admin.query(`UPDATE df.instances SET lease_epoch = 7, status = $2 WHERE id = $1`, [
    id,
    status,
  ]);
  await db.admin.query(
    `UPDATE df.nodes SET activation = 'k1', attempt_token = encode(sha256('tok'::bytea), 'hex') WHERE instance_id = $1`,
    [id],
  );
}

const complete = (epoch: number, token: string): Promise<unknown> =>
  b.query(`SELECT df._complete_step($1, $2, 'k1', $3, $4, 'done', '{"result":"[]"}', 's')`, [
    id,
    node,
    epoch,
    token,
  ]);

describe('class DF SQLSTATEs', () => {
  it('df._complete_step refuses with DF001 (lease taken over), DF002 (not the current attempt), DF003 (instance finished)', async () => {
    await inFlight();
    await expect(complete(6, 'tok')).rejects.toMatchObject({ code: 'DF001' });
    await expect(complete(7, 'other')).rejects.toMatchObject({ code: 'DF002' });
    await expect(
      b.query(`SELECT df._complete_step('ffffffff', $1, 'k1', 7, 'tok', 'done', '{}', 's')`, [
        node,
      ]),
    ).rejects.toMatchObject({ code: 'DF002' });
    await db.admin.query(`UPDATE df.instances SET status = 'cancelled' WHERE id = $1`, [id]);
    await expect(complete(7, 'tok')).rejects.toMatchObject({ code: 'DF003' });
  });

  it('the executor recognises them by code: the step is abandoned, its effect rolled back, the connection kept', async () => {
    await b.query(`CREATE TABLE IF NOT EXISTS effects (n int)`);
    const id2 = (await b.query(`SELECT df.start('SELECT 2') AS id`)).rows[0].id as string;
    const node2 = (
      await db.admin.query(`SELECT root_node AS n FROM df.instances WHERE id = $1`, [id2])
    ).rows[0].n as string;
    await db.admin.query(`UPDATE df.instances SET lease_epoch = 7 WHERE id = $1`, [id2]);
    await db.admin.query(
      `UPDATE df.nodes SET activation = 'k1', attempt_token = encode(sha256('tok'::bytea), 'hex') WHERE instance_id = $1`,
      [id2],
    );
    const c = await db.connect(bob.url);
    const conn = stepConn(c);
    const req = {
      instance: id2,
      node: node2,
      key: 'k1',
      token: 'tok',
      sql: 'INSERT INTO effects VALUES (1)',
      stamp: 's',
    };
    // DF001: the lease moved on
    expect(await runSqlStep(conn, { ...req, epoch: 6 })).toMatchObject({ k: 'abandoned' });
    expect(conn.broken).toBe(false);
    // DF002: not the current attempt
    expect(await runSqlStep(conn, { ...req, epoch: 7, token: 'old' })).toMatchObject({
      k: 'abandoned',
    });
    expect(conn.broken).toBe(false);
    expect((await b.query(`SELECT count(*)::int AS n FROM effects`)).rows[0].n).toBe(0);
    // the current attempt commits
    expect(await runSqlStep(conn, { ...req, epoch: 7 })).toMatchObject({ k: 'done' });
    expect((await b.query(`SELECT count(*)::int AS n FROM effects`)).rows[0].n).toBe(1);
  });
});
