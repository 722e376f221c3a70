/**
 * Nodes a tenant writes by hand (docs/security.md): df._activate_graph checks that they form one
 * tree in the tenant's own name, not what each node says. Whatever they say, the executor fails
 * that instance with an error and goes on serving everyone else; nothing runs as anyone else.
 */
import type pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { useTestDatabase } from '../harness/db.js';
import { finished, startTestExecutor } from '../harness/executor.js';

const db = useTestDatabase();
let a: pg.Client;

beforeAll(async () => {
  a = await db.connect((await db.role('alice', { http: true })).url);
  await startTestExecutor(db.url);
});

/** One node of `type` with `query`, written by hand and activated in one transaction. */
async function forged(type: string, query: string | null, options = '{}'): Promise<string> {
  const id = Math.floor(Math.random() * 0xffffffff)
    .toString(16)
    .padStart(8, '0');
  const root = Math.floor(Math.random() * 0xffffffff)
    .toString(16)
    .padStart(8, '0');
  await a.query('BEGIN');
  try {
    await a.query(
      `INSERT INTO df.nodes (id, instance_id, node_type, query) VALUES ($1, $2, $3, $4)`,
      [root, id, type, query],
    );
    const r = await a.query(`SELECT df._activate_graph($1, $2, 'forged', $3::jsonb) AS id`, [
      id,
      root,
      options,
    ]);
    await a.query('COMMIT');
    return r.rows[0].id as string;
  } catch (err) {
    await a.query('ROLLBACK');
    throw err;
  }
}

describe('hand-written nodes', () => {
  it('that df.start would refuse fail their instance, and the executor goes on', async () => {
    const ids = [
      await forged('SLEEP', 'banana'),
      await forged('WAIT_SCHEDULE', 'not a cron'),
      await forged('BREAK', '{}'),
      await forged('SIGNAL', '{"signal_name": 42}'),
      await forged('HTTP', 'not json'),
    ];
    const outcomes = [];
    for (const id of ids) outcomes.push((await finished(a, id)).status);
    expect(outcomes).toEqual(['failed', 'failed', 'failed', 'failed', 'failed']);
    for (const id of ids) {
      const e = await a.query(`SELECT error FROM df.instances WHERE id = $1`, [id]);
      expect(e.rows[0].error, id).toEqual(expect.any(String));
    }
    // and a well-formed start right after still runs
    const ok = (await a.query(`SELECT df.start('SELECT 41 + 1 AS v') AS id`)).rows[0].id as string;
    expect((await finished(a, ok)).status).toBe('completed');
  });

  it('options df.start would refuse are refused', async () => {
    const cases: Array<[string, string]> = [
      ['{"max_attempts": -5}', 'max_attempts must be a positive integer'],
      ['{"max_attempts": "abc"}', 'max_attempts must be a positive integer'],
      ['{"max_backoff_seconds": 0}', 'max_backoff must be positive'],
      ['{"on_failure": 42}', 'on_failure must be a workflow'],
      ['[1, 2]', 'options must be a JSON object'],
    ];
    for (const [options, message] of cases)
      await expect(forged('SQL', 'SELECT 1', options), options).rejects.toMatchObject({
        code: '22023',
        message: expect.stringContaining(message),
      });
  });
});
