/** `npm start` as a new user runs it: embedded PostgreSQL + dfgate, psql connects, Ctrl-C stops everything, data is reused. */
import { spawn, execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { freePort } from '../../src/pg/cluster.js';

const cwd = mkdtempSync(path.join(tmpdir(), 'dfgate-quickstart-'));
chmodSync(cwd, 0o755);
afterAll(() => rmSync(cwd, { recursive: true, force: true }));
const psql = ['/usr/lib/postgresql/15/bin/psql', '/usr/bin/psql'].find((p) =>
  existsSync(p),
) as string;

async function quickstart(
  pgPort: number,
): Promise<{ url: string; out: () => string; stop: () => Promise<number | null> }> {
  const child = spawn(process.execPath, [path.resolve('dist/src/quickstart.js')], {
    cwd,
    env: {
      ...process.env,
      DFGATE_QUICKSTART_PORT: '0',
      DFGATE_QUICKSTART_UI_PORT: '0',
      DFGATE_QUICKSTART_PG_PORT: String(pgPort),
    },
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  const url = await new Promise<string>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`quick start did not come up:\n${out}`)), 90_000);
    child.stdout.on('data', () => {
      const m = /connect: psql '([^']+)'/.exec(out);
      if (m) {
        clearTimeout(t);
        resolve(m[1] as string);
      }
    });
    void exited.then(() => reject(new Error(`quick start exited:\n${out}`)));
  });
  return {
    url,
    out: () => out,
    stop: async () => {
      child.kill('SIGINT');
      return await exited;
    },
  };
}

function postgresRunningIn(dir: string): boolean {
  try {
    return execFileSync('ps', ['-eo', 'args'], { encoding: 'utf8' })
      .split('\n')
      .some((l) => l.includes(path.join(dir, '.dfgate', 'data')));
  } catch {
    return false;
  }
}

function runPsql(url: string, sql: string): Promise<string> {
  return new Promise((resolve) => {
    const c = spawn(psql, ['-X', '-At', '-d', url, '-c', sql]);
    let out = '';
    c.stdout.on('data', (d: Buffer) => (out += d.toString()));
    c.stderr.on('data', (d: Buffer) => (out += d.toString()));
    c.once('exit', () => resolve(out.trim()));
  });
}

describe('npm start (the quick start)', () => {
  it('starts PostgreSQL and dfgate, prints a working psql line, stops cleanly on Ctrl-C, and reuses the data', async () => {
    const pgPort = await freePort();
    const first = await quickstart(pgPort);
    expect(new URL(first.url).hostname).toBe('127.0.0.1');
    expect(await runPsql(first.url, 'SELECT 1')).toBe('1');
    const id = await runPsql(
      first.url,
      `SELECT df.start(('SELECT 20 AS x' |=> 'a') ~> 'SELECT $a * 2 + 2 AS answer', 'hello')`,
    );
    expect(id).toMatch(/^[0-9a-f]{8}$/);
    // the executor (its own non-superuser login) runs it as the demo role
    let status = '';
    for (let i = 0; i < 100 && status !== 'completed'; i++) {
      status = await runPsql(first.url, `SELECT df.status('${id}')`);
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(await runPsql(first.url, `SELECT df.result('${id}')`)).toBe(
      '{"rows": [{"answer": 42}], "row_count": 1}',
    );
    expect(await first.stop()).toBe(0);
    expect(postgresRunningIn(cwd)).toBe(false);
    const second = await quickstart(pgPort);
    expect(second.out()).toContain('reusing data');
    expect(
      await runPsql(second.url, `SELECT count(*) FROM df.instances WHERE label = 'hello'`),
    ).toBe('1');
    expect(await second.stop()).toBe(0);
    expect(postgresRunningIn(cwd)).toBe(false);
  }, 180_000);
});
