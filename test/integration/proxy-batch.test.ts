/**
 * Starts in one message (docs/proxy.md, "Starts in one message"): a simple
 * Query of many `SELECT df.start(...)` statements goes to the database as
 * one df._start_batch call, and each statement is answered exactly as the
 * database answers it on a direct connection. Inside a transaction block,
 * or when the database refuses the batch, the statements go one by one.
 * Real PostgreSQL, node-postgres, the executor running what was started.
 */
import pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import type { Executor } from '../../src/executor/executor.js';
import { metrics } from '../../src/metrics.js';
import type { ProxyServer } from '../../src/proxy/server.js';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { startTestProxy, viaPort } from '../harness/dfgate.js';
import { finished, startTestExecutor } from '../harness/executor.js';

const db = useTestDatabase();
let role: TestRole;
let direct: pg.Client;
let ex: Executor;
let proxy: ProxyServer;
let p: pg.Client;

beforeAll(async () => {
  role = await db.role('batch');
  direct = await db.connect(role.url);
  ex = await startTestExecutor(db.url);
  proxy = await startTestProxy(db.url, {
    edgeValidation: true,
    onDfCommit: (started) => ex.wake(started),
  });
  p = await db.connect(viaPort(role.url, proxy.port));
  await db.admin.query(`CREATE TABLE batch_log (k text)`);
  await db.admin.query(`GRANT INSERT, SELECT ON batch_log TO ${role.ident}`);
});

/** Messages sent as one df._start_batch call so far, by outcome. */
function batches(outcome: 'started' | 'replayed' | 'error'): number {
  const m = new RegExp(`dfgate_edge_batches_total\\{outcome="${outcome}"\\} (\\d+)`).exec(
    metrics.edgeBatches.render(),
  );
  return m ? Number(m[1]) : 0;
}

/** An instance's workflow as stored, node ids left out: label, then the tree in pre-order. */
async function stored(id: string): Promise<unknown> {
  const rows = (
    await db.admin.query(
      `SELECT n.id, n.node_type AS t, n.query AS q, n.result_name AS n, n.left_node AS l,
              n.right_node AS r, i.root_node, i.label, i.submitted_by::text AS who, i.runnable
         FROM df.nodes n JOIN df.instances i ON i.id = n.instance_id WHERE n.instance_id = $1`,
      [id],
    )
  ).rows;
  const byId = new Map(rows.map((r) => [r.id, r]));
  const tree = (nid: string | null): unknown => {
    const r = nid ? byId.get(nid) : undefined;
    return r ? { t: r.t, q: r.q, n: r.n, l: tree(r.l), r: tree(r.r) } : null;
  };
  const head = rows[0];
  return head
    ? { label: head.label, who: head.who, runnable: head.runnable, root: tree(head.root_node) }
    : null;
}

/** One answer of a multi-statement Query, as node-postgres reports it. */
function answer(r: pg.QueryResult): unknown {
  return {
    command: r.command,
    rowCount: r.rowCount,
    fields: r.fields.map((f) => [f.name, f.dataTypeID, f.tableID, f.columnID, f.format]),
    keys: Object.keys(r.rows[0] ?? {}),
  };
}

const STATEMENTS = [
  `SELECT df.start('INSERT INTO batch_log VALUES (''one'')', 'first')`,
  `SELECT df.start('INSERT INTO batch_log VALUES (''two'')')`,
  `SELECT df.start('INSERT INTO batch_log VALUES (''three'')', NULL) AS id`,
  `select df.start('INSERT INTO batch_log VALUES (''four'') ' |=> 'x' ~> 'INSERT INTO batch_log VALUES (''five'')', E'quote''s \\u00e9')`,
  `SELECT df.start('INSERT INTO batch_log VALUES (''six'')' ~> df.sleep(0) ~> 'INSERT INTO batch_log VALUES (''seven'')', '') AS "Mixed Case"`,
];

