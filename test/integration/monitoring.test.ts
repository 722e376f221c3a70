/** The monitoring surface (spec §11): df.list_instances, df.instance_info, df.instance_executions, df.metrics, df.instance_nodes. */
import { readFileSync } from 'node:fs';
import type pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { finished, startTestExecutor } from '../harness/executor.js';

const db = useTestDatabase();
let alice: TestRole;
let a: pg.Client;
let b: pg.Client;

beforeAll(async () => {
  alice = await db.role('alice');
  a = await db.connect(alice.url);
  b = await db.connect((await db.role('bob')).url);
  await startTestExecutor(db.url);
});

async function start(c: pg.Client, expr: string, label: string | null = null): Promise<string> {
  return (await c.query(`SELECT df.start(${expr}, $1) AS id`, [label])).rows[0].id;
}

describe('df.list_instances', () => {
  it('lists the caller’s instances newest first, with the in-memory output once completed', async () => {
    const first = await start(a, `'SELECT 1 AS zeta, 2 AS a'`, 'list');
    await finished(a, first);
    const waiting = await start(a, `df.wait_for_signal('never', 3600)`, 'list');
    await start(b, `'SELECT 1'`, 'list');
    const rows = (await a.query(`SELECT * FROM df.list_instances()`)).rows;
    expect(rows.map((r) => r.instance_id)).toEqual([waiting, first]);
    expect(rows[1]).toEqual({
      instance_id: first,
      label: 'list',
      function_name: 'pg_durable::orchestration::execute-function-graph',
      status: 'completed',
      execution_count: '1',
      output: '{"rows":[{"zeta":1,"a":2}],"row_count":1}',
    });
    expect(rows[0]?.output).toBeNull();
    expect((await a.query(`SELECT instance_id FROM df.list_instances('completed')`)).rows).toEqual([
      { instance_id: first },
    ]);
    expect((await a.query(`SELECT * FROM df.list_instances('Completed')`)).rowCount).toBe(0);
    expect((await a.query(`SELECT * FROM df.list_instances(NULL, 1)`)).rows.length).toBe(1);
    await a.query(`SELECT df.cancel($1)`, [waiting]);
  });

  it('checks limit_count against 1 and the configured cap', async () => {
    await expect(a.query(`SELECT * FROM df.list_instances(NULL, 0)`)).rejects.toMatchObject({
      code: '22023',
      message: 'limit_count must be at least 1',
    });
    await expect(a.query(`SELECT * FROM df.list_instances(NULL, 1001)`)).rejects.toMatchObject({
      message:
        'df.list_instances: limit_count (1001) exceeds pg_durable.list_instances_max_limit (1000); request fewer rows, or use the paginated df.list_instances overload (after_cursor/next_cursor) for large result sets',
    });
    await a.query(`SELECT * FROM df.list_instances(NULL, 1000)`);
  });

  it('pages with keyset cursors in the documented format', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push(await start(a, `'SELECT ${i}'`, 'paged'));
    const page = async (cursor: string | null) =>
      (await a.query(`SELECT * FROM df.list_instances(NULL, 2, 'paged', $1)`, [cursor])).rows;
    const p1 = await page(null);
    const p2 = await page(p1[0].next_cursor);
    const p3 = await page(p2[0].next_cursor);
    expect([...p1, ...p2, ...p3].map((r) => r.instance_id)).toEqual([...ids].reverse());
    expect(p1.every((r) => r.next_cursor === p1[0].next_cursor)).toBe(true);
    expect(p3.map((r) => r.next_cursor)).toEqual([null]);
    expect(Buffer.from(p1[0].next_cursor, 'hex').toString()).toMatch(
      new RegExp(
        `^v1\\|\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}\\.\\d{6}[+-]\\d{2}(:\\d{2})?\\|${p1[1].instance_id}$`,
      ),
    );
    for (const bad of ['', 'abc', 'zz', Buffer.from('v2|x|y').toString('hex'), 'ff'.repeat(257)])
      await expect(page(bad)).rejects.toMatchObject({
        message: 'df.list_instances: invalid after_cursor',
      });
  });
});

