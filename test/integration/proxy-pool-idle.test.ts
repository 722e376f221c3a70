/**
 * 10,000 idle clients in transaction mode (a slow test: DFGATE_TEST_IDLE_CLIENTS=10000
 * to run it; it needs ulimit -n above that number for this process and for dfgate).
 * dfgate's RSS stays under 300 MB and the database sees at most the pool size.
 */
import { readFileSync } from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import { encodeFrontend } from '../../src/proxy/protocol/frontend.js';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { spawnDfgate } from '../harness/dfgate.js';
import { loggedIn, type Raw } from '../harness/wire.js';

const db = useTestDatabase();
const N = Number(process.env['DFGATE_TEST_IDLE_CLIENTS'] ?? 0);
let trust: TestRole;

beforeAll(async () => {
  trust = await db.role('idle', { grant: false });
  await db.admin.query(`GRANT dfgate_trust_logins TO ${trust.ident}`);
});

describe.runIf(N > 0)('many idle clients in transaction mode', () => {
  it(`${N} idle clients: dfgate RSS < 300 MB, at most 10 server connections`, async () => {
    const d = await spawnDfgate([
      '--upstream',
      `${db.url}?sslmode=disable`,
      '--no-migrate',
      '--no-executor',
      '--pool-mode',
      'transaction',
      '--pool-size',
      '10',
      '--max-server-connections',
      '10',
      '--max-client-connections',
      String(N + 100),
    ]);
    const clients: Raw[] = [];
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < N) {
        next++;
        clients.push(await loggedIn(d.port, trust.name, db.name));
      }
    };
    await Promise.all(Array.from({ length: 100 }, worker));
    // every one of them can still run a query
    const some = clients.filter((_, i) => i % 500 === 0);
    for (const c of some) {
      c.sock.write(encodeFrontend({ type: 'Query', sql: 'SELECT 1' }));
      const got = await c.until((t) => t === 'Z');
      expect(got.map(([t]) => t).join('')).toBe('TDCZ');
    }
    const rssKb = Number(
      /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${d.proc.pid}/status`, 'utf8'))?.[1],
    );
    const server = await db.admin.query(
      `SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = $1`,
      [trust.name],
    );
    process.stdout.write(
      `[idle] ${clients.length} clients, dfgate RSS ${(rssKb / 1024).toFixed(0)} MB, server connections ${server.rows[0].n}\n`,
    );
    expect(clients.length).toBe(N);
    expect(rssKb / 1024).toBeLessThan(300);
    expect(server.rows[0].n).toBeLessThanOrEqual(10);
    for (const c of clients) c.sock.destroy();
    await d.stop();
  }, 600_000);
});
