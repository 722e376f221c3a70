/**
 * Nodes a tenant writes by hand (docs/security.md): df._activate_graph checks that they form one
 * tree in the tenant's own name, not what each node says. Whatever they say, the executor fails
 * that instance with an error and goes on serving everyone else; nothing runs as anyone else.
 */
import type pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { useTestDatabase } from '../harness/db.js';
import { finished, startTestExecutor } from '../harness/executor.js';

const db = useTestDatabase();
let a: pg.Client;

beforeAll(async () => {
  a = await db.connect((await db.role('alice', { http: true })).url);
  await startTestExecutor(db.url);
});

/** One node of `type` with `query`, written by hand and activated in one transaction. */
async function forged(type: string, query: string | null, options = '{}'): Promise<string> {
  const id = Math.floor(Math.random() * 0xffffffff)
    .toString(16)
    .padStart(8, '0');
  const root = Math.floor(Math.random() * 0xffffffff)
    .toString(16)
    .padStart(8, '0');
  await a.query('BEGIN');
  try {
    await a.query(
      `INSERT INTO df.nodes (id, instance_id, node_type, query) VALUES ($1, $2, $3, $4)`,
      [root, id, type, query],
    );
    const r = await a.query(`SELECT df._activate_graph($1, $2, 'forged', $3::jsonb) AS id`, [
      id,
      root,
      options,
    ]);
    await a.query('COMMIT');
    return r.rows[0].id as string;
  } catch (err) {
    await a.query('ROLLBACK');
    throw err;
  }
}

describe('hand-written nodes', () => {
  it('that df.start would refuse fail their instance, and the executor goes on', async () => {
    const ids = [
      await forged('SLEEP', 'banana'),
      await forged('WAIT_SCHEDULE', 'not a cron'),
      await forged('BREAK', '{}'),
      await forged('SIGNAL', '{"signal_name": 42}'),
      await forged('HTTP', 'not json'),
    ];
    const outcomes = [];
    for (const id of ids) outcomes.push((await finished(a, id)).status);
    expect(outcomes).toEqual(['failed', 'failed', 'failed', 'failed', 'failed']);
    for (const id of ids) {
      const e = await a.query(`SELECT error FROM df.instances WHERE id = $1`, [id]);
      expect(e.rows[0].error, id).toEqual(expect.any(String));
    }
    // and a well-formed start right after still runs
    const ok = (await a.query(`SELECT df.start('SELECT 41 + 1 AS v') AS id`)).rows[0].id as string;
    expect((await finished(a, ok)).status).toBe('completed');
  });

  it('options df.start would refuse are refused', async () => {
    const cases: Array<[string, string]> = [
      ['{"max_attempts": -5}', 'max_attempts must be a positive integer'],
      ['{"max_attempts": "abc"}', 'max_attempts must be a positive integer'],
      ['{"max_backoff_seconds": 0}', 'max_backoff must be positive'],
      ['{"on_failure": 42}', 'on_failure must be a workflow'],
      ['[1, 2]', 'options must be a JSON object'],
    ];
    for (const [options, message] of cases)
      await expect(forged('SQL', 'SELECT 1', options), options).rejects.toMatchObject({
        code: '22023',
        message: expect.stringContaining(message),
      });
  });
});

