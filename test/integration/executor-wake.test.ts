/**
 * The wake path (docs/executor.md, "The wake path"): the proxy reads the id
 * of each instance a plain `SELECT df.start(...)` started and hands the ids
 * to the commit's wake; the executor claims such instances by primary key
 * when the general claim would take exactly those, and falls back to the
 * general claim otherwise (a backlog, a wake without ids, more ids than
 * leases below the reserve). Real PostgreSQL, real node-postgres.
 */
import type pg from 'pg';
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import type { Started } from '../../src/contract/started.js';
import type { Executor, ExecutorOptions } from '../../src/executor/executor.js';
import type { ControlStore } from '../../src/executor/store.js';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { startTestProxy, viaPort } from '../harness/dfgate.js';
import { finished, startTestExecutor } from '../harness/executor.js';

const db = useTestDatabase();
const executors: Executor[] = [];

afterEach(async () => {
  // steps still running (a cancelled pg_sleep) are cancelled after a second
  for (const ex of executors.splice(0)) await ex.stop(1000);
});

/** An executor that claims only when woken (no poll during the test), its store's claims spied on. */
async function spiedExecutor(opts: Partial<ExecutorOptions> = {}): Promise<{
  ex: Executor;
  byId: ReturnType<typeof vi.spyOn>;
  general: ReturnType<typeof vi.spyOn>;
}> {
  const ex = await startTestExecutor(db.url, { pollMs: 600_000, ...opts });
  executors.push(ex);
  const store = (ex as unknown as { store: ControlStore }).store;
  // the claim start() ran is over once a wake finds nothing to claim
  await new Promise((r) => setTimeout(r, 200));
  return {
    ex,
    byId: vi.spyOn(store, 'claimStarted'),
    general: vi.spyOn(store, 'claim'),
  };
}

/** A wake naming one instance, as the proxy's would (without its steps' SQL). */
function named(id: string): Started {
  return { ids: [id], steps: [] };
}

/** The ids the spied claim returned, over all its calls so far. */
async function claimedBy(spy: ReturnType<typeof vi.spyOn>): Promise<string[]> {
  const out: string[] = [];
  for (const r of spy.mock.results)
    for (const row of (await r.value) as Array<{ id: string }>) out.push(row.id);
  return out;
}

describe('the proxy names the instances a commit started', () => {
  let role: TestRole;
  let p: pg.Client;
  const wakes: Array<readonly string[] | undefined> = [];
  const steps: string[][] = [];

  beforeAll(async () => {
    role = await db.role('wake_proxy');
    const proxy = await startTestProxy(db.url, {
      edgeValidation: true,
      onDfCommit: (started) => {
        wakes.push(started?.ids);
        steps.push([...(started?.steps ?? [])]);
      },
    });
    p = await db.connect(viaPort(role.url, proxy.port));
  });

  async function wakeOf(sql: string | string[]): Promise<{ ids: string[]; wake: unknown }> {
    wakes.length = 0;
    steps.length = 0;
    const ids: string[] = [];
    for (const s of Array.isArray(sql) ? sql : [sql]) {
      const r = await p.query<{ id?: string }>(s);
      for (const row of r.rows ?? []) {
        const v = Object.values(row)[0];
        if (typeof v === 'string' && /^[0-9a-f]{8}$/.test(v)) ids.push(v);
      }
    }
    expect(wakes).toHaveLength(1);
    return { ids, wake: wakes[0] };
  }

  it('a plain SELECT df.start(...) in autocommit: its id', async () => {
    steps.length = 0;
    const { ids, wake } = await wakeOf(`SELECT df.start('SELECT 1' ~> 'SELECT 2', 'w')`);
    expect(ids).toHaveLength(1);
    expect(wake).toEqual(ids);
    // with its steps' SQL, which the executor checks while it claims
    expect(steps).toEqual([['SELECT 1', 'SELECT 2']]);
    const aliased = await wakeOf(`select DF.start('SELECT 2') AS started`);
    expect(aliased.wake).toEqual(aliased.ids);
  });

  it('a transaction of plain starts: every id, at its COMMIT', async () => {
    wakes.length = 0;
    await p.query('BEGIN');
    const a = (await p.query<{ start: string }>(`SELECT df.start('SELECT 1')`)).rows[0]?.start;
    const b = (await p.query<{ start: string }>(`SELECT df.start('SELECT 2')`)).rows[0]?.start;
    expect(wakes).toHaveLength(0);
    await p.query('COMMIT');
    expect(wakes).toEqual([[a, b]]);
  });

  it("the steps' SQL a wake carries stops at 16 KiB per transaction; the ids do not", async () => {
    const big = `SELECT '${'x'.repeat(10_000)}' AS filler`;
    const { ids, wake } = await wakeOf([
      'BEGIN',
      `SELECT df.start('${big.replace(/'/g, "''")}')`,
      `SELECT df.start('${big.replace(/'/g, "''")}')`,
      'COMMIT',
    ]);
    expect(ids).toHaveLength(2);
    expect(wake).toEqual(ids);
    expect(steps.at(-1)).toEqual([big]);
  });

  it('anything else wakes without ids (the general claim)', async () => {
    for (const sql of [
      `SELECT df.start('SELECT 1'), 1`,
      `SELECT df.start('SELECT 1') FROM generate_series(1, 2)`,
      `SELECT df.start('SELECT 1'); SELECT df.start('SELECT 2')`,
      `SELECT df.status('00000000')`,
    ])
      expect((await wakeOf(sql)).wake, sql).toBeUndefined();
    // a bound workflow (extended protocol)
    wakes.length = 0;
    await p.query('SELECT df.start($1)', ['SELECT 1']);
    expect(wakes).toEqual([undefined]);
    // a plain start and another df.* statement in one transaction
    expect(
      (
        await wakeOf([
          'BEGIN',
          `SELECT df.start('SELECT 1')`,
          `SELECT df.status('00000000')`,
          'COMMIT',
        ])
      ).wake,
    ).toBeUndefined();
  });
});