describe('many starts in one message', () => {
  it('go as one statement, and each is answered and stored as on a direct connection', async () => {
    const text = STATEMENTS.join(';\n');
    const before = batches('started');
    const viaProxy = (await p.query(text)) as unknown as pg.QueryResult[];
    expect(batches('started')).toBe(before + 1);
    const viaDirect = (await direct.query(text)) as unknown as pg.QueryResult[];
    expect(viaProxy.map(answer)).toEqual(viaDirect.map(answer));
    const ids = viaProxy.map((r) => Object.values(r.rows[0])[0] as string);
    const dids = viaDirect.map((r) => Object.values(r.rows[0])[0] as string);
    expect(new Set(ids).size).toBe(STATEMENTS.length);
    for (let i = 0; i < ids.length; i++) {
      const s = await stored(ids[i] as string);
      expect(s, STATEMENTS[i]).not.toBeNull();
      expect(s, STATEMENTS[i]).toEqual(await stored(dids[i] as string));
    }
    // and they run: every step once per start
    for (const id of [...ids, ...dids])
      expect((await finished(direct, id)).status).toBe('completed');
    const log = await db.admin.query(
      `SELECT k, count(*)::int AS n FROM batch_log GROUP BY k ORDER BY k`,
    );
    expect(log.rows).toEqual(
      ['five', 'four', 'one', 'seven', 'six', 'three', 'two'].map((k) => ({ k, n: 2 })),
    );
  });

  it('a hundred starts: one batch, in statement order, each instance its own', async () => {
    const n = 100;
    const text = Array.from(
      { length: n },
      (_, i) => `SELECT df.start('SELECT ${i} AS v', 'hundred-${i}')`,
    ).join(';');
    const before = batches('started');
    const rs = (await p.query(text)) as unknown as pg.QueryResult[];
    expect(batches('started')).toBe(before + 1);
    expect(rs).toHaveLength(n);
    const ids = rs.map((r) => r.rows[0].start as string);
    const rows = (
      await db.admin.query(
        `SELECT i.id, i.label, n.query FROM df.instances i JOIN df.nodes n ON n.instance_id = i.id
          WHERE i.id = ANY ($1)`,
        [ids],
      )
    ).rows;
    const byId = new Map(rows.map((r) => [r.id, r]));
    ids.forEach((id, i) =>
      expect(byId.get(id)).toEqual({ id, label: `hundred-${i}`, query: `SELECT ${i} AS v` }),
    );
    for (const id of ids) expect((await finished(direct, id)).status).toBe('completed');
  });

  it('inside a transaction block go one by one, and roll back with it', async () => {
    const before = batches('started');
    const count = async (): Promise<number> =>
      (
        await db.admin.query(
          `SELECT count(*)::int AS n FROM df.instances WHERE label LIKE 'block-%'`,
        )
      ).rows[0].n;
    await p.query('BEGIN');
    const rs = (await p.query(
      `SELECT df.start('SELECT 1', 'block-1'); SELECT df.start('SELECT 2', 'block-2')`,
    )) as unknown as pg.QueryResult[];
    expect(rs.map((r) => r.rows[0].start)).toEqual([
      expect.stringMatching(/^[0-9a-f]{8}$/),
      expect.stringMatching(/^[0-9a-f]{8}$/),
    ]);
    await p.query('ROLLBACK');
    expect(await count()).toBe(0);
    // BEGIN in the same message: not a batch either
    await p.query(
      `BEGIN; SELECT df.start('SELECT 3', 'block-3'); SELECT df.start('SELECT 4', 'block-4'); ROLLBACK`,
    );
    expect(await count()).toBe(0);
    expect(batches('started')).toBe(before);
  });

  it('refused by the database: replayed one by one, with the answer a direct connection gets', async () => {
    const nologin = await db.role('batch_nologin', { login: false, grant: true });
    await db.admin.query(`GRANT ${nologin.ident} TO ${role.ident}`);
    const text = `SELECT df.start('SELECT 1', 'nl-1'); SELECT df.start('SELECT 2', 'nl-2')`;
    const outcome = async (c: pg.Client): Promise<unknown> => {
      await c.query(`SET ROLE ${nologin.ident}`);
      try {
        await c.query(text);
        return 'no error';
      } catch (err) {
        const e = err as pg.DatabaseError;
        return { code: e.code, message: e.message, hint: e.hint, detail: e.detail };
      } finally {
        await c.query('RESET ROLE');
      }
    };
    const replayed = batches('replayed');
    const got = await outcome(p);
    expect(batches('replayed')).toBe(replayed + 1);
    expect(got).toEqual(await outcome(direct));
    expect(got).toMatchObject({ code: '42501', message: expect.stringContaining('LOGIN') });
    expect(
      (await db.admin.query(`SELECT count(*)::int AS n FROM df.instances WHERE label LIKE 'nl-%'`))
        .rows[0].n,
    ).toBe(0);
    // the session goes on
    expect((await p.query(`SELECT 1 AS one`)).rows).toEqual([{ one: 1 }]);
  });

  it('interrupted (a lock timeout): the error as it came, nothing started, the session goes on', async () => {
    const holder = await db.connect(db.url);
    await holder.query('BEGIN');
    await holder.query('LOCK TABLE df.instances IN EXCLUSIVE MODE');
    const errors = batches('error');
    await p.query(`SET lock_timeout = '200ms'`);
    try {
      await expect(
        p.query(`SELECT df.start('SELECT 1', 'lk-1'); SELECT df.start('SELECT 2', 'lk-2')`),
      ).rejects.toMatchObject({ code: '55P03' });
    } finally {
      await p.query('RESET lock_timeout');
      await holder.query('ROLLBACK');
    }
    expect(batches('error')).toBe(errors + 1);
    expect(
      (await db.admin.query(`SELECT count(*)::int AS n FROM df.instances WHERE label LIKE 'lk-%'`))
        .rows[0].n,
    ).toBe(0);
    expect((await p.query(`SELECT 2 AS two`)).rows).toEqual([{ two: 2 }]);
  });
});

