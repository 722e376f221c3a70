/** The dfgate command line, run as a real process (dist/ is built by npm install's prepare step). */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { useTestDatabase, quoteIdent, withDatabase } from '../harness/db.js';

const db = useTestDatabase();
const CLI = path.resolve('dist/src/cli.js');

function dfgate(
  args: string[],
  env: Record<string, string> = {},
): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], {
    encoding: 'utf8',
    env: { ...process.env, ...env, DFGATE_UPSTREAM: env['DFGATE_UPSTREAM'] ?? '' },
    timeout: 60_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

describe('dfgate CLI', () => {
  it('--bogus exits 2 naming the flag', () => {
    const r = dfgate(['--bogus']);
    expect(r.code).toBe(2);
    expect(r.err).toContain('--bogus');
  });

  it('a malformed URL exits 2 without printing the password', () => {
    const r = dfgate(['migrate', '--upstream', 'postgres://u:topsecret@']);
    expect(r.code).toBe(2);
    expect(r.err).not.toContain('topsecret');
  });

  it('--help works for every command', () => {
    for (const cmd of [[], ['migrate'], ['worker'], ['check'], ['roles']]) {
      const r = dfgate([...cmd, '--help']);
      expect(r.code, cmd.join(' ')).toBe(0);
      expect(r.out).toContain('usage: dfgate');
    }
  });

  it('migrate creates the schema in an empty database, and running it again changes nothing', async () => {
    const name = `${db.name}_cli`;
    await db.admin.query(`CREATE DATABASE ${quoteIdent(name)}`);
    const url = withDatabase(db.adminUrl, name);
    const first = dfgate(['migrate', '--upstream', url, '--log-level', 'info']);
    expect(first.code, first.err).toBe(0);
    expect(first.out).toContain('schema migrated');
    expect(first.out).not.toContain('dfgate-test-superuser');
    const second = dfgate(['migrate'], { DFGATE_UPSTREAM: url });
    expect(second.code).toBe(0);
    expect(second.out).toContain('schema up to date');
    const c = await db.connect(url);
    expect(
      (await c.query(`SELECT count(*)::int AS n FROM df.schema_migrations`)).rows[0].n,
    ).toBeGreaterThanOrEqual(4);
    await c.end();
    await db.admin.query(`DROP DATABASE ${quoteIdent(name)} WITH (FORCE)`);
  });

  it('migrate against an unreachable server fails with exit 1 and a masked URL', () => {
    const r = dfgate(['migrate', '--upstream', 'postgres://u:pw123@127.0.0.1:1/db']);
    expect(r.code).toBe(1);
    expect(r.out + r.err).not.toContain('pw123');
  });

  it('commands whose issue has not landed say so and exit non-zero', () => {
    const r = dfgate(['check', 'x.sql']);
    expect(r.code).toBe(3);
    expect(r.err).toContain('not available in this build yet');
    expect(dfgate(['worker', '--help']).code).toBe(0);
  });
});
