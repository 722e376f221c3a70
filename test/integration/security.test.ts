/** Privileges (spec §9.1), row-level security (§9.2), signals and cancel across roles. */
import pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { useTestDatabase, withUser, type TestRole } from '../harness/db.js';

const db = useTestDatabase();
let alice: TestRole;
let bob: TestRole;
let a: pg.Client;
let b: pg.Client;
let bobInstance: string;

beforeAll(async () => {
  alice = await db.role('alice');
  bob = await db.role('bob');
  a = await db.connect(alice.url);
  b = await db.connect(bob.url);
  await b.query(`SELECT df.setvar('secret', 'bob-only')`);
  bobInstance = (
    await b.query(`SELECT df.start(df.wait_for_signal('go') ~> 'SELECT 1', 'bob-wf') AS id`)
  ).rows[0].id;
  await b.query(
    `INSERT INTO df.signals (instance_id, submitted_by, signal_name, payload) VALUES ($1, $2, 'early', '1')`,
    [bobInstance, bob.name],
  );
});

describe('row-level security', () => {
  it('role A sees none of role B’s rows in any table', async () => {
    for (const table of ['df.instances', 'df.nodes', 'df.vars', 'df.signals', 'df.events']) {
      const r = await a.query(`SELECT count(*)::int AS n FROM ${table}`);
      expect(r.rows[0].n, table).toBe(0);
    }
    expect((await b.query(`SELECT count(*)::int AS n FROM df.nodes`)).rows[0].n).toBe(3);
    expect(
      (await a.query(`SELECT df.status($1) AS s, df.result($1) AS r`, [bobInstance])).rows[0],
    ).toEqual({ s: null, r: null });
    expect((await a.query(`SELECT df.getvar('secret') AS v`)).rows[0].v).toBeNull();
  });

  it('role A cannot update or delete B’s rows', async () => {
    const up = await a.query(`UPDATE df.instances SET status = 'cancelled' WHERE id = $1`, [
      bobInstance,
    ]);
    expect(up.rowCount).toBe(0);
    await expect(
      a.query(`DELETE FROM df.instances WHERE id = $1`, [bobInstance]),
    ).rejects.toMatchObject({ code: '42501' });
    // no role may DELETE from df.vars at all (migration 0044; df.unsetvar goes through df._purge_vars)
    await expect(a.query(`DELETE FROM df.vars WHERE name = 'secret'`)).rejects.toMatchObject({
      code: '42501',
    });
    expect((await a.query(`UPDATE df.vars SET value = 'x' WHERE name = 'secret'`)).rowCount).toBe(
      0,
    );
    expect((await b.query(`SELECT df.status($1) AS s`, [bobInstance])).rows[0].s).toBe('pending');
  });

  it('inserting a row in B’s name is a policy violation', async () => {
    await expect(
      a.query(
        `INSERT INTO df.instances (id, root_node, submitted_by) VALUES ('0000aaaa', '0000bbbb', $1)`,
        [bob.name],
      ),
    ).rejects.toMatchObject({
      code: '42501',
      message: expect.stringContaining('row-level security'),
    });
    await expect(
      a.query(`INSERT INTO df.vars (name, value, owner) VALUES ('x', 'y', $1)`, [bob.name]),
    ).rejects.toMatchObject({
      code: '42501',
    });
    await expect(
      a.query(
        `INSERT INTO df.signals (instance_id, submitted_by, signal_name, payload) VALUES ($1, $2, 'go', '{}')`,
        [bobInstance, bob.name],
      ),
    ).rejects.toMatchObject({ code: '42501' });
  });

  it('submitted_by cannot be changed, not even by the owner of the row', async () => {
    await expect(
      b.query(`UPDATE df.instances SET submitted_by = $2 WHERE id = $1`, [bobInstance, alice.name]),
    ).rejects.toMatchObject({
      code: '42501',
    });
  });

  it('a user may set their own instance’s status only to cancelled', async () => {
    const id = (await a.query(`SELECT df.start('SELECT 1') AS id`)).rows[0].id;
    await expect(
      a.query(`UPDATE df.instances SET status = 'completed' WHERE id = $1`, [id]),
    ).rejects.toThrow("instance status can only be changed to 'cancelled'");
    await a.query(`UPDATE df.instances SET status = 'cancelled' WHERE id = $1`, [id]);
    const again = await a.query(
      `UPDATE df.instances SET status = 'cancelled', updated_at = now() WHERE id = $1`,
      [id],
    );
    expect(again.rowCount).toBe(1);
    await expect(
      a.query(`UPDATE df.instances SET status = 'pending' WHERE id = $1`, [id]),
    ).rejects.toThrow('is already cancelled');
  });

  it('the status guard answers the same when the caller’s own = and <> say no to everything', async () => {
    // a granted role may update its own instances' status (to cancel them), with operators of its
    // own first on its search_path: the guard's comparisons are not the caller's
    await db.admin.query(`
      CREATE SCHEMA guard_evil;
      CREATE FUNCTION guard_evil.no(text, text) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT false';
      CREATE OPERATOR guard_evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = guard_evil.no);
      CREATE OPERATOR guard_evil.<> (LEFTARG = text, RIGHTARG = text, FUNCTION = guard_evil.no);
      GRANT USAGE ON SCHEMA guard_evil TO ${alice.ident};`);
    const id = (await a.query(`SELECT df.start('SELECT 1') AS id`)).rows[0].id as string;
    const e = await db.connect(alice.url);
    await e.query(`SET search_path = guard_evil, pg_catalog`);
    expect((await e.query(`SELECT 'a' = 'a' AS eq, 'a' <> 'b' AS ne`)).rows[0]).toEqual({
      eq: false,
      ne: false,
    });
    const set = (status: string): Promise<unknown> =>
      e.query(
        `UPDATE df.instances SET status = $2 WHERE id OPERATOR(pg_catalog.=) $1::pg_catalog.text`,
        [id, status],
      );
    await expect(set('completed')).rejects.toMatchObject({
      code: '42501',
      message: "instance status can only be changed to 'cancelled' (use df.cancel)",
    });
    await set('cancelled');
    await expect(set('pending')).rejects.toMatchObject({
      code: '55000',
      message: `instance ${id} is already cancelled; its status cannot change`,
    });
    expect(
      (await db.admin.query(`SELECT status FROM df.instances WHERE id = $1`, [id])).rows[0].status,
    ).toBe('cancelled');
  });

  it('a directly inserted instance never becomes runnable', async () => {
    await a.query('BEGIN');
    await a.query(`INSERT INTO df.instances (id, root_node) VALUES ('00000001', '00000002')`);
    await a.query(
      `INSERT INTO df.nodes (id, instance_id, node_type, query) VALUES ('00000002', '00000001', 'SQL', 'SELECT 1')`,
    );
    await a.query('COMMIT');
    const row = (
      await a.query(
        `SELECT runnable, submitted_by::text AS s FROM df.instances WHERE id = '00000001'`,
      )
    ).rows[0];
    expect(row).toEqual({ runnable: false, s: alice.name });
    await expect(
      a.query(`UPDATE df.instances SET runnable = true WHERE id = '00000001'`),
    ).rejects.toMatchObject({ code: '42501' });
    await expect(
      a.query(
        `INSERT INTO df.instances (id, root_node, runnable) VALUES ('00000003', '00000004', true)`,
      ),
    ).rejects.toMatchObject({ code: '42501' });
    // a later transaction cannot activate it either (the answer for any row it did not insert)
    await expect(a.query(`SELECT df._activate('00000001')`)).rejects.toMatchObject({
      code: 'P0002',
      message: 'Instance not found or access denied: 00000001',
    });
    expect(
      (await a.query(`SELECT runnable FROM df.instances WHERE id = '00000001'`)).rows[0].runnable,
    ).toBe(false);
  });

  it('df._activate on forged rows in the same transaction applies every df.start check', async () => {
    await a.query('BEGIN');
    await a.query(`INSERT INTO df.instances (id, root_node) VALUES ('00000011', '00000012')`);
    await a.query(`INSERT INTO df.nodes (id, instance_id, node_type, query) VALUES
      ('00000012', '00000011', 'HTTP', '{"url":"http://169.254.169.254/","method":"GET","body":null,"headers":null,"timeout_seconds":1}')`);
    await expect(a.query(`SELECT df._activate('00000011')`)).rejects.toThrow(
      'permission denied for HTTP steps',
    );
    await a.query('ROLLBACK');
    // a cycle of nodes is not a tree
    await a.query('BEGIN');
    await a.query(`INSERT INTO df.instances (id, root_node) VALUES ('00000021', '00000022')`);
    await a.query(`INSERT INTO df.nodes (id, instance_id, node_type, left_node) VALUES
      ('00000022', '00000021', 'LOOP', '00000023'), ('00000023', '00000021', 'LOOP', '00000022')`);
    await expect(a.query(`SELECT df._activate('00000021')`)).rejects.toThrow('do not form a tree');
    await a.query('ROLLBACK');
  });

  it('df._activate_graph takes only nodes this transaction inserted and applies every df.start check', async () => {
    const refused = async (nodes: string, call: string, message: string | RegExp) => {
      await a.query('BEGIN');
      await a.query(
        `INSERT INTO df.nodes (id, instance_id, node_type, query, left_node) VALUES ${nodes}`,
      );
      await expect(a.query(call)).rejects.toThrow(message);
      await a.query('ROLLBACK');
    };
    await refused(
      `('00000032', '00000031', 'HTTP', '{"url":"http://169.254.169.254/","method":"GET","body":null,"headers":null,"timeout_seconds":1}', NULL)`,
      `SELECT df._activate_graph('00000031', '00000032', NULL, '{}')`,
      'permission denied for HTTP steps',
    );
    await refused(
      `('00000042', '00000041', 'LOOP', NULL, '00000043'), ('00000043', '00000041', 'LOOP', NULL, '00000042')`,
      `SELECT df._activate_graph('00000041', '00000042', NULL, '{}')`,
      'do not form a tree',
    );
    // a root that is not one of the nodes
    await refused(
      `('00000052', '00000051', 'SQL', 'SELECT 1', NULL)`,
      `SELECT df._activate_graph('00000051', '00000059', NULL, '{}')`,
      'do not form a tree under its root',
    );
    // one node is checked as a tree too unless it is the root and names no other node (migration 0035)
    await refused(
      `('00000062', '00000061', 'LOOP', NULL, '00000062')`,
      `SELECT df._activate_graph('00000061', '00000062', NULL, '{}')`,
      'do not form a tree',
    );
    await refused(
      `('00000062', '00000061', 'SQL', 'SELECT 1', NULL)`,
      `SELECT df._activate_graph('00000061', NULL, NULL, '{}')`,
      'do not form a tree under its root',
    );
    // an instance's nodes that another transaction committed: the answer for an unknown id
    const id = (await a.query(`SELECT df.start('SELECT 1') AS id`)).rows[0].id as string;
    const root = (await a.query(`SELECT root_node FROM df.instances WHERE id = $1`, [id])).rows[0]
      .root_node as string;
    for (const [i, r] of [
      [id, root],
      ['00000071', '00000072'],
    ] as const)
      await expect(
        a.query(`SELECT df._activate_graph($1, $2, NULL, '{}')`, [i, r]),
      ).rejects.toMatchObject({
        code: 'P0002',
        message: `Instance not found or access denied: ${i}`,
      });
    // nodes inserted by hand in the caller's own name that df.start would accept: what df.start gives
    await a.query('BEGIN');
    await a.query(
      `INSERT INTO df.nodes (id, instance_id, node_type, query) VALUES ('00000082', '00000081', 'SQL', 'SELECT 81')`,
    );
    await a.query(`SELECT df._activate_graph('00000081', '00000082', 'by hand', '{}')`);
    await a.query('COMMIT');
    expect(
      (
        await a.query(
          `SELECT submitted_by::text AS s, runnable, label FROM df.instances WHERE id = '00000081'`,
        )
      ).rows[0],
    ).toEqual({ s: alice.name, runnable: true, label: 'by hand' });
  });

  it('df._start_graph called directly gains nothing over df.start', async () => {
    const http = JSON.stringify({
      node_type: 'HTTP',
      query:
        '{"url":"https://x.example.com","method":"GET","body":null,"headers":null,"timeout_seconds":5}',
    });
    await expect(a.query(`SELECT df.start($1)`, [http])).rejects.toThrow(
      'permission denied for HTTP steps',
    );
    await expect(a.query(`SELECT df._start_graph($1, NULL, NULL, '{}')`, [http])).rejects.toThrow(
      'permission denied for HTTP steps',
    );
    await expect(
      a.query(`SELECT df._start_graph('{"node_type":"X"}', NULL, NULL, '{}')`),
    ).rejects.toThrow('Unknown node_type');
    // the submitter is always current_user, whatever the options say
    const id = (
      await a.query(`SELECT df._start_graph('SELECT 1', NULL, NULL, $1) AS id`, [
        JSON.stringify({ submitted_by: bob.name }),
      ])
    ).rows[0].id;
    expect(
      (await db.admin.query(`SELECT submitted_by::text AS s FROM df.instances WHERE id = $1`, [id]))
        .rows[0].s,
    ).toBe(alice.name);
  });
});

