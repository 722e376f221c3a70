/**
 * What a step and a start cost PostgreSQL (issue 12, "measure first"):
 * statements (pg_stat_statements calls), round trips (client messages that
 * wait for an answer: Query and Sync, counted by a relay between dfgate and
 * the server), write transactions (transaction ids consumed) and the
 * server's CPU time (utime + stime of every backend of the cluster, from
 * /proc). Run with `npm run bench` (BENCH_ONLY=cost for this part alone).
 *
 * Workloads: W steps = N instances × K chained `UPDATE counters` steps run by
 * one executor with 10 step slots (the peers' W1 shape); starts = M
 * `df.start` calls in one statement, and M in messages of 100 statements,
 * direct and through dfgate's edge.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import pino from 'pino';
import { Executor } from '../src/executor/executor.js';
import type { RunningCluster } from '../src/pg/cluster.js';
import { clearInstances } from './executor.js';
import { clusterCpuSeconds, postmasterPid } from './proc.js';
import { startProxy } from '../src/proxy/server.js';
import { targetFromUrl } from '../src/proxy/upstream.js';

/**
 * The counting relay (bench/relay.ts) in a child process of its own, so that
 * the CPU it spends copying bytes is not counted as dfgate's.
 */
class CountingRelay {
  private child: ChildProcess | undefined;
  port = 0;
  constructor(private readonly target: number) {}
  async start(): Promise<void> {
    const child = fork(fileURLToPath(new URL('./relay.js', import.meta.url)), [
      String(this.target),
    ]);
    this.child = child;
    this.port = await new Promise<number>((resolve, reject) => {
      child.once('message', (m: { port?: number }) => resolve(Number(m.port)));
      child.once('exit', () => reject(new Error('the counting relay exited')));
    });
  }
  /** Query and Sync messages relayed so far: one per round trip. */
  async roundTrips(): Promise<number> {
    const child = this.child as ChildProcess;
    return await new Promise<number>((resolve) => {
      child.once('message', (m: { rt?: number }) => resolve(Number(m.rt)));
      child.send('count');
    });
  }
  async stop(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null) return;
    await new Promise<void>((r) => {
      child.once('exit', () => r());
      child.kill('SIGTERM');
    });
  }
}

interface Snapshot {
  readonly calls: Map<string, number>;
  /** Execution + planning time per statement text (ms, as pg_stat_statements measures it). */
  readonly ms: Map<string, number>;
  readonly xacts: number;
  readonly cpu: number;
  /** this process's CPU (user + system, s): dfgate's executor and proxy run in it */
  readonly own: number;
  readonly roundTrips: number;
}

export interface CostRow {
  readonly what: string;
  readonly per: number;
  readonly statements: number;
  readonly roundTrips: number;
  readonly transactions: number;
  readonly cpuMs: number;
  readonly ownCpuMs: number;
  readonly top: Array<[string, number, number]>;
}

async function snapshot(admin: pg.Client, pid: number, relay: CountingRelay): Promise<Snapshot> {
  const s = await admin.query<{ q: string; calls: string; ms: string }>(
    `SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 90) AS q, sum(calls)::text AS calls,
            sum(total_exec_time + total_plan_time)::text AS ms
       FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
      GROUP BY 1`,
  );
  // transactions that wrote (took a transaction id): what costs a commit record
  const x = await admin.query<{ n: string }>(
    `SELECT pg_snapshot_xmax(pg_current_snapshot())::text AS n`,
  );
  return {
    calls: new Map(s.rows.map((r) => [r.q, Number(r.calls)])),
    ms: new Map(s.rows.map((r) => [r.q, Number(r.ms)])),
    xacts: Number(x.rows[0]?.n),
    cpu: clusterCpuSeconds(pid),
    own: ((u) => (u.user + u.system) / 1e6)(process.cpuUsage()),
    roundTrips: await relay.roundTrips(),
  };
}

