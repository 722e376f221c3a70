/**
 * First marks with the claim (src/executor/claim-sql.ts, docs/executor.md):
 * a claim that takes an instance which has never run, and whose root is a
 * SQL step, writes that step's first attempt mark in its own transaction,
 * as the driver's mark would, and hands the driver the token; the step then
 * needs no mark of its own.
 */
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { AttemptMarks } from '../../src/executor/marks.js';
import { controlPools, type ControlPools } from '../../src/executor/options.js';
import { ControlStore, type Claimed } from '../../src/executor/store.js';
import { tokenHash } from '../../src/executor/token.js';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { finished, startTestExecutor } from '../harness/executor.js';

const db = useTestDatabase();
let pools: ControlPools;
let store: ControlStore;
let app: TestRole;

beforeAll(async () => {
  pools = controlPools(db.url, pino({ level: 'silent' }));
  store = new ControlStore(pools, 'first-marks-test', 30_000);
  app = await db.role('first_marks_app');
  await db.admin.query(`CREATE TABLE public.ran (wf text)`);
  await db.admin.query(`GRANT INSERT, SELECT ON public.ran TO ${app.name}`);
});

afterAll(async () => {
  await pools.end();
});

/** Starts workflows as the application role, without an executor: their ids. */
async function started(...workflows: string[]): Promise<string[]> {
  const c = await db.connect(app.url);
  try {
    const ids: string[] = [];
    for (const w of workflows) ids.push((await c.query(`SELECT df.start(${w}) AS id`)).rows[0].id);
    return ids;
  } finally {
    await c.end();
  }
}

async function node(id: string, nodeId: string) {
  return (
    await db.admin.query(
      `SELECT activation, attempt_token, attempts, status, result, status_details
         FROM df.nodes WHERE instance_id = $1 AND id = $2`,
      [id, nodeId],
    )
  ).rows[0];
}

/** Each premark names its instance's root, and its token's hash is what that node holds. */
async function expectMarkedByClaim(c: Claimed): Promise<void> {
  expect(c.premark).toEqual({
    key: `${c.id}::1/${c.root_node}`,
    token: expect.any(String),
    stamp: `${c.id}::1`,
    attempt: 1,
  });
  expect(await node(c.id, c.root_node)).toEqual({
    activation: `${c.id}::1/${c.root_node}`,
    attempt_token: tokenHash(c.premark!.token),
    attempts: 1,
    status: 'running',
    result: null,
    status_details: { execution_id: `${c.id}::1` },
  });
}

describe('a claim marks the first step of an instance that has never run', () => {
  it('the general claim: one-step workflows marked, each with its own token; a chain is not', async () => {
    const ids = await started(`'SELECT 1'`, `'SELECT 2'`, `'SELECT 3'`, `'SELECT 4' ~> 'SELECT 5'`);
    const { rows } = await store.claim(10, new Map(), 1);
    const byId = new Map(rows.map((r) => [r.id, r]));
    expect([...byId.keys()].sort()).toEqual([...ids].sort());
    for (const id of ids.slice(0, 3)) await expectMarkedByClaim(byId.get(id)!);
    const chain = byId.get(ids[3]!)!;
    expect(chain.premark).toBeUndefined();
    expect(
      (
        await db.admin.query(
          `SELECT count(*)::int AS n FROM df.nodes WHERE instance_id = $1 AND attempts > 0`,
          [chain.id],
        )
      ).rows[0].n,
    ).toBe(0);
  });

  it('what the claim writes is what the driver’s mark writes, but for the token', async () => {
    const [id] = await started(`'SELECT 6'`);
    const [c] = await store.claimStarted([id!]);
    await expectMarkedByClaim(c!);
    const before = await node(id!, c!.root_node);
    const a = { key: c!.premark!.key, node: c!.root_node };
    expect(
      await store.markAttempt(id!, Number(c!.lease_epoch), a, 'f'.repeat(64), c!.premark!.stamp, 1),
    ).toBe(true);
    expect(await node(id!, c!.root_node)).toEqual({ ...before, attempt_token: 'f'.repeat(64) });
  });

  it('the newcomers claim marks too', async () => {
    const [id] = await started(`'SELECT 7'`);
    const [c] = await store.claimNewcomers([id!], [], 1);
    await expectMarkedByClaim(c!);
  });

  it('no mark for an instance that has an event or a marked step (a lease taken over)', async () => {
    const [ran, marked] = await started(`'SELECT 8'`, `'SELECT 9'`);
    // an instance with an event: leased elsewhere before, now expired
    await db.admin.query(
      `WITH e AS (INSERT INTO df.events (instance_id, submitted_by, node_id, kind, detail, seq, activation)
                  SELECT id, submitted_by, root_node, 'armed', '{}', 1, id || '::1/x' FROM df.instances WHERE id = $1)
       UPDATE df.instances SET event_seq = 1 WHERE id = $1`,
      [ran],
    );
    // a step marked by an executor whose lease expired
    await db.admin.query(
      `UPDATE df.nodes SET attempts = 1, status = 'running', attempt_token = 'e' || repeat('0', 63),
              activation = instance_id || '::1/' || id WHERE instance_id = $1`,
      [marked],
    );
    await db.admin.query(
      `UPDATE df.instances SET status = 'running', lease_owner = 'gone', lease_epoch = 4,
              lease_expires_at = now() - interval '1 second' WHERE id = ANY ($1)`,
      [[ran, marked]],
    );
    const { rows } = await store.claim(10, new Map(), 1);
    const mine = rows.filter((r) => r.id === ran || r.id === marked);
    expect(mine).toHaveLength(2);
    for (const r of mine) expect(r.premark).toBeUndefined();
    expect((await node(marked!, mine.find((r) => r.id === marked)!.root_node)).attempt_token).toBe(
      'e' + '0'.repeat(63),
    );
  });
});

describe('the executor runs a claim-marked step without a mark of its own', () => {
  it('one-step workflows: no mark sent, each step runs once; a chain marks its first step', async () => {
    const mark = vi.spyOn(AttemptMarks.prototype, 'mark');
    try {
      const ids = await started(
        ...Array.from({ length: 6 }, (_, i) => `'INSERT INTO public.ran VALUES (''one-${i}'')'`),
      );
      await startTestExecutor(db.url);
      const c = await db.connect(app.url);
      for (const id of ids) expect((await finished(c, id)).status).toBe('completed');
      expect(mark).not.toHaveBeenCalled();
      const [chain] = await started(
        `'INSERT INTO public.ran VALUES (''chain-1'')' ~> 'INSERT INTO public.ran VALUES (''chain-2'')'`,
      );
      expect((await finished(c, chain!)).status).toBe('completed');
      expect(mark).toHaveBeenCalledTimes(1); // the chain's first step; the second is marked by the first's checkpoint
      const ran = (
        await c.query(`SELECT wf, count(*)::int AS n FROM public.ran GROUP BY wf ORDER BY wf`)
      ).rows;
      expect(ran).toEqual([
        { wf: 'chain-1', n: 1 },
        { wf: 'chain-2', n: 1 },
        ...Array.from({ length: 6 }, (_, i) => ({ wf: `one-${i}`, n: 1 })),
      ]);
      await c.end();
    } finally {
      mark.mockRestore();
    }
  });
});
