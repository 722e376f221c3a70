/**
 * Many waiting instances (issue 12 item 7): what parked instances cost an
 * idle executor, and how fast many timers due at one instant fire. Run with
 * `npm run bench` (BENCH_ONLY=parked for this part alone).
 *
 *   - idle: one executor with nothing to do, measured over a window
 *     (BENCH_IDLE_SECONDS, default 30) with 0 instances (the baseline) and
 *     again with BENCH_PARKED (default 100,000) instances parked, half in
 *     df.sleep(86400), half in df.wait_for_signal. Figures: the executor
 *     process's CPU (process.cpuUsage) and RSS, the CPU of its PostgreSQL
 *     backends and of the whole cluster (/proc/<pid>/stat), its claims
 *     (pg_stat_statements).
 *   - timers: BENCH_TIMERS (default 10,000) instances in
 *     df.wait_for_schedule('<m> <h> * * *') ~> one INSERT, all parked by
 *     the executor before that minute, so every one of them is due at the
 *     same instant; the time from that instant until the last timer's
 *     `done` event has committed (the timer fired; track_commit_timestamp,
 *     set by bench/run.ts) and until the last INSERT has committed (its
 *     next step). Baseline: as many one-step instances of the same INSERT,
 *     started in one transaction (from its commit until the last INSERT).
 *
 * The instances are started with df.start (batches of 1,000 in one
 * statement) while the executor runs, so the executor parks each of them
 * itself: the rows are exactly what it leaves behind.
 */
import pg from 'pg';
import type { RunningCluster } from '../src/pg/cluster.js';
import { benchExecutor, clearInstances } from './executor.js';
import { clusterCpuSeconds, pidCpuSeconds, postmasterPid } from './proc.js';

const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);

export interface IdleFigures {
  readonly parked: number;
  readonly seconds: number;
  /** executor process CPU, % of one core */
  readonly cpuPct: number;
  readonly rssMb: number;
  readonly heapMb: number;
  /** the executor's own backends (control, claim, LISTEN, step connections), % of one core */
  readonly backendCpuPct: number;
  /** the whole cluster (background processes included), % of one core */
  readonly clusterCpuPct: number;
  readonly claims: number;
  /** mean server time of one claim (execution + planning), ms */
  readonly claimMs: number;
  readonly statements: number;
}

export interface FireFigures {
  readonly n: number;
  /** due instant (or commit) → last step committed, s */
  readonly lastStep: number;
  /** due instant (or commit) → last instance completed, s */
  readonly lastDone: number;
  /** due instant → the last timer's own completion (its `done` event) inserted, s */
  readonly lastTimer: number;
  /** due instant → the last timer's `done` event committed (track_commit_timestamp), s */
  readonly lastTimerCommit: number;
  /** due instant → first step committed, s */
  readonly firstStep: number;
  /** process CPU of the executor (s) and of the cluster (s) from the instant to the last instance */
  readonly nodeCpu: number;
  readonly pgCpu: number;
  readonly top: Array<[number, number, string]>;
}

export interface ParkedBenchResult {
  readonly idle: IdleFigures;
  readonly idleParked: IdleFigures;
  readonly setupSeconds: number;
  readonly timers: FireFigures;
  readonly fresh: FireFigures;
}

const progress = (what: string): void =>
  void process.stderr.write(`${new Date().toISOString()} parked bench: ${what}\n`);

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `q` (a count) as the superuser until it reaches `n`; throws after `timeoutMs`. */
async function waitCount(
  admin: pg.Client,
  q: string,
  n: number,
  timeoutMs: number,
  everyMs = 500,
): Promise<void> {
  const t0 = Date.now();
  for (;;) {
    const r = await admin.query<{ n: number }>(q);
    if ((r.rows[0]?.n ?? 0) >= n) return;
    if (Date.now() - t0 > timeoutMs)
      throw new Error(`parked bench: ${r.rows[0]?.n} of ${n} after ${timeoutMs} ms: ${q}`);
    await sleep(everyMs);
  }
}

