/**
 * Due timers fired in batches (docs/executor.md, "Due timers in batches"):
 * many timers due at once get their `done` events ahead of their next
 * steps, fairly across roles; a batch whose reading went stale changes
 * nothing and fences out older lease epochs; a batch stalled in its
 * transaction holds nothing for long; two executors share the work and every
 * next step runs once; SIGKILL during the bursts loses and repeats nothing.
 */
import type { ChildProcess } from 'node:child_process';
import pg from 'pg';
import pino from 'pino';
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import type { Executor, ExecutorOptions } from '../../src/executor/executor.js';
import { TimerStore, type ReadyInstance } from '../../src/executor/timer-store.js';
import { DueTimers, dueTimers, type BatchOutcome } from '../../src/executor/timers.js';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { startTestExecutor } from '../harness/executor.js';
import { spawnWorker } from '../harness/worker.js';

const db = useTestDatabase();
let alice: TestRole;
let bob: TestRole;
let a: pg.Client;
let b: pg.Client;
const executors: Executor[] = [];
const pools: pg.Pool[] = [];

beforeAll(async () => {
  alice = await db.role('timers_alice');
  bob = await db.role('timers_bob');
  a = await db.connect(alice.url);
  b = await db.connect(bob.url);
  await db.admin.query(
    `CREATE TABLE public.timer_steps (instance text, at timestamptz NOT NULL DEFAULT clock_timestamp())`,
  );
  await db.admin.query(`GRANT INSERT ON public.timer_steps TO ${alice.ident}, ${bob.ident}`);
});

afterEach(async () => {
  for (const ex of executors.splice(0)) await ex.stop(1000);
  for (const p of pools.splice(0)) await p.end();
});

async function executor(opts: Partial<ExecutorOptions> = {}): Promise<Executor> {
  const ex = await startTestExecutor(db.url, opts);
  executors.push(ex);
  return ex;
}

/** `n` instances of df.sleep(seconds) ~> one INSERT into timer_steps (after pg_sleep(stepSeconds)). */
async function startTimers(
  c: pg.Client,
  n: number,
  seconds: number,
  stepSeconds = 0,
): Promise<string[]> {
  const step = `INSERT INTO public.timer_steps (instance) SELECT '{sys_instance_id}' FROM pg_sleep(${stepSeconds})`;
  const r = await c.query<{ id: string }>(
    `SELECT df.start(df.sleep(${seconds}) ~> $1, 'timers') AS id FROM generate_series(1, $2::int)`,
    [step, n],
  );
  return r.rows.map((x) => x.id);
}

