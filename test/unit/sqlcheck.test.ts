/** src/executor/sqlcheck.ts: a step's plan, and the key it is cached under. */
import { beforeAll, describe, expect, it } from 'vitest';
import {
  loadParser,
  planKey,
  PLAN_INLINE_MAX,
  planStep,
  planStepSoon,
  planUncached,
  STEP_TEXT_MAX,
  stepTextMax,
} from '../../src/executor/sqlcheck.js';

beforeAll(async () => {
  await loadParser();
});

describe('planKey', () => {
  it('makes every standalone number 0, so the steps of many instances share one plan', () => {
    const a = planKey(
      'WITH s AS (INSERT INTO step_log (wf, k, started_at) VALUES (17, 3, clock_timestamp())) UPDATE counters SET n = n + 1 WHERE id = 17',
    );
    const b = planKey(
      'WITH s AS (INSERT INTO step_log (wf, k, started_at) VALUES (4711, 10, clock_timestamp())) UPDATE counters SET n = n + 1 WHERE id = 4711',
    );
    expect(a).toBe(b);
    expect(a).toContain('VALUES (0, 0, clock_timestamp())');
    expect(planKey("SELECT 1.5e3, '42', x FROM t LIMIT 10")).toBe(
      "SELECT 0.5e3, '0', x FROM t LIMIT 0",
    );
  });

  it('leaves digits that are part of a name, a parameter, a dollar quote tag or a prefixed number', () => {
    const sql = 'SELECT t1.c2, $1, $q1$ 7 $q1$, 0x1F, 1_000, 12abc FROM t1';
    expect(planKey(sql)).toBe('SELECT t1.c2, $1, $q1$ 0 $q1$, 0x1F, 1_000, 12abc FROM t1');
  });

  it('keeps a text with escapes (backslash, U& strings and identifiers, UESCAPE) as its own key', () => {
    for (const sql of [
      "SELECT E'\\101' FROM t WHERE id = 5",
      "SELECT U&'\\0041' WHERE 1 = 1",
      "SELECT U&'!0041' UESCAPE '!' WHERE 1 = 1",
      'SELECT u&"d!0061t" UESCAPE \'!\' FROM t WHERE 1 = 1',
    ]) {
      expect(planKey(sql)).toBe(sql);
    }
  });

  it('never gives two texts of one key different plans', () => {
    // texts whose plan is decided by what surrounds the numbers; each with its numbers changed
    const corpus = [
      'SELECT 1',
      'SET ROLE app; SELECT 1',
      "SELECT set_config('role', 'x1', false), 2",
      "SELECT set_config('role1', 'x', false), 2",
      "SELECT pg_catalog.set_config('session_authorization', '7', true) FROM generate_series(1, 10)",
      'BEGIN; UPDATE t SET n = 1; COMMIT',
      'SAVEPOINT s1; SELECT 2',
      'DECLARE c1 CURSOR WITH HOLD FOR SELECT 1',
      'DECLARE c1 CURSOR FOR SELECT 1',
      'VACUUM (PARALLEL 2) t1',
      'CREATE INDEX CONCURRENTLY i1 ON t1 (c2) WITH (fillfactor = 70)',
      'REINDEX (CONCURRENTLY, VERBOSE 1) TABLE t1',
      'CREATE DATABASE d1 CONNECTION LIMIT 5',
      'ALTER SYSTEM SET work_mem = 64',
      "SELECT 'BEGIN; SET ROLE x', 12 -- SET ROLE 3\n",
      'SELECT $$; SET ROLE x; 1$$, 5',
      'SELECT 1 /* 2 */ + 3',
      "SELECT B'0101', X'1F', 1e5, .5, 5., 99999999999999999999999",
      "SELECT CAST(x AS varchar(10)), interval(3) '1 day' FROM t",
      'SELECT 1 2 3', // not parseable either way
      'SELECT 12abc, 3', // trailing junk: left alone
      'UPDATE counters SET n = n + 1 WHERE id = 17',
      'INSERT INTO "t 1" VALUES (2)', // a table whose name has a standalone number: not named
      'DELETE FROM s1."2" WHERE x = 3',
      'INSERT INTO t1 VALUES (4) RETURNING 5',
    ];
    // every standalone number (as planKey finds them, up to nine digits) made another, longer one
    const change = (s: string): string =>
      s.replace(/(?<![A-Za-z0-9_$\u0080-\uffff])[0-9]{1,9}(?![A-Za-z0-9_$\u0080-\uffff])/g, (d) =>
        String(Number(d.slice(-1)) * 7 + 123),
      );
    for (const sql of corpus) {
      expect(change(sql), sql).not.toBe(sql);
      expect(planKey(change(sql)), sql).toBe(planKey(sql));
      expect(planUncached(change(sql)), sql).toEqual(planUncached(sql));
      expect(planUncached(planKey(sql)), sql).toEqual(planUncached(sql));
    }
    expect(planUncached('DROP INDEX CONCURRENTLY i1')).toEqual(
      planUncached(planKey('DROP INDEX CONCURRENTLY i1')),
    );
  });

  it('serves a refusal from the cache to a text that differs only in its numbers', () => {
    const first = planStep('SELECT 1; SET ROLE other; SELECT 2');
    expect(first.kind).toBe('refuse');
    expect(planStep('SELECT 10; SET ROLE other; SELECT 20')).toEqual(first);
    expect(planStep('SELECT 10; SET ROLE other1; SELECT 20').kind).toBe('refuse');
    expect(planStep('SELECT 10; SELECT 20').kind).toBe('transaction');
  });
});