describe('df._start_rows called directly (the edge form)', () => {
  const rows = (r: unknown[]): string => JSON.stringify(r);
  const nodesLeft = async (): Promise<number> =>
    (await db.admin.query(`SELECT count(*)::int AS n FROM df.nodes WHERE query LIKE 'SELECT 7%'`))
      .rows[0].n;

  it('gains nothing over inserting nodes by hand: the checks of df._activate_graph refuse a forged tree', async () => {
    const before = await nodesLeft();
    const leaf = (i: string): Record<string, string> => ({ i, t: 'SQL', q: `SELECT 7 -- ${i}` });
    for (const [why, r, message] of [
      [
        'a node with two parents',
        [{ i: 'aaaa0001', t: 'THEN', l: 'aaaa0002', r: 'aaaa0002' }, leaf('aaaa0002')],
        'do not form a tree',
      ],
      [
        'a cycle through the root',
        [{ i: 'aaaa0001', t: 'THEN', l: 'aaaa0002', r: 'aaaa0001' }, leaf('aaaa0002')],
        'do not form a tree',
      ],
      [
        'a node the root does not reach',
        [leaf('aaaa0001'), leaf('aaaa0002')],
        'do not form a tree under its root',
      ],
      [
        'a child that does not exist',
        [{ i: 'aaaa0001', t: 'THEN', l: 'aaaa0002', r: 'aaaa0003' }, leaf('aaaa0002')],
        'do not form a tree',
      ],
      ['no rows', [], 'Instance not found or access denied'],
    ] as const)
      await expect(
        a.query(`SELECT df._start_rows($1, 'forged')`, [rows([...r])]),
        why,
      ).rejects.toThrow(message);
    await expect(a.query(`SELECT df._start_rows('{"i":"x"}')`)).rejects.toThrow(
      'cannot call json_to_recordset on an object',
    );
    // what a table check refuses is refused as for a hand-written node
    await expect(
      a.query(`SELECT df._start_rows($1)`, [rows([{ i: 'aaaa0001', t: 'NOPE', q: 'SELECT 7' }])]),
    ).rejects.toMatchObject({ code: '23514' });
    expect(await nodesLeft()).toBe(before);
  });

  it('an HTTP step still needs the grant; the submitter is the caller; the id is fresh', async () => {
    const http = {
      i: 'bbbb0001',
      t: 'HTTP',
      q: '{"url":"https://x.example.com","method":"GET","body":null,"headers":null,"timeout_seconds":5}',
    };
    await expect(a.query(`SELECT df._start_rows($1)`, [rows([http])])).rejects.toThrow(
      'permission denied for HTTP steps',
    );
    const id = (
      await a.query(`SELECT df._start_rows($1, 'mine') AS id`, [
        rows([{ i: 'bbbb0002', t: 'SQL', q: 'SELECT 7 AS seven' }]),
      ])
    ).rows[0].id as string;
    expect(
      (
        await db.admin.query(
          `SELECT i.submitted_by::text AS s, i.runnable, i.label, i.root_node,
                  (SELECT count(*)::int FROM df.nodes n WHERE n.instance_id = i.id AND n.submitted_by = i.submitted_by) AS nodes
             FROM df.instances i WHERE i.id = $1`,
          [id],
        )
      ).rows[0],
    ).toEqual({ s: alice.name, runnable: true, label: 'mine', root_node: 'bbbb0002', nodes: 1 });
  });
});