/**
 * One idle window: nothing but the executor runs; the measuring connection
 * sends nothing between the two readings.
 */
async function idleWindow(
  admin: pg.Client,
  postmaster: number,
  parked: number,
  seconds: number,
): Promise<IdleFigures> {
  const executorPids = async (): Promise<number[]> =>
    (
      await admin.query<{ pid: number }>(
        `SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'dfgate:%'`,
      )
    ).rows.map((r) => r.pid);
  const pids = await executorPids();
  await admin.query('SELECT pg_stat_statements_reset()');
  const before = new Map(pids.map((p) => [p, pidCpuSeconds(p)]));
  const c0 = clusterCpuSeconds(postmaster, true);
  const u0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  await sleep(seconds * 1000);
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  const u = process.cpuUsage(u0);
  // backends that ended in the window are not counted; those that began in it are, whole
  const after = new Map(pids.map((p) => [p, pidCpuSeconds(p)]));
  for (const p of await executorPids()) if (!before.has(p)) after.set(p, pidCpuSeconds(p));
  let backend = 0;
  for (const [p, t] of after) if (t > 0) backend += t - (before.get(p) ?? 0);
  const c1 = clusterCpuSeconds(postmaster, true);
  const mem = process.memoryUsage();
  const st = await admin.query<{ q: string; calls: string; ms: string }>(
    `SELECT query AS q, calls::text, (total_exec_time + total_plan_time)::text AS ms FROM pg_stat_statements
      WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
        AND query NOT LIKE '%pg_stat_statements%'`,
  );
  const claims = st.rows.filter((r) => r.q.includes('WITH RECURSIVE'));
  const claimCalls = sum(claims.map((r) => Number(r.calls)));
  return {
    parked,
    seconds: wall,
    cpuPct: ((u.user + u.system) / 1e6 / wall) * 100,
    rssMb: mem.rss / 2 ** 20,
    heapMb: mem.heapUsed / 2 ** 20,
    backendCpuPct: (backend / wall) * 100,
    clusterCpuPct: ((c1 - c0) / wall) * 100,
    claims: claimCalls,
    claimMs: claimCalls ? sum(claims.map((r) => Number(r.ms))) / claimCalls : NaN,
    statements: sum(st.rows.map((r) => Number(r.calls))),
  };
}

/** The statements that took the most server time since the last reset: [calls, total ms, text]. */
async function topStatements(admin: pg.Client, k = 8): Promise<Array<[number, number, string]>> {
  const r = await admin.query<{ q: string; calls: string; ms: string }>(
    `SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 80) AS q, sum(calls)::text AS calls,
            sum(total_exec_time + total_plan_time)::text AS ms FROM pg_stat_statements
      WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
        AND query NOT LIKE '%pg_stat_statements%' AND query NOT LIKE '%count(*)::int AS n FROM df.instances%'
      GROUP BY 1 ORDER BY sum(total_exec_time + total_plan_time) DESC LIMIT $1`,
    [k],
  );
  return r.rows.map((x) => [Number(x.calls), Number(x.ms), x.q]);
}

/** Starts `n` instances of `graph` (SQL text of a DSL expression) in statements of 1,000. */
async function startMany(u: pg.Client, graph: string, label: string, n: number): Promise<void> {
  for (let i = 0; i < n; i += 1000)
    await u.query(
      `SELECT count(df.start(${graph}, $3)) FROM generate_series(1, LEAST(1000, $1::int - $2::int))`,
      [n, i, label],
    );
}

