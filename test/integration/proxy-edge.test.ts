/**
 * df.start at the edge (DESIGN.md §2 path 2): the proxy compiles constant
 * workflows into df._start_graph calls, validates them with positions in the
 * client's statement, treats bound values as values, and runs
 * transaction_mode => 'new' on its own connection. Real PostgreSQL, real
 * node-postgres and psql.
 */
import { spawn } from 'node:child_process';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { from as copyFrom } from 'pg-copy-streams';
import pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import type { Executor } from '../../src/executor/executor.js';
import { encodeFrontend, type FrontendMessage } from '../../src/proxy/protocol/frontend.js';
import type { ProxyServer } from '../../src/proxy/server.js';
import { clientBin } from '../harness/bins.js';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { startTestProxy, viaPort } from '../harness/dfgate.js';
import { finished, startTestExecutor } from '../harness/executor.js';
import { errorOf, loggedIn, type Raw } from '../harness/wire.js';

const db = useTestDatabase();
let role: TestRole;
let direct: pg.Client;
let ex: Executor;
let proxy: ProxyServer;
let p: pg.Client;

beforeAll(async () => {
  role = await db.role('edge');
  direct = await db.connect(role.url);
  ex = await startTestExecutor(db.url);
  proxy = await startTestProxy(db.url, {
    edgeValidation: true,
    onDfCommit: () => ex.wake(),
    startNew: (req) => ex.startNew(req),
  });
  p = await db.connect(viaPort(role.url, proxy.port));
});

/** The instance's graph as stored, with ids replaced by the pre-order shape (comparable across instances). */
async function shape(id: string): Promise<unknown> {
  const rows = (
    await direct.query(
      `SELECT n.id, n.node_type, n.query, n.result_name, n.left_node, n.right_node, i.root_node, i.label
         FROM df.nodes n JOIN df.instances i ON i.id = n.instance_id WHERE n.instance_id = $1`,
      [id],
    )
  ).rows;
  const byId = new Map(rows.map((r) => [r.id, r]));
  const visit = (nid: string | null): unknown => {
    const r = nid ? byId.get(nid) : undefined;
    if (!r) return null;
    let query = r.query as string | null;
    try {
      const cfg = JSON.parse(query ?? '');
      if (cfg && typeof cfg === 'object' && !Array.isArray(cfg)) {
        for (const k of ['condition_node']) if (cfg[k]) cfg[k] = visit(cfg[k]);
        if (Array.isArray(cfg.extra_nodes)) cfg.extra_nodes = cfg.extra_nodes.map(visit);
        query = JSON.stringify(cfg);
      }
    } catch {
      // plain SQL text
    }
    return {
      t: r.node_type,
      q: query,
      n: r.result_name,
      l: visit(r.left_node),
      r: visit(r.right_node),
    };
  };
  return { label: rows[0]?.label ?? null, root: visit(rows[0]?.root_node ?? null) };
}

async function count(): Promise<number> {
  return (await db.admin.query(`SELECT count(*)::int AS n FROM df.instances`)).rows[0].n;
}

/** The text the server received for the statement that asks (pg_stat_activity of its own backend). */
const SEEN = `(SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid()) AS seen`;

