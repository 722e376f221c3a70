/**
 * The executor's claims keep their generic plans (options.ts, controlPools),
 * made once, often while df.instances is nearly empty. Such a plan must still
 * reach the instances a claim takes through the index it was written for
 * when the table has grown: here each claim statement is prepared on a
 * table of one instance exactly as the claim connection prepares it, the
 * table then gets 3,000 ready instances, the executor's statistics check
 * (statistics.ts) runs, and the plan the statement has then is run (EXPLAIN
 * ANALYZE, rolled back) and read node by node.
 */
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { controlPools, type ControlPools } from '../../src/executor/options.js';
import { TableStatistics } from '../../src/executor/statistics.js';
import { ControlStore } from '../../src/executor/store.js';
import { useTestDatabase } from '../harness/db.js';

const db = useTestDatabase();
let pools: ControlPools;
let store: ControlStore;
/** The claim connection's statements, as the store sends them. */
const sent = new Map<string, { text: string; values: unknown[] }>();

interface PlanNode {
  'Node Type': string;
  'Relation Name'?: string;
  'Index Name'?: string;
  'Rows Removed by Filter'?: number;
  'Rows Removed by Index Recheck'?: number;
  Plans?: PlanNode[];
}

function nodes(plan: PlanNode): PlanNode[] {
  return [plan, ...(plan.Plans ?? []).flatMap(nodes)];
}

beforeAll(async () => {
  pools = controlPools(db.url, pino({ level: 'silent' }));
  store = new ControlStore(pools, 'plans-test', 30_000);
  const query = pools.claimer.query.bind(pools.claimer) as (...a: unknown[]) => unknown;
  vi.spyOn(pools.claimer, 'query').mockImplementation(((config: {
    name: string;
    text: string;
    values: unknown[];
  }) => {
    sent.set(config.name, { text: config.text, values: config.values });
    return query(config);
  }) as never);
  const role = await db.role('plans_app');
  const app = await db.connect(role.url);
  // a table with one instance, analyzed (as autovacuum leaves a young one): the claim
  // connection makes its generic plans now, from these statistics
  await app.query(`SELECT df.start('SELECT 1', 'first')`);
  await pools.control.query('ANALYZE df.instances');
  await store.claim(10, new Map(), 1);
  await store.claimStarted(['nothing1']);
  await store.claimNewcomers(['nothing1'], [], 1);
  await store.adopt(['nothing1']);
  expect(sent.size).toBe(4);
  await app.query(`SELECT df.start('SELECT 1', 'p') FROM generate_series(1, 3000)`);
  await app.end();
  // what the executor does before a claim, at most once a second (statistics.ts)
  const statistics = new TableStatistics(pools.control, pino({ level: 'silent' }));
  expect(await statistics.refresh()).toEqual(expect.arrayContaining(['instances', 'nodes']));
  // analyzed: nothing to do until a table doubles again
  expect(await statistics.refresh()).toEqual([]);
});

afterAll(async () => {
  await pools.end();
});

/**
 * The plan the claim connection keeps for `name`, run on the grown table
 * with `values` (rolled back): its scans of df.instances and its indexes.
 */
async function grownPlan(name: string, values: unknown[]): Promise<PlanNode[]> {
  const stmt = sent.get(name);
  if (!stmt) throw new Error(`no statement ${name}`);
  const client = await pools.claimer.connect();
  try {
    await client.query('BEGIN');
    // the statement as prepared on the empty table, by the same connection: its plan is kept
    // (EXECUTE takes no bind parameters: literals, each of the prepared parameter's type)
    const params = values
      .map((v) =>
        typeof v === 'number'
          ? String(v)
          : client.escapeLiteral(Array.isArray(v) ? `{${v.join(',')}}` : String(v)),
      )
      .join(', ');
    const explained = await client.query<{ 'QUERY PLAN': Array<{ Plan: PlanNode }> }>(
      `EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE ${client.escapeIdentifier(name)}(${params})`,
    );
    return nodes(
      (explained.rows[0] as { 'QUERY PLAN': Array<{ Plan: PlanNode }> })['QUERY PLAN'][0]!.Plan,
    ).filter(
      (n) =>
        n['Node Type'].endsWith('Scan') &&
        (['instances', 'nodes'].includes(n['Relation Name'] ?? '') ||
          /^(instances|nodes)_/.test(n['Index Name'] ?? '')),
    );
  } finally {
    await client.query('ROLLBACK');
    client.release();
  }
}

