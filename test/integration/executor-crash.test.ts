/**
 * Exactly once under crashes (STYLE.md 7): dfgate worker processes are killed
 * with SIGKILL at seeded random moments and restarted; every step's side
 * effect must happen exactly once and every instance must complete.
 * DFGATE_CRASH_SEED=<n> replays a run.
 */
import type { ChildProcess } from 'node:child_process';
import type pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../../src/pg/cluster.js';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { spawnWorker } from '../harness/worker.js';

const db = useTestDatabase();
let role: TestRole;
let c: pg.Client;
const seed = Number(process.env['DFGATE_CRASH_SEED'] ?? Date.now() % 1_000_000);
let x = seed || 1;
const rnd = (): number => {
  x ^= x << 13;
  x ^= x >>> 17;
  x ^= x << 5;
  return (x >>> 0) / 4294967296;
};

function worker(name: string, extra: string[] = []): ChildProcess {
  return spawnWorker(db.url, 'crash-test-secret', {
    extra,
    onExit: (code, sig, err) => {
      if (code && code !== 0)
        process.stderr.write(
          `[crash] worker ${name} exited ${code} ${sig ?? ''}: ${err.slice(-2000)}\n`,
        );
    },
  });
}

/**
 * Starts instances of `steps` chained INSERTs. Without RETURNING each step's
 * checkpoint goes out with its statement (one round trip); with it, the
 * checkpoint is sent when the statement's rows have come back, so a worker
 * frozen meanwhile sends it late.
 */
async function startN(
  instances: number,
  steps: number,
  stepSeconds = 0.03,
  returning = false,
): Promise<string[]> {
  // each step takes a little while, so that kills land in the middle of steps
  const seq = Array.from(
    { length: steps },
    (_, k) =>
      `INSERT INTO effects SELECT '{sys_instance_id}', ${k + 1} FROM pg_sleep(${stepSeconds})${returning ? ' RETURNING step' : ''}`,
  );
  const graph = seq.map((s) => `'${s.replace(/'/g, "''")}'`).join(' ~> ');
  const ids: string[] = [];
  for (let i = 0; i < instances; i++)
    ids.push((await c.query(`SELECT df.start(${graph}, 'crash') AS id`)).rows[0].id as string);
  return ids;
}

