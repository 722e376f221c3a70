/**
 * dfgate's executor against a job queue on the same cluster, in the same run
 * (issue 12): the peers' W1 and W2 shapes, ten at a time on both sides.
 *
 * - W1: 200 workflows × 10 chained steps; W2: 5,000 one-step workflows.
 *   Each step is `UPDATE bench_counters SET n = n + 1 WHERE id = <workflow>`.
 * - dfgate: one executor with 10 step slots, workflows started with
 *   `df.start`, 100 per statement (generate_series), as the application role.
 * - The baseline is the job queue a team would write on PostgreSQL, shaped
 *   like graphile-worker's: ten workers, each taking a job with
 *   `FOR UPDATE SKIP LOCKED`, running the step on its own connection, and
 *   completing the job (deleting it and, in a chain, adding the next) in one
 *   more statement; a worker that finds no job sleeps 2 ms. Jobs are
 *   enqueued 100 per INSERT while the workers run.
 * - Rate: steps (or workflows) per second from the enqueue to the moment
 *   every counter reached its target (polled every 10 ms). CPU: the
 *   cluster's processes from /proc over the same window.
 */
import pg from 'pg';
import type { RunningCluster } from '../src/pg/cluster.js';
import { benchExecutor, clearInstances } from './executor.js';
import { clusterCpuSeconds, postmasterPid } from './proc.js';
import { bareRows } from './bare-rows.js';

const CONCURRENCY = 10;
/** Workflows enqueued per statement, on both sides (the peers send 100 starts per message). */
const BATCH = 100;

export interface QueueRun {
  readonly shape: (typeof SHAPES)[number];
  readonly steps: number;
  readonly seconds: number;
  readonly pgCpu: number;
}

export interface QueueBenchResult {
  readonly dfgate: readonly QueueRun[];
  readonly queue: readonly QueueRun[];
  /** W2 through dfgate's rows written bare (bare-rows.ts): the storage's floor. */
  readonly bare: QueueRun;
}

const SHAPES = [
  { name: 'W1, 200 workflows x 10 chained steps', workflows: 200, steps: 10, unit: 'step' },
  { name: 'W2, 5,000 one-step workflows', workflows: 5000, steps: 1, unit: 'job' },
] as const;

async function resetCounters(u: pg.Client, workflows: number): Promise<void> {
  await u.query('TRUNCATE public.bench_counters');
  await u.query(
    'INSERT INTO public.bench_counters (id, n) SELECT g, 0 FROM generate_series(1, $1::int) g',
    [workflows],
  );
}

/** Waits until every counter reached `steps`; polls every 10 ms. */
async function drained(u: pg.Client, workflows: number, steps: number): Promise<void> {
  for (;;) {
    const r = await u.query(
      'SELECT count(*)::int AS n FROM public.bench_counters WHERE n >= $1::int',
      [steps],
    );
    if (r.rows[0].n === workflows) return;
    await new Promise((res) => setTimeout(res, 10));
  }
}

async function timed(
  cluster: RunningCluster,
  fn: () => Promise<void>,
): Promise<{ seconds: number; pgCpu: number }> {
  const pid = postmasterPid(cluster);
  const cpu0 = clusterCpuSeconds(pid, true);
  const t0 = performance.now();
  await fn();
  const seconds = (performance.now() - t0) / 1000;
  return { seconds, pgCpu: clusterCpuSeconds(pid, true) - cpu0 };
}

async function dfgateRuns(
  cluster: RunningCluster,
  adminUrl: string,
  u: pg.Client,
): Promise<QueueRun[]> {
  const ex = benchExecutor(adminUrl, CONCURRENCY);
  await ex.start();
  const runs: QueueRun[] = [];
  try {
    // warm-up: the step login, its connections, the plans
    await resetCounters(u, 100);
    await u.query(
      `SELECT df.start('UPDATE public.bench_counters SET n = n + 1 WHERE id = ' || g) FROM generate_series(1, 100) g`,
    );
    await drained(u, 100, 1);
    for (const s of SHAPES) {
      await resetCounters(u, s.workflows);
      const step = `('UPDATE public.bench_counters SET n = n + 1 WHERE id = ' || g)`;
      const graph = Array.from({ length: s.steps }, () => step).join(' ~> ');
      const t = await timed(cluster, async () => {
        for (let i = 0; i < s.workflows; i += BATCH)
          await u.query(
            `SELECT count(df.start(${graph}, 'bench-' || g)) FROM generate_series($1::int, $2::int) g`,
            [i + 1, Math.min(i + BATCH, s.workflows)],
          );
        await drained(u, s.workflows, s.steps);
      });
      runs.push({ shape: s, steps: s.workflows * s.steps, ...t });
    }
  } finally {
    await ex.stop();
  }
  return runs;
}

