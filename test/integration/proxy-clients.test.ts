/** psql and pgbench (the system PostgreSQL 15 client binaries) through dfgate: output identical to a direct connection. */
import { spawn } from 'node:child_process';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { clientBin } from '../harness/bins.js';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { startTestProxy, viaPort } from '../harness/dfgate.js';

const db = useTestDatabase();
let role: TestRole;
let direct: string;
let proxied: string;
const psql = clientBin('psql');
const pgbench = clientBin('pgbench');
const tmp = mkdtempSync(path.join(tmpdir(), 'dfgate-psql-'));

beforeAll(async () => {
  role = await db.role('cli');
  await db.admin.query(`GRANT CREATE ON DATABASE ${db.name} TO ${role.ident}`);
  const port = (await startTestProxy(db.url)).port;
  direct = role.url;
  proxied = viaPort(role.url, port);
});

interface Run {
  readonly code: number | null;
  readonly out: string;
  readonly err: string;
}

/** Runs a client binary without blocking the event loop (the proxy under test lives in this process). */
function run(
  bin: string,
  args: string[],
  opts: { input?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(bin, args, { env: { ...process.env, PAGER: '', ...opts.env } });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, out, err: err.replace(/WARNING:\s+psql major version.*\n.*\n/g, '') });
    });
    child.stdin.end(opts.input ?? '');
  });
}

function runPsql(url: string, args: string[]): Promise<Run> {
  return run(psql, ['-X', '--no-psqlrc', '-v', 'ON_ERROR_STOP=1', '-d', url, ...args], {
    env: { PGCONNECT_TIMEOUT: '10' },
  });
}

describe('psql through dfgate', () => {
  it('a multi-statement -c string, \\d and \\copy give the same output as a direct connection', async () => {
    const setup = await runPsql(direct, [
      '-c',
      `CREATE TABLE people (id int PRIMARY KEY, name text NOT NULL, note text); CREATE INDEX people_name ON people (name)`,
    ]);
    expect(setup.code, setup.err).toBe(0);
    const csv = path.join(tmp, 'people.csv');
    writeFileSync(
      csv,
      Array.from({ length: 2000 }, (_, i) => `${i},name ${i},ü ${i % 7}`).join('\n') + '\n',
    );
    const load = await runPsql(proxied, ['-c', `\\copy people FROM '${csv}' WITH (FORMAT csv)`]);
    expect(load.code, load.err).toBe(0);
    expect(load.out.trim()).toBe('COPY 2000');
    const scripts: string[][] = [
      [
        '-c',
        'SELECT count(*), min(id), max(id) FROM people; SELECT note, count(*) FROM people GROUP BY 1 ORDER BY 1; SELECT 1/0',
      ],
      ['-c', '\\d people'],
      ['-c', '\\copy (SELECT * FROM people ORDER BY id LIMIT 50) TO STDOUT WITH (FORMAT csv)'],
      ['-c', 'SELECT current_user, session_user'],
    ];
    for (const s of scripts) {
      const a = await runPsql(direct, s);
      const b = await runPsql(proxied, s);
      expect(b.out, s.join(' ')).toBe(a.out);
      expect(b.err.replace(/127\.0\.0\.1:\d+/g, ''), s.join(' ')).toBe(
        a.err.replace(/127\.0\.0\.1:\d+/g, ''),
      );
      expect(b.code).toBe(a.code);
    }
  });

  it('\\watch output matches a direct connection', async () => {
    const watch = async (url: string): Promise<string> => {
      const child = spawn(psql, ['-X', '-d', url], { env: { ...process.env, PAGER: '' } });
      let out = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.stdin.write(`SELECT 'tick' AS t \\watch 0.2\n`);
      await new Promise((r) => setTimeout(r, 1100));
      child.kill('SIGINT');
      child.stdin.end();
      await new Promise((r) => child.once('exit', r));
      // drop the timestamp headers; keep the first three results
      const lines = out.split('\n').filter((l) => l.trim() && !/\(every 0\.2s\)/.test(l));
      return lines.slice(0, 9).join('\n');
    };
    const a = await watch(direct);
    const b = await watch(proxied);
    expect(a).toContain('tick');
    expect(b).toBe(a);
  });

  it('Ctrl-C (SIGINT) cancels a running statement through dfgate', async () => {
    const child = spawn(psql, ['-X', '-d', proxied, '-c', 'SELECT pg_sleep(20)'], {
      env: { ...process.env, PAGER: '' },
    });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    await new Promise((r) => setTimeout(r, 700));
    const t0 = Date.now();
    child.kill('SIGINT');
    const code = await new Promise<number | null>((r) => child.once('exit', r));
    expect(Date.now() - t0).toBeLessThan(3000);
    expect(code).not.toBe(0);
    expect(err).toContain('canceling statement due to user request');
  });
});

describe('pgbench through dfgate', () => {
  it('pgbench -i, then -S and TPC-B-like runs in simple, extended and prepared modes with zero errors', async () => {
    const env = { ...process.env, PGPASSWORD: role.password };
    const u = new URL(proxied);
    const conn = ['-h', '127.0.0.1', '-p', u.port, '-U', role.name, db.name];
    const init = await run(pgbench, ['-i', '-s', '1', '-q', ...conn], { env, timeoutMs: 120_000 });
    expect(init.code, init.err).toBe(0);
    for (const mode of ['simple', 'extended', 'prepared']) {
      for (const extra of [['-S'], []]) {
        const r = await run(
          pgbench,
          ['-M', mode, ...extra, '-c', '4', '-j', '2', '-t', '200', ...conn],
          { env, timeoutMs: 120_000 },
        );
        expect(r.code, `${mode} ${extra.join(' ')}: ${r.err}`).toBe(0);
        expect(r.out).toMatch(/number of failed transactions: 0 \(0\.000%\)/);
        expect(r.out).toContain('number of transactions actually processed: 800/800');
      }
    }
  });
});
