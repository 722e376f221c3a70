/** The executor runs every node type as the spec describes (spec §6), against a real PostgreSQL. */
import type pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { finished, startTestExecutor } from '../harness/executor.js';

const db = useTestDatabase();
let alice: TestRole;
let a: pg.Client;

beforeAll(async () => {
  alice = await db.role('alice');
  a = await db.connect(alice.url);
  await startTestExecutor(db.url);
});

async function run(
  expr: string,
  label = 'test',
  timeoutMs = 20_000,
): Promise<{ id: string; status: string; result: string | null }> {
  const id = (await a.query(`SELECT df.start(${expr}, $1) AS id`, [label])).rows[0].id as string;
  return { id, ...(await finished(a, id, timeoutMs)) };
}

/** The instance's nodes in pre-order (node, left, right, condition, extras), as df.start inserted them. */
async function nodes(
  id: string,
): Promise<Array<{ node_type: string; status: string; result: unknown; stamp: string | null }>> {
  const rows = (
    await a.query(
      `SELECT n.id, n.node_type, n.status, n.result, n.query, n.left_node, n.right_node, n.status_details->>'execution_id' AS stamp, i.root_node
         FROM df.nodes n JOIN df.instances i ON i.id = n.instance_id WHERE n.instance_id = $1`,
      [id],
    )
  ).rows;
  const byId = new Map(rows.map((r) => [r.id, r]));
  const out: typeof rows = [];
  const visit = (nid: string | null): void => {
    const r = nid ? byId.get(nid) : undefined;
    if (!r) return;
    out.push(r);
    let cfg: { condition_node?: string; extra_nodes?: string[] } = {};
    try {
      cfg = ['IF', 'LOOP', 'JOIN'].includes(r.node_type) && r.query ? JSON.parse(r.query) : {};
    } catch {
      cfg = {};
    }
    visit(r.left_node);
    visit(r.right_node);
    visit(cfg.condition_node ?? null);
    for (const e of cfg.extra_nodes ?? []) visit(e);
  };
  visit(rows[0]?.root_node ?? null);
  return out;
}

