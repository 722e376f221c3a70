/** The golden DSL vectors (test/golden/dsl-cases.json) against src/dsl: the same graph text the database produces. */
import { readFileSync } from 'node:fs';
import { loadModule, parseSync } from 'libpg-query';
import { beforeAll, describe, expect, it } from 'vitest';
import { dslCases } from '../harness/golden.js';
import { cronError } from '../../src/dsl/cron.js';
import { evaluate, valueText } from '../../src/dsl/evaluate.js';

const cases = dslCases();

beforeAll(async () => {
  await loadModule();
});

/** undefined: not constant (left for PostgreSQL), else the text value. */
function run(expr: string): string | null | undefined {
  const ast = parseSync(`SELECT ${expr}`) as unknown as {
    stmts: Array<{ stmt: { SelectStmt: { targetList: Array<{ ResTarget: { val: unknown } }> } } }>;
  };
  const v = evaluate(ast.stmts[0]?.stmt.SelectStmt.targetList[0]?.ResTarget.val);
  return v === undefined ? undefined : valueText(v);
}

describe('golden DSL vectors (src/dsl)', () => {
  const deferred: string[] = [];
  for (const c of cases) {
    it(c.expr, () => {
      if (c.error !== undefined) {
        let threw: unknown;
        let got: string | null | undefined;
        try {
          got = run(c.expr);
        } catch (e) {
          threw = e;
        }
        if (threw === undefined && got === undefined) {
          deferred.push(c.expr);
          return; // not constant here: PostgreSQL raises it (checked by the database suite)
        }
        expect((threw as Error | undefined)?.message ?? `no error, got ${String(got)}`).toContain(
          c.error,
        );
        return;
      }
      const got = run(c.expr);
      if (got === undefined) {
        deferred.push(c.expr);
        return;
      }
      if (c.null) expect(got).toBeNull();
      if (c.graph !== undefined) expect(got).toBe(c.graph);
      if (c.same_as !== undefined) {
        const other = run(c.same_as);
        if (other !== undefined) expect(got).toBe(other);
      }
    });
  }
  it('evaluates nearly every vector itself (only non-DSL functions and operators are deferred)', () => {
    // the helper guard (a df.setvar call), `||`, `=` and casts to text are PostgreSQL's to evaluate
    expect(deferred).toEqual([
      `'a' ~> 'b' || 'c'`,
      `'a' || 'b' ~> 'c'`,
      `('p' ~> 'q' = 'x')::text`,
      `df.seq(df.setvar('a', 'b'), 'SELECT 1')`,
    ]);
  });
});

describe('cron vectors (src/dsl)', () => {
  const vectors = JSON.parse(
    readFileSync(new URL('../golden/cron-cases.json', import.meta.url), 'utf8'),
  ) as { valid: string[]; invalid: [string, string][] };
  it.each(vectors.valid)('accepts %j', (e) => expect(cronError(e)).toBeUndefined());
  it.each(vectors.invalid)('refuses %j', (e, detail) => expect(cronError(e)).toBe(detail));
});
