/** df.start / df._start_graph / df._activate: rows, validation, transactions, wake-ups. */
import pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { useTestDatabase, type TestRole } from '../harness/db.js';

const db = useTestDatabase();
let alice: TestRole;
let a: pg.Client;

beforeAll(async () => {
  alice = await db.role('alice');
  a = await db.connect(alice.url);
});

async function one<T = Record<string, unknown>>(
  c: pg.Client,
  sql: string,
  params: unknown[] = [],
): Promise<T> {
  const r = await c.query(sql, params);
  return r.rows[0] as T;
}

describe('df.start', () => {
  it('inserts the instance and its nodes in pre-order, runnable, as the caller', async () => {
    const { id } = await one<{ id: string }>(
      a,
      `SELECT df.start(('SELECT 1 AS a' |=> 'x') ~> df.if('SELECT $x > 0', 'SELECT ''pos''', df.sleep(1)), 'demo') AS id`,
    );
    expect(id).toMatch(/^[0-9a-f]{8}$/);
    const inst = await one<Record<string, unknown>>(a, `SELECT * FROM df.instances WHERE id = $1`, [
      id,
    ]);
    expect(inst).toMatchObject({
      label: 'demo',
      status: 'pending',
      submitted_by: alice.name,
      runnable: true,
      database: null,
    });
    const nodes = (
      await a.query(
        `SELECT id, node_type, query, result_name, left_node, right_node, status, submitted_by
                       FROM df.nodes WHERE instance_id = $1 ORDER BY ctid`,
        [id],
      )
    ).rows;
    expect(nodes.map((n) => n.node_type)).toEqual(['THEN', 'SQL', 'IF', 'SQL', 'SLEEP', 'SQL']);
    const [then, sql1, iff, pos, sleep, cond] = nodes;
    expect(inst['root_node']).toBe(then.id);
    expect(then).toMatchObject({ left_node: sql1.id, right_node: iff.id, query: null });
    expect(sql1).toMatchObject({ query: 'SELECT 1 AS a', result_name: 'x' });
    expect(iff).toMatchObject({
      left_node: pos.id,
      right_node: sleep.id,
      query: `{"condition_node":"${cond.id}"}`,
    });
    expect(pos.query).toBe(`SELECT 'pos'`);
    expect(sleep.query).toBe('1');
    expect(cond.query).toBe('SELECT $x > 0');
    expect(new Set(nodes.map((n) => n.id)).size).toBe(6);
    for (const n of nodes) expect(n).toMatchObject({ status: 'pending', submitted_by: alice.name });
  });

  it('maps JOIN extras and LOOP conditions into query, keeping existing config keys first', async () => {
    const { id } = await one<{ id: string }>(
      a,
      `SELECT df.start(df.join3('SELECT 1', 'SELECT 2', 'SELECT 3') ~> df.loop('SELECT 4', 'SELECT false')
                       ~> '{"node_type":"IF","query":"{\\"k\\": 1}","left_node":{"node_type":"SQL","query":"t"},"right_node":{"node_type":"SQL","query":"e"},"condition_node":{"node_type":"SQL","query":"c"}}') AS id`,
    );
    const rows = (
      await a.query(
        `SELECT id, node_type, query FROM df.nodes WHERE instance_id = $1 ORDER BY ctid`,
        [id],
      )
    ).rows;
    const join = rows.find((r) => r.node_type === 'JOIN');
    const loop = rows.find((r) => r.node_type === 'LOOP');
    const iff = rows.find((r) => r.node_type === 'IF');
    const ids = (q: string): string[] =>
      Object.values(JSON.parse(q) as Record<string, unknown>).flat() as string[];
    expect(join.query).toMatch(/^\{"extra_nodes":\["[0-9a-f]{8}"\]\}$/);
    expect(rows.find((r) => r.id === ids(join.query)[0]).query).toBe('SELECT 3');
    expect(loop.query).toMatch(/^\{"condition_node":"[0-9a-f]{8}"\}$/);
    expect(rows.find((r) => r.id === JSON.parse(loop.query).condition_node).query).toBe(
      'SELECT false',
    );
    expect(iff.query).toMatch(/^\{"k":1,"condition_node":"[0-9a-f]{8}"\}$/);
  });

  it('starts one instance per row in one statement, and nothing survives a rollback nor wakes anyone', async () => {
    const listener = await db.connect(alice.url);
    const heard: string[] = [];
    listener.on('notification', (n) => heard.push(n.payload ?? ''));
    await listener.query('LISTEN dfgate_wake');
    const r = await a.query(`SELECT df.start('SELECT ' || g) AS id FROM generate_series(1, 100) g`);
    expect(new Set(r.rows.map((x) => x.id)).size).toBe(100);
    await a.query('BEGIN');
    const rb = await a.query(
      `SELECT df.start('SELECT ' || g) AS id FROM generate_series(1, 100) g`,
    );
    await a.query('ROLLBACK');
    const left = await one<{ n: string }>(
      a,
      `SELECT count(*) AS n FROM df.instances WHERE id = ANY($1)`,
      [rb.rows.map((x) => x.id)],
    );
    expect(Number(left.n)).toBe(0);
    await new Promise((res) => setTimeout(res, 300));
    expect(heard.filter((p) => p.startsWith('start:')).length).toBe(100);
    expect(heard.some((p) => rb.rows.some((x) => p.endsWith(x.id)))).toBe(false);
  });

  it('snapshots the caller’s variables (non-NULL values only)', async () => {
    await a.query(`SELECT df.setvar('region', 'eu'), df.setvar('empty', '')`);
    await a.query(`INSERT INTO df.vars (name, value) VALUES ('nothing', NULL)`);
    const { id } = await one<{ id: string }>(a, `SELECT df.start('SELECT 1') AS id`);
    const { vars } = await one<{ vars: unknown }>(
      a,
      `SELECT vars FROM df.instances WHERE id = $1`,
      [id],
    );
    expect(vars).toEqual({ region: 'eu', empty: '' });
    await a.query(`SELECT df.clearvars()`);
  });

  it('works from a trigger and from a DO block', async () => {
    await a.query(`CREATE TABLE orders (id int PRIMARY KEY, wf text)`);
    await a.query(`CREATE FUNCTION start_order() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN NEW.wf := df.start('UPDATE orders SET wf = wf WHERE id = ' || NEW.id, 'order-' || NEW.id); RETURN NEW; END $$`);
    await a.query(
      `CREATE TRIGGER orders_start BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION start_order()`,
    );
    await a.query(`INSERT INTO orders (id) VALUES (1), (2)`);
    const rows = (
      await a.query(
        `SELECT o.id, i.label FROM orders o JOIN df.instances i ON i.id = o.wf ORDER BY o.id`,
      )
    ).rows;
    expect(rows).toEqual([
      { id: 1, label: 'order-1' },
      { id: 2, label: 'order-2' },
    ]);
    await a.query(`DO $$ BEGIN PERFORM df.start('SELECT 42', 'from-do'); END $$`);
    expect(
      (
        await one<{ n: string }>(
          a,
          `SELECT count(*) AS n FROM df.instances WHERE label = 'from-do'`,
        )
      ).n,
    ).toBe('1');
  });

  it('returns the existing instance for a repeated idempotency_key', async () => {
    const first = await one<{ id: string }>(
      a,
      `SELECT df.start('SELECT 1', idempotency_key => 'k-1') AS id`,
    );
    const again = await one<{ id: string }>(
      a,
      `SELECT df.start('SELECT 2', idempotency_key => 'k-1') AS id`,
    );
    expect(again.id).toBe(first.id);
  });

  it('an idempotency key races on its unique index: one instance, both callers get its id, the loser leaves no nodes', async () => {
    const c1 = await db.connect(alice.url);
    const c2 = await db.connect(alice.url);
    await c1.query('BEGIN');
    const first = await one<{ id: string }>(
      c1,
      `SELECT df.start('SELECT 1' ~> 'SELECT 2', idempotency_key => 'race-1') AS id`,
    );
    // the second start waits on the key's index entry until the first commits
    const second = one<{ id: string }>(
      c2,
      `SELECT df.start('SELECT 3 AS race_loser' ~> 'SELECT 4', idempotency_key => 'race-1') AS id`,
    );
    await new Promise((r) => setTimeout(r, 200));
    await c1.query('COMMIT');
    expect((await second).id).toBe(first.id);
    const n = await one<{ i: string; n: string }>(
      db.admin,
      `SELECT (SELECT count(*) FROM df.instances WHERE idempotency_key = 'race-1') AS i,
              (SELECT count(*) FROM df.nodes n JOIN df.instances i ON i.id = n.instance_id
                WHERE i.idempotency_key = 'race-1') AS n`,
    );
    expect(n).toEqual({ i: '1', n: '3' });
    expect(
      (
        await db.admin.query(
          `SELECT count(*)::int AS n FROM df.nodes WHERE query = 'SELECT 3 AS race_loser'`,
        )
      ).rows[0].n,
    ).toBe(0);
    await c1.end();
    await c2.end();
  });

  it('no lock another role can hold delays a start with an idempotency key', async () => {
    // the advisory lock the start once took was named after the role and the key: guessable
    const bob = await db.role('idem_bob');
    const b = await db.connect(bob.url);
    const holder = await db.connect(alice.url);
    await holder.query('BEGIN');
    await holder.query(
      `SELECT pg_advisory_xact_lock(hashtext('dfgate-idem:' || $1), hashtext('nightly'))`,
      [bob.name],
    );
    await b.query(`SET statement_timeout = '3s'`);
    const id = await one<{ id: string }>(
      b,
      `SELECT df.start('SELECT 1', idempotency_key => 'nightly') AS id`,
    );
    expect(id.id).toMatch(/^[0-9a-f]{8}$/);
    await holder.query('ROLLBACK');
    await holder.end();
    await b.end();
  });

  it('refuses the unsupported arguments with 0A000 and bad ones with 22023', async () => {
    await expect(a.query(`SELECT df.start('SELECT 1', 'l', 'otherdb')`)).rejects.toMatchObject({
      code: '0A000',
    });
    await expect(
      a.query(`SELECT df.start('SELECT 1', transaction_mode => 'new')`),
    ).rejects.toMatchObject({
      code: '0A000',
      message: expect.stringContaining(
        'runs only through the dfgate proxy, as a statement of its own',
      ),
    });
    await expect(
      a.query(`SELECT df.start('SELECT 1', transaction_mode => 'later')`),
    ).rejects.toMatchObject({
      code: '22023',
      message: `invalid transaction_mode "later" for df.start(): expected 'caller' or 'new'`,
    });
    expect(
      (
        await one<{ id: string }>(
          a,
          `SELECT df.start('SELECT 1', transaction_mode => 'CALLER') AS id`,
        )
      ).id,
    ).toMatch(/^[0-9a-f]{8}$/);
  });

  it('applies the start rule: unknown types and malformed nodes are errors, other text is SQL', async () => {
    await expect(a.query(`SELECT df.start('{"node_type":"NOPE"}')`)).rejects.toThrow(
      "Invalid durable function: Unknown node_type 'NOPE'. Valid types: SQL, THEN, IF, JOIN, LOOP, BREAK, RACE, SLEEP, WAIT_SCHEDULE, HTTP, HTTP_MULTIPART, SIGNAL",
    );
    await expect(a.query(`SELECT df.start('{"node_type":"SQL","query":[1]}')`)).rejects.toThrow(
      "Invalid durable function: Malformed Durofut JSON with node_type 'SQL'",
    );
    const { id } = await one<{ id: string }>(a, `SELECT df.start('c' ?> 't') AS id`);
    const n = await one<{ node_type: string; query: string }>(
      a,
      `SELECT node_type, query FROM df.nodes WHERE instance_id = $1`,
      [id],
    );
    expect(n).toEqual({
      node_type: 'SQL',
      query: '{"condition": "c", "_partial_if": true, "then_branch": "t"}',
    });
    await a.query(`SELECT df.setvar('v', '1')`);
    await expect(a.query(`SELECT df.start(df.setvar('v', '2'))`)).rejects.toThrow(
      'Invalid durable function: df.setvar() cannot be used as a workflow step. Call df.setvar() before df.start().',
    );
  });

  const invalid: ReadonlyArray<readonly [string, string]> = [
    [
      `{"node_type":"THEN","left_node":"x","right_node":{"node_type":"SQL","query":"b"}}`,
      'root: Durofut children must be JSON objects',
    ],
    [
      `{"node_type":"IF","query":"{}","left_node":{"node_type":"SQL","query":"t"},"right_node":{"node_type":"SQL","query":"e"},"condition_node":5}`,
      'root: condition_node must be a Durofut JSON object',
    ],
    [
      `{"node_type":"JOIN","left_node":{"node_type":"SQL","query":"a"},"right_node":{"node_type":"SQL","query":"b"},"extra_nodes":[1]}`,
      'root: extra_nodes entries must be Durofut JSON objects',
    ],
    [
      `{"node_type":"THEN","left_node":{"node_type":"SQL","query":"a"},"right_node":{"node_type":"SQL","query":"b"},"condition_node":{"node_type":"SQL","query":"c"}}`,
      'root: condition_node is not valid for THEN nodes',
    ],
    [
      `{"node_type":"RACE","left_node":{"node_type":"SQL","query":"a"},"right_node":{"node_type":"SQL","query":"b"},"extra_nodes":[{"node_type":"SQL","query":"c"}]}`,
      'root: extra_nodes is not valid for RACE nodes',
    ],
    [
      `{"node_type":"IF","query":"{\\"condition_node\\":\\"aaaaaaaa\\"}","left_node":{"node_type":"SQL","query":"t"},"right_node":{"node_type":"SQL","query":"e"}}`,
      'root: condition_node in IF must be a first-class Durofut field, not embedded in query',
    ],
    [
      `{"node_type":"JOIN","query":"{\\"extra_nodes\\":[]}","left_node":{"node_type":"SQL","query":"a"},"right_node":{"node_type":"SQL","query":"b"}}`,
      'root: extra_nodes in JOIN must be a first-class Durofut field, not embedded in query',
    ],
    [
      `{"node_type":"IF","query":"not json","left_node":{"node_type":"SQL","query":"t"},"right_node":{"node_type":"SQL","query":"e"},"condition_node":{"node_type":"SQL","query":"c"}}`,
      'root: query in IF must be valid JSON config: ',
    ],
    [
      `{"node_type":"LOOP","query":"[1]","left_node":{"node_type":"SQL","query":"t"},"condition_node":{"node_type":"SQL","query":"c"}}`,
      'root: query in LOOP must be a JSON config object',
    ],
    [
      `{"node_type":"THEN","left_node":{"node_type":"SQL","query":"a"},"right_node":{"node_type":"IF","query":"{}","left_node":{"node_type":"SQL","query":"t"},"right_node":{"node_type":"BAD"},"condition_node":{"node_type":"SQL","query":"c"}}}`,
      "root.right.right: Unknown node_type 'BAD'",
    ],
    [
      `{"node_type":"IF","query":"{}","left_node":{"node_type":"SQL","query":"t"},"right_node":{"node_type":"SQL","query":"e"},"condition_node":{"node_type":"THEN","left_node":{"node_type":"SQL","query":"a"},"right_node":{"node_type":"SQL","query":"b"},"condition_node":{"node_type":"SQL","query":"x"}}}`,
      'root.condition_node: condition_node is not valid for THEN nodes',
    ],
  ];
  for (const [graph, message] of invalid) {
    it(`validates: ${message}`, async () => {
      const err = await a.query(`SELECT df.start($1)`, [graph]).catch((e: unknown) => e);
      expect(err).toMatchObject({
        code: '22023',
        message: expect.stringContaining(
          `Invalid durable function: Invalid durable function graph: ${message}`,
        ),
      });
    });
  }

  it('enforces the depth limit: 256 nested df.seq calls pass, 257 do not', async () => {
    const nested = (n: number): string => {
      let e = `'SELECT 0'`;
      for (let i = 0; i < n; i++) e = `df.seq(${e}, 'SELECT ${i + 1}')`;
      return e;
    };
    const deep = await a.query<{ id: string }>(`SELECT df.start(${nested(256)}) AS id`);
    expect(deep.rows[0]?.id).toMatch(/^[0-9a-f]{8}$/);
    await expect(a.query(`SELECT df.start(${nested(257)})`)).rejects.toThrow(
      'Graph exceeds maximum nesting depth of 256. Simplify the workflow or break it into multiple instances.',
    );
  });

  describe('a large tree (migration 0043)', () => {
    // what PostgreSQL knows of df.nodes after a day of small workflows: an instance has one node
    // or two, so it plans for a big one as for those. Before migration 0043 the walk of a start
    // then read all of the instance's nodes again at every level of the tree.
    beforeAll(async () => {
      await a.query(`SELECT count(df.start('SELECT 1', 'small')) FROM generate_series(1, 500)`);
      await db.admin.query('ANALYZE df.nodes');
    });

    /** Rows of df.nodes the current transaction has read so far. */
    const nodeReads = async (): Promise<number> =>
      (
        await one<{ reads: number }>(
          a,
          `SELECT (idx_tup_fetch + seq_tup_read)::int AS reads FROM pg_stat_xact_all_tables
            WHERE relid = 'df.nodes'::regclass`,
        )
      ).reads;

    it('df.start reads each node a few times, not once per level', async () => {
      // a balanced tree of 2,048 steps: 4,095 nodes, 12 levels (66,521 reads without 0043, 21,476 with it)
      const tree = (lo: number, hi: number): unknown => {
        if (hi - lo === 1) return { node_type: 'SQL', query: `SELECT ${lo}` };
        const mid = (lo + hi) >> 1;
        return { node_type: 'THEN', left_node: tree(lo, mid), right_node: tree(mid, hi) };
      };
      await a.query('BEGIN');
      try {
        const { id } = await one<{ id: string }>(a, `SELECT df.start($1, 'wide') AS id`, [
          JSON.stringify(tree(0, 2048)),
        ]);
        expect(
          await one(
            a,
            `SELECT count(*)::int AS n, count(*) FILTER (WHERE status = 'pending')::int AS pending
               FROM df.nodes WHERE instance_id = $1`,
            [id],
          ),
        ).toEqual({ n: 4095, pending: 4095 });
        expect(await nodeReads()).toBeLessThan(8 * 4095);
      } finally {
        await a.query('ROLLBACK');
      }
    });

    it('df._activate of the same tree written by hand reads each node a few times too', async () => {
      // rows with ids 20000000, 20000001, ... in pre-order (65,520 reads without 0043, 20,475 with it)
      const rows: Array<Record<string, string | null>> = [];
      const add = (lo: number, hi: number): string => {
        const id = (0x20000000 + rows.length).toString(16);
        const row: Record<string, string | null> = { i: id, t: 'SQL', q: `SELECT ${lo}` };
        rows.push(row);
        if (hi - lo > 1) {
          const mid = (lo + hi) >> 1;
          Object.assign(row, { t: 'THEN', q: null, l: add(lo, mid), r: add(mid, hi) });
        }
        return id;
      };
      add(0, 2048);
      await a.query('BEGIN');
      try {
        await a.query(`INSERT INTO df.instances (id, root_node) VALUES ('1fffffff', '20000000')`);
        await a.query(
          `INSERT INTO df.nodes (id, instance_id, node_type, query, left_node, right_node)
           SELECT r.i, '1fffffff', r.t, r.q, r.l, r.r
             FROM json_to_recordset($1) AS r(i text, t text, q text, l text, r text)`,
          [JSON.stringify(rows)],
        );
        const before = await nodeReads();
        await a.query(`SELECT df._activate('1fffffff')`);
        expect(await nodeReads()).toBeLessThan(before + 8 * 4095);
        expect(
          (await one(a, `SELECT runnable FROM df.instances WHERE id = '1fffffff'`)).runnable,
        ).toBe(true);
      } finally {
        await a.query('ROLLBACK');
      }
    });
  });

  it('enforces the node limit: a JOIN of 10,000 nodes passes, 10,001 does not', async () => {
    const join = (branches: number): string =>
      JSON.stringify({
        node_type: 'JOIN',
        left_node: { node_type: 'SQL', query: 'SELECT 1' },
        right_node: { node_type: 'SQL', query: 'SELECT 2' },
        extra_nodes: Array.from({ length: branches - 2 }, (_, i) => ({
          node_type: 'SQL',
          query: `SELECT ${i + 3}`,
        })),
      });
    const { id } = await one<{ id: string }>(a, `SELECT df.start($1) AS id`, [join(9999)]);
    expect(
      (
        await one<{ n: string }>(a, `SELECT count(*) AS n FROM df.nodes WHERE instance_id = $1`, [
          id,
        ])
      ).n,
    ).toBe('10000');
    await expect(a.query(`SELECT df.start($1)`, [join(10000)])).rejects.toThrow(
      'Workflow exceeds maximum node count of 10000. Simplify the workflow or break it into multiple instances.',
    );
  });

  it('reports constraint failures of hand-written graphs as a failed node batch', async () => {
    const err = await a
      .query(
        `SELECT df.start('{"node_type":"THEN","query":"x","left_node":{"node_type":"SQL","query":"a"},"right_node":{"node_type":"SQL","query":"b"}}')`,
      )
      .catch((e: unknown) => e);
    expect(err).toMatchObject({
      code: '23514',
      message: expect.stringMatching(/^Failed to insert node batch '[0-9a-f]{8}\.\.[0-9a-f]{8}': /),
    });
    const err2 = await a
      .query(`SELECT df.start('{"node_type":"SQL","query":"a","result_name":"no way"}')`)
      .catch((e: unknown) => e);
    expect(err2).toMatchObject({
      code: '23514',
      message: expect.stringContaining('nodes_result_name_check'),
    });
  });
});