describe('signals and cancellation', () => {
  it('cannot signal or cancel another role’s instance (not found or access denied)', async () => {
    await expect(a.query(`SELECT df.signal($1, 'go')`, [bobInstance])).rejects.toMatchObject({
      code: 'P0002',
      message: `Instance not found or access denied: ${bobInstance}`,
    });
    await expect(a.query(`SELECT df.cancel($1)`, [bobInstance])).rejects.toThrow(
      `Instance not found or access denied: ${bobInstance}`,
    );
    await expect(a.query(`SELECT df.signal('ffffffff', 'go')`)).rejects.toThrow(
      'Instance not found or access denied: ffffffff',
    );
    await expect(a.query(`SELECT df.signal('', 'go')`)).rejects.toThrow(
      'Instance ID cannot be empty',
    );
    await expect(a.query(`SELECT df.signal($1, '')`, [bobInstance])).rejects.toThrow(
      'Signal name cannot be empty',
    );
  });

  it('signals are transactional, durable and normalised', async () => {
    const id = (await a.query(`SELECT df.start(df.wait_for_signal('go')) AS id`)).rows[0].id;
    await a.query('BEGIN');
    expect((await a.query(`SELECT df.signal($1, 'go', 'rolled back') AS r`, [id])).rows[0].r).toBe(
      'OK',
    );
    await a.query('ROLLBACK');
    for (const data of ['{"ok":true}', '42', 'approve', '', 'null'])
      await a.query(`SELECT df.signal($1, 'go', $2)`, [id, data]);
    await a.query(`SELECT df.signal($1, 'go')`, [id]);
    const payloads = (
      await a.query(`SELECT payload FROM df.signals WHERE instance_id = $1 ORDER BY id`, [id])
    ).rows.map((r) => r.payload);
    expect(payloads).toEqual([{ ok: true }, 42, 'approve', '', null, {}]);
  });

  it('signalling a finished instance is an error; cancel is idempotent', async () => {
    const id = (await a.query(`SELECT df.start('SELECT 1') AS id`)).rows[0].id;
    expect((await a.query(`SELECT df.cancel($1, 'no longer needed') AS r`, [id])).rows[0].r).toBe(
      `Instance ${id} cancelled: no longer needed`,
    );
    expect((await a.query(`SELECT df.cancel($1) AS r`, [id])).rows[0].r).toBe(
      `Instance ${id} cancelled: Cancelled by user`,
    );
    expect((await a.query(`SELECT df.status($1) AS s`, [id])).rows[0].s).toBe('cancelled');
    await expect(a.query(`SELECT df.signal($1, 'go')`, [id])).rejects.toMatchObject({
      code: '55000',
      message: expect.stringContaining('is already cancelled'),
    });
  });

  it('cancel takes effect only on commit and wakes executors only then', async () => {
    const listener = await db.connect(alice.url);
    const heard: string[] = [];
    listener.on('notification', (n) => heard.push(n.payload ?? ''));
    await listener.query('LISTEN dfgate_wake');
    const id = (await a.query(`SELECT df.start('SELECT 1') AS id`)).rows[0].id;
    await a.query('BEGIN');
    await a.query(`SELECT df.cancel($1)`, [id]);
    await a.query('ROLLBACK');
    expect((await a.query(`SELECT df.status($1) AS s`, [id])).rows[0].s).toBe('pending');
    await a.query(`SELECT df.cancel($1)`, [id]);
    await new Promise((res) => setTimeout(res, 300));
    expect(heard.filter((p) => p === `cancel:${id}`)).toHaveLength(1);
  });
});