describe('starts in one message: what the session set, and timeouts', () => {
  it('a type named "text" on the search_path does not change the answers', async () => {
    const c = await db.connect(viaPort(role.url, proxy.port));
    const d = await db.connect(role.url);
    try {
      for (const x of [c, d]) {
        await x.query(`CREATE DOMAIN pg_temp.text AS pg_catalog.text CHECK (VALUE IS NULL)`);
        await x.query(`SET search_path = pg_temp, pg_catalog, public`);
      }
      const text = `SELECT df.start('SELECT 1', 'dom'); SELECT df.start('SELECT 2', 'dom')`;
      const viaProxy = (await c.query(text)) as unknown as pg.QueryResult[];
      const viaDirect = (await d.query(text)) as unknown as pg.QueryResult[];
      expect(viaProxy.map(answer)).toEqual(viaDirect.map(answer));
      expect(viaProxy.map((r) => r.rows[0].start)).toEqual([
        expect.stringMatching(/^[0-9a-f]{8}$/),
        expect.stringMatching(/^[0-9a-f]{8}$/),
      ]);
    } finally {
      await c.end();
      await d.end();
    }
  });

  it('statement_timeout applies to each statement: a batch that runs out of it goes one by one', async () => {
    const c = await db.connect(viaPort(role.url, proxy.port));
    const holder = await db.connect(db.url);
    const pid = (await c.query(`SELECT pg_backend_pid() AS pid`)).rows[0].pid as number;
    const waiting = async (like: string): Promise<void> => {
      await expect
        .poll(
          async () =>
            (
              await db.admin.query(
                `SELECT count(*)::int AS n FROM pg_stat_activity
                  WHERE pid = $1 AND wait_event_type = 'Lock' AND query LIKE $2`,
                [pid, like],
              )
            ).rows[0].n,
          { timeout: 20_000, interval: 5 },
        )
        .toBe(1);
    };
    const replayed = batches('replayed');
    try {
      await holder.query('BEGIN');
      await holder.query('LOCK TABLE df.instances IN EXCLUSIVE MODE');
      await c.query(`SET statement_timeout = '1500ms'`);
      const sent = c.query(
        `SELECT df.start('SELECT 1', 'st-1'); SELECT df.start('SELECT 2', 'st-2')`,
      ) as unknown as Promise<pg.QueryResult[]>;
      // the batch waits for the lock and runs out of time; the first statement alone then waits
      await waiting('%_start_batch%');
      await waiting('%_start_rows%');
      await holder.query('ROLLBACK');
      const rs = await sent;
      expect(rs.map((r) => r.rows[0].start)).toEqual([
        expect.stringMatching(/^[0-9a-f]{8}$/),
        expect.stringMatching(/^[0-9a-f]{8}$/),
      ]);
    } finally {
      await holder.query('ROLLBACK').catch(() => undefined);
      await holder.end();
      await c.end();
    }
    expect(batches('replayed')).toBe(replayed + 1);
  });

  it('a cancel while the batch runs: reported as it came, nothing started', async () => {
    const c = await db.connect(viaPort(role.url, proxy.port));
    const holder = await db.connect(db.url);
    try {
      await holder.query('BEGIN');
      await holder.query('LOCK TABLE df.instances IN EXCLUSIVE MODE');
      const sent = c.query(
        `SELECT df.start('SELECT 1', 'cx-1'); SELECT df.start('SELECT 2', 'cx-2')`,
      );
      const outcome = sent.then(
        () => 'no error',
        (e: pg.DatabaseError) => e.code,
      );
      await expect
        .poll(
          async () =>
            (
              await db.admin.query(
                `SELECT count(*)::int AS n FROM pg_stat_activity
                  WHERE wait_event_type = 'Lock' AND query LIKE '%_start_batch%'`,
              )
            ).rows[0].n,
          { timeout: 20_000, interval: 5 },
        )
        .toBe(1);
      // a cancel (here an administrator's) meets the batch while it waits
      await db.admin.query(
        `SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE '%_start_batch%' AND pid <> pg_backend_pid()`,
      );
      expect(await outcome).toBe('57014');
    } finally {
      await holder.query('ROLLBACK').catch(() => undefined);
      await holder.end();
      await c.end();
    }
    expect(
      (await db.admin.query(`SELECT count(*)::int AS n FROM df.instances WHERE label LIKE 'cx-%'`))
        .rows[0].n,
    ).toBe(0);
  });
});

