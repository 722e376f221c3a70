/** src/dsl/edge.ts: what the proxy forwards for a statement that calls df.start, byte for byte. */
import { loadModule } from 'libpg-query';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  analyze,
  ANALYZE_MAX,
  BATCH_MAX,
  DEPTH_MAX,
  literal,
  NODES_MAX,
  withinLimits,
  type Edge,
} from '../../src/dsl/edge.js';

beforeAll(async () => {
  await loadModule();
});

const G1 = `E'{"node_type":"SQL","query":"SELECT 1"}'`;
/** The rows of G1 for df._start_rows, its node id written #1 (see rewritten). */
const R1 = `E'[{"i":"#1","t":"SQL","q":"SELECT 1"}]'`;

/** The node ids df._start_rows gets are random: each distinct one is written #1, #2, ... in order. */
function sameIds(text: string): string {
  const seen = new Map<string, string>();
  return text.replace(/"([ilr])":"([0-9a-f]{8})"/g, (_m, k: string, id: string) => {
    if (!seen.has(id)) seen.set(id, `#${seen.size + 1}`);
    return `"${k}":"${seen.get(id)}"`;
  });
}

function rewritten(sql: string, extended = false): string {
  const e = analyze(sql, extended);
  if (e.kind !== 'rewrite') throw new Error(`expected a rewrite, got ${JSON.stringify(e)}`);
  return sameIds(e.text);
}

function refused(sql: string): Extract<Edge, { kind: 'error' }> {
  const e = analyze(sql);
  if (e.kind !== 'error') throw new Error(`expected an error, got ${JSON.stringify(e)}`);
  return e;
}