describe('variables', () => {
  it('set, get, unset and clear are per role', async () => {
    expect((await a.query(`SELECT df.setvar('x', '1') AS r`)).rows[0].r).toBe('OK');
    await a.query(`SELECT df.setvar('x', '2')`);
    expect((await a.query(`SELECT df.getvar('x') AS v`)).rows[0].v).toBe('2');
    expect((await b.query(`SELECT df.getvar('x') AS v`)).rows[0].v).toBeNull();
    await a.query(`SELECT df.unsetvar('x'), df.unsetvar('never-set')`);
    expect((await a.query(`SELECT df.getvar('x') AS v`)).rows[0].v).toBeNull();
    await a.query(`SELECT df.setvar('y', '1')`);
    await a.query(`SELECT df.clearvars()`);
    expect((await a.query(`SELECT count(*)::int AS n FROM df.vars`)).rows[0].n).toBe(0);
    expect((await b.query(`SELECT df.getvar('secret') AS v`)).rows[0].v).toBe('bob-only');
  });

  it('no role can lock df.vars against another role’s starts (migration 0044)', async () => {
    const a2 = await db.connect(alice.url);
    for (const mode of [
      'ACCESS EXCLUSIVE',
      'EXCLUSIVE',
      'SHARE ROW EXCLUSIVE',
      'SHARE',
      'SHARE UPDATE EXCLUSIVE',
    ]) {
      await a2.query('BEGIN');
      await expect(a2.query(`LOCK TABLE df.vars IN ${mode} MODE`), mode).rejects.toMatchObject({
        code: '42501',
      });
      await a2.query('ROLLBACK');
    }
    await expect(a2.query(`UPDATE df.vars SET name = 'renamed'`)).rejects.toMatchObject({
      code: '42501',
    });
    // the most alice can hold, with her own rows written and locked, does not hold bob up
    await a2.query(`SELECT df.setvar('mine', '1')`);
    await a2.query('BEGIN');
    await a2.query('LOCK TABLE df.vars IN ROW EXCLUSIVE MODE');
    await a2.query(`UPDATE df.vars SET value = '2'`);
    await a2.query(`SELECT * FROM df.vars FOR UPDATE`);
    const b2 = await db.connect(bob.url);
    await b2.query(`SET statement_timeout = '10s'`);
    const id = (await b2.query(`SELECT df.start('SELECT 1', 'while-alice-locks') AS id`)).rows[0]
      .id as string;
    expect(id).toMatch(/^[0-9a-f]{8}$/);
    expect((await b2.query(`SELECT df.setvar('other', '1') AS r`)).rows[0].r).toBe('OK');
    await a2.query('ROLLBACK');
    await a2.query(`SELECT df.clearvars()`);
    await b2.query(`SELECT df.unsetvar('other')`);
  });

  it('df._purge_vars removes only the caller’s own variables this transaction emptied', async () => {
    await a.query(`SELECT df.setvar('p', '1')`);
    await b.query(`SELECT df.setvar('keep', 'bob')`);
    await a.query('BEGIN');
    // row-level security: alice's UPDATE reaches her rows only
    await a.query(`UPDATE df.vars SET value = NULL`);
    await a.query(`SELECT df._purge_vars()`);
    await a.query('COMMIT');
    expect((await a.query(`SELECT count(*)::int AS n FROM df.vars`)).rows[0].n).toBe(0);
    expect(
      (await b.query(`SELECT df.getvar('secret') AS s, df.getvar('keep') AS k`)).rows[0],
    ).toEqual({
      s: 'bob-only',
      k: 'bob',
    });
    // an empty value bob wrote in an earlier transaction is not this transaction's: it stays
    await b.query(`INSERT INTO df.vars (name, value) VALUES ('empty', NULL)`);
    await b.query(`SELECT df._purge_vars()`);
    expect(
      (await b.query(`SELECT count(*)::int AS n FROM df.vars WHERE name = 'empty'`)).rows[0].n,
    ).toBe(1);
    await b.query(`SELECT df.unsetvar('empty'), df.unsetvar('keep')`);
    expect((await b.query(`SELECT array_agg(name) AS n FROM df.vars`)).rows[0].n).toEqual([
      'secret',
    ]);
  });

  it('the mutating helpers are refused inside a workflow; getvar and df.start are not', async () => {
    const c = await db.connect(alice.url);
    await c.query(`SELECT df.setvar('a', 'readable')`);
    await c.query(`SET df.in_workflow = 'true'`);
    await expect(c.query(`SELECT df.setvar('a', 'b')`)).rejects.toThrow(
      'df.setvar() cannot be called inside a workflow - set variables before starting the workflow',
    );
    await expect(c.query(`SELECT df.unsetvar('a')`)).rejects.toThrow(
      'df.unsetvar() cannot be called inside a workflow - manage variables before starting the workflow',
    );
    await expect(c.query(`SELECT df.clearvars()`)).rejects.toThrow(
      'df.clearvars() cannot be called inside a workflow - manage variables before starting the workflow',
    );
    await expect(c.query(`SELECT df.await_instance('00000000')`)).rejects.toThrow(
      'df.await_instance() cannot be called inside a workflow',
    );
    await expect(c.query(`SELECT df.start('SELECT 1', transaction_mode => 'new')`)).rejects.toThrow(
      "df.start() with transaction_mode => 'new' cannot be called inside a workflow",
    );
    expect((await c.query(`SELECT df.getvar('a') AS v`)).rows).toEqual([{ v: 'readable' }]);
    const started = await c.query<{ id: string }>(`SELECT df.start('SELECT 1') AS id`);
    expect(started.rows[0]?.id).toMatch(/^[0-9a-f]{8}$/);
    await c.query(`RESET df.in_workflow`);
    await c.query(`SELECT df.clearvars()`);
  });
});

