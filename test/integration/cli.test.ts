/** The dfgate command line, run as a real process (dist/ is built by npm install's prepare step). */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadMigrations } from '../../src/db/migrate.js';
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
    expect((await c.query(`SELECT count(*)::int AS n FROM df.schema_migrations`)).rows[0].n).toBe(
      loadMigrations().length,
    );
    await c.end();
    await db.admin.query(`DROP DATABASE ${quoteIdent(name)} WITH (FORCE)`);
  });

  it('migrate against an unreachable server fails with exit 1 and a masked URL', () => {
    const r = dfgate(['migrate', '--upstream', 'postgres://u:pw123@127.0.0.1:1/db']);
    expect(r.code).toBe(1);
    expect(r.out + r.err).not.toContain('pw123');
  });

  it('dfgate check validates workflow files offline with file:line:column errors', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'dfgate-check-'));
    const good = path.join(dir, 'good.sql');
    const bad = path.join(dir, 'bad.sql');
    writeFileSync(
      good,
      `-- nightly\nSELECT df.start(('SELECT 1 AS a' |=> 'x') ~> df.sleep(5) ~> 'SELECT $x', 'nightly');\nSELECT df.start('SELECT ' || n) FROM jobs;\n`,
    );
    writeFileSync(
      bad,
      `SELECT 1;\n\n  SELECT df.start('SELECT 1' ~> df.slep(5));\nSELECT df.start('{"node_type":"THEN","left_node":"x","right_node":{"node_type":"SQL","query":"b"}}');\nSELECT df.start(df.wait_for_schedule('0 0 * *'));\n`,
    );
    const ok = dfgate(['check', good]);
    expect(ok.code, ok.out + ok.err).toBe(0);
    expect(ok.out).toContain('skipped: df.start argument is not constant');
    expect(ok.out).toContain('all workflows valid');
    const r = dfgate(['check', good, bad]);
    expect(r.code).toBe(1);
    expect(r.out).toContain(`${bad}:3:33: error: function df.slep() does not exist`);
    expect(r.out).toContain(
      `${bad}:4:8: error: Invalid durable function: Invalid durable function graph: root: Durofut children must be JSON objects`,
    );
    expect(r.out).toContain(
      `${bad}:5:17: error: Invalid cron expression '0 0 * *': expected 5 fields`,
    );
    expect(r.out).toContain('3 error(s)');
    expect(dfgate(['check', path.join(dir, 'missing.sql')]).code).toBe(2);
    expect(dfgate(['worker', '--help']).code).toBe(0);
    rmSync(dir, { recursive: true, force: true });
  });
});