describe('rowless: statements whose result is known before they run', () => {
  const rowless = (sql: string): boolean =>
    (planUncached(sql) as { rowless?: boolean }).rowless === true;

  it('one INSERT, UPDATE, DELETE or MERGE without RETURNING', () => {
    for (const sql of [
      'UPDATE counters SET n = n + 1 WHERE id = 5',
      'WITH s AS (INSERT INTO log VALUES (1)) UPDATE app.counters SET n = n + 1',
      'INSERT INTO "Mixed Case" SELECT 1 ON CONFLICT DO NOTHING',
      'INSERT INTO "t 1" VALUES (2) -- a comment to the end',
      'DELETE FROM t2;',
      'MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE',
      "UPDATE t SET a = 'it''s; fine', b = $$x; y$$",
    ])
      expect(rowless(sql), sql).toBe(true);
  });

  it('not a statement with rows, several statements, a backslash, a NUL or a parameter', () => {
    for (const sql of [
      'INSERT INTO t VALUES (1) RETURNING *',
      'UPDATE t SET a = 1 RETURNING a',
      'DELETE FROM t RETURNING 1',
      'MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE RETURNING 1',
      'WITH d AS (DELETE FROM t RETURNING 1) SELECT * FROM d',
      'SELECT 1',
      'UPDATE t SET a = 1; UPDATE t SET a = 2',
      'EXPLAIN ANALYZE UPDATE t SET a = 1',
      'CALL p()',
      'COPY t FROM STDIN',
      'UPDATE t SET a = 1 WHERE b = $1',
      "INSERT INTO t VALUES ('a\\')", // read otherwise with standard_conforming_strings off
      "INSERT INTO t VALUES (E'\\n')",
      'INSERT INTO t VALUES (1)\0',
      'UPDATE t SET', // not parseable
    ])
      expect(rowless(sql), sql).toBe(false);
  });
});

describe('texts the check cannot read are not run (hostile review)', () => {
  it('a text longer than the limit is refused without parsing it', () => {
    const text = `SELECT 1 /* ${'x'.repeat(STEP_TEXT_MAX)} */`;
    expect(planStep(text)).toEqual({
      kind: 'refuse',
      error: `the step's SQL text is ${text.length} characters long, more than the ${STEP_TEXT_MAX} dfgate checks before it runs a step (four times --max-result-bytes, at least 16 MiB); keep large data in tables`,
    });
    expect(stepTextMax(1024)).toBe(STEP_TEXT_MAX);
    expect(stepTextMax(64 * 1024 * 1024)).toBe(256 * 1024 * 1024);
    expect(planStep('SELECT 1 AS one', stepTextMax(1024))).toEqual({ kind: 'transaction' });
  });
  it('the parser running out of memory refuses the step instead of letting it run unchecked', () => {
    const deep = `COMMIT; SELECT ${'('.repeat(100_000)}1${')'.repeat(100_000)}`;
    const plan = planUncached(deep);
    expect(plan.kind).toBe('refuse');
    expect(plan.kind === 'refuse' && plan.error).toMatch(
      /^the step's SQL could not be checked before it runs: memory exhausted/,
    );
    // a plain syntax error is left to PostgreSQL, which reports it when the step runs
    expect(planUncached('SELEC 1')).toEqual({ kind: 'transaction' });
  });
});