describe('SQL steps and sequences', () => {
  it('runs a sequence with named results and substitution', async () => {
    const r = await run(
      `('SELECT 41 AS a, ''x'' AS tag' |=> 'first') ~> 'SELECT $first + 1 AS b, $first.tag AS t'`,
    );
    expect(r.status).toBe('completed');
    expect(r.result).toBe('{"rows": [{"b": 42, "t": "x"}], "row_count": 1}');
    const ns = await nodes(r.id);
    expect(ns.map((n) => [n.node_type, n.status])).toEqual([
      ['THEN', 'completed'],
      ['SQL', 'completed'],
      ['SQL', 'completed'],
    ]);
    expect(ns[0]?.stamp).toBe(`${r.id}::1`);
  });

  it('encodes result types as spec §6.2 says', async () => {
    const r = await run(
      `$$SELECT 9223372036854775807::int8 AS big, 123456.78900000::numeric AS n, 3.14::float4 AS f4, 1::float8 AS f8,
                true AS b, NULL::int AS nul, '2024-06-15 12:30:00.12+02'::timestamptz AS tz, '2024-06-15 12:30:00'::timestamp AS ts,
                '2024-06-15'::date AS d, '{"z": 1, "a": [1, 2]}'::jsonb AS j, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u, 1 AS dup, 2 AS dup$$`,
    );
    expect(r.status).toBe('completed');
    const ev = (
      await db.admin.query(
        `SELECT detail->>'result' AS r FROM df.events WHERE instance_id = $1 AND kind = 'done'`,
        [r.id],
      )
    ).rows[0].r;
    expect(ev).toBe(
      '{"rows":[{"big":9223372036854775807,"n":"123456.78900000","f4":3.140000104904175,"f8":1.0,"b":true,"nul":null,' +
        '"tz":"2024-06-15T10:30:00.120+00:00","ts":"2024-06-15T12:30:00","d":"2024-06-15","j":{"a":[1,2],"z":1},' +
        '"u":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11","dup":1}],"row_count":1}',
    );
  });

  it('a failing step fails its node and the instance, with the error stored as a JSON string', async () => {
    const r = await run(`'SELECT 1' ~> 'SELECT 1/0' ~> 'SELECT 3'`);
    expect(r.status).toBe('failed');
    expect(r.result).toBeNull();
    const ns = await nodes(r.id);
    const failedSql = ns.find((n) => n.status === 'failed' && n.node_type === 'SQL');
    expect(failedSql?.result).toBe(
      'SQL execution failed: error returned from database: division by zero',
    );
    expect(ns[ns.length - 1]).toMatchObject({ node_type: 'SQL', status: 'pending' });
  });

  it('unsupported column types fail the node with the spec message', async () => {
    const r = await run(`'SELECT ''1 day''::interval AS i'`);
    expect(r.status).toBe('failed');
    const ns = await nodes(r.id);
    expect(ns[0]?.result).toMatch(
      /^Unsupported column type 'INTERVAL' for column 'i'\. Supported types: bool, int2/,
    );
  });

  it('a step runs exactly one statement, as the submitter, in the workflow', async () => {
    const multi = await run(`'SELECT 1; SELECT 2'`);
    expect(multi.status).toBe('failed');
    expect((await nodes(multi.id))[0]?.result).toContain(
      'cannot insert multiple commands into a prepared statement',
    );
    const who = await run(`$$SELECT current_user AS u, current_setting('df.in_workflow') AS w$$`);
    expect(who.result).toBe(`{"rows": [{"u": "${alice.name}", "w": "true"}], "row_count": 1}`);
    const guard = await run(`$$SELECT df.setvar('a', 'b')$$`);
    expect(guard.status).toBe('failed');
    expect((await nodes(guard.id))[0]?.result).toContain(
      'df.setvar() cannot be called inside a workflow',
    );
  });
});

describe('control flow', () => {
  it('IF with a condition node, and truthiness', async () => {
    expect(
      (
        await run(
          `df.if('SELECT count(*) FROM (VALUES (1)) v', 'SELECT ''yes'' AS r', 'SELECT ''no'' AS r')`,
        )
      ).result,
    ).toBe('{"rows": [{"r": "yes"}], "row_count": 1}');
    expect(
      (await run(`'SELECT 0.00::numeric' ?> 'SELECT ''yes'' AS r' !> 'SELECT ''no'' AS r'`)).result,
    ).toBe('{"rows": [{"r": "no"}], "row_count": 1}');
    const r = await run(
      `('SELECT 1 WHERE false' |=> 'q') ~> df.if_rows('q', 'SELECT 1 AS t', 'SELECT 2 AS t')`,
    );
    expect(r.result).toBe('{"rows": [{"t": 2}], "row_count": 1}');
  });

  it('JOIN waits for all branches and returns the array of results', async () => {
    const r = await run(`'SELECT 1 AS a' & 'SELECT 2 AS b' & df.sleep(0.2)`);
    expect(r.status).toBe('completed');
    expect(r.result).toBe(
      '[[{"rows": [{"a": 1}], "row_count": 1}, {"rows": [{"b": 2}], "row_count": 1}], {"slept": true, "seconds": 0.2}]',
    );
  });

  it('RACE resolves on the first finished branch, even a failed one', async () => {
    expect((await run(`df.sleep(5) | 'SELECT ''fast'' AS w'`)).result).toBe(
      '{"rows": [{"w": "fast"}], "row_count": 1}',
    );
    const f = await run(`df.sleep(5) | 'SELECT 1/0'`);
    expect(f.status).toBe('failed');
    expect((await nodes(f.id))[0]?.result).toBe(
      'RACE right branch failed: SQL execution failed: error returned from database: division by zero',
    );
  });

  it('LOOP with df.break, a do-while condition, and the iteration counter of a table', async () => {
    await a.query(`CREATE TABLE ticks (n int)`);
    const r = await run(
      `@> ('INSERT INTO ticks VALUES (1)' ~> df.if('SELECT count(*) >= 5 FROM ticks', df.break('done'), 'SELECT 1'))`,
    );
    expect(r).toMatchObject({ status: 'completed', result: '"done"' });
    expect((await a.query('SELECT count(*)::int AS n FROM ticks')).rows[0].n).toBe(5);
    await a.query('TRUNCATE ticks');
    const w = await run(
      `df.loop('INSERT INTO ticks VALUES (1) RETURNING 1 AS x', 'SELECT count(*) < 3 FROM ticks')`,
    );
    expect(w).toMatchObject({
      status: 'completed',
      result: '{"rows": [{"x": 1}], "row_count": 1}',
    });
    expect((await a.query('SELECT count(*)::int AS n FROM ticks')).rows[0].n).toBe(3);
  });

  it('a break outside a loop fails the instance', async () => {
    const r = await run(`'SELECT 1' ~> df.break()`);
    expect(r.status).toBe('failed');
  });
});