describe('the rewrite', () => {
  it('compiles a constant workflow into df._start_graph and inserts the same rows as a direct connection', async () => {
    const dsl = `('SELECT 41 AS a' |=> 'first') ~> df.if('SELECT $first > 40', 'SELECT 1', 'SELECT 2') ~> df.join('SELECT 3', df.sleep(0.1))`;
    const d = (await direct.query(`SELECT df.start(${dsl}, 'same') AS id`)).rows[0].id;
    const r = (await p.query(`SELECT df.start(${dsl}, 'same'), ${SEEN}`)).rows[0];
    expect(r.seen).toContain('df._start_graph(E');
    expect(r.seen).not.toContain('df.if(');
    expect(await shape(r.start)).toEqual(await shape(d));
    expect((await finished(direct, r.start)).status).toBe('completed');
  });

  it('sends a plain workflow as its node rows (df._start_rows): the same rows as a direct connection', async () => {
    const dsl =
      `('SELECT 41 AS a' |=> 'first') ~> df.race('SELECT 1', df.sleep(0.05)) |=> 'won'` +
      ` ~> df.join('SELECT 2' |=> 'two', 'SELECT $first + 1 AS b') ~> df.wait_for_signal('go')` +
      ` ~> 'SELECT ''tab\tand \\ backslash'' AS c'`;
    const d = (await direct.query(`SELECT df.start(${dsl}, 'rows') AS id`)).rows[0].id;
    const r = (await p.query(`SELECT df.start(${dsl}, 'rows'), ${SEEN}`)).rows[0];
    expect(r.seen).toContain('df._start_rows(E');
    expect(await shape(r.start)).toEqual(await shape(d));
    // node ids: eight hex digits, distinct, the root first
    const ids = (
      await direct.query<{ id: string; root: boolean }>(
        `SELECT n.id, n.id = i.root_node AS root FROM df.nodes n JOIN df.instances i ON i.id = n.instance_id
          WHERE i.id = $1`,
        [r.start],
      )
    ).rows;
    expect(ids.every((x) => /^[0-9a-f]{8}$/.test(x.id))).toBe(true);
    expect(new Set(ids.map((x) => x.id)).size).toBe(ids.length);
    expect(ids.filter((x) => x.root)).toHaveLength(1);
    await direct.query(`SELECT df.signal($1, 'go')`, [r.start]);
    const done = await finished(direct, r.start);
    expect(done.status).toBe('completed');
    expect(done.result).toBe(`{"rows": [{"c": "tab\\tand \\\\ backslash"}], "row_count": 1}`);
    // an HTTP step, IF, LOOP, options or database keep the graph form, whose checks they need
    for (const other of [
      `SELECT df.start(df.if('SELECT true', 'SELECT 1', 'SELECT 2')), ${SEEN}`,
      `SELECT df.start('SELECT 1', 'l', idempotency_key => 'rows-k'), ${SEEN}`,
    ])
      expect((await p.query(other)).rows[0].seen, other).toContain('df._start_graph(E');
  });

  it('rewrites only the call: non-ASCII text before and inside it survives byte for byte', async () => {
    const sql = `SELECT 'ünïcødé → ✓' AS t, df.start('SELECT ''café ☕'' AS x' ~> 'SELECT ''日本'' AS y', 'lé ✓') AS id, ${SEEN}`;
    const r = (await p.query(sql)).rows[0];
    expect(r.t).toBe('ünïcødé → ✓');
    expect(r.seen).toContain(`SELECT 'ünïcødé → ✓' AS t, df._start_rows(E'`);
    expect(r.seen).toContain(`, 'lé ✓') AS id, (SELECT query`);
    const s = (await shape(r.id)) as {
      label: string;
      root: { l: { q: string }; r: { q: string } };
    };
    expect(s.label).toBe('lé ✓');
    expect(s.root.l.q).toBe(`SELECT 'café ☕' AS x`);
    expect(s.root.r.q).toBe(`SELECT '日本' AS y`);
    expect((await finished(direct, r.id)).result).toBe('{"rows": [{"y": "日本"}], "row_count": 1}');
  });

  it('keeps the column named "start" wherever PostgreSQL would have named it after the call', async () => {
    const cols = async (sql: string): Promise<string[]> =>
      (await p.query(sql)).fields.map((f) => f.name);
    expect(await cols(`SELECT df.start('SELECT 1')`)).toEqual(['start']);
    expect(await cols(`SELECT (df.start('SELECT 1'))`)).toEqual(['start']);
    expect(await cols(`SELECT ((df.start('SELECT 1')))::text COLLATE "C", 1 AS one`)).toEqual([
      'start',
      'one',
    ]);
    expect(await cols(`SELECT df.start('SELECT 1') id FROM generate_series(1, 2)`)).toEqual(['id']);
    expect(
      (await p.query(`WITH s AS (SELECT df.start('SELECT 1')) SELECT start, ${SEEN} FROM s`))
        .rows[0].seen,
    ).toContain('AS "start"');
    expect(await cols(`SELECT * FROM df.start('SELECT 1')`)).toEqual(['start']);
    await p.query(`CREATE TABLE started (id text, n int)`);
    const ins = await p.query(
      `INSERT INTO started SELECT df.start('SELECT ' || g), g FROM generate_series(1, 3) g RETURNING df.start('SELECT 9'), n`,
    );
    expect(ins.fields.map((f) => f.name)).toEqual(['start', 'n']);
    expect(ins.rowCount).toBe(3);
  });

  it('pastes the other arguments, so PostgreSQL converts and checks them as df.start does', async () => {
    const q = `SELECT df.start('SELECT 1', 'opts', idempotency_key => 'k-' || 1, max_attempts => '3', max_backoff => '2 minutes', on_failure => 'SELECT 0')`;
    const a = (await p.query(q)).rows[0].start;
    expect((await p.query(q)).rows[0].start).toBe(a); // idempotent
    const row = (
      await direct.query(
        `SELECT idempotency_key, (options ->> 'max_attempts')::int AS max_attempts FROM df.instances WHERE id = $1`,
        [a],
      )
    ).rows[0];
    expect(row).toEqual({ idempotency_key: 'k-1', max_attempts: 3 });
    await expect(p.query(`SELECT df.start('SELECT 1', max_attempts => 0)`)).rejects.toMatchObject({
      code: '22023',
      message: 'df.start(): max_attempts must be a positive integer',
    });
    // a workflow that is not a constant is left to the in-database df.start
    const r = await p.query(
      `SELECT df.start(q, 'dyn') AS id, ${SEEN} FROM (VALUES ('SELECT 5 AS five')) v(q)`,
    );
    expect(r.rows[0].seen).toContain('df.start(q');
    expect((await finished(direct, r.rows[0].id)).result).toBe(
      '{"rows": [{"five": 5}], "row_count": 1}',
    );
  });

  it('maps positions of server errors back into the client’s statement', async () => {
    const sql = `SELECT df.start('SELECT 1' ~> 'SELECT 2 AS ünï'), no_such_column`;
    const err = await p.query(sql).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: '42703' });
    expect(Number((err as { position: string }).position)).toBe(sql.indexOf('no_such_column') + 1);
  });

  it('leaves statements to the database when client_encoding is not UTF8 or standard_conforming_strings is off', async () => {
    const l = await db.connect(viaPort(role.url, proxy.port));
    await l.query(`SET client_encoding = 'LATIN1'`);
    const r = (await l.query(`SELECT df.start('SELECT 1') AS id, ${SEEN}`)).rows[0];
    expect(r.seen).toContain(`df.start('SELECT 1')`);
    await l.query(`SET client_encoding = 'UTF8'; SET standard_conforming_strings = off`);
    const q = (await l.query(`SELECT df.start('SELECT ''\\x''') AS id, ${SEEN}`)).rows[0];
    expect(q.seen).toContain(`df.start('SELECT ''\\x''')`);
    await l.query(`SET standard_conforming_strings = on`);
    expect((await l.query(`SELECT df.start('SELECT 1') AS id, ${SEEN}`)).rows[0].seen).toContain(
      '_start_rows',
    );
    await l.end();
  });
});