describe('inert instances written by hand', () => {
  /** An instance row and nodes committed by hand, never activated (runnable stays false). */
  async function inert(
    nodes: Array<[string, string, string | null, string | null, string | null]>,
  ) {
    const id = Math.floor(Math.random() * 0xffffffff)
      .toString(16)
      .padStart(8, '0');
    await a.query('BEGIN');
    try {
      await a.query(`INSERT INTO df.instances (id, root_node) VALUES ($1, $2)`, [
        id,
        nodes[0]?.[0],
      ]);
      for (const [nid, type, l, r, q] of nodes)
        await a.query(
          `INSERT INTO df.nodes (instance_id, id, node_type, left_node, right_node, query) VALUES ($1, $2, $3, $4, $5, $6)`,
          [id, nid, type, l, r, q],
        );
      await a.query('COMMIT');
    } catch (err) {
      await a.query('ROLLBACK');
      throw err;
    }
    return id;
  }
  const hex = (k: number): string => k.toString(16).padStart(8, '0');

  it('df.explain does not walk a graph that is not a tree (migration 0040)', async () => {
    // each THEN names the next as both children: every level below doubles the walk
    const chain = Array.from({ length: 40 }, (_, k): [string, string, string, string, null] => [
      hex(0xa0000000 + k),
      'THEN',
      hex(0xa0000001 + k),
      hex(0xa0000001 + k),
      null,
    ]);
    const doubled = await inert([...chain, [hex(0xa0000028), 'SQL', null, null, 'SELECT 1']]);
    const self = await inert([[hex(0xb0000000), 'THEN', hex(0xb0000000), hex(0xb0000000), null]]);
    const join = await inert([
      [hex(0xc0000000), 'JOIN', hex(0xc0000001), hex(0xc0000002), `{"extra_nodes":["c0000001"]}`],
      [hex(0xc0000001), 'SQL', null, null, 'SELECT 1'],
      [hex(0xc0000002), 'SQL', null, null, 'SELECT 2'],
    ]);
    await a.query(`SET statement_timeout = '10s'`);
    try {
      for (const id of [doubled, self, join])
        expect((await a.query(`SELECT df.explain($1) AS t`, [id])).rows[0].t).toBe(
          `Instance '${id}' cannot be shown: its nodes do not form one tree under its root (df.start never accepted them)`,
        );
      // the walk itself, called directly, stops past the most nodes a workflow has
      await expect(
        a.query(`SELECT df._explain_nest($1, $2, '{}')`, [doubled, hex(0xa0000000)]),
      ).rejects.toMatchObject({ code: '22023' });
      // a tree written by hand is shown as any other instance (it is inert: never started)
      const tree = await inert([
        [hex(0xd0000000), 'THEN', hex(0xd0000001), hex(0xd0000002), null],
        [hex(0xd0000001), 'SQL', null, null, 'SELECT 1'],
        [hex(0xd0000002), 'SQL', null, null, 'SELECT 2'],
      ]);
      const t = (await a.query(`SELECT df.explain($1) AS t`, [tree])).rows[0].t as string;
      expect(t).toContain(`Instance: ${tree}`);
      expect(t).toContain('SELECT 2');
      expect(t).not.toContain('_n');
      // children by df.start's rules (migration 0042): an IF's query may hold "extra_nodes"
      // (df.start ignores it), naming an id twice, and the tree is still shown
      const ifTree = await inert([
        [
          hex(0xe0000000),
          'IF',
          hex(0xe0000002),
          hex(0xe0000003),
          `{"condition_node":"e0000001","extra_nodes":["e0000002","e0000002"]}`,
        ],
        [hex(0xe0000001), 'SQL', null, null, 'SELECT true'],
        [hex(0xe0000002), 'SQL', null, null, 'SELECT 1'],
        [hex(0xe0000003), 'SQL', null, null, 'SELECT 2'],
      ]);
      expect((await a.query(`SELECT df.explain($1) AS t`, [ifTree])).rows[0].t).toContain(
        `Instance: ${ifTree}`,
      );
      // a chain deeper than df.start allows (256): the line, not PostgreSQL's stack limit
      const deep = await inert([
        ...Array.from({ length: 300 }, (_, k): [string, string, string, string, null] => [
          hex(0xf0000000 + k),
          'THEN',
          hex(0xf1000000 + k),
          hex(0xf0000001 + k),
          null,
        ]),
        ...Array.from({ length: 300 }, (_, k): [string, string, null, null, string] => [
          hex(0xf1000000 + k),
          'SQL',
          null,
          null,
          'SELECT 1',
        ]),
        [hex(0xf0000000 + 300), 'SQL', null, null, 'SELECT 2'],
      ]);
      expect((await a.query(`SELECT df.explain($1) AS t`, [deep])).rows[0].t).toContain(
        'cannot be shown',
      );
    } finally {
      await a.query(`RESET statement_timeout`);
    }
  });
});