describe('timers and signals', () => {
  it('SLEEP waits durably and reports its seconds', async () => {
    const t0 = Date.now();
    const r = await run(`df.sleep(0.5) ~> 'SELECT 1 AS x'`);
    expect(r.status).toBe('completed');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(450);
  });

  it('a signal sent before the wait is kept in the inbox and delivered', async () => {
    const id = (
      await a.query(
        `SELECT df.start(df.sleep(0.3) ~> (df.wait_for_signal('go') |=> 'sig') ~> 'SELECT $sig.data AS d') AS id`,
      )
    ).rows[0].id;
    await a.query(`SELECT df.signal($1, 'go', '{"v": 7}')`, [id]);
    const r = await finished(a, id);
    expect(r).toMatchObject({
      status: 'completed',
      result: '{"rows": [{"d": "{\\"v\\":7}"}], "row_count": 1}',
    });
  });

  it('a wait times out with timed_out true', async () => {
    const r = await run(`df.wait_for_signal('never', 1)`);
    expect(r.status).toBe('completed');
    expect(r.result).toBe('{"data": null, "timed_out": true, "signal_name": "never"}');
  });

  it('cancel stops a running instance', async () => {
    const id = (
      await a.query(`SELECT df.start('SELECT 1' ~> df.wait_for_signal('x') ~> 'SELECT 2') AS id`)
    ).rows[0].id;
    await new Promise((r) => setTimeout(r, 300));
    await a.query(`SELECT df.cancel($1)`, [id]);
    expect((await finished(a, id)).status).toBe('cancelled');
  });
});

describe('storage stays bounded', () => {
  it('a loop that ran 300 iterations holds no more event rows than one that ran 10', async () => {
    await a.query(`CREATE TABLE its (k text)`);
    const rows = async (n: number): Promise<{ events: number; nodes: number }> => {
      const r = await run(
        `@> ('INSERT INTO its VALUES (''${n}'')' ~> df.if('SELECT count(*) >= ${n} FROM its WHERE k = ''${n}''', df.break('done'), 'SELECT 1'))`,
        'test',
        // 900 steps one after another: generous on a loaded machine (a bound, not a speed target)
        100_000,
      );
      expect(r).toMatchObject({ status: 'completed', result: '"done"' });
      const e = await db.admin.query(
        `SELECT (SELECT count(*)::int FROM df.events WHERE instance_id = $1) AS events, (SELECT count(*)::int FROM df.nodes WHERE instance_id = $1) AS nodes`,
        [r.id],
      );
      return e.rows[0];
    };
    const ten = await rows(10);
    const many = await rows(300);
    expect(many.nodes).toBe(ten.nodes);
    expect(many.events).toBeLessThanOrEqual(ten.events);
  }, 120_000);
});
