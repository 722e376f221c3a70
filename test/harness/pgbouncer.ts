/**
 * Debian's PgBouncer (the CI script installs the `pgbouncer` package) in
 * front of the test database, for the chained topology tests: listening on
 * 127.0.0.1 only, on a free port, with a plain-text userlist (PgBouncer logs
 * in to PostgreSQL with it, SCRAM both ways). Run as the `postgres` user when
 * the tests run as root (PgBouncer refuses root).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll } from 'vitest';
import { freePort } from '../../src/pg/cluster.js';

const PGBOUNCER_BIN = ['/usr/sbin/pgbouncer', '/usr/bin/pgbouncer'].find((p) => existsSync(p));

export interface PgBouncer {
  readonly port: number;
  readonly version: string;
  readonly output: () => string;
  stop(): Promise<void>;
}

export interface PgBouncerOptions {
  readonly upstreamPort: number;
  readonly users: readonly { readonly name: string; readonly password: string }[];
  readonly poolMode?: 'session' | 'transaction' | 'statement';
  readonly poolSize?: number;
}

const running: ChildProcess[] = [];
afterAll(() => {
  for (const p of running.splice(0)) if (p.exitCode === null) p.kill('SIGKILL');
});

function quote(s: string): string {
  return '"' + s.replace(/"/g, '""') + '"';
}

export async function startPgBouncer(opts: PgBouncerOptions): Promise<PgBouncer> {
  if (!PGBOUNCER_BIN) throw new Error('pgbouncer not found: install it (the CI script does)');
  const bin = PGBOUNCER_BIN;
  const version = spawnSync(bin, ['--version'], { encoding: 'utf8' }).stdout.split('\n')[0] ?? '';
  const dir = mkdtempSync(path.join(tmpdir(), 'dfgate-pgbouncer-'));
  chmodSync(dir, 0o700);
  const port = await freePort();
  const users = path.join(dir, 'users.txt');
  const ini = path.join(dir, 'pgbouncer.ini');
  writeFileSync(users, opts.users.map((u) => `${quote(u.name)} ${quote(u.password)}`).join('\n'));
  writeFileSync(
    ini,
    [
      '[databases]',
      `* = host=127.0.0.1 port=${opts.upstreamPort}`,
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'auth_type = scram-sha-256',
      `auth_file = ${users}`,
      `pool_mode = ${opts.poolMode ?? 'transaction'}`,
      `default_pool_size = ${opts.poolSize ?? 5}`,
      'max_client_conn = 500',
      // node-postgres, postgres.js and JDBC send these at startup
      'ignore_startup_parameters = extra_float_digits,options',
      'log_connections = 0',
      'log_disconnections = 0',
    ].join('\n') + '\n',
  );
  let ids: { uid: number; gid: number } | undefined;
  if (process.getuid?.() === 0) {
    const id = (flag: string): number =>
      Number(spawnSync('id', [flag, 'postgres'], { encoding: 'utf8' }).stdout);
    ids = { uid: id('-u'), gid: id('-g') };
    for (const f of [dir, users, ini]) chownSync(f, ids.uid, ids.gid);
  }
  const proc = spawn(bin, [ini], { ...ids, stdio: ['ignore', 'pipe', 'pipe'] });
  running.push(proc);
  let out = '';
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`pgbouncer did not start:\n${out}`)), 20_000);
    const on = (d: Buffer): void => {
      out += d.toString();
      if (/process up|listening on/.test(out)) {
        clearTimeout(timer);
        resolve();
      }
    };
    proc.stdout?.on('data', on);
    proc.stderr?.on('data', on);
    void exited.then(() => reject(new Error(`pgbouncer exited:\n${out}`)));
  });
  return {
    port,
    version,
    output: () => out,
    async stop() {
      if (proc.exitCode === null) proc.kill('SIGTERM');
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
