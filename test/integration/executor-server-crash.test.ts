/**
 * A backend that dies (kill -9, as the OOM killer does) makes PostgreSQL
 * restart every session and replay its WAL: a commit whose WAL was not yet
 * flushed is gone (docs/executor.md, "Commits that do not wait for their
 * flush"). Claims must survive that: a lost claim would let another executor
 * claim the instance at the same lease epoch, which the lost claimer's late
 * writes are fenced by. Attempt marks may be lost; the lease they were made
 * under is not, and the attempt is marked again. The cluster here is its own
 * (it is crashed), with the WAL writer slowed to 10 s so that a commit that
 * did not wait for its flush is certainly not flushed when the backend dies.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { migrate } from '../../src/db/migrate.js';
import { controlPools, type ControlPools } from '../../src/executor/options.js';
import { ControlStore } from '../../src/executor/store.js';
import { startCluster, type RunningCluster } from '../../src/pg/cluster.js';

const bin = [inject('pgBinDir'), '/usr/lib/postgresql/15/bin'].find(
  (d) => d && existsSync(path.join(d, 'postgres')) && existsSync(path.join(d, 'initdb')),
);
const base = mkdtempSync(path.join(tmpdir(), 'dfgate-crash-'));
let cluster: RunningCluster;

beforeAll(async () => {
  expect(bin, 'no PostgreSQL bin directory').toBeDefined();
  cluster = await startCluster({
    baseDir: base,
    binDir: bin,
    password: 'crash-test',
    settings: { wal_writer_delay: '10s', restart_after_crash: 'on' },
  });
  const c = new pg.Client({ connectionString: cluster.url() });
  await c.connect();
  try {
    await migrate(c);
    await c.query(`UPDATE df.config SET value = 'true' WHERE key = 'enable_superuser_instances'`);
  } finally {
    await c.end();
  }
}, 120_000);

afterAll(async () => {
  await cluster?.stop();
  rmSync(base, { recursive: true, force: true });
});

/** Kills one backend with SIGKILL and waits until the restarted server accepts connections. */
async function crashServer(): Promise<void> {
  const victim = new pg.Client({ connectionString: cluster.url() });
  victim.on('error', () => undefined);
  await victim.connect();
  const pid = (await victim.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
  process.kill(pid, 'SIGKILL');
  const deadline = Date.now() + 60_000;
  // the postmaster notices the death, ends every session, replays WAL, then accepts again
  await new Promise((r) => setTimeout(r, 300));
  for (;;) {
    const c = new pg.Client({ connectionString: cluster.url() });
    c.on('error', () => undefined);
    try {
      await c.connect();
      await c.query('SELECT 1');
      await c.end();
      break;
    } catch (err) {
      await c.end().catch(() => undefined);
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  await victim.end().catch(() => undefined);
}

async function query<T extends pg.QueryResultRow>(
  sql: string,
  values: unknown[] = [],
): Promise<T[]> {
  const c = new pg.Client({ connectionString: cluster.url() });
  await c.connect();
  try {
    return (await c.query<T>(sql, values)).rows;
  } finally {
    await c.end();
  }
}

describe('a backend killed right after a claim (server crash and WAL replay)', () => {
  it(
    'the claim survives; a mark may not, and the attempt is marked again under the same lease',
    {
      timeout: 120_000,
    },
    async () => {
      await query(`SELECT df.start('SELECT 1', 'crash-' || g) FROM generate_series(1, 20) g`);
      let pools: ControlPools = controlPools(cluster.url(), pino({ level: 'silent' }));
      let store = new ControlStore(pools, 'crash-test', 600_000);
      const { rows: claimed } = await store.claim(20, new Map(), 0);
      expect(claimed).toHaveLength(20);
      const first = claimed[0]!;
      const node = (
        await query<{ id: string }>(`SELECT id FROM df.nodes WHERE instance_id = $1 LIMIT 1`, [
          first.id,
        ])
      )[0]!.id;
      const a = { node, key: `${node}:1` };
      expect(await store.markAttempt(first.id, Number(first.lease_epoch), a, 'h1', 's1', 1)).toBe(
        true,
      );

      await crashServer();
      await pools.end();

      const after = await query<{ id: string; lease_owner: string; lease_epoch: string }>(
        `SELECT id, lease_owner, lease_epoch::text FROM df.instances ORDER BY id`,
      );
      expect(after).toEqual(
        claimed
          .map((c) => ({ id: c.id, lease_owner: 'crash-test', lease_epoch: String(c.lease_epoch) }))
          .sort((x, y) => (x.id < y.id ? -1 : 1)),
      );
      // nothing is left to claim: another executor cannot take these at the same epoch
      pools = controlPools(cluster.url(), pino({ level: 'silent' }));
      const other = new ControlStore(pools, 'crash-other', 600_000);
      expect((await other.claim(20, new Map(), 0)).rows).toEqual([]);
      // the lease holder marks the attempt again (its first mark, not flushed, may be gone)
      store = new ControlStore(pools, 'crash-test', 600_000);
      expect(await store.markAttempt(first.id, Number(first.lease_epoch), a, 'h2', 's2', 1)).toBe(
        true,
      );
      await pools.end();
    },
  );
});
