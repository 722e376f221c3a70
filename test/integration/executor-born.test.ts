/**
 * Born claimed (docs/executor.md, "The wake path", item 2), against a tenant
 * who tries to use it: long transactions cannot take the reserve, and an
 * extended-protocol row cannot stand in for a start's id. Real PostgreSQL,
 * real node-postgres, the proxy wired to the executor as dfgate wires them.
 */
import type pg from 'pg';
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import type { Started } from '../../src/contract/started.js';
import type { Executor, ExecutorOptions } from '../../src/executor/executor.js';
import type { ControlStore } from '../../src/executor/store.js';
import { encodeFrontend } from '../../src/proxy/protocol/frontend.js';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { startTestProxy, viaPort } from '../harness/dfgate.js';
import { finished, startTestExecutor } from '../harness/executor.js';
import { loggedIn, unnamedExecute } from '../harness/wire.js';

const db = useTestDatabase();
const executors: Executor[] = [];
let alice: TestRole;
let bob: pg.Client;

beforeAll(async () => {
  alice = await db.role('born_alice');
  bob = await db.connect((await db.role('born_bob')).url);
});

afterEach(async () => {
  for (const ex of executors.splice(0)) await ex.stop(1000);
});

async function wired(
  opts: Partial<ExecutorOptions>,
): Promise<{ ex: Executor; port: number; wakes: Array<Started | undefined> }> {
  const ex = await startTestExecutor(db.url, { pollMs: 600_000, ...opts });
  executors.push(ex);
  const wakes: Array<Started | undefined> = [];
  const proxy = await startTestProxy(db.url, {
    edgeValidation: true,
    onDfCommit: (started) => {
      wakes.push(started);
      ex.wake(started);
    },
    prelease: () => ex.prelease(),
  });
  return { ex, port: proxy.port, wakes };
}

describe('born claimed, attacked', () => {
  it('long transactions of plain starts cannot take the reserve from another role', async () => {
    // 4 leases, 1 reserved: at most 3 offered, whatever the transactions wait for
    const { ex, port, wakes } = await wired({
      maxConcurrentInstances: 4,
      slotReserve: 1,
      maxConcurrentSteps: 4,
      leaseMs: 30_000,
    });
    const sessions: pg.Client[] = [];
    const ids: string[] = [];
    try {
      for (let i = 0; i < 6; i++) {
        // an offer counts for a lease's length, not a few seconds
        if (i === 3) await new Promise((r) => setTimeout(r, 5200));
        const c = await db.connect(viaPort(alice.url, port));
        await c.query('BEGIN');
        const r = await c.query<{ start: string }>(`SELECT df.start('SELECT pg_sleep(20)')`);
        ids.push(r.rows[0]?.start as string);
        sessions.push(c);
      }
      for (const c of sessions) await c.query('COMMIT');
      const leased = wakes.flatMap((w) => w?.leased ?? []);
      expect(leased.length).toBeLessThanOrEqual(3);
      // bob holds none here: the reserve is his, at once
      const t0 = Date.now();
      const b = (await bob.query<{ id: string }>(`SELECT df.start('SELECT 7') AS id`)).rows[0]
        ?.id as string;
      ex.wake({ ids: [b], steps: [] });
      expect((await finished(bob, b, 10_000)).status).toBe('completed');
      expect(Date.now() - t0).toBeLessThan(5_000);
    } finally {
      const a = await db.connect(alice.url);
      for (const id of ids) await a.query('SELECT df.cancel($1)', [id]);
      for (const c of sessions) await c.end();
    }
  });

  it("a row of an unsynced Execute cannot stand in for a start's id: that start gets no lease", async () => {
    const { ex, port, wakes } = await wired({});
    // a raw wire session logs in by trust (the harness's group for that)
    await db.admin.query(`GRANT dfgate_trust_logins TO ${alice.ident}`);
    const w = await loggedIn(port, alice.name, db.name);
    try {
      w.sock.write(
        Buffer.concat([
          unnamedExecute(`SELECT 'abcd1234'::text FROM pg_sleep(0.2)`),
          encodeFrontend({ type: 'Query', sql: `SELECT df.start('SELECT 1', 'cover')` }),
        ]),
      );
      const msgs = await w.until((t) => t === 'Z');
      const rows = msgs.filter(([t]) => t === 'D').map(([, b]) => b.toString('latin1', 6));
      expect(rows[0]).toBe('abcd1234');
      const real = rows[1] as string;
      await new Promise((r) => setTimeout(r, 300));
      // the wake named neither the forged id nor a lease
      expect(wakes.flatMap((x) => x?.leased ?? [])).toEqual([]);
      expect(wakes.flatMap((x) => x?.ids ?? [])).not.toContain('abcd1234');
      // and the start still runs (the general claim)
      ex.wake();
      const a = await db.connect(alice.url);
      expect((await finished(a, real)).status).toBe('completed');
    } finally {
      w.sock.destroy();
    }
  });

  it('a start whose lease expired before its COMMIT runs at once, not at the next poll', async () => {
    const { port } = await wired({ leaseMs: 1500 });
    const c = await db.connect(viaPort(alice.url, port));
    try {
      await c.query('BEGIN');
      const id = (await c.query<{ start: string }>(`SELECT df.start('SELECT 5 AS x')`)).rows[0]
        ?.start as string;
      await new Promise((r) => setTimeout(r, 2000));
      await c.query('COMMIT');
      const a = await db.connect(alice.url);
      expect(await finished(a, id, 5000)).toEqual({
        status: 'completed',
        result: '{"rows": [{"x": 5}], "row_count": 1}',
      });
    } finally {
      await c.end();
    }
  });

  it('an instance both claimed and named as born leased is driven once', async () => {
    const { ex } = await wired({});
    const store = (ex as unknown as { store: ControlStore }).store;
    const claimStarted = store.claimStarted.bind(store);
    // the claim's answer comes late, after the same instance was read as born leased
    vi.spyOn(store, 'claimStarted').mockImplementation(async (ids) => {
      const rows = await claimStarted(ids);
      await new Promise((r) => setTimeout(r, 300));
      return rows;
    });
    const a = await db.connect(alice.url);
    await db.admin.query('CREATE TABLE born_twice (n int)');
    await db.admin.query(`GRANT INSERT ON born_twice TO ${alice.ident}`);
    const id = (
      await a.query<{ id: string }>(`SELECT df.start('INSERT INTO born_twice VALUES (1)') AS id`)
    ).rows[0]?.id as string;
    ex.wake({ ids: [id], steps: [] });
    await vi.waitFor(async () => {
      const r = await db.admin.query('SELECT lease_epoch FROM df.instances WHERE id = $1', [id]);
      expect(r.rows[0]?.lease_epoch).toBe('1');
    });
    ex.wake({ ids: [id], steps: [], leased: [id] });
    expect((await finished(a, id, 10_000)).status).toBe('completed');
    expect((await db.admin.query('SELECT count(*)::int AS n FROM born_twice')).rows[0].n).toBe(1);
  });
});