describe('the plan cache (hostile review)', () => {
  it('a text the parser cannot read lends its plan to no other text of the same numbers', () => {
    // 99999999999 is no integer: float(n) takes only one, so the first text does not parse
    for (const [bad, good] of [
      ['SET ROLE admin; SELECT 2::float(99999999999)', 'SET ROLE admin; SELECT 2::float(5)'],
      ['COMMIT; FETCH 99999999999 FROM c', 'COMMIT; FETCH 1 FROM c'],
      // the same key: float(0) is refused by the grammar itself
      ['SET ROLE boss; SELECT 3::float(0)', 'SET ROLE boss; SELECT 3::float(5)'],
    ]) {
      expect(planStep(bad as string)).toEqual({ kind: 'transaction' });
      expect(planStep(good as string)).toMatchObject({ kind: 'refuse' });
    }
  });

  it('nor does one checked in a compile worker (over PLAN_INLINE_MAX)', async () => {
    const pad = `/* ${'x'.repeat(PLAN_INLINE_MAX)} */ `;
    const bad = planStepSoon(
      `${pad}DECLARE c CURSOR WITH HOLD FOR SELECT 2::float(0)`,
      STEP_TEXT_MAX,
      'role:1',
    );
    expect(bad).toBeInstanceOf(Promise);
    expect(await bad).toEqual({ kind: 'transaction' });
    const good = await planStepSoon(
      `${pad}DECLARE c CURSOR WITH HOLD FOR SELECT 2::float(5)`,
      STEP_TEXT_MAX,
      'role:1',
    );
    expect(good).toMatchObject({ kind: 'refuse' });
  });
});

describe("texts whose parse could exhaust the parser's stack (hostile review)", () => {
  it('are checked in a compile worker, replaced after each, so checks on this thread stay right', async () => {
    for (let i = 0; i < 40; i++) {
      // 20 KB and deep; distinct (the cache key ignores digits, not letters)
      const evil = `SELECT ${'1+'.repeat(10_000)}1 AS v${'a'.repeat(i % 26)}${'b'.repeat(i >> 3)}`;
      const soon = planStepSoon(evil, STEP_TEXT_MAX, 'role:evil');
      expect(soon).toBeInstanceOf(Promise);
      expect(await soon).toMatchObject({ kind: 'refuse' });
      // checks of other texts on this thread read them as ever
      expect(planStep(`SELECT ${i} AS v${'c'.repeat(i)} FROM t`)).toEqual({ kind: 'transaction' });
      expect(planStep(`SET ROLE victim${'d'.repeat(i)}`)).toMatchObject({ kind: 'refuse' });
    }
  });
});

describe('long texts are checked off the event loop (planStepSoon)', () => {
  it('checks a text over PLAN_INLINE_MAX in a compile worker, with the verdict of the inline check', async () => {
    expect(planStepSoon('SELECT 1 AS one', STEP_TEXT_MAX, 'role:1')).toEqual({
      kind: 'transaction',
    });
    const pad = (n: number): string => `/* ${'x'.repeat(n)} */`;
    for (const text of [
      `UPDATE t SET a = 1 ${pad(PLAN_INLINE_MAX)}`,
      `SELECT 1 ${pad(PLAN_INLINE_MAX)}`,
      `COMMIT ${pad(PLAN_INLINE_MAX)}`,
      `SET ROLE other ${pad(PLAN_INLINE_MAX)}`,
      `VACUUM ${pad(PLAN_INLINE_MAX)}`,
    ]) {
      const soon = planStepSoon(text, STEP_TEXT_MAX, 'role:1');
      expect(soon).toBeInstanceOf(Promise);
      expect(await soon).toEqual(planUncached(text));
    }
    // over the limit: refused at once, unparsed
    const over = `SELECT 1 ${pad(STEP_TEXT_MAX)}`;
    expect(planStepSoon(over, STEP_TEXT_MAX, 'role:1')).toEqual(planStep(over));
  });

  it('caches the plan of a text checked in a worker: the same text with other numbers is answered at once', async () => {
    // dense: 12 KiB of list elements, each a token of its own (checked inline, 10 ms and more)
    const text = (n: number): string => `UPDATE t SET a = ${n} WHERE b IN (${'1,'.repeat(6000)}1)`;
    expect(text(1).length).toBeGreaterThan(PLAN_INLINE_MAX);
    const first = planStepSoon(text(1), STEP_TEXT_MAX, 'role:1');
    expect(first).toBeInstanceOf(Promise);
    const plan = { kind: 'transaction', rowless: true };
    expect(await first).toEqual(plan);
    expect(planStepSoon(text(2), STEP_TEXT_MAX, 'role:1')).toEqual(plan);
    expect(planStepSoon(`${text(3)} RETURNING a`, STEP_TEXT_MAX, 'role:1')).toBeInstanceOf(Promise);
  });

  it('the event loop keeps turning while a 12 MiB text is checked', async () => {
    const text = `COMMIT /* ${'x'.repeat(12 * 1024 * 1024)} */`;
    let turns = 0;
    let done = false;
    const spin = (): void => {
      turns++;
      if (!done) setImmediate(spin);
    };
    setImmediate(spin);
    const plan = await planStepSoon(text, STEP_TEXT_MAX, 'role:1');
    done = true;
    expect(plan.kind).toBe('refuse');
    // checked on this thread, the parse would have taken every turn (none in between)
    expect(turns).toBeGreaterThan(10);
  });
});