async function queueRuns(
  cluster: RunningCluster,
  userUrl: string,
  u: pg.Client,
): Promise<QueueRun[]> {
  await u.query(`CREATE TABLE IF NOT EXISTS public.bench_jobs (
    id bigserial PRIMARY KEY, wf int NOT NULL, k int NOT NULL, steps int NOT NULL,
    locked_by text, locked_at timestamptz)`);
  const workers = await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      const c = new pg.Client({ connectionString: userUrl });
      await c.connect();
      return c;
    }),
  );
  const take = {
    name: 'bench_take',
    text: `UPDATE public.bench_jobs SET locked_by = $1, locked_at = now()
            WHERE id = (SELECT id FROM public.bench_jobs WHERE locked_by IS NULL
                         ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1)
           RETURNING id, wf, k, steps`,
  };
  const run = {
    name: 'bench_step',
    text: 'UPDATE public.bench_counters SET n = n + 1 WHERE id = $1',
  };
  const complete = {
    name: 'bench_complete',
    text: `WITH d AS (DELETE FROM public.bench_jobs WHERE id = $1)
           INSERT INTO public.bench_jobs (wf, k, steps) SELECT $2, $3 + 1, $4 WHERE $3 + 1 < $4`,
  };
  const work = async (workflows: number, steps: number): Promise<void> => {
    let done = false;
    const loops = workers.map(async (c, w) => {
      while (!done) {
        const r = await c.query({ ...take, values: [`w${w}`] });
        const job = r.rows[0] as { id: string; wf: number; k: number; steps: number } | undefined;
        if (!job) {
          await new Promise((res) => setTimeout(res, 2));
          continue;
        }
        await c.query({ ...run, values: [job.wf] });
        await c.query({ ...complete, values: [job.id, job.wf, job.k, job.steps] });
      }
    });
    await drained(u, workflows, steps);
    done = true;
    await Promise.all(loops);
  };
  // the enqueuing connection: `u` polls the counters meanwhile
  const enq = new pg.Client({ connectionString: userUrl });
  await enq.connect();
  const runs: QueueRun[] = [];
  try {
    await resetCounters(u, 100);
    await u.query(
      'INSERT INTO public.bench_jobs (wf, k, steps) SELECT g, 0, 1 FROM generate_series(1, 100) g',
    );
    await work(100, 1);
    for (const s of SHAPES) {
      await resetCounters(u, s.workflows);
      const t = await timed(cluster, async () => {
        const running = work(s.workflows, s.steps);
        for (let i = 0; i < s.workflows; i += BATCH)
          await enq.query(
            'INSERT INTO public.bench_jobs (wf, k, steps) SELECT g, 0, $3::int FROM generate_series($1::int, $2::int) g',
            [i + 1, Math.min(i + BATCH, s.workflows), s.steps],
          );
        await running;
      });
      runs.push({ shape: s, steps: s.workflows * s.steps, ...t });
    }
  } finally {
    await Promise.all([...workers, enq].map((c) => c.end()));
  }
  return runs;
}

/** W2 through the bare rows (after a warm-up of 100), timed as the other sides. */
async function bareRun(
  cluster: RunningCluster,
  adminUrl: string,
  role: string,
  u: pg.Client,
): Promise<QueueRun> {
  const w2 = SHAPES[1];
  await resetCounters(u, 100);
  await bareRows(adminUrl, role, 100, CONCURRENCY, BATCH, () => drained(u, 100, 1));
  await resetCounters(u, w2.workflows);
  const t = await timed(cluster, () =>
    bareRows(adminUrl, role, w2.workflows, CONCURRENCY, BATCH, () => drained(u, w2.workflows, 1)),
  );
  return { shape: w2, steps: w2.workflows, ...t };
}

export async function queueBench(
  cluster: RunningCluster,
  adminUrl: string,
  userUrl: string,
): Promise<QueueBenchResult> {
  const u = new pg.Client({ connectionString: userUrl });
  await u.connect();
  try {
    await u.query(
      'CREATE TABLE IF NOT EXISTS public.bench_counters (id int PRIMARY KEY, n int NOT NULL)',
    );
    // the queue first, then dfgate, then the queue again: a drift of the machine shows as a
    // difference between the queue's two runs
    const first = await queueRuns(cluster, userUrl, u);
    const dfgate = await dfgateRuns(cluster, adminUrl, u);
    const bare = await bareRun(cluster, adminUrl, decodeURIComponent(new URL(userUrl).username), u);
    const second = await queueRuns(cluster, userUrl, u);
    const queue = first.map((a, i) => {
      const b = second[i] as QueueRun;
      return { ...a, seconds: (a.seconds + b.seconds) / 2, pgCpu: (a.pgCpu + b.pgCpu) / 2 };
    });
    return { dfgate, queue, bare };
  } finally {
    await u.end();
    // the instances started here are not the next benchmark's work
    await clearInstances(adminUrl);
  }
}

export function formatQueue(r: QueueBenchResult): string[] {
  const lines = [
    `executor against a bare job queue on the same cluster (${CONCURRENCY} at a time on both sides; the queue: SKIP LOCKED take, step, complete, no history, retries or per-role identity; mean of its runs before and after dfgate's):`,
  ];
  const rate = (x: QueueRun): number => x.steps / x.seconds;
  const cpu = (x: QueueRun): string => ((1000 * x.pgCpu) / x.steps).toFixed(2);
  for (const d of r.dfgate) {
    const q = r.queue.find((x) => x.shape === d.shape) as QueueRun;
    const unit = `${d.shape.unit}s/s`.padEnd(7);
    lines.push(
      `  ${d.shape.name.padEnd(37)} dfgate ${rate(d).toFixed(0).padStart(6)} ${unit}  queue ${rate(q).toFixed(0).padStart(6)} ${unit}  ${(rate(d) / rate(q)).toFixed(2)}x`,
      `      PostgreSQL CPU per ${d.shape.unit}: dfgate ${cpu(d)} ms, queue ${cpu(q)} ms`,
    );
    if (d.shape === r.bare.shape)
      lines.push(
        `      dfgate's rows written bare (no dfgate code, same tables, claims and batches): ${rate(r.bare).toFixed(0)} ${unit.trim()}, ${(rate(r.bare) / rate(q)).toFixed(2)}x the queue; PostgreSQL CPU per ${d.shape.unit} ${cpu(r.bare)} ms`,
      );
  }
  return lines;
}
