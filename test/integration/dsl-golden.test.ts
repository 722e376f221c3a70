/**
 * The golden DSL vectors (test/golden/dsl-cases.json) against the in-database
 * constructors and operators, evaluated by a granted ordinary role whose
 * search_path df.grant_usage extended, so operators resolve unqualified.
 */
import type pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { dslCases } from '../harness/golden.js';
import { useTestDatabase } from '../harness/db.js';

const cases = dslCases();
const db = useTestDatabase();
let user: pg.Client;

beforeAll(async () => {
  const role = await db.role('golden', { http: true });
  user = await db.connect(role.url);
});

async function evaluate(expr: string): Promise<string | null> {
  const r = await user.query<{ v: string | null }>(`SELECT (${expr})::text AS v`);
  return r.rows[0]?.v ?? null;
}

describe('golden DSL vectors (database)', () => {
  it('has cases of every kind', () => {
    expect(cases.filter((c) => c.graph).length).toBeGreaterThan(20);
    expect(cases.filter((c) => c.error).length).toBeGreaterThan(10);
    expect(cases.filter((c) => c.same_as).length).toBeGreaterThan(15);
  });

  for (const c of cases) {
    it(c.expr, async () => {
      if (c.error !== undefined) {
        await expect(evaluate(c.expr)).rejects.toThrow(c.error);
        return;
      }
      const got = await evaluate(c.expr);
      if (c.null) {
        expect(got).toBeNull();
        return;
      }
      if (c.graph !== undefined) expect(got).toBe(c.graph);
      if (c.same_as !== undefined) {
        expect(got).not.toBeNull();
        expect(got).toBe(await evaluate(c.same_as));
      }
    });
  }

  it('is deterministic: two evaluations are byte-identical', async () => {
    const r = await user.query(
      `SELECT (('SELECT 1' |=> 'a') ~> df.if('SELECT $a > 0', 'SELECT 2', df.sleep(1))) IS NOT DISTINCT FROM
              (('SELECT 1' |=> 'a') ~> df.if('SELECT $a > 0', 'SELECT 2', df.sleep(1))) AS same`,
    );
    expect(r.rows[0].same).toBe(true);
  });
});