async function until(what: string, ok: () => Promise<boolean>, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function count(sql: string, values: unknown[]): Promise<number> {
  return (await db.admin.query<{ n: number }>(sql, values)).rows[0]?.n ?? 0;
}

/** Until every one of `ids` is parked on its timer (no lease, a wake_at). */
async function parked(ids: readonly string[]): Promise<void> {
  await until(`${ids.length} parked`, async () => {
    const n = await count(
      `SELECT count(*)::int AS n FROM df.instances
        WHERE id = ANY ($1) AND lease_owner IS NULL AND wake_at IS NOT NULL`,
      [ids],
    );
    return n === ids.length;
  });
}

/** Until every one of `ids` is due by the database's clock. */
async function due(ids: readonly string[]): Promise<void> {
  await until(`${ids.length} due`, async () => {
    const n = await count(
      `SELECT count(*)::int AS n FROM df.instances WHERE id = ANY ($1) AND wake_at <= now()`,
      [ids],
    );
    return n === ids.length;
  });
}

/**
 * Parks `ids` with an executor of its own, which then stops: nothing fires them until the test
 * says. (A driver parks a timer due more than a second away; a nearer one it waits out itself.)
 */
async function parkAndStop(ids: readonly string[], ex: Executor): Promise<void> {
  await parked(ids);
  await ex.stop(1000);
  executors.splice(executors.indexOf(ex), 1);
}

/** A DueTimers of the test's own (no executor behind it). */
function dueTimersHere(batch: number, stallMs = 1000): { timers: DueTimers; store: TimerStore } {
  const pool = new pg.Pool({ connectionString: db.url, max: 2 });
  pool.on('error', () => undefined);
  pools.push(pool);
  const store = new TimerStore(pool);
  const timers = new DueTimers(store, {
    log: pino({ level: 'silent' }),
    batch,
    stallMs,
    maxLoopIterations: 100_000,
    onReady: () => undefined,
    onDue: () => undefined,
    nextWakeAt: async () => null,
  });
  return { timers, store };
}

/** The timer `done` events of the instances: one row per event. */
async function timerDones(
  ids: readonly string[],
): Promise<
  Array<{ instance_id: string; activation: string; seq: string; detail: unknown; created_at: Date }>
> {
  return (
    await db.admin.query(
      `SELECT e.instance_id, e.activation, e.seq::text, e.detail, e.created_at FROM df.events e
         JOIN df.nodes n ON n.instance_id = e.instance_id AND n.id = e.node_id AND n.node_type = 'SLEEP'
        WHERE e.instance_id = ANY ($1) AND e.kind = 'done'`,
      [ids],
    )
  ).rows;
}

/** Every instance completed, its step ran once, its timer fired once, its events numbered without a gap or repeat. */
async function exactlyOnce(ids: readonly string[], timeoutMs = 60_000): Promise<void> {
  await until(
    'all completed',
    async () =>
      (await count(
        `SELECT count(*)::int AS n FROM df.instances WHERE id = ANY ($1) AND status = 'completed'`,
        [ids],
      )) === ids.length,
    timeoutMs,
  );
  const steps = await db.admin.query<{ instance: string; n: number }>(
    `SELECT i.id AS instance, count(s.*)::int AS n FROM unnest($1::text[]) AS i(id)
       LEFT JOIN public.timer_steps s ON s.instance = i.id GROUP BY i.id HAVING count(s.*) <> 1`,
    [ids],
  );
  expect(steps.rows).toEqual([]);
  const dones = await timerDones(ids);
  expect(dones.length).toBe(ids.length);
  expect(new Set(dones.map((d) => d.instance_id)).size).toBe(ids.length);
  const gaps = await db.admin.query(
    `SELECT instance_id FROM df.events WHERE instance_id = ANY ($1) AND seq IS NOT NULL
      GROUP BY instance_id HAVING count(*) <> count(DISTINCT seq) OR max(seq) <> count(*)`,
    [ids],
  );
  if (gaps.rows.length > 0) {
    const dump = await db.admin.query(
      `SELECT instance_id, seq, kind, activation, node_id, created_at, detail FROM df.events WHERE instance_id = ANY ($1) ORDER BY instance_id, seq`,
      [gaps.rows.map((r) => r.instance_id)],
    );
    console.log(JSON.stringify(dump.rows, null, 1));
  }
  expect(gaps.rows).toEqual([]);
}

describe('due timers fire in batches', () => {
  it('30 timers due together all fire while their next steps still queue behind 2 leases', async () => {
    // two leases, two slots: the next steps (0.3 s each) can only run two at a time, so a
    // timer that fires only when its instance is claimed would fire over ~4.5 s
    await executor({
      maxConcurrentInstances: 2,
      maxConcurrentSteps: 2,
      slotReserve: 0,
      timerBatch: 8,
    });
    const ids = await startTimers(a, 30, 1.5, 0.3);
    await exactlyOnce(ids);
    const dones = await timerDones(ids);
    const lastFired = Math.max(...dones.map((d) => d.created_at.getTime()));
    const stepsBefore = await count(
      `SELECT count(*)::int AS n FROM public.timer_steps WHERE instance = ANY ($1) AND at < $2`,
      [ids, new Date(lastFired)],
    );
    // fired by batches: the last timer's done event is there before more than a few next steps
    expect(stepsBefore).toBeLessThanOrEqual(6);
  });

  it("one batch takes every role's due timers before a second of any one role's", async () => {
    const parker = await executor({ pollMs: 60_000 });
    const many = await startTimers(a, 40, 2);
    const few = await startTimers(b, 3, 2);
    await parkAndStop([...many, ...few], parker);
    await due([...many, ...few]);
    const before = await db.admin.query<{ id: string; lease_epoch: string; event_seq: string }>(
      `SELECT id, lease_epoch::text, event_seq::text FROM df.instances WHERE id = ANY ($1)`,
      [[...many, ...few]],
    );
    const was = new Map(before.rows.map((r) => [r.id, r]));
    const { timers } = dueTimersHere(10);
    const first = await timers.fireBatch();
    expect(first.locked).toBe(10);
    expect(first.fired).toBe(10);
    const firstIds = first.ready.map((r) => r.id);
    // bob's three are in the first batch, with seven of alice's forty
    expect(few.every((id) => firstIds.includes(id))).toBe(true);
    expect(firstIds.filter((id) => many.includes(id))).toHaveLength(7);
    // each is ready for the ordinary claim, under a new epoch, its timer's done event numbered next
    const after = await db.admin.query<{
      id: string;
      lease_epoch: string;
      event_seq: string;
      wake_at: Date | null;
      lease_owner: string | null;
    }>(
      `SELECT id, lease_epoch::text, event_seq::text, wake_at, lease_owner FROM df.instances WHERE id = ANY ($1)`,
      [firstIds],
    );
    for (const r of after.rows) {
      const w = was.get(r.id);
      expect(r.wake_at).toBeNull();
      expect(r.lease_owner).toBeNull();
      expect(BigInt(r.lease_epoch)).toBe(BigInt(w?.lease_epoch ?? 0) + 1n);
      expect(BigInt(r.event_seq)).toBe(BigInt(w?.event_seq ?? 0) + 1n);
    }
    const dones = await timerDones(firstIds);
    expect(dones).toHaveLength(10);
    for (const d of dones) {
      expect(d.detail).toEqual({ result: '{"slept": true, "seconds": 2}' });
      expect(BigInt(d.seq)).toBe(BigInt(was.get(d.instance_id)?.event_seq ?? 0) + 1n);
    }
    // the same activation the driver armed
    const armed = await db.admin.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM df.events d JOIN df.events m
          ON m.instance_id = d.instance_id AND m.activation = d.activation AND m.kind = 'armed'
        WHERE d.instance_id = ANY ($1) AND d.kind = 'done'`,
      [firstIds],
    );
    expect(armed.rows[0]?.n).toBe(10);
    // the rest stay parked until a batch or a claim takes them
    expect(
      await count(
        `SELECT count(*)::int AS n FROM df.instances WHERE id = ANY ($1) AND wake_at IS NOT NULL`,
        [[...many, ...few]],
      ),
    ).toBe(33);
    const second = await timers.fireBatch();
    expect(second.ready.every((r) => many.includes(r.id))).toBe(true);
    expect(second.fired).toBe(10);
    // an executor runs everything on from there, the sleep nodes completed as the driver stamps them
    await executor();
    await exactlyOnce([...many, ...few]);
    const sleeps = await db.admin.query<{ status: string; result: unknown }>(
      `SELECT DISTINCT status, result FROM df.nodes WHERE instance_id = ANY ($1) AND node_type = 'SLEEP'`,
      [[...many, ...few]],
    );
    expect(sleeps.rows).toEqual([{ status: 'completed', result: { slept: true, seconds: 2 } }]);
  });

  it('a batch whose reading went stale changes nothing; a fired timer fences out the older epoch', async () => {
    const parker = await executor({ pollMs: 60_000 });
    const ids = await startTimers(a, 3, 2);
    await parkAndStop(ids, parker);
    await due(ids);
    const { timers, store } = dueTimersHere(10);
    // read as a batch would, then let the locks go without writing
    const stale: ReadyInstance[] = await store.batch(1000, async (c) => {
      const rows = await store.readDue(c, await store.lockDue(c, 10));
      return rows.map((r) => ({
        id: r.id,
        epoch: String(r.lease_epoch),
        seq: String(r.event_seq),
        timers: dueTimers(r, new Date(), 100_000),
      }));
    });
    expect(stale.map((s) => s.timers.length)).toEqual([1, 1, 1]);
    // another batch fires them meanwhile
    expect((await timers.fireBatch()).fired).toBe(3);
    const snapshot = async (): Promise<unknown[]> =>
      (
        await db.admin.query(
          `SELECT i.id, i.lease_epoch, i.event_seq, i.wake_at, i.lease_owner,
                  (SELECT count(*) FROM df.events e WHERE e.instance_id = i.id) AS events
             FROM df.instances i WHERE i.id = ANY ($1) ORDER BY i.id`,
          [ids],
        )
      ).rows;
    const then = await snapshot();
    // the stale batch's write: nothing
    expect(await store.batch(1000, (c) => store.fire(c, stale))).toEqual([]);
    expect(await snapshot()).toEqual(then);
    // an executor that still held the epoch the instance was parked under can record nothing
    const id = stale[0]?.id as string;
    await expect(
      db.admin.query(`SELECT df._record_event($1, $2, 'deadbeef', 'x', 'done', '{}')`, [
        id,
        stale[0]?.epoch,
      ]),
    ).rejects.toMatchObject({ code: '40001' });
    // and once an executor has claimed and finished them, the stale write still changes nothing
    await executor();
    await exactlyOnce(ids);
    const done = await snapshot();
    expect(await store.batch(1000, (c) => store.fire(c, stale))).toEqual([]);
    expect(await snapshot()).toEqual(done);
  });

  it('a batch stalled inside its transaction holds its instances only until PostgreSQL ends it', async () => {
    const parker = await executor({ pollMs: 60_000 });
    const ids = await startTimers(a, 5, 2);
    await parkAndStop(ids, parker);
    await due(ids);
    const stalled = dueTimersHere(10, 1000);
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => (release = r));
    const realFire = stalled.store.fire.bind(stalled.store);
    let reached = false;
    vi.spyOn(stalled.store, 'fire').mockImplementation(async (c, ready) => {
      reached = true;
      await gate; // frozen between reading and writing, its locks held
      return realFire(c, ready);
    });
    const stuck: Promise<BatchOutcome> = stalled.timers.fireBatch();
    stuck.catch(() => undefined);
    await until('the batch to hold its locks', async () => reached);
    const other = dueTimersHere(10);
    // locked: another batch skips them
    expect((await other.timers.fireBatch()).locked).toBe(0);
    // idle_in_transaction_session_timeout ends the stalled session; its locks are gone, nothing of it committed
    await until(
      'the stalled batch to be ended',
      async () => (await other.timers.fireBatch()).fired === 5,
      15_000,
    );
    release();
    await expect(stuck).rejects.toThrow();
    expect(await timerDones(ids)).toHaveLength(5);
    await executor();
    await exactlyOnce(ids);
  });

  it('two executors share many due timers; every next step runs once', async () => {
    const one = await executor({ timerBatch: 25, maxConcurrentInstances: 8 });
    const two = await executor({ timerBatch: 25, maxConcurrentInstances: 8 });
    const spies = [one, two].map((ex) =>
      vi.spyOn((ex as unknown as { timers: DueTimers }).timers, 'fireBatch'),
    );
    const ids = [...(await startTimers(a, 100, 2)), ...(await startTimers(b, 50, 2))];
    await exactlyOnce(ids);
    const fired: string[] = [];
    for (const s of spies)
      for (const r of s.mock.results)
        if (r.type === 'return')
          for (const x of ((await r.value) as BatchOutcome).ready)
            if (x.fired > 0) fired.push(x.id);
    expect(fired.length).toBeGreaterThan(0);
    expect(new Set(fired).size).toBe(fired.length);
  });
});

describe('SIGKILL during due-timer bursts', () => {
  const seed = Number(process.env['DFGATE_CRASH_SEED'] ?? Date.now() % 1_000_000);
  let x = seed || 1;
  const rnd = (): number => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 4294967296;
  };

  const worker = (): ChildProcess => spawnWorker(db.url, 'timers-test-secret');

  it('workers killed at random moments while timers fire: every timer fires once, every step runs once', async () => {
    process.stdout.write(`[timers] seed ${seed} (DFGATE_CRASH_SEED=${seed} to replay)\n`);
    const all: string[] = [];
    let midBurst = 0;
    for (let round = 0; round < 4; round++) {
      const w = worker();
      const ids = await startTimers(round % 2 ? b : a, 300, 3);
      all.push(...ids);
      // every timer armed (its due time recorded); the first may be firing already
      const armed = async (): Promise<{ n: number; lo: Date; hi: Date }> =>
        (
          await db.admin.query<{ n: number; lo: Date; hi: Date }>(
            `SELECT count(*)::int AS n, min((e.detail->>'at')::timestamptz) AS lo,
                    max((e.detail->>'at')::timestamptz) AS hi
               FROM df.events e JOIN df.nodes n ON n.instance_id = e.instance_id AND n.id = e.node_id
              WHERE e.instance_id = ANY ($1) AND e.kind = 'armed' AND n.node_type = 'SLEEP'`,
            [ids],
          )
        ).rows[0] as { n: number; lo: Date; hi: Date };
      await until('300 timers armed', async () => (await armed()).n === ids.length, 60_000);
      const span = await armed();
      const lo = span.lo.getTime();
      const hi = span.hi.getTime();
      const at = lo + rnd() * (hi - lo + 300);
      await new Promise((r) => setTimeout(r, Math.max(0, at - Date.now())));
      w.kill('SIGKILL');
      await new Promise((r) => w.once('exit', r));
      const firedNow = (await timerDones(ids)).length;
      if (firedNow > 0 && firedNow < ids.length) midBurst++;
    }
    const final = worker();
    try {
      await exactlyOnce(all, 120_000);
    } finally {
      final.kill('SIGTERM');
    }
    process.stdout.write(`[timers] 4 kills, ${midBurst} while a burst was partly fired\n`);
  }, 240_000);
});