describe('grants', () => {
  it('a role without df.grant_usage can do nothing; with it, it can; revoke undoes it', async () => {
    const carol = await db.role('carol', { grant: false });
    const c = await db.connect(carol.url);
    await expect(c.query(`SELECT df.start('SELECT 1')`)).rejects.toMatchObject({ code: '42501' });
    await expect(c.query(`SELECT * FROM df.instances`)).rejects.toMatchObject({ code: '42501' });
    await db.admin.query(`SELECT df.grant_usage($1)`, [carol.name]);
    const c2 = await db.connect(carol.url);
    expect((await c2.query(`SELECT df.start('SELECT 1' ~> 'SELECT 2') AS id`)).rows[0].id).toMatch(
      /^[0-9a-f]{8}$/,
    );
    await expect(c2.query(`SELECT df.http('https://x.example.com')`)).rejects.toMatchObject({
      code: '42501',
    });
    expect(
      (
        await db.admin.query(`SELECT include_http FROM df.role_grants WHERE role_name = $1`, [
          carol.name,
        ])
      ).rows,
    ).toEqual([{ include_http: false }]);
    await db.admin.query(`SELECT df.grant_usage($1, include_http => true)`, [carol.name]);
    expect((await c2.query(`SELECT df.http('https://x.example.com') AS g`)).rows[0].g).toContain(
      '"node_type":"HTTP"',
    );
    expect(
      (await c2.query(`SELECT df.start(df.http('https://x.example.com')) AS id`)).rows[0].id,
    ).toMatch(/^[0-9a-f]{8}$/);
    expect(
      (
        await db.admin.query(`SELECT include_http FROM df.role_grants WHERE role_name = $1`, [
          carol.name,
        ])
      ).rows,
    ).toEqual([{ include_http: true }]);
    await db.admin.query(`SELECT df.revoke_usage($1)`, [carol.name]);
    await expect(c2.query(`SELECT df.start('SELECT 1')`)).rejects.toMatchObject({ code: '42501' });
    await expect(c2.query(`SELECT df.http('https://x.example.com')`)).rejects.toMatchObject({
      code: '42501',
    });
    expect(
      (
        await db.admin.query(`SELECT count(*)::int AS n FROM df.role_grants WHERE role_name = $1`, [
          carol.name,
        ])
      ).rows[0].n,
    ).toBe(0);
  });

  it('grant_usage is not for everyone; with_grant delegates; a missing grant option names the statement', async () => {
    await expect(a.query(`SELECT df.grant_usage($1)`, [bob.name])).rejects.toMatchObject({
      code: '42501',
    });
    const lead = await db.role('lead', { grant: false, createrole: true });
    await db.admin.query(`SELECT df.grant_usage($1, with_grant => true)`, [lead.name]);
    const dave = await db.role('dave', { grant: false });
    const l = await db.connect(lead.url);
    await l.query(`SELECT df.grant_usage($1)`, [dave.name]);
    const d = await db.connect(dave.url);
    expect((await d.query(`SELECT df.start('SELECT 1') AS id`)).rows[0].id).toMatch(
      /^[0-9a-f]{8}$/,
    );
    // lead holds no HTTP grant option
    const err = await l
      .query(`SELECT df.grant_usage($1, include_http => true)`, [dave.name])
      .catch((e: unknown) => e);
    expect(err).toMatchObject({
      code: '42501',
      message: expect.stringContaining('cannot grant df usage'),
    });
    expect((err as { hint: string }).hint).toContain('include_http => true, with_grant => true');
    expect((err as { hint: string }).hint).toContain(
      `GRANT EXECUTE ON FUNCTION df.http(text, text, text, jsonb, integer) TO ${lead.name} WITH GRANT OPTION;`,
    );
  });

  it('operators resolve unqualified after the grant, the old search_path is kept, OPERATOR(df.~>) always works', async () => {
    const erin = await db.role('erin', { grant: false });
    await db.admin.query(`CREATE SCHEMA erin_stuff`);
    await db.admin.query(`ALTER ROLE ${erin.ident} SET search_path = erin_stuff, public`);
    await db.admin.query(`SELECT df.grant_usage($1)`, [erin.name]);
    const e = await db.connect(erin.url);
    expect((await e.query(`SHOW search_path`)).rows[0].search_path).toBe('erin_stuff, public, df');
    expect((await e.query(`SELECT 'SELECT 1' ~> 'SELECT 2' AS g`)).rows[0].g).toContain('"THEN"');
    await e.query(`SET search_path = public`);
    await expect(e.query(`SELECT 'SELECT 1' ~> 'SELECT 2'`)).rejects.toThrow(
      'operator does not exist',
    );
    expect(
      (await e.query(`SELECT 'SELECT 1' OPERATOR(df.~>) 'SELECT 2' AS g`)).rows[0].g,
    ).toContain('"THEN"');
    expect(
      (
        await e.query(
          `SELECT df.start(OPERATOR(df.@>) ('SELECT 1' OPERATOR(df.|) 'SELECT 2')) AS id`,
        )
      ).rows[0].id,
    ).toMatch(/^[0-9a-f]{8}$/);
  });

  it('role names that need quoting work everywhere', async () => {
    const odd = await db.role('odd', { raw: `Mixed "Case" user` });
    const c = await db.connect(withUser(db.url, odd.name, odd.password));
    await c.query(`SELECT df.setvar('k', 'v')`);
    const id = (await c.query(`SELECT df.start('SELECT 1') AS id`)).rows[0].id;
    expect((await c.query(`SELECT df.status($1) AS s, df.getvar('k') AS v`, [id])).rows[0]).toEqual(
      { s: 'pending', v: 'v' },
    );
    expect((await c.query(`SELECT df.signal($1, 'x') AS r`, [id])).rows[0].r).toBe('OK');
    expect((await a.query(`SELECT df.status($1) AS s`, [id])).rows[0].s).toBeNull();
  });

  it('the df_executor group manages every row', async () => {
    const exec = await db.role('exec', { grant: false });
    await db.admin.query(`GRANT df_executor TO ${exec.ident}`);
    const x = await db.connect(exec.url);
    expect(
      (await x.query(`SELECT count(*)::int AS n FROM df.instances WHERE id = $1`, [bobInstance]))
        .rows[0].n,
    ).toBe(1);
    await x.query(
      `UPDATE df.instances SET status = 'running', lease_epoch = lease_epoch + 1 WHERE id = $1`,
      [bobInstance],
    );
    expect((await b.query(`SELECT df.status($1) AS s`, [bobInstance])).rows[0].s).toBe('running');
    expect(
      (
        await x.query(`SELECT count(*)::int AS n FROM df.signals WHERE instance_id = $1`, [
          bobInstance,
        ])
      ).rows[0].n,
    ).toBe(1);
    await expect(
      x.query(`UPDATE df.config SET value = 'true' WHERE key = 'enable_superuser_instances'`),
    ).rejects.toMatchObject({ code: '42501' });
  });

  // the trigger rules, also for the executor group and for quoted role names (written for
  // migration 0036's WHEN conditions, which migration 0037 undid; the rules never changed)
  it('the df_executor group cannot change a finished status or write rows in another role’s name', async () => {
    const exec = await db.role('exec2', { grant: false });
    await db.admin.query(`GRANT df_executor TO ${exec.ident}`);
    const x = await db.connect(exec.url);
    const id = (await a.query(`SELECT df.start('SELECT 1') AS id`)).rows[0].id;
    await x.query(`UPDATE df.instances SET status = 'running' WHERE id = $1`, [id]);
    await x.query(`UPDATE df.instances SET status = 'completed' WHERE id = $1`, [id]);
    await expect(
      x.query(`UPDATE df.instances SET status = 'running' WHERE id = $1`, [id]),
    ).rejects.toMatchObject({
      code: '55000',
      message: expect.stringContaining('is already completed'),
    });
    await expect(
      x.query(`UPDATE df.instances SET submitted_by = $2 WHERE id = $1`, [id, exec.name]),
    ).rejects.toMatchObject({
      code: '42501',
      message: expect.stringContaining('cannot be changed'),
    });
    await expect(
      x.query(
        `INSERT INTO df.instances (id, root_node, submitted_by) VALUES ('0000ee01', '0000ee02', $1)`,
        [alice.name],
      ),
    ).rejects.toMatchObject({
      code: '42501',
      message: expect.stringContaining('row-level security'),
    });
    await expect(
      x.query(
        `INSERT INTO df.signals (instance_id, submitted_by, signal_name, payload) VALUES ($1, $2, 'go', '1')`,
        [id, alice.name],
      ),
    ).rejects.toMatchObject({ code: '42501' });
  });

  it('a row may name its own role, also one whose name needs quotes, or none', async () => {
    const odd = await db.role('odd', { raw: 'Odd "Name"' });
    const o = await db.connect(odd.url);
    await o.query('BEGIN');
    await o.query(
      `INSERT INTO df.instances (id, root_node, submitted_by) VALUES ('0000ef01', '0000ef02', $1)`,
      [odd.ident],
    );
    await o.query(
      `INSERT INTO df.nodes (id, instance_id, node_type, query, submitted_by) VALUES ('0000ef02', '0000ef01', 'SQL', 'SELECT 1', NULL)`,
    );
    const rows = (
      await o.query(
        `SELECT submitted_by::text AS s FROM df.instances WHERE id = '0000ef01'
         UNION ALL SELECT submitted_by::text FROM df.nodes WHERE instance_id = '0000ef01'`,
      )
    ).rows.map((r) => r.s);
    await o.query('ROLLBACK');
    expect(rows).toEqual([odd.ident, odd.ident]);
  });
});

