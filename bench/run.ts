/**
 * `npm run bench`: reproducible benchmarks. Every figure is printed with the
 * baseline measured in the same run and the ratio against it.
 *   - pass-through: pgbench -S direct / through dfgate / through PgBouncer (session mode)
 *   - df.start: the in-database start of a 5-node graph vs a plain INSERT of the same text
 *   - executor: SQL steps per second, and df.start → first step latency
 * BENCH_SECONDS (default 15) sets the length of each pgbench run.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { migrate } from '../src/db/migrate.js';
import { startCluster } from '../src/pg/cluster.js';
import { executorBench } from './executor.js';
import { passthrough } from './passthrough.js';

async function timeIt(n: number, fn: () => Promise<void>): Promise<number> {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await fn();
  return Number(process.hrtime.bigint() - t0) / 1e6 / n;
}

async function startBench(url: string): Promise<string[]> {
  const u = new pg.Client({ connectionString: url });
  await u.connect();
  const graph = `'SELECT 1' ~> 'SELECT 2' ~> df.sleep(1) ~> 'SELECT 3'`;
  await u.query(`SELECT df.start(${graph})`);
  const n = 1000;
  const plain = await timeIt(n, async () => {
    await u.query(`INSERT INTO public.plain VALUES (md5(random()::text), ${graph}, 'x')`);
  });
  const start = await timeIt(n, async () => {
    await u.query(`SELECT df.start(${graph}, 'x')`);
  });
  await u.end();
  return [
    `df.start, ${n} sequential autocommit statements each (synchronous_commit off):`,
    `  baseline: INSERT of the graph text into a plain table  ${plain.toFixed(3)} ms/statement`,
    `  df.start of the 5-node graph (in-database)             ${start.toFixed(3)} ms/statement`,
    `  ratio df.start / INSERT                                ${(start / plain).toFixed(2)}x`,
  ];
}

async function main(): Promise<void> {
  const seconds = Number(process.env['BENCH_SECONDS'] ?? 15);
  const base = mkdtempSync(path.join(tmpdir(), 'dfgate-bench-'));
  const cluster = await startCluster({
    baseDir: base,
    password: 'bench-superuser',
    binDir: process.env['DFGATE_TEST_PGBIN'] || undefined,
    settings: { synchronous_commit: 'off', max_connections: '200' },
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
    const p = await passthrough(cluster, 'bench', 'bench-pw', seconds);
    lines.push(
      `pass-through: pgbench -S -c 8 -j 2, ${seconds} s per run, 2 interleaved runs each (mean tps):`,
      `  direct to PostgreSQL      ${p.direct.toFixed(0)} tps`,
      `  through dfgate            ${p.dfgate.toFixed(0)} tps   (${(p.dfgate / p.direct).toFixed(2)}x direct)`,
      p.pgbouncer === undefined
        ? '  through PgBouncer         (pgbouncer not installed)'
        : `  through PgBouncer         ${p.pgbouncer.toFixed(0)} tps   (${(p.pgbouncer / p.direct).toFixed(2)}x direct)\n  dfgate / PgBouncer        ${(p.dfgate / p.pgbouncer).toFixed(2)}x   (target >= 1.10x)`,
      '',
    );
    const userUrl = cluster.url().replace('postgres:bench-superuser@', 'bench:bench-pw@');
    lines.push(...(await startBench(userUrl)), '');
    const ex = await executorBench(
      cluster.url(),
      userUrl,
      Number(process.env['BENCH_INSTANCES'] ?? 1000),
      10,
    );
    lines.push(
      `executor: ${ex.instances} instances × ${ex.steps} SQL steps, started at once (16 concurrent steps):`,
      `  throughput                 ${ex.stepsPerSecond.toFixed(0)} steps/s   (target >= 3000)`,
      `  one 200-step sequence      ${ex.sequentialStepsPerSecond.toFixed(0)} steps/s`,
      `  df.start commit -> first step commit, idle executor: p50 ${ex.firstStepP50} ms, p99 ${ex.firstStepP99} ms   (target p50 <= 5 ms)`,
    );
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
