/** src/dsl/edge.ts: what the proxy forwards for a statement that calls df.start, byte for byte. */
import { loadModule } from 'libpg-query';
import { beforeAll, describe, expect, it } from 'vitest';
import { analyze, literal, type Edge } from '../../src/dsl/edge.js';

beforeAll(async () => {
  await loadModule();
});

const G1 = `E'{"node_type":"SQL","query":"SELECT 1"}'`;

function rewritten(sql: string, extended = false): string {
  const e = analyze(sql, extended);
  if (e.kind !== 'rewrite') throw new Error(`expected a rewrite, got ${JSON.stringify(e)}`);
  return e.text;
}

function refused(sql: string): Extract<Edge, { kind: 'error' }> {
  const e = analyze(sql);
  if (e.kind !== 'error') throw new Error(`expected an error, got ${JSON.stringify(e)}`);
  return e;
}

describe('the rewrite', () => {
  it('replaces only the call and keeps the column name', () => {
    expect(rewritten(`SELECT df.start('SELECT 1')`)).toBe(
      `SELECT df._start_graph(${G1}, NULL, NULL) AS "start"`,
    );
    expect(rewritten(`select  DF.START ( 'SELECT 1' , 'l' ) as id ;`)).toBe(
      `select  df._start_graph(${G1}, 'l', NULL) as id ;`,
    );
    expect(rewritten(`SELECT "df".start('SELECT 1')::text COLLATE "C" FROM t`)).toBe(
      `SELECT df._start_graph(${G1}, NULL, NULL)::text COLLATE "C" AS "start" FROM t`,
    );
    expect(rewritten(`SELECT ((df.start('SELECT 1'))), 2`)).toBe(
      `SELECT ((df._start_graph(${G1}, NULL, NULL))) AS "start", 2`,
    );
    expect(rewritten(`SELECT x FROM (SELECT df.start('SELECT 1')) s`)).toBe(
      `SELECT x FROM (SELECT df._start_graph(${G1}, NULL, NULL) AS "start") s`,
    );
    expect(rewritten(`SELECT df.start('SELECT 1', label => df.start('SELECT 2'))`)).toBe(
      `SELECT df._start_graph(${G1}, df.start('SELECT 2'), NULL) AS "start"`,
    );
    expect(rewritten(`SELECT coalesce(df.start('SELECT 1'), 'x')`)).toBe(
      `SELECT coalesce(df._start_graph(${G1}, NULL, NULL), 'x')`,
    );
  });

  it('pastes the arguments that are not the workflow, named or positional', () => {
    expect(
      rewritten(
        `SELECT df.start('SELECT 1', t.name, max_backoff => '1 min'::interval, idempotency_key := $2) AS id FROM t`,
        true,
      ),
    ).toBe(
      `SELECT df._start_graph(${G1}, t.name, NULL, df._start_options(idempotency_key => $2, max_backoff => '1 min'::interval)) AS id FROM t`,
    );
    expect(rewritten(`SELECT df.start('SELECT 1', 'l', NULL, 'CALLER', 'k')`)).toContain(
      `df._start_graph(${G1}, 'l', NULL, df._start_options(idempotency_key => 'k')) AS "start"`,
    );
  });

  it('handles several statements and non-ASCII text before and inside the call', () => {
    const sql = `SELECT 'é→✓'; INSERT INTO t SELECT df.start('SELECT ''日本''', 'ü') RETURNING id`;
    expect(rewritten(sql)).toBe(
      `SELECT 'é→✓'; INSERT INTO t SELECT df._start_graph(E'{"node_type":"SQL","query":"SELECT ''日本''"}', 'ü', NULL) AS "start" RETURNING id`,
    );
  });

  it('maps a position in the rewritten text back to the original', () => {
    const sql = `SELECT 'é', df.start('SELECT 1' ~> 'SELECT 2'), nope`;
    const e = analyze(sql);
    if (e.kind !== 'rewrite') throw new Error('expected a rewrite');
    const at = [...e.text].join('').indexOf('nope');
    expect(e.position([...e.text.slice(0, at)].length + 1)).toBe(
      [...sql.slice(0, sql.indexOf('nope'))].length + 1,
    );
    // inside the replaced call: the call's start
    expect(e.position([...e.text.slice(0, e.text.indexOf("E'{"))].length + 1)).toBe(
      sql.indexOf('df.start') + 1,
    );
  });

  it('emits literals no server setting can change', () => {
    expect(literal(`a'b\\c`)).toBe(`E'a''b\\\\c'`);
    expect(literal(null)).toBe('NULL');
    expect(rewritten(`SELECT df.start($q$SELECT '\\n'$q$)`)).toBe(
      `SELECT df._start_graph(E'{"node_type":"SQL","query":"SELECT ''\\\\\\\\n''"}', NULL, NULL) AS "start"`,
    );
  });

  it('leaves to PostgreSQL what it must evaluate or report', () => {
    for (const sql of [
      `SELECT df.start(q) FROM t`, // not a constant
      `SELECT df.start($1, $2)`, // bound values are values
      `SELECT df.start('SELECT 1', transaction_mode => m) FROM t`, // mode decided at run time
      `SELECT df.start('SELECT 1', bogus => 1)`, // no such parameter
      `CREATE VIEW v AS SELECT df.start('SELECT 1')`, // stored, not run
      `EXPLAIN SELECT df.start('SELECT 1')`,
      `SELECT df.start('SELECT 1'`, // a syntax error
      `SELECT df.signal('abc', 'go')`,
    ])
      expect(analyze(sql, true).kind, sql).toBe('pass');
    expect(rewritten(`EXPLAIN (ANALYZE) SELECT df.start('SELECT 1')`)).toContain('_start_graph');
  });
});