describe('df.instance_info and df.instance_executions', () => {
  it('describe one visible instance, and nothing for another role’s', async () => {
    const id = await start(a, `'SELECT ''x'' AS v'`, 'info');
    await finished(a, id);
    expect((await a.query(`SELECT * FROM df.instance_info($1)`, [id])).rows).toEqual([
      {
        instance_id: id,
        label: 'info',
        function_name: 'pg_durable::orchestration::execute-function-graph',
        function_version: '1.0.0',
        current_execution_id: '1',
        status: 'completed',
        output: '{"rows":[{"v":"x"}],"row_count":1}',
      },
    ]);
    expect((await b.query(`SELECT * FROM df.instance_info($1)`, [id])).rowCount).toBe(0);
    const ex = (await a.query(`SELECT * FROM df.instance_executions($1)`, [id])).rows;
    expect(ex).toEqual([
      {
        execution_id: '1',
        status: 'Completed',
        event_count: expect.any(String),
        duration_ms: expect.any(String),
        output: '{"rows":[{"v":"x"}],"row_count":1}',
      },
    ]);
    await expect(
      a.query(`SELECT * FROM df.instance_executions($1, 0)`, [id]),
    ).rejects.toMatchObject({ message: 'limit_count must be at least 1' });
  });

  it('count the iterations of a loop at the root as executions', async () => {
    await a.query(`CREATE TABLE laps (n int)`);
    const id = await start(
      a,
      `@> ('INSERT INTO laps VALUES (1)' ~> df.if('SELECT count(*) >= 3 FROM laps', df.break('done'), 'SELECT 1'))`,
    );
    await finished(a, id);
    expect((await a.query(`SELECT execution_count FROM df.list_instances()`)).rows[0]).toEqual({
      execution_count: '3',
    });
    const ex = (
      await a.query(`SELECT execution_id, status, output FROM df.instance_executions($1)`, [id])
    ).rows;
    expect(ex).toEqual([
      { execution_id: '3', status: 'Completed', output: '"done"' },
      { execution_id: '2', status: 'ContinuedAsNew', output: null },
      { execution_id: '1', status: 'ContinuedAsNew', output: null },
    ]);
    expect(
      (await a.query(`SELECT count(*)::int AS n FROM df.instance_executions($1, 2)`, [id])).rows[0]
        .n,
    ).toBe(2);
  });
});

describe('df.metrics', () => {
  it('counts across roles and is not executable by PUBLIC', async () => {
    await expect(a.query(`SELECT * FROM df.metrics()`)).rejects.toMatchObject({ code: '42501' });
    const ops = await db.role('ops', { grant: false });
    await db.admin.query(`SELECT df.grant_usage($1, with_grant => true)`, [ops.name]);
    const o = await db.connect(ops.url);
    expect((await o.query(`SELECT total_instances FROM df.metrics()`)).rowCount).toBe(1);
    await o.end();
    const m = (await db.admin.query(`SELECT * FROM df.metrics()`)).rows[0];
    const all = (await db.admin.query(`SELECT count(*)::text AS n FROM df.instances`)).rows[0].n;
    expect(m.total_instances).toBe(all);
    expect(Number(m.total_executions)).toBeGreaterThanOrEqual(Number(all) + 2); // the loop's laps
    expect(Object.keys(m)).toEqual([
      'total_instances',
      'running_instances',
      'completed_instances',
      'failed_instances',
      'total_executions',
      'total_events',
    ]);
  });
});