/** Figures of the `kind` rows of public.parked_fired and the `label` instances, from `from`. */
async function fired(
  admin: pg.Client,
  kind: string,
  label: string,
  from: Date,
  n: number,
  cpu: { nodeCpu: number; pgCpu: number },
): Promise<FireFigures> {
  const r = await admin.query<{
    first: number;
    last: number;
    done: number;
    timer: number;
    commit: number | null;
  }>(
    `WITH dones AS (SELECT e.created_at, e.xmin FROM df.instances i
                      JOIN df.nodes n ON n.instance_id = i.id AND n.node_type IN ('SLEEP', 'WAIT_SCHEDULE')
                      JOIN df.events e ON e.instance_id = i.id AND e.node_id = n.id AND e.kind = 'done'
                     WHERE i.label = $2)
     SELECT extract(epoch FROM (SELECT min(at) FROM public.parked_fired WHERE kind = $1) - $3)::float8 AS first,
            extract(epoch FROM (SELECT max(created_at) FROM dones) - $3)::float8 AS timer,
            extract(epoch FROM (SELECT max(pg_xact_commit_timestamp(xmin)) FROM dones) - $3)::float8 AS commit,
            extract(epoch FROM (SELECT max(at) FROM public.parked_fired WHERE kind = $1) - $3)::float8 AS last,
            extract(epoch FROM (SELECT max(completed_at) FROM df.instances WHERE label = $2) - $3)::float8 AS done`,
    [kind, label, from],
  );
  const row = r.rows[0];
  return {
    n,
    firstStep: row?.first ?? NaN,
    lastStep: row?.last ?? NaN,
    lastDone: row?.done ?? NaN,
    lastTimer: row?.timer ?? NaN,
    lastTimerCommit: row?.commit ?? NaN,
    ...cpu,
    top: await topStatements(admin),
  };
}

/**
 * Needs a cluster started with shared_preload_libraries = pg_stat_statements,
 * a migrated database at `adminUrl`, and the granted login `userUrl`.
 */