describe('df._start_batch and df._activate_graphs called directly', () => {
  const start = (rows: unknown[], label: string | null = 'forged') => ({ r: rows, l: label });
  const leaf = (i: string, q = 'SELECT 7'): Record<string, string> => ({ i, t: 'SQL', q });
  const left = async (): Promise<number> =>
    (await db.admin.query(`SELECT count(*)::int AS n FROM df.nodes WHERE query LIKE 'SELECT 7%'`))
      .rows[0].n;

  it('gain nothing over df.start: any forged tree among the starts fails them all', async () => {
    const before = await left();
    // a walk that runs away (a node named twice, walked twice at every level below it) shows
    // as a timeout here instead of a busy backend
    await direct.query(`SET statement_timeout = '10s'`);
    for (const [why, starts, message] of [
      [
        'a node with two parents',
        [
          start([leaf('aaaa0001')]),
          start([{ i: 'aaaa0001', t: 'THEN', l: 'aaaa0002', r: 'aaaa0002' }, leaf('aaaa0002')]),
        ],
        'do not form a tree',
      ],
      [
        'a cycle through the root',
        [
          start([{ i: 'aaaa0001', t: 'THEN', l: 'aaaa0002', r: 'aaaa0001' }, leaf('aaaa0002')]),
          start([leaf('aaaa0001')]),
        ],
        'do not form a tree',
      ],
      [
        'a node the root does not reach',
        [start([leaf('aaaa0001')]), start([leaf('aaaa0001'), leaf('aaaa0002')])],
        'do not form a tree under their roots',
      ],
      [
        'a child that does not exist',
        [start([{ i: 'aaaa0001', t: 'THEN', l: 'aaaa0002', r: 'aaaa0003' }, leaf('aaaa0002')])],
        'do not form a tree',
      ],
      [
        'a start without rows',
        [start([leaf('aaaa0001')]), start([])],
        'Instance not found or access denied',
      ],
      ['no starts', [], 'df._free_instance_ids: 1 to 1,000 ids'],
      // one-node starts skip the tree walk (migration 0038) only when each node is its root
      // and names no other node: a one-node start that names itself is walked, and refused
      [
        'one-node starts and a LOOP node that is its own body',
        [
          start([leaf('aaaa0001')]),
          start([{ i: 'aaaa0002', t: 'LOOP', l: 'aaaa0002', q: '{}' }]),
          start([leaf('aaaa0003')]),
        ],
        'do not form a tree',
      ],
      [
        'one-node starts and a THEN node that is both its own children',
        [
          start([leaf('aaaa0001')]),
          start([{ i: 'aaaa0002', t: 'THEN', l: 'aaaa0002', r: 'aaaa0002' }]),
          start([leaf('aaaa0003')]),
        ],
        'do not form a tree',
      ],
    ] as const)
      await expect(
        direct.query(`SELECT df._start_batch($1)`, [JSON.stringify(starts)]),
        why,
      ).rejects.toThrow(message);
    // a table check refuses what it refuses for a hand-written node
    await expect(
      direct.query(`SELECT df._start_batch($1)`, [
        JSON.stringify([start([{ i: 'aaaa0001', t: 'NOPE', q: 'SELECT 7' }])]),
      ]),
    ).rejects.toMatchObject({ code: '23514' });
    // an HTTP step needs the grant
    await expect(
      direct.query(`SELECT df._start_batch($1)`, [
        JSON.stringify([
          start([leaf('aaaa0001')]),
          start([
            {
              i: 'bbbb0001',
              t: 'HTTP',
              q: '{"url":"https://x.example.com","method":"GET","body":null,"headers":null,"timeout_seconds":5}',
            },
          ]),
        ]),
      ]),
    ).rejects.toThrow('permission denied for HTTP steps');
    expect(await left()).toBe(before);
    await direct.query(`RESET statement_timeout`);
  });

  it('df._activate_graphs takes only nodes this transaction inserted in one statement, by one role', async () => {
    const refused = async (setup: string[], call: string, code: string): Promise<void> => {
      await direct.query('BEGIN');
      try {
        for (const s of setup) await direct.query(s);
        await expect(direct.query(call), call).rejects.toMatchObject({ code });
      } finally {
        await direct.query('ROLLBACK');
      }
    };
    const ins = (iid: string, id: string): string =>
      `INSERT INTO df.nodes (id, instance_id, node_type, query) VALUES ('${id}', '${iid}', 'SQL', 'SELECT 7')`;
    // two statements: two xmins... of one transaction, still refused (the edge writes them in one)
    await refused(
      [ins('c0000001', 'c0000011'), `SAVEPOINT s`, ins('c0000002', 'c0000012')],
      `SELECT df._activate_graphs('{c0000001,c0000002}', '{c0000011,c0000012}', '{a,b}')`,
      'P0002',
    );
    // an instance whose nodes another transaction committed
    const id = (await direct.query(`SELECT df.start('SELECT 7 AS committed') AS id`)).rows[0]
      .id as string;
    const root = (await direct.query(`SELECT root_node FROM df.instances WHERE id = $1`, [id]))
      .rows[0].root_node as string;
    await refused(
      [ins('c0000003', 'c0000013')],
      `SELECT df._activate_graphs('{c0000003,${id}}', '{c0000013,${root}}', '{a,b}')`,
      'P0002',
    );
    // an id twice, or arrays that do not line up
    await refused(
      [ins('c0000004', 'c0000014')],
      `SELECT df._activate_graphs('{c0000004,c0000004}', '{c0000014,c0000014}', '{a,b}')`,
      '22023',
    );
    await refused(
      [ins('c0000005', 'c0000015')],
      `SELECT df._activate_graphs('{c0000005}', '{c0000015,c0000015}', '{a}')`,
      '22023',
    );
    // one-node graphs whose root is not their node, or not known (NULL): the trees are
    // walked, not skipped as for one-node starts (migration 0038), and refused
    const both = `INSERT INTO df.nodes (id, instance_id, node_type, query) VALUES ('c0000018', 'c0000008', 'SQL', 'SELECT 7'), ('c0000019', 'c0000009', 'SQL', 'SELECT 7')`;
    await refused(
      [both],
      `SELECT df._activate_graphs('{c0000008,c0000009}', '{c0000018,NULL}', '{a,b}')`,
      '22023',
    );
    await refused(
      [both],
      `SELECT df._activate_graphs('{c0000008,c0000009}', '{c0000018,c0000018}', '{a,b}')`,
      '22023',
    );
    // nodes inserted by hand that df.start would accept: instances in the caller's own name
    await direct.query('BEGIN');
    await direct.query(
      `INSERT INTO df.nodes (id, instance_id, node_type, query) VALUES ('c0000016', 'c0000006', 'SQL', 'SELECT 7 AS a'), ('c0000017', 'c0000007', 'SQL', 'SELECT 7 AS b')`,
    );
    await direct.query(
      `SELECT df._activate_graphs('{c0000006,c0000007}', '{c0000016,c0000017}', '{by hand,NULL}')`,
    );
    await direct.query('COMMIT');
    expect(
      (
        await db.admin.query(
          `SELECT id, submitted_by::text AS s, runnable, label FROM df.instances WHERE id IN ('c0000006', 'c0000007') ORDER BY id`,
        )
      ).rows,
    ).toEqual([
      { id: 'c0000006', s: role.name, runnable: true, label: 'by hand' },
      { id: 'c0000007', s: role.name, runnable: true, label: null },
    ]);
  });

  it('reads the nodes and instances of a batch by primary key, also before they were ever analyzed', async () => {
    // thousands of nodes and instances PostgreSQL has no statistics of yet (a new install, a
    // table that grew fast): the batch must still look each start up, not scan every row
    // (migration 0038: two scans of df.nodes per batch before it; 0039: one of df.instances)
    await direct.query(
      `SELECT count(df.start('SELECT 7 AS many', 'many')) FROM generate_series(1, 3000)`,
    );
    // pg_stat_xact_all_tables also counts this backend's scans not yet flushed to the shared
    // statistics (at most once a second, when idle): a count taken before the batch, in the
    // same transaction, is subtracted
    const seqScans = async (): Promise<Record<string, number>> =>
      Object.fromEntries(
        (
          await direct.query(
            `SELECT relname, seq_scan::int AS n FROM pg_stat_xact_all_tables
              WHERE relid IN ('df.nodes'::regclass, 'df.instances'::regclass)`,
          )
        ).rows.map((x) => [x.relname, x.n]),
      );
    const scans = async (starts: unknown[]): Promise<Record<string, number>> => {
      await direct.query('BEGIN');
      try {
        const before = await seqScans();
        await direct.query(`SELECT df._start_batch($1)`, [JSON.stringify(starts)]);
        const after = await seqScans();
        return Object.fromEntries(
          Object.entries(after).map(([rel, n]) => [rel, n - (before[rel] ?? 0)]),
        );
      } finally {
        await direct.query('ROLLBACK');
      }
    };
    const ids = Array.from({ length: 100 }, (_, k) => `dddd${String(k).padStart(4, '0')}`);
    // one-node starts, and starts of two nodes (their trees are walked)
    expect(await scans(ids.map((i) => start([leaf(i)])))).toEqual({ nodes: 0, instances: 0 });
    expect(
      await scans(
        ids.map((i) =>
          start([
            { i, t: 'THEN', l: 'eeee0001', r: 'eeee0002' },
            leaf('eeee0001'),
            leaf('eeee0002'),
          ]),
        ),
      ),
    ).toEqual({ nodes: 0, instances: 0 });
  });
});
