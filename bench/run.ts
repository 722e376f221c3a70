/**
 * `npm run bench`: reproducible benchmarks. Every figure is printed with the
 * baseline measured in the same run and the ratio against it.
 *   - pass-through: pgbench -S direct / through dfgate / through PgBouncer (session mode)
 *   - df.start: direct and through dfgate (compiled at the edge, extended protocol,
 *     transaction_mode => 'new') vs a plain INSERT of the same text
 *   - executor: SQL steps per second, and df.start → first step latency
 *   - queue: the peers' W1 and W2 shapes, dfgate's executor against a SKIP LOCKED
 *     job queue on the same cluster (bench/queue.ts)
 *   - parked: what 100,000 parked instances cost an idle executor, and 10,000
 *     timers due at one instant (bench/parked.ts)
 * BENCH_SECONDS (default 15) sets the length of each pgbench run; BENCH_ONLY
 * (passthrough, start, cost, executor, queue or parked) runs one part.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import pino from 'pino';
import { migrate } from '../src/db/migrate.js';
import { Executor } from '../src/executor/executor.js';
import { startProxy } from '../src/proxy/server.js';
import { targetFromUrl } from '../src/proxy/upstream.js';
import { startCluster } from '../src/pg/cluster.js';
import { costBench, formatCost } from './cost.js';
import { clearInstances, executorBench } from './executor.js';
import { formatParked, parkedBench } from './parked.js';
import { passthrough } from './passthrough.js';
import { formatQueue, queueBench } from './queue.js';

async function timeIt(n: number, fn: () => Promise<void>): Promise<number> {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await fn();
  return Number(process.hrtime.bigint() - t0) / 1e6 / n;
}

async function startBench(url: string, adminUrl: string): Promise<string[]> {
  const log = pino({ level: 'silent' });
  const ex = new Executor({
    controlUrl: adminUrl,
    log,
    stepAuth: 'login',
    stepSecret: 'bench-step-secret',
    leaseMs: 30_000,
    pollMs: 60_000,
    maxConcurrentSteps: 1,
    maxConcurrentInstances: 1,
    maxLoopIterations: 1000,
  });
  const proxy = await startProxy({
    host: '127.0.0.1',
    port: 0,
    upstream: targetFromUrl(url),
    log,
    maxClientConnections: 10,
    connectTimeoutMs: 5000,
    maxMessageSize: 64 * 1024 * 1024,
    edgeValidation: true,
    startNew: (req) => ex.startNew(req),
  });
  const viaDfgate = new URL(url);
  viaDfgate.port = String(proxy.port);
  const d = new pg.Client({ connectionString: url });
  const g = new pg.Client({ connectionString: viaDfgate.toString() });
  await d.connect();
  await g.connect();
  const graph = `'SELECT 1' ~> 'SELECT 2' ~> df.sleep(1) ~> 'SELECT 3'`;
  const graphText = (await d.query(`SELECT ${graph} AS g`)).rows[0].g as string;
  await d.query(`SELECT df.start(${graph})`);
  await g.query(`SELECT df.start(${graph})`);
  const n = 1000;
  let k = 0;
  const insert = (c: pg.Client) => async () => {
    await c.query(`INSERT INTO public.plain VALUES (md5(random()::text), ${graph}, 'x')`);
  };
  const rows: Array<[string, number]> = [
    ['INSERT of the graph text into a plain table, direct', await timeIt(n, insert(d))],
    ['the same INSERT through dfgate', await timeIt(n, insert(g))],
    [
      'df.start, direct (evaluated in the database)',
      await timeIt(n, async () => void (await d.query(`SELECT df.start(${graph}, 'x')`))),
    ],
    [
      'df.start through dfgate, same text (compiled once, cached)',
      await timeIt(n, async () => void (await g.query(`SELECT df.start(${graph}, 'x')`))),
    ],
    [
      'df.start through dfgate, a new text each time (parsed each time)',
      await timeIt(n, async () => void (await g.query(`SELECT df.start(${graph}, 'x-${k++}')`))),
    ],
    [
      'df.start($1, $2) through dfgate, extended protocol',
      await timeIt(
        n,
        async () => void (await g.query('SELECT df.start($1, $2)', [graphText, 'x'])),
      ),
    ],
    [
      "df.start(..., transaction_mode => 'new') through dfgate",
      await timeIt(
        n / 4,
        async () =>
          void (await g.query(`SELECT df.start(${graph}, 'x', transaction_mode => 'new')`)),
      ),
    ],
  ];
  // bulk enqueue (issue 12 item 3): one-step workflows, starts per second
  const step = `'UPDATE public.plain SET label = label WHERE false'`;
  const message = Array.from(
    { length: 100 },
    (_, i) => `SELECT df.start(${step}, 'bulk-${i}')`,
  ).join(';');
  const perSecond = async (reps: number, per: number, fn: () => Promise<unknown>) => {
    await fn();
    return (1000 * per) / (await timeIt(reps, async () => void (await fn())));
  };
  const series = `SELECT df.start(${step}, 'bulk') FROM generate_series(1, 1000)`;
  const bulk: Array<[string, number]> = [
    [
      'INSERT of the graph text, 1,000 rows in one statement, direct',
      await perSecond(20, 1000, () =>
        d.query(
          `INSERT INTO public.plain SELECT md5(g::text), ${step}, 'x' FROM generate_series(1, 1000) g`,
        ),
      ),
    ],
    [
      'df.start x 1,000 in one statement (generate_series), direct',
      await perSecond(5, 1000, () => d.query(series)),
    ],
    [
      'the same statement through dfgate (edge-compiled)',
      await perSecond(5, 1000, () => g.query(series)),
    ],
    [
      '100 SELECT df.start statements in one message, direct',
      await perSecond(20, 100, () => d.query(message)),
    ],
    [
      'the same message through dfgate (one batch)',
      await perSecond(50, 100, () => g.query(message)),
    ],
  ];
  await d.end();
  await g.end();
  await proxy.shutdown(1000);
  await ex.stop();
  // the instances started here are not the executor benchmark's work
  await clearInstances(adminUrl);
  const base = rows[0]?.[1] as number;
  const viaInsert = rows[1]?.[1] as number;
  return [
    `df.start of a 5-node graph, ${n} sequential autocommit statements each (synchronous_commit off):`,
    ...rows.map(
      ([what, ms]) =>
        `  ${what.padEnd(68)} ${ms.toFixed(3)} ms   (${(ms / base).toFixed(2)}x INSERT direct)`,
    ),
    `  time df.start adds through dfgate over the same INSERT through dfgate: ${((rows[3]?.[1] as number) - viaInsert).toFixed(3)} ms (cached text), ${((rows[4]?.[1] as number) - viaInsert).toFixed(3)} ms (new text)`,
    'bulk starts of a one-step workflow on one connection (target >= 5000 starts/s):',
    ...bulk.map(([what, perS]) => `  ${what.padEnd(68)} ${perS.toFixed(0).padStart(8)} /s`),
  ];
}

async function main(): Promise<void> {
  const seconds = Number(process.env['BENCH_SECONDS'] ?? 15);
  const base = mkdtempSync(path.join(tmpdir(), 'dfgate-bench-'));
  const cluster = await startCluster({
    baseDir: base,
    password: 'bench-superuser',
    binDir: process.env['DFGATE_TEST_PGBIN'] || undefined,
    settings: {
      // BENCH_SYNCHRONOUS_COMMIT=on measures with a WAL flush per commit, as the peers harness does
      synchronous_commit: process.env['BENCH_SYNCHRONOUS_COMMIT'] === 'on' ? 'on' : 'off',
      max_connections: '300',
      shared_preload_libraries: 'pg_stat_statements',
      // bench/parked.ts reads when the timers' done events committed
      track_commit_timestamp: 'on',
      // BENCH_TRACK=all also lists the statements inside functions (df._complete_step's own)
      'pg_stat_statements.track': process.env['BENCH_TRACK'] === 'all' ? 'all' : 'top',
    },
  });
  try {
    const c = new pg.Client({ connectionString: cluster.url() });
    await c.connect();
    await migrate(c);
    await c.query(`CREATE ROLE bench LOGIN PASSWORD 'bench-pw'`);
    await c.query(`GRANT CREATE ON SCHEMA public TO bench`);
    await c.query(`SET client_min_messages = warning`);
    await c.query(`SELECT df.grant_usage('bench')`);
    await c.query(
      `CREATE TABLE public.plain (id text, graph text, label text); GRANT ALL ON public.plain TO bench`,
    );
    await c.end();
    const lines = [
      `PostgreSQL ${cluster.majorVersion} on 127.0.0.1, ${new Date().toISOString()}`,
      '',
    ];
    const only = process.env['BENCH_ONLY'];
    const p =
      only && only !== 'passthrough'
        ? undefined
        : await passthrough(cluster, 'bench', 'bench-pw', seconds);
    if (p)
      lines.push(
        `pass-through: pgbench -S -c 8 -j 2, ${seconds} s per run, 2 interleaved runs each (mean tps):`,
        `  direct to PostgreSQL      ${p.direct.toFixed(0)} tps`,
        `  through dfgate            ${p.dfgate.toFixed(0)} tps   (${(p.dfgate / p.direct).toFixed(2)}x direct)`,
        p.pgbouncer === undefined
          ? '  through PgBouncer         (pgbouncer not installed)'
          : `  through PgBouncer         ${p.pgbouncer.toFixed(0)} tps   (${(p.pgbouncer / p.direct).toFixed(2)}x direct)\n  dfgate / PgBouncer        ${(p.dfgate / p.pgbouncer).toFixed(2)}x   (target >= 1.10x)`,
        '',
        `transaction pooling: pgbench -S -c ${p.pooled.clients} -j 4, pool of ${p.pooled.pool} (dfgate --pool-mode transaction, PgBouncer pool_mode = transaction) vs ${p.pooled.clients} direct connections:`,
        `  direct to PostgreSQL      ${p.pooled.direct.toFixed(0)} tps`,
        `  through dfgate            ${p.pooled.dfgate.toFixed(0)} tps   (${(p.pooled.dfgate / p.pooled.direct).toFixed(2)}x direct)`,
        p.pooled.pgbouncer === undefined
          ? '  through PgBouncer         (pgbouncer not installed)'
          : `  through PgBouncer         ${p.pooled.pgbouncer.toFixed(0)} tps   (${(p.pooled.pgbouncer / p.pooled.direct).toFixed(2)}x direct)\n  dfgate / PgBouncer        ${(p.pooled.dfgate / p.pooled.pgbouncer).toFixed(2)}x   (goal >= 1.00x)`,
        '',
      );
    const userUrl = cluster.url().replace('postgres:bench-superuser@', 'bench:bench-pw@');
    if (!only || only === 'start') lines.push(...(await startBench(userUrl, cluster.url())), '');
    if (!only || only === 'cost')
      lines.push(...formatCost(await costBench(cluster, cluster.url(), userUrl)), '');
    const ex =
      only && only !== 'executor'
        ? undefined
        : await executorBench(
            cluster.url(),
            userUrl,
            Number(process.env['BENCH_INSTANCES'] ?? 1000),
            10,
          );
    if (ex)
      lines.push(
        `executor: ${ex.instances} instances × ${ex.steps} SQL steps, started at once (16 concurrent steps):`,
        `  throughput                 ${ex.stepsPerSecond.toFixed(0)} steps/s   (target >= 3000)`,
        `  one 200-step sequence      ${ex.sequentialStepsPerSecond.toFixed(0)} steps/s`,
        `  df.start commit -> first step commit, idle executor: p50 ${ex.firstStepP50} ms, p99 ${ex.firstStepP99} ms   (target p50 <= 5 ms)`,
        '',
      );
    if (!only || only === 'queue')
      lines.push(...formatQueue(await queueBench(cluster, cluster.url(), userUrl)), '');
    if (!only || only === 'parked')
      lines.push(...formatParked(await parkedBench(cluster, cluster.url(), userUrl)), '');
    process.stdout.write(lines.join('\n') + '\n');
  } finally {
    await cluster.stop();
    rmSync(base, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(String(err instanceof Error ? err.stack : err) + '\n');
  process.exit(1);
});