describe('df._derived_status (migration 0041)', () => {
  it('answers as the node-by-node definition of migration 0007 did, row for row and in order', async () => {
    // the reference: 0007's text under another name, in this test database only
    const sql = readFileSync(
      new URL('../../migrations/0007_monitoring.sql', import.meta.url),
      'utf8',
    );
    const from = sql.indexOf('CREATE FUNCTION df._derived_status(p_instance text)');
    const to = sql.indexOf('-- Is a stamp (scope, generation) superseded');
    await db.admin.query(
      sql
        .slice(from, to)
        .replace('df._derived_status(p_instance text)', 'public.derived_0007(p_instance text)'),
    );
    await db.admin.query(`GRANT EXECUTE ON FUNCTION public.derived_0007(text) TO ${alice.ident}`);
    await db.admin.query(`CREATE TABLE laps2 (k int)`);
    await db.admin.query(`GRANT INSERT, SELECT ON laps2 TO ${alice.ident}`);
    const ids: string[] = [];
    for (const w of [
      `@> ('INSERT INTO laps2 VALUES (1)' ~> df.if('SELECT count(*) >= 3 FROM laps2 WHERE k = 1', df.break('done'), 'SELECT 1'))`,
      `df.if('SELECT false', 'SELECT 1', 'SELECT 2') ~> df.join3('SELECT 3', 'SELECT 4', 'SELECT 5')`,
      `df.race('SELECT 6', 'SELECT pg_sleep(0.2)') ~> 'SELECT 1/0' ~> 'SELECT 7'`,
      `df.loop('INSERT INTO laps2 VALUES (2)', 'SELECT (SELECT count(*) FROM laps2 WHERE k = 2) < 3') ~> 'SELECT 9'`,
    ])
      ids.push(await start(a, w));
    for (const id of ids) await finished(a, id);
    // and one parked in its loop's second lap: the first lap's arm is superseded with no
    // finished ancestor (pending, from the newest ancestor)
    const parked = await start(
      a,
      `@> ('INSERT INTO laps2 VALUES (3)' ~> df.if('SELECT count(*) >= 2 FROM laps2 WHERE k = 3', df.wait_for_signal('never', 3600), 'SELECT 1'))`,
    );
    await expect
      .poll(
        async () =>
          (
            await a.query(
              `SELECT count(*)::int AS n FROM df.nodes WHERE instance_id = $1 AND node_type = 'SIGNAL' AND status = 'running'`,
              [parked],
            )
          ).rows[0].n,
        { timeout: 20_000, interval: 50 },
      )
      .toBe(1);
    expect(
      (
        await a.query(
          `SELECT inferred_from FROM df._derived_status($1) WHERE inferred_from IS NOT NULL`,
          [parked],
        )
      ).rows.length,
    ).toBeGreaterThan(0);
    const all = (await a.query(`SELECT id FROM df.instances ORDER BY id`)).rows.map(
      (r) => r.id as string,
    );
    expect(all).toEqual(expect.arrayContaining(ids));
    for (const id of all) {
      const now = (await a.query(`SELECT * FROM df._derived_status($1)`, [id])).rows;
      const then = (await a.query(`SELECT * FROM public.derived_0007($1)`, [id])).rows;
      expect(now, id).toEqual(then);
    }
  });
});

describe('df.instance_nodes', () => {
  const derived = async (id: string): Promise<Record<string, [string, string | null]>> => {
    const rows = (
      await a.query(
        `SELECT node_type, coalesce(result_name, query) AS what, inferred_status, inferred_status_from_ancestor_id AS from_id
           FROM df.instance_nodes($1)`,
        [id],
      )
    ).rows;
    return Object.fromEntries(
      rows.map((r) => [`${r.node_type} ${r.what ?? ''}`.trim(), [r.inferred_status, r.from_id]]),
    );
  };

  it('reports the untaken arm of an IF and the unrun rest of a failed THEN as skipped', async () => {
    const ok = await start(a, `df.if('SELECT true', 'SELECT ''yes''', 'SELECT ''no''')`);
    await finished(a, ok);
    const d = await derived(ok);
    expect(d[`SQL SELECT 'yes'`]?.[0]).toBe('completed');
    expect(d[`SQL SELECT 'no'`]?.[0]).toBe('skipped');
    expect(d['SQL SELECT true']?.[0]).toBe('completed');
    const bad = await start(a, `'SELECT 1/0' ~> 'SELECT ''after'''`);
    await finished(a, bad);
    const f = await derived(bad);
    expect(f['SQL SELECT 1/0']?.[0]).toBe('failed');
    expect(f[`SQL SELECT 'after'`]?.[0]).toBe('skipped');
    const cols = (await a.query(`SELECT * FROM df.instance_nodes($1) LIMIT 1`, [bad])).fields.map(
      (x) => x.name,
    );
    expect(cols).toEqual([
      'node_id',
      'node_type',
      'query',
      'result_name',
      'left_node',
      'right_node',
      'status',
      'result',
      'status_details',
      'inferred_status',
      'inferred_status_from_ancestor_id',
      'updated_at',
    ]);
    const legacy = await a.query(`SELECT * FROM df.instance_nodes($1, 5)`, [bad]);
    expect(legacy.fields.map((x) => x.name)).toEqual([
      'execution_id',
      'node_id',
      'node_type',
      'query',
      'result_name',
      'left_node',
      'right_node',
      'status',
      'result',
      'updated_at',
    ]);
    expect(legacy.rows.every((r) => r.execution_id === '1')).toBe(true);
    expect((await b.query(`SELECT * FROM df.instance_nodes($1)`, [bad])).rowCount).toBe(0);
  });
});

