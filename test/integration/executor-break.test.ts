/** A df.break that no loop catches (spec §4.2, §6.8, §6.13): the instance fails and the nodes show where and why. */
import type pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { BREAK_OUTSIDE_LOOP } from '../../src/executor/core.js';
import { useTestDatabase } from '../harness/db.js';
import { finished, startTestExecutor } from '../harness/executor.js';

const db = useTestDatabase();
let a: pg.Client;

beforeAll(async () => {
  a = await db.connect((await db.role('alice')).url);
  await startTestExecutor(db.url);
});

async function nodes(id: string): Promise<Array<[string, string, string, unknown]>> {
  const r = await a.query<{
    node_type: string;
    status: string;
    inferred_status: string;
    result: string | null;
  }>(
    `SELECT node_type, status, inferred_status, result FROM df.instance_nodes($1)
      ORDER BY node_type, status, inferred_status`,
    [id],
  );
  return r.rows.map((n) => [
    n.node_type,
    n.status,
    n.inferred_status,
    n.result === null ? null : JSON.parse(n.result),
  ]);
}

describe('df.break outside every loop', () => {
  it("'SELECT 1' ~> df.break('nowhere'): failed, df.result NULL, the BREAK and THEN nodes carry the error", async () => {
    const id = (
      await a.query<{ id: string }>(
        `SELECT df.start('SELECT 1' ~> df.break('nowhere'), 'nowhere') AS id`,
      )
    ).rows[0]?.id as string;
    expect(await finished(a, id)).toEqual({ status: 'failed', result: null });
    expect(await nodes(id)).toEqual([
      ['BREAK', 'failed', 'failed', BREAK_OUTSIDE_LOOP],
      ['SQL', 'completed', 'completed', { rows: [{ '?column?': 1 }], row_count: 1 }],
      ['THEN', 'failed', 'failed', BREAK_OUTSIDE_LOOP],
    ]);
    const inst = await a.query(`SELECT status, error, output FROM df.instances WHERE id = $1`, [
      id,
    ]);
    expect(inst.rows[0]).toEqual({ status: 'failed', error: BREAK_OUTSIDE_LOOP, output: null });
    const explain = (await a.query<{ t: string }>(`SELECT df.explain($1) AS t`, [id])).rows[0]?.t;
    // where (the ✗ on the BREAK; a THEN chain renders as →) and why (the Error: line)
    expect(explain).toBe(
      [
        `Instance: ${id} (nowhere)`,
        'Status:   ✗ Failed',
        `Error:    ${BREAK_OUTSIDE_LOOP}`,
        '',
        'SQL: SELECT 1 ✓        ',
        "→ BREAK 'nowhere' ✗    ",
      ].join('\n'),
    );
  });

  it('inside an IF and a JOIN branch: only the path to the break fails; the sibling branch completed', async () => {
    const id = (
      await a.query<{ id: string }>(
        `SELECT df.start(df.join('SELECT 1', df.if('SELECT true', df.break(), 'SELECT 2'))) AS id`,
      )
    ).rows[0]?.id as string;
    expect(await finished(a, id)).toEqual({ status: 'failed', result: null });
    const rows = (await nodes(id)).map(([t, st, inf]) => [t, st, inf]);
    expect(rows).toEqual([
      ['BREAK', 'failed', 'failed'],
      ['IF', 'failed', 'failed'],
      ['JOIN', 'failed', 'failed'],
      ['SQL', 'completed', 'completed'], // the JOIN's other branch and the IF's condition
      ['SQL', 'completed', 'completed'],
      ['SQL', 'pending', 'skipped'], // the IF's untaken arm
    ]);
  });

  it('a break a loop catches still completes with its value', async () => {
    const id = (
      await a.query<{ id: string }>(`SELECT df.start(df.loop('SELECT 1' ~> df.break('out'))) AS id`)
    ).rows[0]?.id as string;
    expect(await finished(a, id)).toEqual({ status: 'completed', result: '"out"' });
  });
});