function named(fragment: string): string {
  const hit = [...sent.entries()].find(([, s]) => s.text.includes(fragment));
  if (!hit) throw new Error(`no statement with ${fragment}`);
  return hit[0];
}

async function someIds(n: number): Promise<string[]> {
  const { rows } = await pools.control.query<{ id: string }>(
    'SELECT id FROM df.instances ORDER BY created_at DESC LIMIT $1',
    [n],
  );
  return rows.map((r) => r.id);
}

/** Token hashes for a claim's first marks (claim-sql.ts). */
const hashes = (n: number): string[] =>
  Array.from({ length: n }, (_, i) => `${i}`.repeat(64).slice(0, 64));

/** The scans of a claim by id: no sequential scan, only the primary keys, few rows passed over. */
function expectByPrimaryKey(read: PlanNode[]): void {
  expect(read.length).toBeGreaterThan(0);
  for (const n of read) {
    expect(n['Node Type']).not.toBe('Seq Scan');
    if (n['Index Name'])
      expect(['instances_pkey', 'instances_id_submitted_by_key', 'nodes_pkey']).toContain(
        n['Index Name'],
      );
    expect(n['Rows Removed by Filter'] ?? 0).toBeLessThan(50);
  }
}

describe('claims prepared on a table of one instance, run on 3,000 ready instances', () => {
  it('the claim by id reads the started ids by primary key', async () => {
    const ids = await someIds(5);
    const name = named('AND i.id = ANY (ARRAY(SELECT id FROM locked))');
    const read = await grownPlan(name, [store.owner, ids, 30_000, hashes(5)]);
    expectByPrimaryKey(read);
  });

  it('the newcomers claim reads the started ids by primary key', async () => {
    const ids = await someIds(5);
    const name = named('DISTINCT ON (submitted_by)');
    const read = await grownPlan(name, [store.owner, ids, 30_000, [], 5, hashes(5)]);
    expectByPrimaryKey(read);
  });

  it('the general claim reads no instance it does not need', async () => {
    const name = named('WITH RECURSIVE');
    const read = await grownPlan(name, [
      store.owner,
      10,
      30_000,
      [],
      [],
      1,
      hashes(10),
      ['a1b2c3d4'],
    ]);
    expect(read.length).toBeGreaterThan(0);
    for (const n of read) {
      expect(n['Node Type']).not.toBe('Seq Scan');
      expect(n['Rows Removed by Filter'] ?? 0).toBeLessThan(50);
      expect(n['Rows Removed by Index Recheck'] ?? 0).toBeLessThan(50);
    }
  });

  it('the read of born-leased starts goes by primary key', async () => {
    const ids = await someIds(5);
    const read = await grownPlan(named('i.lease_epoch = 1'), [ids, store.owner]);
    expect(read.length).toBeGreaterThan(0);
    for (const n of read) {
      expect(n['Node Type']).not.toBe('Seq Scan');
      expect(n['Rows Removed by Filter'] ?? 0).toBeLessThan(50);
    }
  });
});

describe('commits that do not wait for their flush (docs/executor.md)', () => {
  it("the mark connection sets synchronous_commit off; the claim connection and the control pool keep the server's", async () => {
    const setting = async (p: ControlPools['control']) =>
      (
        await p.query<{ setting: string; source: string }>(
          `SELECT setting, source FROM pg_settings WHERE name = 'synchronous_commit'`,
        )
      ).rows[0];
    expect(await setting(pools.marker)).toEqual({ setting: 'off', source: 'client' });
    // a claim lost in a crash would let another executor claim at the same lease epoch
    expect((await setting(pools.claimer))?.source).not.toBe('client');
    expect((await setting(pools.control))?.source).not.toBe('client');
  });

  it('attempt marks go through the mark connection, claims through the claim connection', async () => {
    const marker = vi.spyOn(pools.marker, 'query');
    const control = vi.spyOn(pools.control, 'query');
    const claimer = vi.mocked(pools.claimer.query);
    const claims = claimer.mock.calls.length;
    // an instance this store holds no lease of: refused, but written (and judged) on the mark connection
    const a = { node: 'n0000001', key: 'k' };
    expect(await store.markAttempt('nothing1', 1, a, 'h', 's', 1)).toBe(false);
    expect(marker).toHaveBeenCalledTimes(1);
    expect(control).not.toHaveBeenCalled();
    await store.claimStarted(['nothing1']);
    expect(claimer.mock.calls.length).toBe(claims + 1);
    marker.mockRestore();
    control.mockRestore();
  });
});
