/**
 * Fairness between submitting roles (docs/executor.md, "Fairness"): one role's
 * long steps never make another role's steps wait out the slot timeout and
 * fail, nor keep its instances from being claimed; a role's own excess
 * demand queues instead of failing.
 */
import type pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config.js';
import type { Executor, ExecutorOptions } from '../../src/executor/executor.js';
import { executorLimits } from '../../src/executor/start.js';
import { useTestDatabase } from '../harness/db.js';
import { finished, startTestExecutor } from '../harness/executor.js';

const db = useTestDatabase();
let executor: Executor | undefined;
const cleanups: Array<() => Promise<void>> = [];

afterEach(async () => {
  for (const f of cleanups.splice(0)) await f();
  await executor?.stop();
  executor = undefined;
});

async function start(opts: Partial<ExecutorOptions>): Promise<void> {
  executor = await startTestExecutor(db.url, opts);
}

async function roleClient(label: string): Promise<pg.Client> {
  const r = await db.role(label);
  return db.connect(r.url);
}

async function startMany(c: pg.Client, sql: string, n: number): Promise<string[]> {
  const r = await c.query<{ id: string }>(
    `SELECT df.start($1) AS id FROM generate_series(1, $2::int)`,
    [sql, n],
  );
  return r.rows.map((x) => x.id);
}

/** Cancels the instances when the test ends, and waits until they are terminal. */
function cancelAtEnd(c: pg.Client, ids: readonly string[]): void {
  cleanups.push(async () => {
    for (const id of ids) await c.query('SELECT df.cancel($1)', [id]).catch(() => undefined);
    for (const id of ids) await finished(c, id, 30_000);
  });
}

/** Statements of this text running on the server now. */
async function runningNow(text: string): Promise<number> {
  const r = await db.admin.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'active' AND query = $1`,
    [text],
  );
  return r.rows[0]?.n ?? 0;
}

async function until(what: string, ok: () => Promise<boolean>, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function statuses(c: pg.Client, ids: readonly string[]): Promise<Map<string, number>> {
  const r = await c.query<{ s: string; n: number }>(
    `SELECT df.status(id) AS s, count(*)::int AS n FROM unnest($1::text[]) AS id GROUP BY 1`,
    [ids],
  );
  return new Map(r.rows.map((x) => [x.s, x.n]));
}

/**
 * alice starts 12 steps far longer than the slot timeout and fills every slot
 * she may; bob then starts short workflows. bob's must all complete promptly
 * (well before any of alice's steps ends), and none of alice's may fail, not
 * even those that waited longer than the slot timeout behind her own steps.
 */
async function aliceAndBob(
  label: string,
  slotTimeoutMs: number,
  aliceMayRun: number,
  bobCount: number,
): Promise<void> {
  const alice = await roleClient(`${label}_alice`);
  const bob = await roleClient(`${label}_bob`);
  const long = 'SELECT pg_sleep(60)';
  const aliceIds = await startMany(alice, long, 12);
  cancelAtEnd(alice, aliceIds);
  const t0 = Date.now();
  await until(`alice's steps to run`, async () => (await runningNow(long)) >= aliceMayRun);
  const bobStart = Date.now();
  const bobIds = await startMany(bob, 'SELECT 42 AS answer', bobCount);
  for (const id of bobIds) {
    const f = await finished(bob, id, 30_000);
    expect(f.status, `bob's ${id}`).toBe('completed');
  }
  // bob did not wait for any of alice's 60 s steps (generous bound: a few seconds are expected)
  expect(Date.now() - bobStart).toBeLessThan(20_000);
  // alice's queued steps have waited past the slot timeout: queued, not failed
  const waited = slotTimeoutMs + 1000 - (Date.now() - t0);
  if (waited > 0) await new Promise((r) => setTimeout(r, waited));
  const s = await statuses(alice, aliceIds);
  expect(s.get('failed') ?? 0).toBe(0);
  expect(s.get('running')).toBe(12);
  expect(await runningNow(long)).toBeGreaterThanOrEqual(aliceMayRun);
}

describe('fair step slots', () => {
  it("4 slots, 2 s slot timeout: alice's 12 long steps neither starve bob nor fail", async () => {
    await start({ maxConcurrentSteps: 4, slotTimeoutMs: 2000 });
    // alone, alice may use every slot but the one reserved for a role with none
    await aliceAndBob('four', 2000, 3, 6);
  });

  it('the default limits (10 slots, 40 instances, 1 reserved), slot timeout shortened to 2 s', async () => {
    const cfg = parseConfig(['--upstream', db.url, '--step-slot-timeout', '2'], {});
    const limits = executorLimits(cfg);
    expect(limits).toMatchObject({
      maxConcurrentSteps: 10,
      maxConcurrentInstances: 40,
      slotReserve: 1,
      maxStepsPerRole: 0,
    });
    await start(limits);
    await aliceAndBob('dflt', 2000, 9, 6);
  });

  it("a role's steps beyond its slots queue past the slot timeout and all complete", async () => {
    await start({ maxConcurrentSteps: 4, slotTimeoutMs: 500 });
    const alice = await roleClient('q_alice');
    const bob = await roleClient('q_bob');
    const aliceIds = await startMany(alice, 'SELECT pg_sleep(1.5)', 8);
    const bobIds = await startMany(bob, 'SELECT pg_sleep(1.5)', 4);
    for (const id of [...aliceIds, ...bobIds]) {
      const c = aliceIds.includes(id) ? alice : bob;
      expect((await finished(c, id, 40_000)).status, id).toBe('completed');
    }
  });
});

describe('fair instance claims', () => {
  it("alice's leased instances waiting on long steps do not keep bob's from being claimed", async () => {
    // instance capacity, not slots, is the bottleneck here
    await start({ maxConcurrentSteps: 16, maxConcurrentInstances: 4, slotTimeoutMs: 2000 });
    const alice = await roleClient('inst_alice');
    const bob = await roleClient('inst_bob');
    const long = 'SELECT pg_sleep(61)';
    const aliceIds = await startMany(alice, long, 12);
    cancelAtEnd(alice, aliceIds);
    await until(`alice's steps to run`, async () => (await runningNow(long)) >= 3);
    const bobStart = Date.now();
    const bobIds = await startMany(bob, 'SELECT 7 AS seven', 5);
    for (const id of bobIds)
      expect((await finished(bob, id, 30_000)).status, `bob's ${id}`).toBe('completed');
    expect(Date.now() - bobStart).toBeLessThan(20_000);
    // alice alone held all but the reserved lease; none of hers failed
    expect(await runningNow(long)).toBe(3);
    expect((await statuses(alice, aliceIds)).get('failed') ?? 0).toBe(0);
  });
});
