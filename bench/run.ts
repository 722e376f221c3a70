/**
 * `npm run bench`: reproducible benchmarks, each printing its baseline from
 * the same run and the ratio against it. The pass-through and executor
 * benchmarks arrive with the proxy and executor issues.
 */
import pg from 'pg';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { migrate } from '../src/db/migrate.js';
import { startCluster } from '../src/pg/cluster.js';

async function timeIt(n: number, fn: () => Promise<void>): Promise<number> {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await fn();
  return Number(process.hrtime.bigint() - t0) / 1e6 / n;
}

async function main(): Promise<void> {
  const base = mkdtempSync(path.join(tmpdir(), 'dfgate-bench-'));
  const cluster = await startCluster({
    baseDir: base,
    password: 'bench',
    binDir: process.env['DFGATE_TEST_PGBIN'] || undefined,
  });
  try {
    const c = new pg.Client({ connectionString: cluster.url() });
    await c.connect();
    await migrate(c);
    await c.query(`CREATE ROLE bench LOGIN PASSWORD 'bench'`);
    await c.query(`SET client_min_messages = warning`);
    await c.query(`SELECT df.grant_usage('bench')`);
    await c.query(
      `CREATE TABLE public.plain (id text, graph text, label text); GRANT ALL ON public.plain TO bench`,
    );
    await c.end();
    const u = new pg.Client({
      connectionString: cluster.url().replace('postgres:bench@', 'bench:bench@'),
    });
    await u.connect();
    const graph = `'SELECT 1' ~> 'SELECT 2' ~> df.sleep(1) ~> 'SELECT 3'`;
    await u.query(`SELECT df.start(${graph})`);
    const n = 500;
    const plain = await timeIt(n, async () => {
      await u.query(`INSERT INTO public.plain VALUES (md5(random()::text), ${graph}, 'x')`);
    });
    const start = await timeIt(n, async () => {
      await u.query(`SELECT df.start(${graph}, 'x')`);
    });
    await u.end();
    process.stdout.write(
      [
        `PostgreSQL ${cluster.majorVersion}, ${n} sequential statements each (autocommit)`,
        `baseline  INSERT of the graph text into a plain table: ${plain.toFixed(3)} ms/statement`,
        `df.start  (5-node graph, in-database, direct connection): ${start.toFixed(3)} ms/statement`,
        `ratio     df.start / plain INSERT: ${(start / plain).toFixed(2)}x`,
        '',
      ].join('\n'),
    );
  } finally {
    await cluster.stop();
    rmSync(base, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(String(err) + '\n');
  process.exit(1);
});