export async function parkedBench(
  cluster: RunningCluster,
  adminUrl: string,
  userUrl: string,
): Promise<ParkedBenchResult> {
  const parked = Number(process.env['BENCH_PARKED'] ?? 100_000);
  const timers = Number(process.env['BENCH_TIMERS'] ?? 10_000);
  const window = Number(process.env['BENCH_IDLE_SECONDS'] ?? 30);
  const postmaster = postmasterPid(cluster);
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  await admin.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements');
  const u = new pg.Client({ connectionString: userUrl });
  await u.connect();
  await u.query(
    `CREATE TABLE IF NOT EXISTS public.parked_fired (kind text, at timestamptz DEFAULT clock_timestamp())`,
  );
  const ex = benchExecutor(adminUrl);
  await ex.start();
  try {
    // warm up: the step login provisioned, a step connection open, plans cached
    await u.query(`SELECT df.start('INSERT INTO public.parked_fired (kind) VALUES (''warm'')')`);
    await waitCount(admin, `SELECT count(*)::int AS n FROM public.parked_fired`, 1, 30_000, 50);
    await sleep(2000);
    progress('idle window, 0 parked');
    const idle = await idleWindow(admin, postmaster, 0, window);
    progress(`starting ${parked} instances to park`);

    // N parked instances, parked by the executor as it runs them
    const t0 = Date.now();
    await startMany(u, `df.sleep(86400) ~> 'SELECT 1'`, 'parked-sleep', Math.floor(parked / 2));
    await startMany(
      u,
      `df.wait_for_signal('go') ~> 'SELECT 1'`,
      'parked-signal',
      parked - Math.floor(parked / 2),
    );
    const parkedCount = `SELECT count(*)::int AS n FROM df.instances
      WHERE label LIKE 'parked-%' AND lease_owner IS NULL
        AND (wake_at IS NOT NULL OR cardinality(waiting_signals) > 0)`;
    await waitCount(admin, parkedCount, parked, 1_800_000, 1000);
    const setupSeconds = (Date.now() - t0) / 1000;
    progress(`parked ${parked} in ${setupSeconds} s`);
    // what autovacuum would do after such a burst, done now rather than inside the window
    await admin.query('VACUUM ANALYZE df.instances, df.nodes, df.events, df.signals');
    await admin.query('CHECKPOINT');
    await sleep(3000);
    progress(`idle window, ${parked} parked`);
    const idleParked = await idleWindow(admin, postmaster, parked, window);
    progress(`baseline: ${timers} one-step instances in one commit`);

    // baseline: `timers` one-step instances made runnable by one commit
    const step = (kind: string): string =>
      `'INSERT INTO public.parked_fired (kind) VALUES (''${kind}'')'`;
    await admin.query('SELECT pg_stat_statements_reset()');
    let cpu0 = { node: process.cpuUsage(), pg: clusterCpuSeconds(postmaster, true) };
    /** Until all `timers` instances labelled `label` have completed (10 minutes at most). */
    const allCompleted = (label: string): Promise<void> =>
      waitCount(
        admin,
        `SELECT count(*)::int AS n FROM df.instances WHERE label = '${label}' AND status = 'completed'`,
        timers,
        600_000,
        100,
      );
    const cpuSince = (): { nodeCpu: number; pgCpu: number } => {
      const d = process.cpuUsage(cpu0.node);
      return {
        nodeCpu: (d.user + d.system) / 1e6,
        pgCpu: clusterCpuSeconds(postmaster, true) - cpu0.pg,
      };
    };
    await u.query('BEGIN');
    await u.query(
      `SELECT count(df.start(${step('fresh')}, 'fresh')) FROM generate_series(1, $1::int)`,
      [timers],
    );
    const committed = new Date();
    cpu0 = { node: process.cpuUsage(), pg: clusterCpuSeconds(postmaster, true) };
    await u.query('COMMIT');
    await allCompleted('fresh');
    const freshCpu = cpuSince();
    const fresh = await fired(admin, 'fresh', 'fresh', committed, timers, freshCpu);

    // `timers` instances due at one instant: the first whole minute far enough away
    // (whole minutes: cron's resolution; time enough to park them all, at the rate measured above)
    const lead = 30_000 + 2 * timers * ((setupSeconds * 1000) / Math.max(1, parked));
    const due = new Date(Math.ceil((Date.now() + lead) / 60_000) * 60_000);
    const cron = `${due.getUTCMinutes()} ${due.getUTCHours()} * * *`;
    progress(`${timers} timers due at ${due.toISOString()}`);
    await startMany(u, `df.wait_for_schedule('${cron}') ~> ${step('timer')}`, 'timer', timers);
    await waitCount(
      admin,
      `SELECT count(*)::int AS n FROM df.instances WHERE label = 'timer' AND lease_owner IS NULL AND wake_at IS NOT NULL`,
      timers,
      Math.max(1000, due.getTime() - Date.now() - 1000),
      500,
    );
    const armed = await admin.query<{ n: number }>(
      `SELECT count(DISTINCT wake_at)::int AS n FROM df.instances WHERE label = 'timer'`,
    );
    if (armed.rows[0]?.n !== 1) throw new Error('parked bench: the timers are not all due at once');
    await sleep(Math.max(0, due.getTime() - Date.now() - 500));
    await admin.query('SELECT pg_stat_statements_reset()');
    cpu0 = { node: process.cpuUsage(), pg: clusterCpuSeconds(postmaster, true) };
    await allCompleted('timer');
    const timerCpu = cpuSince();
    progress('timers done');
    const timerFigures = await fired(admin, 'timer', 'timer', due, timers, timerCpu);
    return { idle, idleParked, setupSeconds, timers: timerFigures, fresh };
  } finally {
    await ex.stop();
    await u.end();
    await clearInstances(admin).catch(() => undefined);
    await admin.end();
  }
}

const pass = (ok: boolean): string => (ok ? 'PASS' : 'MISS');
const x = (a: number, b: number): string => `${(a / b).toFixed(2)}x`;