async function waitAll(ids: string[], timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await c.query(
      `SELECT count(*)::int AS n FROM df.instances WHERE id = ANY ($1) AND status = 'completed'`,
      [ids],
    );
    if (r.rows[0].n === ids.length) return;
    if (Date.now() > deadline) {
      const st = await c.query(
        `SELECT status, count(*)::int AS n, min(error) AS error FROM df.instances WHERE id = ANY ($1) GROUP BY 1`,
        [ids],
      );
      throw new Error(`not all instances completed (seed ${seed}): ${JSON.stringify(st.rows)}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function until(cond: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function assertExactlyOnce(ids: string[], steps: number): Promise<void> {
  const r = await c.query(
    `SELECT i.id, count(e.*)::int AS n, count(DISTINCT e.step)::int AS d
       FROM unnest($1::text[]) AS i(id) LEFT JOIN effects e ON e.instance = i.id GROUP BY i.id`,
    [ids],
  );
  const bad = r.rows.filter((row) => row.n !== steps || row.d !== steps);
  expect(bad, `seed ${seed}`).toEqual([]);
}

beforeAll(async () => {
  role = await db.role('crash');
  c = await db.connect(role.url);
  await c.query(`CREATE TABLE effects (instance text, step int)`);
  process.stdout.write(`[crash] seed ${seed} (DFGATE_CRASH_SEED=${seed} to replay)\n`);
});

describe('exactly once under crashes', () => {
  it('50 instances × 10 steps survive 20+ SIGKILLs at random moments with every effect exactly once', async () => {
    // batches of 50 × 10 are started until 20 kills have landed while work was in flight
    const batches: string[][] = [await startN(50, 10)];
    let kills = 0;
    let midRun = 0;
    while (midRun < 20 && kills < 80) {
      const ids = batches.flat();
      const open = async (): Promise<number> =>
        (
          await c.query(
            `SELECT count(*)::int AS n FROM df.instances WHERE id = ANY ($1) AND status <> 'completed'`,
            [ids],
          )
        ).rows[0].n;
      if ((await open()) === 0) batches.push(await startN(50, 10));
      const w = worker(`k${kills}`);
      // the lease is 1 s: a restarted worker first waits for the killed one's leases to expire
      await new Promise((r) => setTimeout(r, 1000 + Math.floor(rnd() * 900)));
      const inFlight = (
        await c.query(
          `SELECT count(*)::int AS n FROM df.instances WHERE id = ANY ($1) AND status <> 'completed'`,
          [batches.flat()],
        )
      ).rows[0].n;
      if (inFlight > 0) midRun++;
      w.kill('SIGKILL');
      await new Promise((r) => w.once('exit', r));
      kills++;
    }
    expect(midRun).toBeGreaterThanOrEqual(20);
    const ids = batches.flat();
    const effectsBefore = (
      await c.query(`SELECT count(*)::int AS n FROM effects WHERE instance = ANY ($1)`, [ids])
    ).rows[0].n;
    const final = worker('final');
    await waitAll(ids, 120_000);
    final.kill('SIGTERM');
    await assertExactlyOnce(ids, 10);
    process.stdout.write(
      `[crash] ${kills} kills (${midRun} with instances in flight), ${batches.length} batch(es) of 50 × 10; ${effectsBefore} of ${ids.length * 10} steps had committed before the last restart\n`,
    );
  }, 240_000);

  it('a worker frozen mid-step past its lease is taken over; its late checkpoint is refused; no effect runs twice', async () => {
    const ids = await startN(20, 10, 0.3, true);
    const adminPort = await freePort();
    const a = worker('a', ['--admin-listen', `127.0.0.1:${adminPort}`]);
    // freeze a while one of its steps is running: that step can only commit after SIGCONT
    await until(
      async () =>
        (
          await db.admin.query(
            `SELECT count(*)::int AS n FROM pg_stat_activity
              WHERE datname = $1 AND application_name = 'dfgate:step' AND state = 'active'
                AND query LIKE 'INSERT INTO effects%'`,
            [db.name],
          )
        ).rows[0].n > 0,
      30_000,
    );
    a.kill('SIGSTOP');
    const held = (
      await c.query<{ id: string; lease_owner: string; lease_epoch: string }>(
        `SELECT id, lease_owner, lease_epoch FROM df.instances
          WHERE id = ANY ($1) AND lease_owner IS NOT NULL AND status IN ('pending', 'running')`,
        [ids],
      )
    ).rows;
    expect(held.length).toBeGreaterThan(0);
    const aOwner = held[0]?.lease_owner;
    expect(new Set(held.map((h) => h.lease_owner))).toEqual(new Set([aOwner]));
    const b = worker('b');
    // b takes over every instance a held once a's 1 s leases expire, while a stays frozen
    const heldIds = held.map((h) => h.id);
    const before = new Map(held.map((h) => [h.id, BigInt(h.lease_epoch)]));
    let now: Array<{ id: string; lease_owner: string | null; lease_epoch: string }> = [];
    await until(async () => {
      now = (
        await c.query(`SELECT id, lease_owner, lease_epoch FROM df.instances WHERE id = ANY ($1)`, [
          heldIds,
        ])
      ).rows;
      return now.every(
        (r) => BigInt(r.lease_epoch) > (before.get(r.id) as bigint) && r.lease_owner !== aOwner,
      );
    }, 30_000);
    expect(now.filter((r) => r.lease_owner === aOwner)).toEqual([]);
    a.kill('SIGCONT');
    await waitAll(ids, 120_000);
    // a's step finished after the takeover: its checkpoint (epoch check in df._complete_step) was refused
    const metrics = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
    const abandoned = /^dfgate_executor_steps_total\{outcome="abandoned"\} (\d+)$/m.exec(metrics);
    expect(Number(abandoned?.[1] ?? 0), metrics).toBeGreaterThan(0);
    a.kill('SIGTERM');
    b.kill('SIGTERM');
    await assertExactlyOnce(ids, 10);
  }, 240_000);

  it('PostgreSQL connections dropped mid-run: the executor reconnects and completes everything once', async () => {
    const ids = await startN(20, 10);
    const w = worker('reconnect');
    for (let i = 0; i < 5; i++) {
      await new Promise((r) => setTimeout(r, 300));
      // terminate every backend of this database except our own: steps, control, LISTEN
      await db.admin.query(
        `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() AND application_name LIKE 'dfgate%'`,
        [db.name],
      );
    }
    await waitAll(ids, 120_000);
    w.kill('SIGTERM');
    await assertExactlyOnce(ids, 10);
  }, 240_000);
});