describe('the claim by id', () => {
  let aliceRole: TestRole;
  let alice: pg.Client;
  let bob: pg.Client;

  beforeAll(async () => {
    aliceRole = await db.role('wake_alice');
    alice = await db.connect(aliceRole.url);
    bob = await db.connect((await db.role('wake_bob')).url);
  });

  async function start(c: pg.Client, sql: string): Promise<string> {
    return (await c.query<{ id: string }>('SELECT df.start($1) AS id', [sql])).rows[0]
      ?.id as string;
  }

  it('a start woken with its id is claimed by primary key, not by the general claim', async () => {
    const { ex, byId, general } = await spiedExecutor();
    const id = await start(alice, 'SELECT 1');
    ex.wake(named(id));
    expect((await finished(alice, id)).status).toBe('completed');
    expect(await claimedBy(byId)).toEqual([id]);
    expect(general).not.toHaveBeenCalled();
  });

  it('no lease below the reserve left: the general claim decides, and the reserve stays for a role with none', async () => {
    // two leases, one of them reserved for a role that holds none here
    const { ex, byId, general } = await spiedExecutor({
      maxConcurrentInstances: 2,
      slotReserve: 1,
    });
    const long = await start(alice, 'SELECT pg_sleep(30)');
    ex.wake(named(long));
    await vi.waitFor(async () => expect(await claimedBy(byId)).toEqual([long]), 10_000);
    // alice holds the only lease below the reserve: her next start is not claimed by id
    const second = await start(alice, 'SELECT 2');
    ex.wake(named(second));
    await vi.waitFor(() => expect(general).toHaveBeenCalled(), 10_000);
    // bob holds none: the reserved lease is his
    const bobs = await start(bob, 'SELECT 3');
    ex.wake(named(bobs));
    expect((await finished(bob, bobs)).status).toBe('completed');
    expect(await claimedBy(byId)).toEqual([long]);
    const r = await db.admin.query<{ status: string; lease_owner: string | null }>(
      'SELECT status, lease_owner FROM df.instances WHERE id = $1',
      [second],
    );
    expect(r.rows[0]).toEqual({ status: 'pending', lease_owner: null });
    for (const id of [long, second]) {
      await alice.query('SELECT df.cancel($1)', [id]);
      expect((await finished(alice, id)).status).toBe('cancelled');
    }
  });

  it('two executors woken with the same id: one claims it, its step runs once', async () => {
    await db.admin.query('CREATE TABLE wake_once (id text)');
    await db.admin.query(`GRANT INSERT ON wake_once TO ${aliceRole.ident}`);
    const one = await spiedExecutor();
    const two = await spiedExecutor();
    const ids: string[] = [];
    for (let i = 0; i < 20; i++) {
      const id = await start(alice, `INSERT INTO wake_once VALUES ('${i}')`);
      ids.push(id);
      one.ex.wake(named(id));
      two.ex.wake(named(id));
    }
    for (const id of ids) expect((await finished(alice, id)).status).toBe('completed');
    const claimed = [...(await claimedBy(one.byId)), ...(await claimedBy(two.byId))];
    expect(claimed.sort()).toEqual([...ids].sort());
    const rows = await db.admin.query<{ n: number }>(
      'SELECT count(*)::int AS n, count(DISTINCT id)::int AS d FROM wake_once',
    );
    expect(rows.rows[0]).toEqual({ n: 20, d: 20 });
  });
});