describe('the rewrite', () => {
  it('replaces only the call and keeps the column name', () => {
    expect(rewritten(`SELECT df.start('SELECT 1')`)).toBe(
      `SELECT df._start_rows(${R1}, NULL) AS "start"`,
    );
    expect(rewritten(`select  DF.START ( 'SELECT 1' , 'l' ) as id ;`)).toBe(
      `select  df._start_rows(${R1}, 'l') as id ;`,
    );
    expect(rewritten(`SELECT "df".start('SELECT 1')::text COLLATE "C" FROM t`)).toBe(
      `SELECT df._start_rows(${R1}, NULL)::text COLLATE "C" AS "start" FROM t`,
    );
    expect(rewritten(`SELECT ((df.start('SELECT 1'))), 2`)).toBe(
      `SELECT ((df._start_rows(${R1}, NULL))) AS "start", 2`,
    );
    expect(rewritten(`SELECT x FROM (SELECT df.start('SELECT 1')) s`)).toBe(
      `SELECT x FROM (SELECT df._start_rows(${R1}, NULL) AS "start") s`,
    );
    expect(rewritten(`SELECT df.start('SELECT 1', label => df.start('SELECT 2'))`)).toBe(
      `SELECT df._start_rows(${R1}, df.start('SELECT 2')) AS "start"`,
    );
    expect(rewritten(`SELECT coalesce(df.start('SELECT 1'), 'x')`)).toBe(
      `SELECT coalesce(df._start_rows(${R1}, NULL), 'x')`,
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
      `SELECT 'é→✓'; INSERT INTO t SELECT df._start_rows(E'[{"i":"#1","t":"SQL","q":"SELECT ''日本''"}]', 'ü') AS "start" RETURNING id`,
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
    expect(e.position([...e.text.slice(0, e.text.indexOf("E'["))].length + 1)).toBe(
      sql.indexOf('df.start') + 1,
    );
  });

  it('emits literals no server setting can change', () => {
    expect(literal(`a'b\\c`)).toBe(`E'a''b\\\\c'`);
    expect(literal(null)).toBe('NULL');
    expect(rewritten(`SELECT df.start($q$SELECT '\\n'$q$)`)).toBe(
      `SELECT df._start_rows(E'[{"i":"#1","t":"SQL","q":"SELECT ''\\\\\\\\n''"}]', NULL) AS "start"`,
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
    expect(rewritten(`EXPLAIN (ANALYZE) SELECT df.start('SELECT 1')`)).toContain('_start_rows');
  });
});

describe('refusals', () => {
  it('leave DSL errors to the database, which raises them with its own fields', () => {
    for (const sql of [
      `SELECT 'ü', df.start('SELECT 1' ~> df.slep(5))`, // PostgreSQL names the argument types
      `SELECT 1; SELECT df.start(df.sleep(-1))`,
      `SELECT df.start(df.sleep('abc'))`,
      `SELECT df.start(df.wait_for_signal('s', 1.5))`, // no df.wait_for_signal(unknown, numeric)
      `SELECT df.start('{"node_type": "NOPE"}')`,
      `SELECT df.start(df.sleep(-1), transaction_mode => 'new')`,
    ])
      expect(analyze(sql).kind, sql).toBe('pass');
    // other calls of the statement are still compiled; the failing one stays as written
    expect(rewritten(`SELECT df.start('SELECT 1'), df.start(df.slep(1))`)).toBe(
      `SELECT df._start_rows(${R1}, NULL) AS "start", df.start(df.slep(1))`,
    );
  });

  it('leave casts with a type modifier and numbers in exponent form to the database', () => {
    for (const sql of [
      `SELECT df.start('SELECT 1'::varchar(3))`,
      `SELECT df.start(df.sleep(1.55::numeric(3,1)))`,
      `SELECT df.start(df.sleep(1e2))`,
      `SELECT df.start(df.sleep('1'::float8))`,
      `SELECT df.start(df.sleep('1.5'::int4))`,
    ])
      expect(analyze(sql).kind, sql).toBe('pass');
    expect(rewritten(`SELECT df.start('SELECT 1'::varchar)`)).toContain('_start_rows');
  });

  it('leave casts to a type of any schema but pg_catalog to the database (the caller’s own code)', () => {
    for (const sql of [
      `SELECT df.start('SELECT 1'::pg_temp.text)`,
      `SELECT df.start('SELECT 1'::public.text)`,
      `SELECT df.start(df.sleep('1'::myschema.int4))`,
    ])
      expect(analyze(sql).kind, sql).toBe('pass');
    expect(rewritten(`SELECT df.start('SELECT 1'::pg_catalog.text)`)).toContain('_start_rows');
  });

  it('offer a born lease only to a start with no label or a plain literal one (hostile review)', () => {
    const leaseAt = (sql: string): number | undefined => {
      const e = analyze(sql);
      if (e.kind !== 'rewrite') throw new Error(`expected a rewrite, got ${JSON.stringify(e)}`);
      return e.sole?.leaseAt;
    };
    expect(leaseAt(`SELECT df.start('SELECT 1')`)).toBeDefined();
    expect(leaseAt(`SELECT df.start('SELECT 1', 'lbl')`)).toBeDefined();
    expect(leaseAt(`SELECT df.start('SELECT 1', NULL)`)).toBeDefined();
    // a cast may run the caller's code (a domain's check) inside the start, where it could
    // read the lease and the nonce the rewritten call names
    expect(leaseAt(`SELECT df.start('SELECT 1', 'lbl'::pg_temp.text)`)).toBeUndefined();
    expect(leaseAt(`SELECT df.start('SELECT 1', 'lbl'::text)`)).toBeUndefined();
    expect(leaseAt(`SELECT df.start('SELECT 1', 'a' || 'b')`)).toBeUndefined();
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
  const ok = `SELECT df.start('SELECT 1' ~> 'SELECT 2')`;

  it('compiles a statement within the limits', () => {
    expect(withinLimits(ok)).toBe(true);
    expect(analyze(ok).kind).toBe('rewrite');
  });

  it(`leaves statements over ${ANALYZE_MAX} characters to the database`, () => {
    const big = `${ok}, '${'x'.repeat(ANALYZE_MAX)}'`;
    expect(withinLimits(big)).toBe(false);
    expect(analyze(big).kind).toBe('pass');
  });

  it(`leaves nesting deeper than ${DEPTH_MAX} to the database, counting only outside literals and comments`, () => {
    const nest = (n: number): string =>
      `SELECT df.start(${'df.seq('.repeat(n)}'SELECT 1'${", 'SELECT 2')".repeat(n)})`;
    expect(analyze(nest(DEPTH_MAX - 2)).kind).toBe('rewrite');
    expect(withinLimits(nest(DEPTH_MAX))).toBe(false);
    expect(analyze(nest(1000)).kind).toBe('pass');
    const quoted = `SELECT df.start('SELECT ${'('.repeat(500)}1') /* ((((( */ -- ((((\n, $q$(((($q$, "((("`;
    expect(withinLimits(quoted)).toBe(true);
    expect(withinLimits(`SELECT df.start(E'\\' ${'('.repeat(100)}')`)).toBe(true);
  });

  it('checks the limits again on PostgreSQL’s own tokens, which the quick scan can misread', () => {
    // PostgreSQL ends a -- comment at a carriage return too; the quick scan only at a newline,
    // so it takes the chain after it for comment. Compiled, such a chain cost the worker seconds.
    const chain = Array.from({ length: 500 }, (_, i) => `'SELECT ${i}'`).join(' ~> ');
    const hidden = `SELECT df.start('SELECT 0' -- x\r ~> ${chain})`;
    expect(withinLimits(hidden)).toBe(true);
    expect(analyze(hidden).kind).toBe('pass');
    // a dollar quote that is really part of an identifier (a$$$ ... b$$$)
    const ident = `SELECT df.start('SELECT 0'), a$$$ + ${'1 + '.repeat(100)}b$$$`;
    expect(analyze(ident).kind).toBe('pass');
    // within the limits on both counts: compiled
    expect(analyze(`SELECT df.start('SELECT 0' -- x\r ~> 'SELECT 1')`).kind).toBe('rewrite');
  });

  it(`leaves more than ${NODES_MAX} calls and operators to the database`, () => {
    const chain = (n: number): string =>
      `SELECT df.start(${Array.from({ length: n }, (_, i) => `'SELECT ${i}'`).join(' ~> ')})`;
    expect(analyze(chain(20)).kind).toBe('rewrite');
    expect(analyze(chain(NODES_MAX * 2)).kind).toBe('pass');
    const calls = Array.from({ length: NODES_MAX + 1 }, () => `df.start('SELECT 1')`).join(', ');
    expect(analyze(`SELECT ${calls}`).kind).toBe('pass');
  });
});

describe('many starts in one message (edge-batch.ts)', () => {
  const start = (i: number, label = `'wf-${i}'`): string =>
    `SELECT df.start('SELECT ${i}' ~> 'SELECT ${i + 1}', ${label})`;
  const batchOf = (text: string) => {
    const e = analyze(text);
    return e.kind === 'rewrite' ? e.batch : undefined;
  };

  it('one df._start_batch call for every statement, in order, with each result column', () => {
    const b = batchOf(
      `${start(1)}; SELECT df.start('SELECT 9') AS "Id"; select df.start('SELECT 8', NULL) as x;` +
        ` SELECT df.start('SELECT 7', E'a''b\\u00e9')`,
    );
    expect(b?.columns).toEqual(['start', 'Id', 'x', 'start']);
    expect(b?.steps).toEqual(['SELECT 1', 'SELECT 2', 'SELECT 9', 'SELECT 8', 'SELECT 7']);
    const m = /^SELECT df\._start_batch\(E'(.*)'\)$/s.exec(b?.sql ?? '');
    expect(m).not.toBeNull();
    const json = JSON.parse((m?.[1] ?? '').replace(/''/g, "'").replace(/\\\\/g, '\\'));
    expect(json.map((s: { l: string | null }) => s.l)).toEqual(['wf-1', null, null, "a'bé"]);
    expect(json[0].r.map((r: { t: string; q?: string }) => [r.t, r.q])).toEqual([
      ['THEN', undefined],
      ['SQL', 'SELECT 1'],
      ['SQL', 'SELECT 2'],
    ]);
  });

  it('not when any statement is something else, or a start the database must judge', () => {
    const others = [
      `${start(1)}; SELECT 1`,
      `BEGIN; ${start(1)}; ${start(2)}`,
      `${start(1)}; ${start(2, `'wf-' || 2`)}`, // a label PostgreSQL computes
      `${start(1)}; ${start(2, `2`)}`, // a label PostgreSQL converts, or refuses
      `${start(1)}; SELECT df.start('SELECT 2', 'x', idempotency_key => 'k')`,
      `${start(1)}; SELECT df.start('SELECT 2', 'x', transaction_mode => 'caller')`,
      `${start(1)}; SELECT df.start('SELECT 2'), 1`,
      `${start(1)}; SELECT * FROM df.start('SELECT 2')`,
      `${start(1)}; SELECT df.start('SELECT 2', df.start('SELECT 3'))`,
      `${start(1)}; SELECT df.start($1)`,
      `${start(1)}; SELECT df.start(${G1.replace('SQL', 'SLEEPY')})`,
    ];
    for (const text of others) expect(batchOf(text), text).toBeUndefined();
    expect(batchOf(start(1)), 'one statement').toBeUndefined();
  });

  it('the limits of one statement apply to each; the whole text may be up to BATCH_MAX', () => {
    const hundred = Array.from({ length: 100 }, (_, i) => start(i)).join('; ');
    expect(withinLimits(hundred)).toBe(true);
    expect(batchOf(hundred)?.columns).toHaveLength(100);
    const long = Array.from({ length: 1001 }, (_, i) => start(i)).join(';');
    expect(analyze(long).kind).toBe('rewrite');
    expect(batchOf(long), 'over 1,000 starts').toBeUndefined();
    const chain = (n: number): string =>
      `SELECT df.start(${Array.from({ length: n }, (_, i) => `'SELECT ${i}'`).join(' ~> ')})`;
    expect(analyze(`${start(1)}; ${chain(NODES_MAX * 2)}`).kind).toBe('pass');
    const big = `${start(1)}; SELECT df.start('SELECT 1', '${'x'.repeat(ANALYZE_MAX)}')`;
    expect(withinLimits(big)).toBe(false);
    const huge = Array.from(
      { length: BATCH_MAX / 28 + 1 },
      () => `SELECT df.start('SELECT 1')`,
    ).join(';');
    expect(huge.length).toBeGreaterThan(BATCH_MAX);
    expect(withinLimits(huge)).toBe(false);
    // a semicolon inside a literal, a comment or parentheses does not end a statement
    const hidden = `SELECT df.start('SELECT 1; ${'x'.repeat(ANALYZE_MAX)}')`;
    expect(withinLimits(hidden)).toBe(false);
  });
});

describe('the edge cache (edge-cache.ts)', () => {
  it('holds at most 1,000 entries and 8 Mi characters of keys and rewrites, newest kept', async () => {
    const { rememberEdge, cachedEdge, edgeCacheSize } = await import('../../src/dsl/edge-cache.js');
    const big = 'x'.repeat(100_000);
    for (let i = 0; i < 300; i++)
      rememberEdge(`SELECT ${i}`, false, {
        kind: 'rewrite',
        text: big,
        position: (p: number) => p,
      });
    expect(edgeCacheSize().chars).toBeLessThanOrEqual(8 * 1024 * 1024);
    expect(cachedEdge('SELECT 299', false)).toBeDefined();
    expect(cachedEdge('SELECT 0', false)).toBeUndefined();
    // one rewrite over a 64th of the budget is not cached at all
    rememberEdge('SELECT huge', false, {
      kind: 'rewrite',
      text: 'y'.repeat(200_000),
      position: (p: number) => p,
    });
    expect(cachedEdge('SELECT huge', false)).toBeUndefined();
    for (let i = 0; i < 1500; i++) rememberEdge(`SELECT small ${i}`, false, { kind: 'pass' });
    expect(edgeCacheSize().entries).toBe(1000);
  });
});
