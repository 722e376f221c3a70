/** The cron grammar golden vectors against df.wait_for_schedule. */
import { readFileSync } from 'node:fs';
import type pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { useTestDatabase } from '../harness/db.js';

const vectors = JSON.parse(
  readFileSync(new URL('../golden/cron-cases.json', import.meta.url), 'utf8'),
) as {
  valid: string[];
  invalid: [string, string][];
};
const db = useTestDatabase();
let c: pg.Client;
beforeAll(async () => {
  c = await db.connect((await db.role('cron')).url);
});

describe('cron expressions (database)', () => {
  it.each(vectors.valid)('accepts %j', async (expr) => {
    const r = await c.query(`SELECT df.wait_for_schedule($1) AS g`, [expr]);
    expect(JSON.parse(JSON.parse(r.rows[0].g).query)).toEqual({ cron_expr: expr });
  });
  it.each(vectors.invalid)('refuses %j', async (expr, detail) => {
    await expect(c.query(`SELECT df.wait_for_schedule($1)`, [expr])).rejects.toMatchObject({
      code: '22023',
      message: `Invalid cron expression '${expr}': ${detail}`,
    });
  });
});
