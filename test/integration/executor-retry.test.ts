/**
 * Retries and on_failure (issue 11): df.start's max_attempts / max_backoff
 * retry a failed step with a recorded exponential backoff; on_failure starts
 * its workflow as the same role when the instance finally fails.
 *
 * A failed step's transaction is rolled back, so attempts are counted with a
 * sequence (nextval is not rolled back) and timed by their df.events rows.
 */
import type { ChildProcess } from 'node:child_process';
import type pg from 'pg';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backoffMs } from '../../src/executor/core.js';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { finished, startTestExecutor } from '../harness/executor.js';
import { spawnWorker } from '../harness/worker.js';
import type { Executor } from '../../src/executor/executor.js';
import { controlPools, type ControlPools } from '../../src/executor/options.js';
import { ControlStore } from '../../src/executor/store.js';
import { tokenHash } from '../../src/executor/token.js';

const db = useTestDatabase();
let alice: TestRole;
let a: pg.Client;
let n = 0;

/** A fresh counter and a step that fails (division by zero) until its `okAt`-th call. */
async function flaky(okAt: number): Promise<{ seq: string; step: string }> {
  const seq = `tries_${++n}`;
  await a.query(`CREATE SEQUENCE ${seq}`);
  return {
    seq,
    // (a constant 1/0 in a CASE would fail at plan time, before nextval)
    step: `SELECT 1 / (nextval('${seq}') >= ${okAt})::int AS v`,
  };
}

async function calls(seq: string): Promise<number> {
  return Number(
    (await a.query(`SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS n FROM ${seq}`))
      .rows[0].n,
  );
}

async function start(step: string, opts: string): Promise<string> {
  return (await a.query(`SELECT df.start($1, 'retry'${opts ? `, ${opts}` : ''}) AS id`, [step]))
    .rows[0].id as string;
}

/** The step outcomes of an instance's root node, oldest first, with their activation and time. */
async function outcomes(
  id: string,
): Promise<Array<{ activation: string; kind: string; at: Date; detail: Record<string, string> }>> {
  return (
    await db.admin.query(
      `SELECT activation, kind, created_at AS at, detail FROM df.events
        WHERE instance_id = $1 AND kind IN ('done', 'failed', 'armed') ORDER BY seq`,
      [id],
    )
  ).rows as Array<{ activation: string; kind: string; at: Date; detail: Record<string, string> }>;
}

async function rootNode(
  id: string,
): Promise<{ key: string; attempts: number; status: string; details: Record<string, unknown> }> {
  const r = (
    await a.query(
      `SELECT i.root_node, n.attempts, n.status, n.status_details FROM df.instances i
         JOIN df.nodes n ON n.instance_id = i.id AND n.id = i.root_node WHERE i.id = $1`,
      [id],
    )
  ).rows[0];
  return {
    key: `${id}::1/${r.root_node as string}`,
    attempts: r.attempts as number,
    status: r.status as string,
    details: r.status_details as Record<string, unknown>,
  };
}