/** The fields the client sees of an error (PostgreSQL's, whichever side raised it). */
function fieldsOf(e: unknown): Record<string, unknown> {
  const x = e as Record<string, unknown>;
  return {
    code: x['code'],
    message: x['message'],
    detail: x['detail'],
    hint: x['hint'],
    position: x['position'],
  };
}

describe('invalid calls: the database raises its own error', () => {
  it('an invalid call gets the error of a direct connection, argument types and hint included; nothing is inserted', async () => {
    const before = await count();
    const sql = `SELECT 'ünïcødé → ok' AS t, df.start('SELECT 1' ~> df.slep(5), 'edge')`;
    const viaDirect = await direct.query(sql).catch((e: unknown) => e);
    const viaProxy = await p.query(sql).catch((e: unknown) => e);
    expect(fieldsOf(viaDirect)).toMatchObject({
      code: '42883',
      message: 'function df.slep(integer) does not exist',
      hint: expect.stringContaining('No function matches'),
      position: String([...sql.slice(0, sql.indexOf('df.slep'))].length + 1),
    });
    expect(fieldsOf(viaProxy)).toEqual(fieldsOf(viaDirect));
    expect(await count()).toBe(before);
    // inside a transaction the server's state matches: the transaction is aborted
    await p.query('BEGIN');
    const cron = `SELECT df.start(df.wait_for_schedule('0 0 * *'))`;
    const e = await p.query(cron).catch((x: unknown) => x);
    expect(fieldsOf(e)).toMatchObject({
      code: '22023',
      message:
        "Invalid cron expression '0 0 * *': expected 5 fields (minute hour day-of-month month day-of-week), got 4",
    });
    expect(fieldsOf(e)).toEqual(fieldsOf(await direct.query(cron).catch((x: unknown) => x)));
    await expect(p.query('SELECT 1')).rejects.toMatchObject({ code: '25P02' });
    await p.query('ROLLBACK');
    expect(await count()).toBe(before);
  });

  it('in a multi-statement query the statements before the bad one run, as on a direct connection', async () => {
    await p.query(`CREATE TABLE IF NOT EXISTS edge_marks (v text)`);
    const sql = `INSERT INTO edge_marks VALUES ('a'); COMMIT; SELECT df.start('SELECT 1' ~> df.sleep(-1))`;
    const viaDirect = await direct.query(sql).catch((e: unknown) => e);
    const viaProxy = await p.query(sql).catch((e: unknown) => e);
    expect(fieldsOf(viaDirect)).toMatchObject({ message: 'Sleep duration must be non-negative' });
    expect(fieldsOf(viaProxy)).toEqual(fieldsOf(viaDirect));
    expect((await direct.query(`SELECT count(*)::int AS n FROM edge_marks`)).rows[0].n).toBe(2);
  });

  it('an invalid call in a Parse fails as on a direct connection and the connection stays usable', async () => {
    const q = { text: `SELECT $1::text AS x, df.start('SELECT 1' ~> df.slep(2))`, values: ['v'] };
    const viaDirect = await direct.query(q).catch((e: unknown) => e);
    const viaProxy = await p.query(q).catch((e: unknown) => e);
    expect(fieldsOf(viaDirect)).toMatchObject({
      code: '42883',
      message: 'function df.slep(integer) does not exist',
    });
    expect(fieldsOf(viaProxy)).toEqual(fieldsOf(viaDirect));
    expect((await p.query({ text: 'SELECT $1::int + 1 AS n', values: [1] })).rows[0].n).toBe(2);
  });
});