function diff(
  what: string,
  per: number,
  a: Snapshot,
  b: Snapshot,
  ownStatements: number,
  ownXacts: number,
): CostRow {
  const d: Array<[string, number, number]> = [];
  let total = 0;
  for (const [q, n] of b.calls) {
    const k = n - (a.calls.get(q) ?? 0);
    if (k <= 0) continue;
    // the measuring queries themselves
    if (/pg_stat_statements|pg_current_snapshot/.test(q)) continue;
    d.push([q, k / per, ((b.ms.get(q) ?? 0) - (a.ms.get(q) ?? 0)) / per]);
    total += k;
  }
  d.sort((x, y) => y[2] - x[2]);
  return {
    what,
    per,
    statements: (total - ownStatements) / per,
    roundTrips: (b.roundTrips - a.roundTrips) / per,
    transactions: (b.xacts - a.xacts - ownXacts) / per,
    cpuMs: ((b.cpu - a.cpu) * 1000) / per,
    ownCpuMs: ((b.own - a.own) * 1000) / per,
    top: d.slice(0, 16),
  };
}

/**
 * Needs a cluster started with shared_preload_libraries = pg_stat_statements,
 * a migrated database at `adminUrl`, and the granted login `userUrl`.
 */
export async function costBench(
  cluster: RunningCluster,
  adminUrl: string,
  userUrl: string,
): Promise<CostRow[]> {
  const pid = postmasterPid(cluster);
  const relay = new CountingRelay(cluster.port);
  await relay.start();
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  await admin.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements');
  await admin.query(
    `CREATE TABLE IF NOT EXISTS public.counters (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
     GRANT SELECT, UPDATE ON public.counters TO bench`,
  );
  const relayed = new URL(adminUrl);
  relayed.port = String(relay.port);
  const executor = (): Executor =>
    new Executor({
      controlUrl: relayed.toString(),
      log: pino({ level: 'warn' }),
      stepAuth: 'login',
      stepSecret: 'bench-secret',
      leaseMs: 30_000,
      pollMs: 5000,
      maxConcurrentSteps: 10,
      maxConcurrentInstances: 256,
      maxLoopIterations: 1000,
    });
  let ex = executor();
  const u = new pg.Client({ connectionString: userUrl });
  await u.connect();
  const rows: CostRow[] = [];
  const waitAll = async (): Promise<number> => {
    for (let polls = 1; ; polls++) {
      const r = await admin.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM df.instances WHERE status IN ('pending', 'running')`,
      );
      if (r.rows[0]?.n === 0) return polls;
      await new Promise((res) => setTimeout(res, 50));
    }
  };
  try {
    await ex.start();
    // warm up: step logins provisioned, plans cached
    await u.query(`SELECT df.start('UPDATE public.counters SET n = n + 1 WHERE id = 0')`);
    await waitAll();
    await ex.stop();

    const n = 200;
    const k = 10;
    await admin.query(
      `INSERT INTO public.counters SELECT g, 0 FROM generate_series(0, ${n}) g ON CONFLICT (id) DO UPDATE SET n = 0`,
    );
    const chain = (i: string): string =>
      Array.from(
        { length: k },
        () => `('UPDATE public.counters SET n = n + 1 WHERE id = ' || ${i})`,
      ).join(' ~> ');
    // started while no executor runs: the window below holds the executor's work only
    await u.query(
      `SELECT df.start(${chain('g::text')}, 'wf-' || g) FROM generate_series(1, ${n}) g`,
    );
    await admin.query('SELECT pg_stat_statements_reset()');
    const s0 = await snapshot(admin, pid, relay);
    ex = executor();
    await ex.start();
    const polls = await waitAll();
    const s1 = await snapshot(admin, pid, relay);
    rows.push(
      diff(`per step (${n} instances × ${k} steps, 10 slots, W1 shape)`, n * k, s0, s1, polls, 0),
    );
    const check = await admin.query<{ bad: number }>(
      `SELECT count(*)::int AS bad FROM public.counters WHERE id BETWEEN 1 AND ${n} AND n <> ${k}`,
    );
    if (check.rows[0]?.bad !== 0)
      throw new Error(`cost bench: ${check.rows[0]?.bad} counters not at ${k}`);

    // dfgate's proxy (edge compiling, no executor of its own) for the starts below
    const proxy = await startProxy({
      host: '127.0.0.1',
      port: 0,
      upstream: targetFromUrl(userUrl),
      log: pino({ level: 'silent' }),
      maxClientConnections: 10,
      connectTimeoutMs: 5000,
      maxMessageSize: 64 * 1024 * 1024,
      edgeValidation: true,
    });
    const viaProxy = new URL(userUrl);
    viaProxy.port = String(proxy.port);
    const proxyUrl = viaProxy.toString();
    // the peers' W2 shape: one-step workflows started one statement at a time through
    // dfgate's edge while the executor runs; everything each one costs, start to finish
    {
      const w2 = 500;
      const c = new pg.Client({ connectionString: proxyUrl });
      await c.connect();
      const a = await snapshot(admin, pid, relay);
      for (let i = 1; i <= w2; i++)
        await c.query(`SELECT df.start('UPDATE public.counters SET n = n + 1 WHERE id = ${i}')`);
      const polls = await waitAll();
      const b = await snapshot(admin, pid, relay);
      rows.push(
        diff(
          `per one-step workflow, started and run (${w2} through dfgate, W2 shape)`,
          w2,
          a,
          b,
          polls,
          0,
        ),
      );
      await c.end();
    }
    await ex.stop();
    // starts without an executor running: only the start path is measured
    const m = 1000;
    const one = `'UPDATE public.counters SET n = n + 1 WHERE id = 1'`;
    for (const [what, url] of [
      ['per df.start, direct, 1,000 in one statement', userUrl],
      ['per df.start through dfgate (edge-compiled), 1,000 in one statement', proxyUrl],
    ] as Array<[string, string]>) {
      const c = new pg.Client({ connectionString: url });
      await c.connect();
      await c.query(`SELECT df.start(${one} ~> ${one}) FROM generate_series(1, 2)`);
      const a = await snapshot(admin, pid, relay);
      await c.query(`SELECT df.start(${one} ~> ${one}) FROM generate_series(1, ${m})`);
      const b = await snapshot(admin, pid, relay);
      rows.push(diff(what, m, a, b, 0, 1));
      await c.end();
    }
    // 100 statements in one message, as a bulk enqueue sends them (docs/proxy.md, "Starts in one message")
    const message = Array.from(
      { length: 100 },
      (_, i) => `SELECT df.start(${one} ~> ${one}, 'bulk-${i}')`,
    ).join(';');
    for (const [what, url] of [
      ['per df.start, direct, 100 statements in one message', userUrl],
      ['per df.start through dfgate, 100 statements in one message (one batch)', proxyUrl],
    ] as Array<[string, string]>) {
      const c = new pg.Client({ connectionString: url });
      await c.connect();
      await c.query(message);
      const a = await snapshot(admin, pid, relay);
      for (let k = 0; k < m / 100; k++) await c.query(message);
      const b = await snapshot(admin, pid, relay);
      rows.push(diff(what, m, a, b, 0, m / 100));
      await c.end();
    }
    const a = await snapshot(admin, pid, relay);
    await u.query(
      `INSERT INTO public.plain SELECT md5(g::text), ${one} ~> ${one}, 'x' FROM generate_series(1, ${m}) g`,
    );
    const b = await snapshot(admin, pid, relay);
    rows.push(diff('per row of a plain INSERT of the same graph text (baseline)', m, a, b, 0, 1));
    await proxy.shutdown(1000);
    await clearInstances(admin);
  } finally {
    await ex.stop().catch(() => undefined);
    await u.end();
    await admin.end();
    await relay.stop();
  }
  return rows;
}

export function formatCost(rows: CostRow[]): string[] {
  const out = [
    'cost per unit of work (pg_stat_statements; round trips counted by a relay; write transactions = xids; /proc CPU of the cluster; node CPU: the process running the executor, the proxy and the bench clients):',
    `  ${'what'.padEnd(72)} ${'stmts'.padStart(6)} ${'RTs'.padStart(6)} ${'xacts'.padStart(6)} ${'PG CPU ms'.padStart(10)} ${'node CPU ms'.padStart(14)}`,
  ];
  for (const r of rows)
    out.push(
      `  ${r.what.padEnd(72)} ${r.statements.toFixed(2).padStart(6)} ${r.roundTrips.toFixed(2).padStart(6)} ${r.transactions.toFixed(2).padStart(6)} ${r.cpuMs.toFixed(3).padStart(10)} ${r.ownCpuMs.toFixed(3).padStart(14)}`,
    );
  for (const r of rows) {
    out.push(`  statements ${r.what} (calls per unit × server time per unit, by time):`);
    for (const [q, c, ms] of r.top)
      out.push(`    ${c.toFixed(2).padStart(7)} × ${ms.toFixed(3).padStart(7)} ms  ${q}`);
  }
  return out;
}