async function until(cond: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

beforeAll(async () => {
  alice = await db.role('alice');
  a = await db.connect(alice.url);
});

describe('retries in process', () => {
  let ex: Executor;
  beforeAll(async () => {
    ex = await startTestExecutor(db.url);
  });
  afterAll(async () => {
    await ex.stop();
  });

  it('fails twice then succeeds with max_attempts => 3: 3 attempts, backoff on schedule', async () => {
    const f = await flaky(3);
    const id = await start(f.step, 'max_attempts => 3');
    expect(await finished(a, id, 30_000)).toEqual({
      status: 'completed',
      result: '{"rows": [{"v": 1}], "row_count": 1}',
    });
    expect(await calls(f.seq)).toBe(3);
    const root = await rootNode(id);
    expect(root.attempts).toBe(3);
    expect(root.details).toMatchObject({
      attempt: 3,
      max_attempts: 3,
      last_error: expect.stringContaining('division by zero'),
    });
    const evs = await outcomes(id);
    const steps = evs.filter((e) => e.kind !== 'armed');
    expect(steps.map((e) => [e.activation, e.kind])).toEqual([
      [root.key, 'failed'],
      [`${root.key}@2`, 'failed'],
      [`${root.key}@3`, 'done'],
    ]);
    // attempt k+1 starts backoff(k) after attempt k failed: measured within 20 %
    for (let k = 1; k <= 2; k++) {
      const want = backoffMs(id, root.key, k, null);
      const got =
        (steps[k] as { at: Date }).at.getTime() - (steps[k - 1] as { at: Date }).at.getTime();
      expect(got, `backoff after attempt ${k}`).toBeGreaterThanOrEqual(want * 0.8);
      expect(got, `backoff after attempt ${k}`).toBeLessThanOrEqual(want * 1.2);
    }
    const explain = (await a.query(`SELECT df.explain($1) AS e`, [id])).rows[0].e as string;
    expect(explain).toContain('(attempt 3/3) ✓');
  });

  it('while a later attempt runs, its node shows that attempt and the last error', async () => {
    const seq = `tries_${++n}`;
    await a.query(`CREATE SEQUENCE ${seq}`);
    // the first call divides by zero, the second sleeps 3 s
    const id = await start(
      `SELECT pg_sleep(3 / (nextval('${seq}') >= 2)::int) IS NULL AS v`,
      'max_attempts => 3',
    );
    await until(async () => (await calls(seq)) === 2, 15_000);
    await new Promise((r) => setTimeout(r, 300)); // ticks run meanwhile; none may undo the mark
    const root = await rootNode(id);
    expect(root.status).toBe('running');
    expect(root.attempts).toBe(2);
    expect(root.details).toEqual({
      execution_id: `${id}::1`,
      attempt: 2,
      max_attempts: 3,
      last_error: expect.stringContaining('division by zero'),
    });
    expect((await finished(a, id, 30_000)).status).toBe('completed');
    expect(await rootNode(id)).toMatchObject({ status: 'completed', attempts: 2 });
  });

  it('a first attempt shows attempt 1 of max_attempts while it runs, whoever marked it', async () => {
    const seq = `tries_${++n}`;
    await a.query(`CREATE SEQUENCE ${seq}`);
    // each step counts its start, then sleeps 1.5 s
    const step = `SELECT nextval('${seq}') > 0 AND pg_sleep(1.5) IS NULL AS v`;
    const running = async (id: string, k: number): Promise<unknown> => {
      await until(async () => (await calls(seq)) === k, 15_000);
      await new Promise((r) => setTimeout(r, 300));
      const r = await a.query(
        `SELECT status_details::jsonb AS d FROM df.instance_nodes($1) WHERE status = 'running' AND node_type = 'SQL'`,
        [id],
      );
      expect(r.rows).toHaveLength(1);
      return r.rows[0].d;
    };
    const want = (id: string) => ({ execution_id: `${id}::1`, attempt: 1, max_attempts: 3 });
    // a one-step workflow: its first attempt could be marked by the claim that leased it
    const one = await start(step, 'max_attempts => 3');
    expect(await running(one, 1)).toEqual(want(one));
    expect((await finished(a, one, 30_000)).status).toBe('completed');
    // two steps: the second one's attempt could be marked by the first one's checkpoint
    const two = (
      await a.query(`SELECT df.start($1::text ~> $1::text, 'retry', max_attempts => 3) AS id`, [
        step,
      ])
    ).rows[0].id as string;
    expect(await running(two, 2)).toEqual(want(two));
    expect(await running(two, 3)).toEqual(want(two));
    expect((await finished(a, two, 30_000)).status).toBe('completed');
    // options too large to come with the claim (a 300 kB on_failure): the claim cannot tell
    const big = (
      await a.query(`SELECT df.start($1, 'retry', max_attempts => 3, on_failure => $2) AS id`, [
        step,
        `SELECT '${'x'.repeat(300_000)}' AS pad`,
      ])
    ).rows[0].id as string;
    expect(await running(big, 4)).toEqual(want(big));
    expect((await finished(a, big, 30_000)).status).toBe('completed');
  });

  it('with max_attempts => 2 it fails after 2 attempts, with the last error', async () => {
    const f = await flaky(3);
    const id = await start(f.step, 'max_attempts => 2');
    const r = await finished(a, id, 30_000);
    expect(r.status).toBe('failed');
    expect(await calls(f.seq)).toBe(2);
    const root = await rootNode(id);
    expect(root.status).toBe('failed');
    expect(root.attempts).toBe(2);
    expect(root.details).toMatchObject({ attempt: 2, max_attempts: 2 });
    const err = (await a.query(`SELECT error FROM df.instances WHERE id = $1`, [id])).rows[0]
      .error as string;
    expect(err).toContain('division by zero');
    // nothing more runs later
    await new Promise((r) => setTimeout(r, 1500));
    expect(await calls(f.seq)).toBe(2);
  });

  it('max_backoff caps the wait', async () => {
    const f = await flaky(4);
    const id = await start(f.step, `max_attempts => 4, max_backoff => '1.2 seconds'`);
    expect((await finished(a, id, 30_000)).status).toBe('completed');
    const root = await rootNode(id);
    const steps = (await outcomes(id)).filter((e) => e.kind !== 'armed');
    expect(steps).toHaveLength(4);
    // nominal 1 s, 2 s, 4 s; capped: ≤ 1.2 s each
    for (let k = 1; k <= 3; k++) {
      const want = backoffMs(id, root.key, k, 1200);
      expect(want).toBeLessThanOrEqual(1200);
      const got =
        (steps[k] as { at: Date }).at.getTime() - (steps[k - 1] as { at: Date }).at.getTime();
      expect(got).toBeGreaterThanOrEqual(want * 0.8);
      expect(got).toBeLessThanOrEqual(want * 1.2);
    }
  });

  it('without max_attempts a failed step fails the instance at once (pg_durable)', async () => {
    const f = await flaky(2);
    const id = await start(f.step, '');
    expect((await finished(a, id, 20_000)).status).toBe('failed');
    expect(await calls(f.seq)).toBe(1);
    const root = await rootNode(id);
    expect(root.attempts).toBe(1);
    expect(root.details).toEqual({ execution_id: `${id}::1` });
  });

  it('cancel during a backoff cancels: no further attempt runs', async () => {
    const f = await flaky(100);
    const id = await start(f.step, 'max_attempts => 5');
    await until(async () => (await outcomes(id)).some((e) => e.kind === 'armed'), 10_000);
    const root = await rootNode(id);
    expect(root.status).toBe('running');
    expect(root.details).toMatchObject({ attempt: 1, retry_at: expect.any(String) });
    await a.query(`SELECT df.cancel($1)`, [id]);
    await new Promise((r) => setTimeout(r, 2500));
    expect(await calls(f.seq)).toBe(1);
    expect((await a.query(`SELECT df.status($1) AS s`, [id])).rows[0].s).toBe('cancelled');
  });

  it('a retried JOIN branch: the JOIN completes once the branch succeeds', async () => {
    const f = await flaky(2);
    const id = (
      await a.query(
        `SELECT df.start($1::text & 'SELECT 2 AS w', 'retry', max_attempts => 2) AS id`,
        [f.step],
      )
    ).rows[0].id as string;
    expect(await finished(a, id, 20_000)).toMatchObject({ status: 'completed' });
    expect(await calls(f.seq)).toBe(2);
  });

  it('on_failure runs its workflow as the same role with the failure as variables', async () => {
    await a.query(`CREATE TABLE failures (instance text, error text, who text)`);
    await a.query(`SELECT df.setvar('failed_error', 'mine')`);
    const id = (
      await a.query(
        `SELECT df.start('SELECT 1/0', 'parent', max_attempts => 2,
                  on_failure => 'INSERT INTO failures SELECT ''{failed_instance_id}'', $e$\${failed_error}$e$, current_user') AS id`,
      )
    ).rows[0].id as string;
    expect((await finished(a, id, 20_000)).status).toBe('failed');
    let child: string | null = null;
    await until(async () => {
      child = (
        await a.query(`SELECT on_failure_instance AS c FROM df.instances WHERE id = $1`, [id])
      ).rows[0].c as string | null;
      return child !== null;
    }, 10_000);
    expect((await finished(a, child as unknown as string, 20_000)).status).toBe('completed');
    const row = (await a.query(`SELECT * FROM failures`)).rows;
    expect(row).toEqual([
      { instance: id, error: expect.stringContaining('division by zero'), who: alice.name },
    ]);
    const sub = (
      await db.admin.query(`SELECT submitted_by::text AS r FROM df.instances WHERE id = $1`, [
        child,
      ])
    ).rows[0].r as string;
    expect(sub).toBe(alice.name);
    // the role's own variables are as they were
    expect((await a.query(`SELECT df.getvar('failed_error') AS v`)).rows[0].v).toBe('mine');
    expect((await a.query(`SELECT df.getvar('failed_instance_id') AS v`)).rows[0].v).toBeNull();
    const explain = (await a.query(`SELECT df.explain($1) AS e`, [id])).rows[0].e as string;
    expect(explain).toContain(`On failure: ${child as unknown as string}`);
  });
});

describe('retries across a crash', () => {
  /** What the workers of a test logged (debug level): shown when an assertion about them fails. */
  let logs = '';
  const worker = (): ChildProcess =>
    spawnWorker(db.url, 'retry-test-secret', { log: (t) => (logs += t) });

  it('SIGKILL during a backoff, restart: the attempt count continues, nothing runs twice', async () => {
    const f = await flaky(3);
    // a longer first backoff than one poll: the kill lands inside it
    const id = await start(f.step, 'max_attempts => 3');
    const w1 = worker();
    await until(async () => (await outcomes(id)).some((e) => e.kind === 'armed'), 20_000);
    w1.kill('SIGKILL');
    await new Promise<void>((r) => (w1.exitCode !== null ? r() : w1.once('exit', () => r())));
    expect(await calls(f.seq)).toBe(1);
    const w2 = worker();
    expect(await finished(a, id, 30_000)).toMatchObject({ status: 'completed' });
    w2.kill('SIGTERM');
    await new Promise<void>((r) => (w2.exitCode !== null ? r() : w2.once('exit', () => r())));
    expect(await calls(f.seq), `the workers' log:\n${logs}`).toBe(3);
    const root = await rootNode(id);
    expect(root.attempts).toBe(3);
    const evs = await outcomes(id);
    expect(evs.filter((e) => e.kind !== 'armed').map((e) => [e.activation, e.kind])).toEqual([
      [root.key, 'failed'],
      [`${root.key}@2`, 'failed'],
      [`${root.key}@3`, 'done'],
    ]);
    // the backoff recorded before the kill was kept, not shortened
    const armed2 = evs.find((e) => e.kind === 'armed' && e.activation === `${root.key}@2`);
    const ran2 = evs.find((e) => e.kind === 'failed' && e.activation === `${root.key}@2`);
    expect(ran2?.at.getTime()).toBeGreaterThanOrEqual(
      new Date(armed2?.detail['at'] ?? 0).getTime(),
    );
  });
});

describe('a late stamp of an earlier attempt', () => {
  let pools: ControlPools;
  let store: ControlStore;
  beforeAll(() => {
    pools = controlPools(db.url, pino({ level: 'silent' }));
    store = new ControlStore(pools, 'late-stamp-test', 30_000);
  });
  afterAll(async () => {
    await pools.end();
  });

  it('does not take back the attempt a later mark wrote; a later attempt or another execution still writes', async () => {
    // no executor runs these: the store writes what a driver would, in the order of the race
    const id = await start(`SELECT 1 AS v`, 'max_attempts => 5');
    const { rows } = await store.claim(10, new Map(), 1);
    const c = rows.find((r) => r.id === id)!;
    const a1 = { key: `${id}::1/${c.root_node}`, node: c.root_node };
    const epoch = Number(c.lease_epoch);
    // attempt 3 is marked (its mark went out on its own connection) ...
    expect(await store.markAttempt(id, epoch, a1, tokenHash('t3'), `${id}::1`, 3)).toBe(true);
    // ... before the background stamp of attempt 2's failure lands
    const stamp = (attempt: number, stampId = `${id}::1`) => ({
      ids: [c.root_node],
      statuses: ['failed'],
      results: [JSON.stringify('division by zero')],
      stamps: [stampId],
      extra: [JSON.stringify({ attempt, max_attempts: 5, last_error: 'division by zero' })],
    });
    await store.writeStamps(id, stamp(2));
    const root = await rootNode(id);
    expect(root).toMatchObject({ attempts: 3, status: 'running' });
    expect(root.details).toEqual({ execution_id: `${id}::1` });
    // the stamp of attempt 3's own failure applies
    await store.writeStamps(id, stamp(3));
    expect(await rootNode(id)).toMatchObject({ attempts: 3, status: 'failed' });
    // a new execution of the node (a loop's next iteration) starts its attempts again at 1
    await store.writeStamps(id, stamp(1, `${id}::2`));
    expect(await rootNode(id)).toMatchObject({ attempts: 1, status: 'failed' });
  });

  it('an earlier loop iteration never overwrites a later one (spec §5.6 write fence)', async () => {
    const id = await start(`SELECT 1 AS v`, '');
    const { rows } = await store.claim(10, new Map(), 1);
    const c = rows.find((r) => r.id === id)!;
    const epoch = Number(c.lease_epoch);
    // iteration 3's mark lands first ...
    const a3 = { key: `${id}::3/${c.root_node}`, node: c.root_node };
    expect(await store.markAttempt(id, epoch, a3, tokenHash('i3'), `${id}::3`, 1)).toBe(true);
    const stamp = (st: string, status = 'completed') => ({
      ids: [c.root_node],
      statuses: [status],
      results: [status === 'completed' ? '{"rows": [], "row_count": 0}' : null],
      stamps: [st],
      extra: [null],
    });
    // ... then the stamp that closed iteration 2: dropped
    await store.writeStamps(id, stamp(`${id}::2`));
    expect(await rootNode(id)).toMatchObject({
      status: 'running',
      details: { execution_id: `${id}::3` },
    });
    // iteration 3's own outcome, a later iteration, and a deeper scope go through
    await store.writeStamps(id, stamp(`${id}::3`));
    expect((await rootNode(id)).status).toBe('completed');
    await store.writeStamps(id, stamp(`${id}::4`, 'running'));
    expect((await rootNode(id)).details).toEqual({ execution_id: `${id}::4` });
    await store.writeStamps(id, stamp(`${id}::4::0badcafe::1`, 'running'));
    expect((await rootNode(id)).details).toEqual({ execution_id: `${id}::4::0badcafe::1` });
  });

  it('df._stamp_stale compares stamps level by level', async () => {
    const cases: Array<[string | null, string | null, boolean]> = [
      ['c0ffee12::1', 'c0ffee12::2', true],
      ['c0ffee12::2', 'c0ffee12::1', false],
      ['c0ffee12::2', 'c0ffee12::2', false],
      ['c0ffee12::9', 'c0ffee12::10', true], // generations compare as numbers
      ['c0ffee12::1::0badcafe::3', 'c0ffee12::1::0badcafe::4', true],
      ['c0ffee12::2::0badcafe::1', 'c0ffee12::1::0badcafe::9', false], // the root generation first
      ['c0ffee12::1::0badcafe::1', 'c0ffee12::2', false], // another depth always passes
      ['c0ffee12::3', 'c0ffee12::3::0badcafe::2', false],
      ['c0ffee12::3::0badcafe::2', 'c0ffee12::3', false],
      ['c0ffee12::1::deadbeef::5', 'c0ffee12::1::0badcafe::5', false], // a sibling, same generation
      ['c0ffee12::1::deadbeef::1', 'c0ffee12::1::0badcafe::5', true], // the first level that differs
      ['c0ffee12::1::deadbeef::7', 'c0ffee12::1::0badcafe::5', false],
      ['c0ffee12::1::0badcafe::2::deadbeef::1', 'c0ffee12::1::0badcafe::2::deadbeef::3', true],
      ['other123::1', 'c0ffee12::2', false],
      ['not a stamp', 'c0ffee12::2', false], // unparseable stamps always pass
      ['c0ffee12::1', 'c0ffee12::x', false],
      ['c0ffee12::1', null, false],
      [null, 'c0ffee12::2', false],
    ];
    const r = await db.admin.query<{ stale: boolean[] }>(
      `SELECT array_agg(df._stamp_stale(c.i, c.s) ORDER BY c.k) AS stale
         FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS c(i, s, k)`,
      [cases.map((x) => x[0]), cases.map((x) => x[1])],
    );
    expect(r.rows[0]?.stale).toEqual(cases.map((x) => x[2]));
  });
});

describe('a running stamp written while the step is in flight', () => {
  let ex: Executor;
  beforeAll(async () => {
    // ticks every 20 ms: many of them fall while a step runs
    ex = await startTestExecutor(db.url, { pollMs: 20 });
  });
  afterAll(async () => {
    await ex.stop();
  });

  it('never lands after the checkpoint: no completed instance keeps a running node', async () => {
    // a tick during the step used to write the node's running stamp (with the retry keys);
    // when that write waited for the checkpoint's row lock it applied after the commit, and
    // 7 of these 300 instances completed with their node reading running
    const ids: string[] = [];
    for (let i = 0; i < 300; i++) {
      ids.push(
        await start(`SELECT pg_sleep(0.015 + random() * 0.03) IS NULL AS v`, 'max_attempts => 2'),
      );
      if (i % 8 === 7) await finished(a, ids[i] as string, 30_000);
    }
    for (const id of ids) expect((await finished(a, id, 60_000)).status).toBe('completed');
    const stale = await db.admin.query(
      `SELECT i.id, n.status FROM df.instances i JOIN df.nodes n ON n.instance_id = i.id AND n.id = i.root_node
        WHERE i.id = ANY ($1) AND n.status <> 'completed'`,
      [ids],
    );
    expect(stale.rows).toEqual([]);
  });
});
