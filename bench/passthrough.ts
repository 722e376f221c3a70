/**
 * Pass-through benchmark: pgbench -S (select-only, simple protocol) against
 * PostgreSQL directly, through dfgate (a separate process) and through
 * Debian's PgBouncer, in one run; printed as ratios. Session mode with 8
 * clients; transaction mode with 200 clients on a pool of 20 (dfgate
 * --pool-mode transaction, PgBouncer pool_mode = transaction) against 200
 * direct connections.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { freePort, type RunningCluster } from '../src/pg/cluster.js';

export interface PassthroughResult {
  readonly direct: number;
  readonly dfgate: number;
  readonly pgbouncer: number | undefined;
  /** 200 clients: direct connections, dfgate and PgBouncer in transaction mode with a pool of 20. */
  readonly pooled: {
    readonly clients: number;
    readonly pool: number;
    readonly direct: number;
    readonly dfgate: number;
    readonly pgbouncer: number | undefined;
  };
}

function bin(name: string): string | undefined {
  for (const dir of ['/usr/lib/postgresql/15/bin', '/usr/bin', '/usr/sbin'])
    if (existsSync(path.join(dir, name))) return path.join(dir, name);
  return undefined;
}

function pgbench(args: string[], env: NodeJS.ProcessEnv): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = spawn(bin('pgbench') as string, args, { env: { ...process.env, ...env } });
    let out = '';
    c.stdout.on('data', (d: Buffer) => (out += d.toString()));
    c.stderr.on('data', (d: Buffer) => (out += d.toString()));
    c.once('exit', (code) =>
      code === 0 ? resolve(out) : reject(new Error(`pgbench failed:\n${out}`)),
    );
  });
}

function tps(out: string): number {
  const m = /tps = ([\d.]+) \(without initial connection time\)/.exec(out);
  if (!m) throw new Error(`no tps in pgbench output:\n${out}`);
  return Number(m[1]);
}

async function waitForLine(proc: ChildProcess, re: RegExp): Promise<RegExpExecArray> {
  let out = '';
  return await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`timeout waiting for ${re}:\n${out}`)), 30_000);
    const on = (d: Buffer): void => {
      out += d.toString();
      const m = re.exec(out);
      if (m) {
        clearTimeout(t);
        resolve(m);
      }
    };
    proc.stdout?.on('data', on);
    proc.stderr?.on('data', on);
  });
}

export async function passthrough(
  cluster: RunningCluster,
  user: string,
  password: string,
  seconds: number,
): Promise<PassthroughResult> {
  if (!bin('pgbench')) throw new Error('pgbench not found (install postgresql-client)');
  const env = { PGPASSWORD: password };
  const common = (port: number): string[] => [
    '-h',
    '127.0.0.1',
    '-p',
    String(port),
    '-U',
    user,
    'postgres',
  ];
  await pgbench(['-i', '-s', '10', '-q', ...common(cluster.port)], env);

  const startDfgate = async (extra: string[]): Promise<[ChildProcess, number]> => {
    const proc = spawn(
      process.execPath,
      [
        path.resolve('dist/src/cli.js'),
        '--upstream',
        `${cluster.url()}?sslmode=disable`,
        '--listen',
        '127.0.0.1:0',
        '--no-executor',
        '--log-level',
        'info',
        ...extra,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    return [proc, Number((await waitForLine(proc, /"listen":"127\.0\.0\.1:(\d+)"/))[1])];
  };
  const POOL = 20;
  const CLIENTS = 200;
  const [dfgate, dfPort] = await startDfgate([]);
  const [dfgateTx, dfTxPort] = await startDfgate([
    '--pool-mode',
    'transaction',
    '--pool-size',
    String(POOL),
    '--max-server-connections',
    String(POOL),
    '--max-client-connections',
    '2000',
  ]);

  const pgbouncerBin = bin('pgbouncer');
  const startBouncer = async (mode: string): Promise<[ChildProcess, number] | undefined> => {
    if (!pgbouncerBin) return undefined;
    const dir = mkdtempSync(path.join(tmpdir(), 'dfgate-pgbouncer-'));
    chmodSync(dir, 0o755);
    const port = await freePort();
    writeFileSync(path.join(dir, 'users.txt'), `"${user}" "${password}"\n`);
    writeFileSync(
      path.join(dir, 'pgbouncer.ini'),
      [
        '[databases]',
        `* = host=127.0.0.1 port=${cluster.port}`,
        '[pgbouncer]',
        'listen_addr = 127.0.0.1',
        `listen_port = ${port}`,
        'unix_socket_dir =',
        'auth_type = scram-sha-256',
        `auth_file = ${path.join(dir, 'users.txt')}`,
        `pool_mode = ${mode}`,
        'max_client_conn = 1000',
        `default_pool_size = ${mode === 'transaction' ? POOL : 100}`,
      ].join('\n') + '\n',
    );
    const asRoot = process.getuid?.() === 0;
    let proc: ChildProcess;
    if (asRoot) {
      const uid = Number(spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).stdout);
      const gid = Number(spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).stdout);
      for (const f of ['', 'users.txt', 'pgbouncer.ini']) chownSync(path.join(dir, f), uid, gid);
      proc = spawn(pgbouncerBin, [path.join(dir, 'pgbouncer.ini')], {
        uid,
        gid,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
    } else {
      proc = spawn(pgbouncerBin, [path.join(dir, 'pgbouncer.ini')], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
    }
    await waitForLine(proc, /process up|listening on/);
    return [proc, port];
  };
  const session = await startBouncer('session');
  const txBouncer = await startBouncer('transaction');
  const bouncer = session?.[0];
  const bouncerPort = session?.[1] ?? 0;

  const run = async (port: number, clients = 8, threads = 2): Promise<number> =>
    tps(
      await pgbench(
        [
          '-S',
          '-c',
          String(clients),
          '-j',
          String(threads),
          '-T',
          String(seconds),
          ...common(port),
        ],
        env,
      ),
    );
  try {
    // interleave the targets so drift in machine load hits all of them alike
    const r = { direct: [] as number[], dfgate: [] as number[], pgbouncer: [] as number[] };
    for (let round = 0; round < 2; round++) {
      r.direct.push(await run(cluster.port));
      r.dfgate.push(await run(dfPort));
      if (bouncer) r.pgbouncer.push(await run(bouncerPort));
    }
    const t = { direct: [] as number[], dfgate: [] as number[], pgbouncer: [] as number[] };
    for (let round = 0; round < 2; round++) {
      t.direct.push(await run(cluster.port, CLIENTS, 4));
      t.dfgate.push(await run(dfTxPort, CLIENTS, 4));
      if (txBouncer) t.pgbouncer.push(await run(txBouncer[1], CLIENTS, 4));
    }
    const avg = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
    return {
      direct: avg(r.direct),
      dfgate: avg(r.dfgate),
      pgbouncer: bouncer ? avg(r.pgbouncer) : undefined,
      pooled: {
        clients: CLIENTS,
        pool: POOL,
        direct: avg(t.direct),
        dfgate: avg(t.dfgate),
        pgbouncer: txBouncer ? avg(t.pgbouncer) : undefined,
      },
    };
  } finally {
    dfgate.kill('SIGTERM');
    dfgateTx.kill('SIGTERM');
    bouncer?.kill('SIGTERM');
    txBouncer?.[0].kill('SIGTERM');
  }
}