describe('identity and the superuser guard', () => {
  it('refuses superusers unless df.config allows them', async () => {
    const boss = await db.role('boss', { superuser: true, grant: false });
    const c = await db.connect(boss.url);
    await expect(c.query(`SELECT df.start('SELECT 1')`)).rejects.toThrow(
      `pg_durable: superuser instances are disabled. current_user "${boss.name}" is a superuser`,
    );
    await db.admin.query(
      `UPDATE df.config SET value = 'true' WHERE key = 'enable_superuser_instances'`,
    );
    try {
      expect((await one<{ id: string }>(c, `SELECT df.start('SELECT 1') AS id`)).id).toMatch(
        /^[0-9a-f]{8}$/,
      );
    } finally {
      await db.admin.query(
        `UPDATE df.config SET value = 'false' WHERE key = 'enable_superuser_instances'`,
      );
    }
  });

  it('refuses a NOLOGIN role reached with SET ROLE, and records the role after SET ROLE', async () => {
    const group = await db.role('group', { login: false, grant: true });
    const other = await db.role('other');
    await db.admin.query(`GRANT ${group.ident}, ${other.ident} TO ${alice.ident}`);
    await a.query(`SET ROLE ${group.ident}`);
    await expect(a.query(`SELECT df.start('SELECT 1')`)).rejects.toThrow(
      `current_user "${group.name}" does not have LOGIN privilege. The background worker must connect as this role to execute SQL. Grant LOGIN to this role or call df.start() as a role with LOGIN.`,
    );
    await a.query(`SET ROLE ${other.ident}`);
    const { id } = await one<{ id: string }>(a, `SELECT df.start('SELECT 1') AS id`);
    await a.query(`RESET ROLE`);
    expect(
      (
        await one<{ s: string }>(
          db.admin,
          `SELECT submitted_by::text AS s FROM df.instances WHERE id = $1`,
          [id],
        )
      ).s,
    ).toBe(other.name);
  });

  it('df.config is readable through df.start but writable only by the schema owner', async () => {
    await expect(
      a.query(`UPDATE df.config SET value = 'true' WHERE key = 'enable_superuser_instances'`),
    ).rejects.toMatchObject({ code: '42501' });
    await expect(a.query(`SELECT * FROM df.config`)).rejects.toMatchObject({ code: '42501' });
  });
});