/**
 * A temporary table named like a catalog (pg_roles, pg_namespace) must not answer the lookups of
 * df's functions and triggers: they pin search_path = pg_catalog, pg_temp (migration 0025). With
 * pg_catalog alone, PostgreSQL searches the session's temporary schema first for tables.
 */
describe('temporary tables named like catalogs', () => {
  const fakeNamespace = `CREATE TEMP TABLE pg_namespace AS
    SELECT nspname, CASE WHEN nspname = 'df' THEN (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)
                         ELSE nspowner END AS nspowner FROM pg_catalog.pg_namespace`;
  const fakeRoles = (login: boolean, superuser: boolean): string =>
    `CREATE TEMP TABLE pg_roles AS SELECT oid, rolname, ${login} AS rolcanlogin, ${superuser} AS rolsuper
       FROM pg_catalog.pg_roles; GRANT SELECT ON pg_temp.pg_roles TO PUBLIC`;

  it('do not let a BYPASSRLS role write another role’s name (the submitted_by trigger)', async () => {
    const mallory = await db.role('mallory');
    await db.admin.query(`ALTER ROLE ${mallory.ident} BYPASSRLS`);
    const m = await db.connect(mallory.url);
    await m.query(fakeNamespace);
    await m.query(fakeRoles(true, true));
    await m.query('BEGIN');
    await expect(
      m.query(
        `INSERT INTO df.nodes (id, instance_id, node_type, query, submitted_by)
         VALUES ('000000b2', '000000b1', 'SQL', 'SELECT current_user', $1::regrole)`,
        [bob.name],
      ),
    ).rejects.toMatchObject({ code: '42501', message: expect.stringContaining('submitted_by') });
    await m.query('ROLLBACK');
    expect(
      (await db.admin.query(`SELECT count(*)::int AS n FROM df.instances WHERE id = '000000b1'`))
        .rows[0].n,
    ).toBe(0);
  });

  it('do not pass the LOGIN check of a start', async () => {
    const group = await db.role('nologin_group', { login: false, grant: false });
    await db.admin.query(`SELECT df.grant_usage($1)`, [group.name]);
    await db.admin.query(`GRANT ${group.ident} TO ${alice.ident}`);
    const c = await db.connect(alice.url);
    await c.query(fakeRoles(true, false));
    await c.query(`SET ROLE ${group.ident}`);
    await expect(c.query(`SELECT df.start('SELECT 1')`)).rejects.toMatchObject({
      code: '42501',
      message: expect.stringContaining('does not have LOGIN privilege'),
    });
    await c.end();
  });

  it('do not pass the superuser guard, nor the status guard', async () => {
    // a superuser's SECURITY DEFINER function that starts an instance, callable by alice
    await db.admin.query(
      `CREATE FUNCTION public.su_job() RETURNS text LANGUAGE sql SECURITY DEFINER
         AS $$ SELECT df.start('SELECT current_user') $$`,
    );
    await db.admin.query(`GRANT EXECUTE ON FUNCTION public.su_job() TO ${alice.ident}`);
    const c = await db.connect(alice.url);
    await c.query(fakeRoles(true, false));
    await expect(c.query(`SELECT public.su_job()`)).rejects.toMatchObject({
      code: '42501',
      message: expect.stringContaining('superuser instances are disabled'),
    });
    // told it is a superuser, alice still may set her own instance's status only to cancelled
    await c.query('DROP TABLE pg_temp.pg_roles');
    await c.query(fakeRoles(true, true));
    const id = (await c.query(`SELECT df.start('SELECT 1') AS id`)).rows[0].id as string;
    await expect(
      c.query(`UPDATE df.instances SET status = 'completed' WHERE id = $1`, [id]),
    ).rejects.toMatchObject({ code: '42501' });
    await c.end();
  });
});
