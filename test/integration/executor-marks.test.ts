/**
 * Attempt marks in batches (src/executor/marks.ts): the marks of steps that
 * start together go as one statement, and each mark is still judged alone
 * (its lease, its activation's outcome).
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AttemptMarks } from '../../src/executor/marks.js';
import { useTestDatabase, type TestRole } from '../harness/db.js';

const db = useTestDatabase();
const OWNER = 'marks-test-owner';
let app: TestRole;
let pool: pg.Pool;

/** n one-step instances leased to OWNER at epoch 3; their ids and step nodes. */
async function leased(n: number): Promise<Array<{ id: string; node: string }>> {
  const c = await db.connect(app.url);
  const out: Array<{ id: string; node: string }> = [];
  for (let i = 0; i < n; i++) {
    const id = (await c.query(`SELECT df.start('SELECT ${i}') AS id`)).rows[0].id as string;
    const node = (await c.query(`SELECT root_node FROM df.instances WHERE id = $1`, [id])).rows[0]
      .root_node as string;
    out.push({ id, node });
  }
  await db.admin.query(
    `UPDATE df.instances SET status = 'running', lease_owner = $2, lease_epoch = 3,
            lease_expires_at = now() + interval '1 hour' WHERE id = ANY($1)`,
    [out.map((x) => x.id), OWNER],
  );
  return out;
}

const req = (x: { id: string; node: string }, epoch = 3, key = `${x.id}::1/${x.node}`) => ({
  id: x.id,
  epoch,
  a: { key, node: x.node },
  tokenHash: 'ab'.repeat(32),
  stamp: `${x.id}::1`,
  attempt: 1,
});

beforeAll(async () => {
  app = await db.role('app');
  pool = new pg.Pool({ connectionString: db.url, max: 2 });
});

afterAll(async () => {
  await pool.end();
});

describe('attempt marks', () => {
  it('marks of steps starting together go as one statement, each written', async () => {
    const xs = await leased(12);
    const marks = new AttemptMarks(pool, OWNER);
    const answers = await Promise.all(xs.map((x) => marks.mark(req(x))));
    expect(answers).toEqual(xs.map(() => true));
    expect(marks.stats).toEqual({ statements: 1, marks: 12 });
    const rows = (
      await db.admin.query(
        `SELECT activation, attempt_token, attempts, status, status_details ->> 'execution_id' AS stamp
           FROM df.nodes WHERE instance_id = ANY($1) ORDER BY instance_id`,
        [xs.map((x) => x.id)],
      )
    ).rows;
    expect(rows).toHaveLength(12);
    for (const r of rows) {
      expect(r.activation).toMatch(/^[0-9a-f]{8}::1\/[0-9a-f]{8}$/);
      expect(r.attempt_token).toBe('ab'.repeat(32));
      expect(r).toMatchObject({ attempts: 1, status: 'running' });
    }
  });

  it('each mark of a batch is judged alone: another epoch, another owner, a recorded outcome', async () => {
    const [ok, stale, taken, recorded] = await leased(4);
    await db.admin.query(`UPDATE df.instances SET lease_owner = 'someone-else' WHERE id = $1`, [
      taken!.id,
    ]);
    const key = `${recorded!.id}::1/${recorded!.node}`;
    await db.admin.query(
      `INSERT INTO df.events (instance_id, submitted_by, node_id, kind, detail, seq, activation)
       SELECT id, submitted_by, $2, 'done', '{"result":"x"}', 1, $3 FROM df.instances WHERE id = $1`,
      [recorded!.id, recorded!.node, key],
    );
    const marks = new AttemptMarks(pool, OWNER);
    const answers = await Promise.all([
      marks.mark(req(ok!)),
      marks.mark(req(stale!, 2)),
      marks.mark(req(taken!)),
      marks.mark(req(recorded!, 3, key)),
    ]);
    expect(answers).toEqual([true, false, false, false]);
    expect(marks.stats.statements).toBe(1);
    const untouched = (
      await db.admin.query(
        `SELECT count(*)::int AS n FROM df.nodes WHERE instance_id = ANY($1) AND attempt_token IS NOT NULL`,
        [[stale!.id, taken!.id, recorded!.id]],
      )
    ).rows[0].n;
    expect(untouched).toBe(0);
  });

  it('two marks of one node never share a statement; one on its way holds the next batch back', async () => {
    const [x, y] = await leased(2);
    const marks = new AttemptMarks(pool, OWNER);
    const first = marks.mark(req(x!, 3, 'k-first'));
    const second = marks.mark(req(x!, 3, 'k-second'));
    const other = marks.mark(req(y!));
    expect(await Promise.all([first, second, other])).toEqual([true, true, true]);
    expect(marks.stats.statements).toBe(2);
    const r = (
      await db.admin.query(`SELECT activation FROM df.nodes WHERE instance_id = $1`, [x!.id])
    ).rows[0];
    expect(r.activation).toBe('k-second'); // in the order asked
  });

  it('a failed statement fails its marks, and the next batch still goes', async () => {
    const [x] = await leased(1);
    const broken = new pg.Pool({ connectionString: db.url, max: 1 });
    const marks = new AttemptMarks(broken, OWNER);
    // an epoch out of bigint's range makes the statement itself fail
    const bad = marks.mark({ ...req(x!), epoch: Number.MAX_VALUE });
    await expect(bad).rejects.toThrow();
    expect(await marks.mark(req(x!))).toBe(true);
    await broken.end();
  });
});