describe('the extended protocol', () => {
  it('df.start($1, $2) prepared once and executed 1,000 times starts 1,000 instances', async () => {
    const before = await count();
    for (let i = 0; i < 1000; i++)
      await p.query({
        name: 'start2',
        text: 'SELECT df.start($1, $2) AS id',
        values: [`SELECT ${i} AS i`, `bulk-${i}`],
      });
    expect(await count()).toBe(before + 1000);
  }, 60_000);

  it('a bound value is a value: DSL text stays SQL text, graph text is a graph, an invalid graph is an error', async () => {
    const dslText = `'SELECT 1' ~> 'SELECT 2'`;
    const a = (await p.query('SELECT df.start($1, $2) AS id', [dslText, 'value'])).rows[0].id;
    expect(await shape(a)).toEqual({
      label: 'value',
      root: { t: 'SQL', q: dslText, n: null, l: null, r: null },
    });
    const graph = (await direct.query(`SELECT 'SELECT 1' ~> 'SELECT 2' AS g`)).rows[0].g;
    const b = (await p.query('SELECT df.start($1) AS id', [graph])).rows[0].id;
    expect(((await shape(b)) as { root: { t: string } }).root.t).toBe('THEN');
    const before = await count();
    await expect(
      p.query('SELECT df.start($1, $2) AS id', ['{"node_type": "NOPE"}', 'bad']),
    ).rejects.toMatchObject({
      code: '22023',
      message: expect.stringMatching(/Unknown node_type 'NOPE'/),
    });
    // dfgate checks bound values at Bind with the same code and message as the database
    for (const v of [
      '{"node_type": "sql", "query": "SELECT 1"}',
      '{"node_type": "THEN", "left_node": 5}',
      '{"node_type": "SQL", "query": 1}',
      '{"node_type": "SQL", "query": "x", "condition_node": {"node_type": "SQL"}}',
      '{"node_type": "IF", "query": "{\\"condition_node\\": 1}", "condition_node": {"node_type": "SQL", "query": "x"}}',
      '  {"node_type": "JOIN", "query": "not json", "extra_nodes": [{"node_type": "SQL", "query": "x"}]}',
    ]) {
      const want = await direct.query('SELECT df.start($1)', [v]).catch((e: unknown) => e);
      const got = await p.query('SELECT df.start($1)', [v]).catch((e: unknown) => e);
      expect(got, v).toMatchObject({
        code: (want as { code?: string }).code,
        message: (want as Error).message,
      });
    }
    expect(await count()).toBe(before);
    expect((await p.query('SELECT 1 AS one')).rows[0].one).toBe(1);
  });

  it('constants are compiled in a Parse too, with parameters elsewhere in the call', async () => {
    const r = (
      await p.query(`SELECT df.start('SELECT 1' ~> 'SELECT 2', $1) AS id, ${SEEN}`, ['prm'])
    ).rows[0];
    expect(r.seen).toContain('df._start_rows(E');
    expect(((await shape(r.id)) as { label: string }).label).toBe('prm');
  });
});

