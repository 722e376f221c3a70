/**
 * A loop's node stamps never go back a generation (spec §5.6). The step that
 * starts a loop's next iteration is dispatched in the tick that records the
 * `iter` summary and drops the finished iteration's events from the driver's
 * cache; when that step completed before the driver read the instance again
 * (it naps up to --poll-interval), its checkpoint carried what a replay of the
 * stale cache gave: the finished iteration started again, with the older
 * generation's stamps (found by a review). A checkpoint carries nothing now
 * while the cache misses something written since the last load.
 */
import type pg from 'pg';
import { beforeAll, expect, it } from 'vitest';
import { useTestDatabase } from '../../test/harness/db.js';
import { finished, startTestExecutor } from '../../test/harness/executor.js';

const db = useTestDatabase();
let a: pg.Client;

beforeAll(async () => {
  const r = await db.role('alice');
  a = await db.connect(r.url);
  await a.query('CREATE SEQUENCE lc');
  // a long poll: the driver reads the instance again only when a step's outcome wakes it
  await startTestExecutor(db.url, { pollMs: 5000 });
});

it("a loop's node stamps never go back a generation", async () => {
  const id = (
    await a.query(
      `SELECT df.start(df.loop('SELECT nextval(''lc'') AS v' ~> 'SELECT pg_sleep(0.05)',
                               'SELECT last_value < 8 AS go FROM lc')) AS id`,
    )
  ).rows[0].id as string;
  const regressions: string[] = [];
  const last = new Map<string, number>();
  const done = finished(a, id, 60_000);
  let over = false;
  void done.finally(() => (over = true));
  while (!over) {
    const r = await db.admin.query<{ id: string; t: string; st: string; s: string }>(
      `SELECT id, node_type AS t, status AS s, status_details ->> 'execution_id' AS st
         FROM df.nodes WHERE instance_id = $1`,
      [id],
    );
    for (const n of r.rows) {
      const g = Number(/::(\d+)$/.exec(n.st ?? '')?.[1] ?? 0);
      const prev = last.get(n.id) ?? 0;
      if (g < prev) regressions.push(`${n.t} ${n.id}: ${prev} -> ${g} (${n.s})`);
      last.set(n.id, g);
    }
    await new Promise((r) => setTimeout(r, 2));
  }
  expect((await done).status).toBe('completed');
  expect(regressions).toEqual([]);
});
