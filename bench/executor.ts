/**
 * Executor benchmark: SQL steps per second for N instances × M steps, and the
 * latency from df.start's commit to the first step's commit (p50/p99).
 */
import pg from 'pg';
import pino from 'pino';
import { Executor } from '../src/executor/executor.js';

export interface ExecutorBenchResult {
  readonly instances: number;
  readonly steps: number;
  readonly seconds: number;
  readonly stepsPerSecond: number;
  readonly sequentialStepsPerSecond: number;
  readonly firstStepP50: number;
  readonly firstStepP99: number;
}

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;
}

/** The executor the benchmarks run: step logins, a 1 s safety-net poll (five times dfgate's default), 16 step slots (or `steps`), 256 leases. */
export function benchExecutor(adminUrl: string, steps = 16): Executor {
  return new Executor({
    controlUrl: adminUrl,
    log: pino({ level: 'warn' }),
    stepAuth: 'login',
    stepSecret: 'bench-secret',
    leaseMs: 30_000,
    pollMs: 1000,
    maxConcurrentSteps: steps,
    maxConcurrentInstances: 256,
    maxLoopIterations: 100_000,
  });
}

/**
 * Empties the df tables after a benchmark that started instances, so the next one starts
 * from none: on `admin` (a superuser client, left open) or on a connection of its own to it.
 */
export async function clearInstances(admin: pg.Client | string): Promise<void> {
  const c = typeof admin === 'string' ? new pg.Client({ connectionString: admin }) : admin;
  if (c !== admin) await c.connect();
  try {
    await c.query('TRUNCATE df.events, df.signals, df.vars, df.nodes, df.instances CASCADE');
  } finally {
    if (c !== admin) await c.end();
  }
}

export async function executorBench(
  adminUrl: string,
  userUrl: string,
  instances: number,
  steps: number,
): Promise<ExecutorBenchResult> {
  const u = new pg.Client({ connectionString: userUrl });
  await u.connect();
  await u.query(
    `CREATE TABLE IF NOT EXISTS public.bench_effects (instance text, step int, at timestamptz DEFAULT clock_timestamp())`,
  );
  const ex = benchExecutor(adminUrl);
  await ex.start();
  try {
    // warm up: provision the step login, open connections
    const warm = (await u.query(`SELECT df.start('SELECT 1') AS id`)).rows[0].id;
    while ((await u.query(`SELECT df.status($1) AS s`, [warm])).rows[0].s !== 'completed')
      await new Promise((r) => setTimeout(r, 20));

    // one long sequence: steps per second without parallelism
    const chain = Array.from(
      { length: 200 },
      (_, k) => `'INSERT INTO public.bench_effects VALUES (''seq'', ${k})'`,
    ).join(' ~> ');
    const t0 = Date.now();
    const seqId = (await u.query(`SELECT df.start(${chain}) AS id`)).rows[0].id;
    while ((await u.query(`SELECT df.status($1) AS s`, [seqId])).rows[0].s !== 'completed')
      await new Promise((r) => setTimeout(r, 10));
    const sequentialStepsPerSecond = 200 / ((Date.now() - t0) / 1000);

    if (instances === 0)
      return {
        instances,
        steps,
        seconds: 0,
        stepsPerSecond: 0,
        sequentialStepsPerSecond,
        firstStepP50: NaN,
        firstStepP99: NaN,
      };
    // df.start commit → first step commit, one instance at a time on an idle executor
    const lat: number[] = [];
    for (let i = 0; i < 100; i++) {
      const r = await u.query(
        `SELECT df.start('INSERT INTO public.bench_effects VALUES (''{sys_instance_id}'', 0)') AS id, clock_timestamp() AS at`,
      );
      const id = r.rows[0].id as string;
      for (;;) {
        const f = await u.query(
          `SELECT min(at) AS at FROM public.bench_effects WHERE instance = $1`,
          [id],
        );
        if (f.rows[0].at) {
          lat.push(new Date(f.rows[0].at).getTime() - new Date(r.rows[0].at).getTime());
          break;
        }
        await new Promise((res) => setTimeout(res, 1));
      }
    }
    // many instances at once: throughput
    const graph = Array.from(
      { length: steps },
      (_, k) => `'INSERT INTO public.bench_effects VALUES (''{sys_instance_id}'', ${k})'`,
    ).join(' ~> ');
    const started = new Map<string, number>();
    const t1 = Date.now();
    for (let i = 0; i < instances; i += 50) {
      const r = await u.query(
        `SELECT df.start(${graph}) AS id, clock_timestamp() AS at FROM generate_series(1, LEAST(50, $1::int - $2::int))`,
        [instances, i],
      );
      for (const row of r.rows) started.set(row.id, new Date(row.at).getTime());
    }
    for (;;) {
      const r = await u.query(
        `SELECT count(*)::int AS n FROM df.instances WHERE status = 'completed' AND id = ANY ($1)`,
        [[...started.keys()]],
      );
      if (r.rows[0].n === instances) break;
      await new Promise((res) => setTimeout(res, 100));
    }
    const seconds = (Date.now() - t1) / 1000;
    return {
      instances,
      steps,
      seconds,
      stepsPerSecond: (instances * steps) / seconds,
      sequentialStepsPerSecond,
      firstStepP50: pct(lat, 50),
      firstStepP99: pct(lat, 99),
    };
  } finally {
    await ex.stop();
    await u.end();
  }
}