describe('refusals', () => {
  it('point at the offending call, in characters', () => {
    const sql = `SELECT 'ü', df.start('SELECT 1' ~> df.slep(5))`;
    const e = refused(sql);
    expect(e.error).toMatchObject({ code: '42883', position: sql.indexOf('df.slep') + 1 });
    expect(e.only).toBe(true);
  });

  it('name the statement of a multi-statement text that fails', () => {
    const sql = `SELECT 1; SELECT df.start(df.sleep(-1))`;
    const e = refused(sql);
    expect(e.only).toBe(false);
    expect(Buffer.from(sql).subarray(e.statement.start, e.statement.end).toString()).toBe(
      `SELECT df.start(df.sleep(-1))`,
    );
  });

  it("accept transaction_mode => 'new' only as a statement of its own", () => {
    const ok = analyze(`SELECT df.start('SELECT 1', 'l', transaction_mode => 'NEW') AS id`);
    expect(ok).toMatchObject({ kind: 'new', call: { column: 'id' } });
    const bound = analyze(`SELECT df.start($1, $2, transaction_mode => 'new')`, true);
    expect(bound.kind).toBe('new');
    if (bound.kind === 'new')
      expect([...bound.call.args.entries()]).toEqual([
        ['fut', { param: 1 }],
        ['label', { param: 2 }],
        ['transaction_mode', { value: 'new' }],
      ]);
    for (const sql of [
      `SELECT df.start('SELECT 1', transaction_mode => 'new') FROM t`,
      `SELECT df.start('SELECT 1', transaction_mode => 'new'), 1`,
      `SELECT upper(df.start('SELECT 1', transaction_mode => 'new'))`,
      `SELECT df.start(q, transaction_mode => 'new') FROM t`,
      `INSERT INTO t SELECT df.start('SELECT 1', transaction_mode => 'new')`,
    ])
      expect(refused(sql).error.code, sql).toBe('0A000');
  });
});

describe('limits', () => {
  it('leaves statements over 1 MiB to the database', () => {
    const big = `SELECT df.start('SELECT 1' ~> df.slep(1)), '${'x'.repeat(1024 * 1024)}'`;
    expect(analyze(big).kind).toBe('pass');
    expect(analyze(`SELECT df.start('SELECT 1' ~> df.slep(1)), 'x'`).kind).toBe('error');
  });
});