describe("transaction_mode => 'new'", () => {
  it('survives the caller’s ROLLBACK and runs; caller mode leaves nothing', async () => {
    await p.query('BEGIN');
    const id = (await p.query(`SELECT df.start('SELECT 42 AS answer', transaction_mode => 'new')`))
      .rows[0].start;
    await p.query('ROLLBACK');
    expect((await finished(direct, id)).result).toBe('{"rows": [{"answer": 42}], "row_count": 1}');
    const before = await count();
    await p.query('BEGIN');
    const gone = (await p.query(`SELECT df.start('SELECT 1', transaction_mode => 'caller') AS id`))
      .rows[0].id;
    await p.query('ROLLBACK');
    expect(await count()).toBe(before);
    expect(
      (await direct.query(`SELECT count(*)::int AS n FROM df.instances WHERE id = $1`, [gone]))
        .rows[0].n,
    ).toBe(0);
  });

  it('with bind parameters, prepared once and executed many times, inside a transaction that rolls back', async () => {
    await p.query('BEGIN');
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      const r = await p.query({
        name: 'new-start',
        text: `SELECT df.start($1, $2, transaction_mode => 'new') AS id`,
        values: [`SELECT ${i} AS i`, 'new-bound'],
      });
      expect(r.fields.map((f) => f.name)).toEqual(['id']);
      ids.push(r.rows[0].id);
    }
    await p.query('ROLLBACK');
    expect(new Set(ids).size).toBe(5);
    for (const [i, id] of ids.entries())
      expect((await finished(direct, id)).result).toBe(`{"rows": [{"i": ${i}}], "row_count": 1}`);
    // an invalid bound workflow is an error; the connection stays usable
    await expect(
      p.query(`SELECT df.start($1, transaction_mode => 'new')`, ['{"node_type": "NOPE"}']),
    ).rejects.toMatchObject({ code: '22023' });
    expect((await p.query('SELECT 2 AS two')).rows[0].two).toBe(2);
  });

  it('refuses after SET ROLE, in a failed transaction, and in every other shape', async () => {
    const other = await db.role('edge_other');
    await db.admin.query(`GRANT ${other.ident} TO ${role.ident}`);
    const before = await count();
    await p.query(`SET ROLE ${other.name}`);
    await expect(
      p.query(`SELECT df.start('SELECT 1', transaction_mode => 'new')`),
    ).rejects.toMatchObject({ code: '42501', message: expect.stringMatching(/switched to role/) });
    await expect(
      p.query(`SELECT df.start($1, transaction_mode => 'new')`, ['SELECT 1']),
    ).rejects.toMatchObject({ code: '42501' });
    await p.query('RESET ROLE');
    await p.query('BEGIN');
    await expect(p.query('SELECT 1/0')).rejects.toMatchObject({ code: '22012' });
    await expect(
      p.query(`SELECT df.start('SELECT 1', transaction_mode => 'new')`),
    ).rejects.toMatchObject({ code: '25P02' });
    await p.query('ROLLBACK');
    for (const sql of [
      `SELECT df.start('SELECT 1', transaction_mode => 'new') FROM generate_series(1, 2)`,
      `SELECT 1 AS x, df.start('SELECT 1', transaction_mode => 'new')`,
      `SELECT df.start('SELECT 1', transaction_mode => 'new') WHERE false`,
      `SELECT 1; SELECT df.start('SELECT 1', transaction_mode => 'new')`,
    ]) {
      await expect(p.query(sql)).rejects.toMatchObject({
        code: '0A000',
        message: expect.stringMatching(/as a statement of its own/),
      });
    }
    // a transaction_mode that is not a constant is evaluated by the database, which says what works
    await expect(
      p.query(`SELECT df.start('SELECT 1', transaction_mode => m) FROM (VALUES ('new')) v(m)`),
    ).rejects.toMatchObject({
      code: '0A000',
      message: expect.stringMatching(/as a statement of its own/),
    });
    expect(await count()).toBe(before);
  });

  it('works after a COPY FROM STDIN on the same connection', async () => {
    await p.query('CREATE TABLE copied (v text)');
    await pipeline(Readable.from(['a\n', 'b\n']), p.query(copyFrom('COPY copied FROM STDIN')));
    const id = (await p.query(`SELECT df.start('SELECT 3 AS three', transaction_mode => 'new')`))
      .rows[0].start;
    expect((await finished(direct, id)).result).toBe('{"rows": [{"three": 3}], "row_count": 1}');
  });

  it('works from psql', async () => {
    const url = viaPort(role.url, proxy.port);
    const out = await new Promise<string>((resolve, reject) => {
      const c = spawn(clientBin('psql'), [url, '-XAt', '-v', 'ON_ERROR_STOP=1'], {
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      let o = '';
      let e = '';
      c.stdout.on('data', (d: Buffer) => (o += d.toString()));
      c.stderr.on('data', (d: Buffer) => (e += d.toString()));
      c.on('close', (code) => (code === 0 ? resolve(o) : reject(new Error(`psql ${code}: ${e}`))));
      c.stdin.end(
        `BEGIN;\nSELECT df.start('SELECT 7 AS seven', 'from-psql', transaction_mode => 'new');\nROLLBACK;\n`,
      );
    });
    const id = out.split('\n').find((l) => /^[0-9a-f]{8}$/.test(l)) as string;
    expect(id).toMatch(/^[0-9a-f]{8}$/);
    expect((await finished(direct, id)).result).toBe('{"rows": [{"seven": 7}], "row_count": 1}');
  });
});

describe('statement tracking in the extended protocol (raw messages)', () => {
  let wire: Raw;
  const send = (...ms: FrontendMessage[]): void => {
    wire.sock.write(Buffer.concat(ms.map(encodeFrontend)));
  };
  const bind = (statement: string, values: string[]): FrontendMessage => ({
    type: 'Bind',
    portal: '',
    statement,
    paramFormats: [],
    params: values.map((v) => Buffer.from(v)),
    resultFormats: [],
  });
  const exec: FrontendMessage[] = [{ type: 'Execute', portal: '', maxRows: 0 }, { type: 'Sync' }];
  const NEW = `SELECT df.start($1, transaction_mode => 'new') AS id`;
  const dataOf = (msgs: Array<[string, Buffer]>): string | undefined => {
    const d = msgs.find(([t]) => t === 'D')?.[1];
    return d ? d.toString('utf8', 6, 6 + d.readInt32BE(2)) : undefined;
  };

  beforeAll(async () => {
    const trust = await db.role('edge_wire');
    await db.admin.query(`GRANT dfgate_trust_logins TO ${trust.ident}`);
    wire = await loggedIn(proxy.port, trust.name, db.name);
  });

  it('a named statement closed and parsed again as something else is not started', async () => {
    send(
      { type: 'Parse', name: 's1', sql: NEW, paramTypes: [] },
      bind('s1', ['SELECT 1']),
      ...exec,
    );
    const first = await wire.until((t) => t === 'Z');
    expect(first.map(([t]) => t).join('')).toBe('12DCZ');
    expect(dataOf(first)).toMatch(/^[0-9a-f]{8}$/);
    const before = await count();
    send(
      { type: 'Close', kind: 'S', name: 's1' },
      { type: 'Parse', name: 's1', sql: 'SELECT $1::text AS v', paramTypes: [] },
      bind('s1', ['plain']),
      ...exec,
    );
    const second = await wire.until((t) => t === 'Z');
    expect(second.map(([t]) => t).join('')).toBe('312DCZ');
    expect(dataOf(second)).toBe('plain');
    // the unnamed statement: replaced by the next Parse
    send({ type: 'Parse', name: '', sql: NEW, paramTypes: [] }, { type: 'Sync' });
    await wire.until((t) => t === 'Z');
    send(
      { type: 'Parse', name: '', sql: 'SELECT $1::text AS v', paramTypes: [] },
      bind('', ['x']),
      ...exec,
    );
    expect(dataOf(await wire.until((t) => t === 'Z'))).toBe('x');
    expect(await count()).toBe(before);
  });

  it('a Describe before the Bind is answered first; a failed Parse before it skips the batch as PostgreSQL does', async () => {
    send(
      { type: 'Parse', name: 's2', sql: NEW, paramTypes: [] },
      { type: 'Describe', kind: 'S', name: 's2' },
      bind('s2', ['SELECT 2']),
      { type: 'Describe', kind: 'P', name: '' },
      ...exec,
    );
    const got = await wire.until((t) => t === 'Z');
    expect(got.map(([t]) => t).join('')).toBe('1tT2TDCZ');
    expect(dataOf(got)).toMatch(/^[0-9a-f]{8}$/);
    const before = await count();
    send(
      { type: 'Parse', name: 'broken', sql: 'SELEC 1', paramTypes: [] },
      bind('s2', ['SELECT 3']),
      ...exec,
    );
    const failed = await wire.until((t) => t === 'Z');
    expect(failed.map(([t]) => t).join('')).toBe('EZ');
    expect(errorOf(failed)?.['C']).toBe('42601');
    expect(await count()).toBe(before);
  });

  it('checks a bound workflow at Bind: an invalid one fails the Bind itself, a valid one runs', async () => {
    const before = await count();
    send(
      { type: 'Parse', name: 'chk', sql: 'SELECT df.start($1, $2) AS id', paramTypes: [] },
      bind('chk', ['{"node_type": "THEN", "left_node": 5}', 'x']),
      ...exec,
    );
    const bad = await wire.until((t) => t === 'Z');
    expect(bad.map(([t]) => t).join('')).toBe('1EZ');
    expect(errorOf(bad)).toMatchObject({
      C: '22023',
      M: expect.stringMatching(/^Invalid durable function: /),
    });
    expect(await count()).toBe(before);
    send(bind('chk', ['SELECT 1', 'ok']), ...exec);
    expect(dataOf(await wire.until((t) => t === 'Z'))).toMatch(/^[0-9a-f]{8}$/);
    expect(await count()).toBe(before + 1);
  });

  it('pipelined simple queries around a new-mode start keep their order and answers', async () => {
    wire.sock.write(
      Buffer.concat(
        [
          `SELECT pg_sleep(0.2), 'first' AS a`,
          `SELECT df.start('SELECT 1', 'piped', transaction_mode => 'new')`,
          `SELECT 'third' AS c`,
        ].map((sql) => encodeFrontend({ type: 'Query', sql })),
      ),
    );
    const all: Array<[string, Buffer]> = [];
    for (let i = 0; i < 3; i++) all.push(...(await wire.until((t) => t === 'Z')));
    expect(all.map(([t]) => t).join('')).toBe('TDCZTDCZTDCZ');
    const rows = all.filter(([t]) => t === 'D').map(([, b]) => b.toString('utf8', 6));
    expect(rows[0]).toContain('first');
    expect(rows[1]).toMatch(/^[0-9a-f]{8}$/);
    expect(rows[2]).toBe('third');
  });

  it('a connection that sent a simple query inside an unfinished batch gets 0A000 for new mode, not a hang', async () => {
    const trust = await db.role('edge_mixed');
    await db.admin.query(`GRANT dfgate_trust_logins TO ${trust.ident}`);
    const w = await loggedIn(proxy.port, trust.name, db.name);
    w.sock.write(
      Buffer.concat(
        [
          { type: 'Parse', name: '', sql: 'SELECT 1', paramTypes: [] },
          { type: 'Query', sql: 'SELECT 2' },
          { type: 'Sync' },
        ].map((m) => encodeFrontend(m as FrontendMessage)),
      ),
    );
    await w.until((t) => t === 'Z');
    await w.until((t) => t === 'Z');
    w.sock.write(
      encodeFrontend({
        type: 'Query',
        sql: `SELECT df.start('SELECT 1', transaction_mode => 'new')`,
      }),
    );
    const got = await w.until((t) => t === 'Z');
    expect(errorOf(got)).toMatchObject({
      C: '0A000',
      M: expect.stringMatching(/not available on this connection/),
    });
    w.sock.destroy();
  });

  it('refuses a Bind that follows another execution in the same batch, and the batch is skipped', async () => {
    const before = await count();
    send(
      { type: 'Parse', name: '', sql: 'SELECT 1', paramTypes: [] },
      bind('', []),
      { type: 'Execute', portal: '', maxRows: 0 },
      bind('s2', ['SELECT 4']),
      ...exec,
    );
    const got = await wire.until((t) => t === 'Z');
    expect(got.map(([t]) => t).join('')).toBe('12DCEZ');
    expect(errorOf(got)).toMatchObject({ C: '0A000' });
    expect(await count()).toBe(before);
    send(bind('s2', ['SELECT 5']), ...exec);
    expect(dataOf(await wire.until((t) => t === 'Z'))).toMatch(/^[0-9a-f]{8}$/);
  });
});