export function formatParked(r: ParkedBenchResult): string[] {
  const a = r.idle;
  const b = r.idleParked;
  const f = (v: number, d = 2): string => v.toFixed(d);
  return [
    `many parked instances: one idle executor (1 s poll, 256 leases, 16 slots), ${f(a.seconds, 0)} s windows; ${b.parked} parked (half df.sleep(86400), half df.wait_for_signal), parked by the executor in ${f(r.setupSeconds, 0)} s:`,
    `  ${''.padEnd(40)} ${'0 parked'.padStart(10)} ${`${b.parked} parked`.padStart(14)}   ratio`,
    `  ${'executor process CPU (% of one core)'.padEnd(40)} ${f(a.cpuPct).padStart(10)} ${f(b.cpuPct).padStart(14)}   ${x(b.cpuPct, a.cpuPct)}   (target < 2 %: ${pass(b.cpuPct < 2)})`,
    `  ${'executor process RSS (MB)'.padEnd(40)} ${f(a.rssMb, 0).padStart(10)} ${f(b.rssMb, 0).padStart(14)}   ${x(b.rssMb, a.rssMb)}   (target < 300 MB: ${pass(b.rssMb < 300)})`,
    `  ${'executor JS heap used (MB)'.padEnd(40)} ${f(a.heapMb, 0).padStart(10)} ${f(b.heapMb, 0).padStart(14)}   ${x(b.heapMb, a.heapMb)}`,
    `  ${"its PostgreSQL backends' CPU (%)".padEnd(40)} ${f(a.backendCpuPct).padStart(10)} ${f(b.backendCpuPct).padStart(14)}   ${x(b.backendCpuPct, a.backendCpuPct)}`,
    `  ${'whole cluster CPU (%)'.padEnd(40)} ${f(a.clusterCpuPct).padStart(10)} ${f(b.clusterCpuPct).padStart(14)}   ${x(b.clusterCpuPct, a.clusterCpuPct)}`,
    `  ${'claims in the window'.padEnd(40)} ${String(a.claims).padStart(10)} ${String(b.claims).padStart(14)}`,
    `  ${'server time per claim (ms)'.padEnd(40)} ${f(a.claimMs, 3).padStart(10)} ${f(b.claimMs, 3).padStart(14)}   ${x(b.claimMs, a.claimMs)}`,
    `  ${'statements in the window'.padEnd(40)} ${String(a.statements).padStart(10)} ${String(b.statements).padStart(14)}`,
    `${r.timers.n} timers due at the same instant (df.wait_for_schedule, ${b.parked} others parked), vs as many one-step instances made runnable by one commit:`,
    `  ${'baseline: commit -> last step committed'.padEnd(48)} ${f(r.fresh.lastStep).padStart(7)} s   (last instance completed ${f(r.fresh.lastDone)} s)`,
    `  ${'timers: due instant -> last step committed'.padEnd(48)} ${f(r.timers.lastStep).padStart(7)} s   ${x(r.timers.lastStep, r.fresh.lastStep)}   (first ${f(r.timers.firstStep)} s, last instance completed ${f(r.timers.lastDone)} s; bound by step throughput, as the baseline)`,
    `  ${'timers: due instant -> last timer fired'.padEnd(48)} ${f(r.timers.lastTimerCommit).padStart(7)} s   (its done event committed; inserted ${f(r.timers.lastTimer)} s; target <= 10 s: ${pass(r.timers.lastTimerCommit <= 10)})`,
    `  CPU per instance: baseline node ${f((r.fresh.nodeCpu * 1000) / r.fresh.n)} ms, PostgreSQL ${f((r.fresh.pgCpu * 1000) / r.fresh.n)} ms; timers node ${f((r.timers.nodeCpu * 1000) / r.timers.n)} ms, PostgreSQL ${f((r.timers.pgCpu * 1000) / r.timers.n)} ms`,
    ...(['fresh', 'timers'] as const).flatMap((k) => [
      `  statements by server time, ${k} (calls, total ms):`,
      ...r[k].top.map(
        ([c, ms, q]) => `    ${String(c).padStart(7)} ${ms.toFixed(0).padStart(7)} ms  ${q}`,
      ),
    ]),
  ];
}
