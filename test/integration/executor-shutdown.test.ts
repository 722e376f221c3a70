/**
 * Shutdown (issue 12 item 6): a dfgate process (proxy + executor) that has
 * run steps and has nothing in flight exits promptly on SIGTERM; no timer of
 * the poll interval keeps its event loop alive.
 */
import type pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { spawnDfgate, viaPort } from '../harness/dfgate.js';

const db = useTestDatabase();
let role: TestRole;

beforeAll(async () => {
  role = await db.role('shut');
  const c = await db.connect(role.url);
  await c.query(`CREATE TABLE shut_effects (instance text, step int)`);
});

describe('shutdown', () => {
  it('an idle dfgate that ran steps exits within 1.5 s of SIGTERM', async () => {
    // the default poll interval (5 s): a timer of that length must not delay the exit
    const d = await spawnDfgate(['--upstream', `${db.url}?sslmode=disable`, '--no-migrate'], {
      DFGATE_STEP_SECRET: 'shutdown-test-secret',
    });
    const c: pg.Client = await db.connect(viaPort(role.url, d.port));
    const graph = [1, 2, 3]
      .map((k) => `'INSERT INTO shut_effects VALUES (''{sys_instance_id}'', ${k})'`)
      .join(' ~> ');
    const ids: string[] = [];
    for (let i = 0; i < 3; i++)
      ids.push((await c.query(`SELECT df.start(${graph}) AS id`)).rows[0].id as string);
    const deadline = Date.now() + 30_000;
    for (;;) {
      const n = (
        await db.admin.query(
          `SELECT count(*)::int AS n FROM df.instances WHERE id = ANY ($1) AND status = 'completed'`,
          [ids],
        )
      ).rows[0].n as number;
      if (n === ids.length) break;
      if (Date.now() > deadline) throw new Error(`instances did not complete:\n${d.output()}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    await c.end();
    const t0 = Date.now();
    expect(await d.stop('SIGTERM')).toBe(0);
    const took = Date.now() - t0;
    expect(took, d.output()).toBeLessThan(1500);
    const effects = await db.admin.query(`SELECT count(*)::int AS n FROM shut_effects`);
    expect(effects.rows[0].n).toBe(9);
  });
});