describe('df.explain', () => {
  const show = (s: string): string => s.replace(/ /g, '·');

  it('renders a DSL expression as spec §11.6 shows, padded', async () => {
    const r = (
      await a.query(
        `SELECT df.explain($$('SELECT 1' |=> 'a') ~> 'SELECT 2' ~> df.if('SELECT $a > 0', 'SELECT ''yes''', 'SELECT ''no''')$$) AS t`,
      )
    ).rows[0].t;
    expect(show(r)).toBe(
      [
        "SQL:·SELECT·1·|=>·'a'·········",
        '→·SQL:·SELECT·2···············',
        '→·IF··························',
        '····?·condition:··············',
        '······└─SQL:·SELECT·$a·>·0····',
        '····✓·then:···················',
        "······└─SQL:·SELECT·'yes'·····",
        '····✗·else:···················',
        "······└─SQL:·SELECT·'no'······",
      ].join('\n'),
    );
  });

  it('renders an instance with its derived statuses', async () => {
    const id = await start(a, `'SELECT ''winner''' | df.sleep(10)`, 'race');
    await finished(a, id);
    const r = (await a.query(`SELECT df.explain($1) AS t`, [id.toUpperCase()])).rows[0].t;
    expect(show(r)).toBe(
      [
        `Instance:·${id}·(race)`,
        'Status:···✓·Completed',
        `Output:···{"rows":[{"?column?":"winner"}],"row_count":1}`,
        '',
        'RACE·✓····························',
        '····║·branch·1:···················',
        "······├─SQL:·SELECT·'winner'·✓····",
        '····║·branch·2:···················',
        '······└─SLEEP·10s·⊘···············',
      ].join('\n'),
    );
  });

  it('renders every node type, and explains what it cannot', async () => {
    const r = (
      await a.query(
        `SELECT df.explain($$df.loop('SELECT 1', 'SELECT false') ~> @> df.break('a value longer than twenty') ~> df.wait_for_schedule('0 * * * *') ~> df.wait_for_signal('go', 30) ~> df.join3('SELECT 1', 'SELECT 2', 'SELECT 3') ~> df.sleep(0.5)$$) AS t`,
      )
    ).rows[0].t as string;
    const lines = r.split('\n').map((l) => l.trimEnd());
    expect(lines).toEqual([
      'LOOP (while)',
      '    ↻ body:',
      '      └─SQL: SELECT 1',
      '    ? while:',
      '      └─SQL: SELECT false',
      '→ LOOP (infinite)',
      '    ↻ body:',
      "      └─BREAK 'a value longer th...'",
      "→ WAIT '0 * * * *'",
      "→ SIGNAL 'go' (30s)",
      '→ JOIN (3)',
      '    ║ branch 1:',
      '      ├─SQL: SELECT 1',
      '    ║ branch 2:',
      '      ├─SQL: SELECT 2',
      '    ║ branch 3:',
      '      └─SQL: SELECT 3',
      '→ SLEEP 0.5s',
    ]);
    const one = async (input: string): Promise<string> =>
      (await a.query(`SELECT df.explain($1) AS t`, [input])).rows[0].t;
    expect(await one('  SELECT 1  ')).toBe('SQL: SELECT 1    ');
    expect(await one('ffffffff')).toBe("Instance 'ffffffff' not found");
    expect(await one(`'SELECT 1' ~> df.slep(1)`)).toMatch(
      /^Failed to evaluate expression: function df.slep/,
    );
    expect(await one('{"node_type": "NOPE"}')).toMatch(
      /^Invalid durable function graph: root: Unknown node_type 'NOPE'/,
    );
    expect(await one('hello')).toBe(
      'Cannot explain input: not a valid Durofut JSON, instance ID, SQL statement, or DSL expression.\nHint: DSL expressions use df.*() functions and operators like ~>, |=>, &, |.',
    );
    // SQL over 50 bytes is cut to 47 and '...'
    const long = `SELECT ${'y'.repeat(60)}`;
    expect(await one(long)).toBe(`SQL: ${long.slice(0, 47)}...    `);
  });
});
