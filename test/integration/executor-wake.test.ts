/**
 * The wake path (docs/executor.md, "The wake path"): the proxy reads the id
 * of each instance a plain `SELECT df.start(...)` started and hands the ids
 * to the commit's wake; the executor claims such instances by primary key
 * when the general claim would take exactly those, and falls back to the
 * general claim otherwise (a backlog, a wake without ids, more ids than
 * leases below the reserve). Real PostgreSQL, real node-postgres.
 */
import type pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
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
  // the claim start() ran is over (a fixed pause was too short on a loaded machine)
  await new Promise((r) => setTimeout(r, 50));
  await vi.waitFor(() => expect((ex as unknown as { pumping: boolean }).pumping).toBe(false), {
    timeout: 10_000,
    interval: 20,
  });
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

  // no executor ran these starts: cancelled, so the later tests' claims find only their own
  afterAll(async () => {
    const own = await db.connect(role.url);
    await own.query(
      `SELECT df.cancel(id) FROM df.instances WHERE status NOT IN ('completed', 'failed', 'cancelled')`,
    );
    const left = await db.admin.query(
      `SELECT count(*)::int AS n FROM df.instances WHERE status NOT IN ('completed', 'failed', 'cancelled')`,
    );
    expect(left.rows[0]).toEqual({ n: 0 });
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

  it('starts in one message (one batch): every id', async () => {
    wakes.length = 0;
    const rs = (await p.query(
      `SELECT df.start('SELECT 1'); SELECT df.start('SELECT 2')`,
    )) as unknown as Array<pg.QueryResult<{ start: string }>>;
    const ids = rs.map((r) => r.rows[0]?.start);
    expect(ids).toEqual([
      expect.stringMatching(/^[0-9a-f]{8}$/),
      expect.stringMatching(/^[0-9a-f]{8}$/),
    ]);
    expect(wakes).toEqual([ids]);
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

  it('a claim that took all that was ready leaves no backlog: a later start of a role holding leases is claimed at once', async () => {
    // 4 short and 11 long instances ready before the executor starts; 16 leases, 1 reserved
    const shorts: string[] = [];
    for (let i = 0; i < 4; i++) shorts.push(await start(alice, 'SELECT 1'));
    const longs = (
      await alice.query<{ id: string }>(
        `SELECT df.start('SELECT pg_sleep(30)') AS id FROM generate_series(1, 11)`,
      )
    ).rows.map((r) => r.id);
    try {
      const { ex, byId } = await spiedExecutor({
        maxConcurrentSteps: 4,
        maxConcurrentInstances: 16,
      });
      ex.wake();
      for (const id of shorts) expect((await finished(alice, id)).status).toBe('completed');
      // the first claim took all 15 and nothing is left: alice's next start goes by id, now
      // (its step then queues for a slot behind her long ones)
      const next = await start(alice, 'SELECT 2');
      ex.wake(named(next));
      await vi.waitFor(async () => expect(await claimedBy(byId)).toContain(next), 3000);
    } finally {
      for (const id of longs) await alice.query('SELECT df.cancel($1)', [id]);
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

describe('born claimed: a plain df.start through the proxy of the same process', () => {
  let role: TestRole;
  let direct: pg.Client;

  beforeAll(async () => {
    role = await db.role('wake_born');
    direct = await db.connect(role.url);
  });

  /**
   * A proxy wired to `ex` as dfgate wires its own: the commit's wake and the lease offer.
   * `onCommit` replaces the wake (false: the executor never hears of the commit).
   */
  async function wired(
    ex: Executor,
    onCommit: boolean | ((started: Started | undefined) => void) = true,
  ): Promise<pg.Client> {
    const proxy = await startTestProxy(db.url, {
      edgeValidation: true,
      onDfCommit:
        typeof onCommit === 'function'
          ? onCommit
          : onCommit
            ? (started) => ex.wake(started)
            : () => undefined,
      prelease: () => ex.prelease(),
    });
    return await db.connect(viaPort(role.url, proxy.port));
  }

  it('the start commits the lease: no claim and no read, its answer carries its claim, run once', async () => {
    const { ex, byId, general } = await spiedExecutor();
    const adopt = vi.spyOn((ex as unknown as { store: ControlStore }).store, 'adopt');
    const wakes = vi.spyOn(ex, 'wake');
    const p = await wired(ex);
    const notices: string[] = [];
    p.on('notice', (n) => notices.push(n.message ?? ''));
    await db.admin.query('CREATE TABLE born_once (n int)');
    await db.admin.query(`GRANT INSERT ON born_once TO ${role.ident}`);
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      const r = await p.query<{ start: string }>(
        `SELECT df.start('INSERT INTO born_once VALUES (${i})', 'born')`,
      );
      ids.push(r.rows[0]?.start as string);
    }
    for (const id of ids) expect((await finished(direct, id)).status).toBe('completed');
    const rows = await db.admin.query<{ lease_epoch: string; events: number }>(
      `SELECT i.lease_epoch, (SELECT count(*)::int FROM df.events e WHERE e.instance_id = i.id AND e.kind = 'done') AS events
         FROM df.instances i WHERE i.id = ANY ($1) ORDER BY i.id`,
      [ids],
    );
    // epoch 1: the lease the start wrote; nobody claimed it again
    expect(rows.rows.map((r) => r.lease_epoch)).toEqual(ids.map(() => '1'));
    expect(rows.rows.map((r) => r.events)).toEqual(ids.map(() => 1));
    expect(
      (
        await db.admin.query(
          'SELECT count(*)::int AS n, count(DISTINCT n)::int AS d FROM born_once',
        )
      ).rows[0],
    ).toEqual({ n: 5, d: 5 });
    expect(byId).not.toHaveBeenCalled();
    expect(general).not.toHaveBeenCalled();
    // the claims came in the starts' answers, and the client saw none of them
    expect(adopt).not.toHaveBeenCalled();
    expect(notices).toEqual([]);
    const born = wakes.mock.calls.map((c) => c[0]).filter((s) => s?.leased?.length);
    expect(born.map((s) => s?.born?.length)).toEqual([1, 1, 1, 1, 1]);
  });

  it('a start inside a transaction block, or of a role with variables, carries no claim', async () => {
    const { ex } = await spiedExecutor();
    const wakes = vi.spyOn(ex, 'wake');
    const p = await wired(ex);
    const notices: string[] = [];
    p.on('notice', (n) => notices.push(n.message ?? ''));
    await p.query('BEGIN');
    const a = (await p.query<{ start: string }>(`SELECT df.start('SELECT 1 AS one', 'in-tx')`))
      .rows[0]?.start as string;
    await p.query('COMMIT');
    expect((await finished(direct, a)).status).toBe('completed');
    // variables stay out of notices: no claim for this start either
    await p.query(`SELECT df.setvar('greeting', 'hello')`);
    const b = (await p.query<{ start: string }>(`SELECT df.start('SELECT 2 AS two', 'vars')`))
      .rows[0]?.start as string;
    expect((await finished(direct, b)).status).toBe('completed');
    await p.query(`SELECT df.unsetvar('greeting')`);
    // a label computed by the caller's own code (which could read the statement's text): no lease, no claim
    await db.admin.query(
      `CREATE FUNCTION public.lbl() RETURNS text LANGUAGE sql AS $f$ SELECT current_query() $f$`,
    );
    const c = (
      await p.query<{ start: string }>(`SELECT df.start('SELECT 3 AS three', public.lbl())`)
    ).rows[0]?.start as string;
    expect((await finished(direct, c)).status).toBe('completed');
    const lbl = await db.admin.query<{ label: string }>(
      'SELECT label FROM df.instances WHERE id = $1',
      [c],
    );
    expect(lbl.rows[0]?.label).toContain('df._start_rows(');
    expect(lbl.rows[0]?.label).not.toMatch(/[0-9a-f]{24}/); // no nonce in the statement it saw
    // whether born leased or claimed (the lease offer depends on timing), no claim was handed over
    const named = wakes.mock.calls.map((c) => c[0]).filter((s) => s?.ids.length);
    expect(named.map((s) => s?.ids)).toEqual(expect.arrayContaining([[a], [b], [c]]));
    expect(named.find((s) => s?.ids[0] === c)?.leased ?? []).toEqual([]);
    for (const s of named) expect(s?.born ?? []).toEqual([]);
    expect(notices.filter((n) => n.startsWith('dfgate born claim'))).toEqual([]);
  });

  it('a start whose commit fails hands over no claim: nothing of it runs, not even once rolled back', async () => {
    const { ex } = await spiedExecutor();
    const adopt = vi.spyOn((ex as unknown as { store: ControlStore }).store, 'adopt');
    const p = await wired(ex);
    // the commit fails after the answer (and its claim) went out: a deferred trigger, for this test only
    await db.admin
      .query(`CREATE SEQUENCE public.born_seq; GRANT USAGE ON SEQUENCE public.born_seq TO ${role.ident};
      CREATE FUNCTION public.fail_commit() RETURNS trigger LANGUAGE plpgsql AS $f$
        BEGIN RAISE EXCEPTION 'refused at commit'; END $f$;
      CREATE CONSTRAINT TRIGGER fail_commit AFTER INSERT ON df.instances DEFERRABLE INITIALLY DEFERRED
        FOR EACH ROW WHEN (NEW.label = 'fail-at-commit') EXECUTE FUNCTION public.fail_commit()`);
    try {
      await expect(
        p.query(`SELECT df.start('SELECT nextval(''public.born_seq'')', 'fail-at-commit')`),
      ).rejects.toThrow(/refused at commit/);
      await new Promise((r) => setTimeout(r, 500));
      // not run from a claim it never had: the sequence (not rolled back by anything) is untouched
      const seq = await db.admin.query('SELECT is_called FROM public.born_seq');
      expect(seq.rows[0]?.is_called).toBe(false);
      expect(adopt).toHaveBeenCalledTimes(1); // read instead, and found nothing
      expect(
        (
          await db.admin.query(
            `SELECT count(*)::int AS n FROM df.instances WHERE label = 'fail-at-commit'`,
          )
        ).rows[0]?.n,
      ).toBe(0);
    } finally {
      await db.admin.query(
        'DROP TRIGGER fail_commit ON df.instances; DROP FUNCTION public.fail_commit()',
      );
    }
  });

  it('a start whose commit comes after half of its lease hands over no claim: it is read, then run once', async () => {
    // the test executor's lease is 3 s: a commit 1.7 s after the call is past half of it
    const { ex } = await spiedExecutor();
    const adopt = vi.spyOn((ex as unknown as { store: ControlStore }).store, 'adopt');
    const wakes = vi.spyOn(ex, 'wake');
    const p = await wired(ex);
    await db.admin
      .query(`CREATE FUNCTION public.slow_commit() RETURNS trigger LANGUAGE plpgsql AS $f$
        BEGIN PERFORM pg_sleep(1.7); RETURN NULL; END $f$;
      CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON df.instances DEFERRABLE INITIALLY DEFERRED
        FOR EACH ROW WHEN (NEW.label = 'slow-commit') EXECUTE FUNCTION public.slow_commit()`);
    try {
      const id = (
        await p.query<{ start: string }>(`SELECT df.start('SELECT 4 AS four', 'slow-commit')`)
      ).rows[0]?.start as string;
      expect((await finished(direct, id)).status).toBe('completed');
      const w = wakes.mock.calls.map((c) => c[0]).find((s) => s?.ids[0] === id);
      expect(w?.leased).toEqual([id]);
      expect(w?.born).toEqual([]);
      expect(adopt.mock.calls.flat(2)).toContain(id);
      const r = await db.admin.query(
        `SELECT i.lease_epoch, (SELECT count(*)::int FROM df.events e WHERE e.instance_id = i.id AND e.kind = 'done') AS done
           FROM df.instances i WHERE i.id = $1`,
        [id],
      );
      expect(r.rows[0]).toEqual({ lease_epoch: '1', done: 1 });
    } finally {
      await db.admin.query(
        'DROP TRIGGER slow_commit ON df.instances; DROP FUNCTION public.slow_commit()',
      );
    }
  });

  it('the claim a start hands over is what the executor would read for it', async () => {
    const { ex } = await spiedExecutor();
    const store = (ex as unknown as { store: ControlStore }).store;
    // the commit's wake is held back: the instance stays as the start left it, leased here
    const held: Started[] = [];
    const p = await wired(ex, (started) => {
      if (started) held.push(started);
    });
    // a chain with a result name (a start with options is not born leased)
    const id = (
      await p.query<{ start: string }>(
        `SELECT df.start('SELECT 5 AS five' |=> 'f' ~> 'SELECT 6', 'same-read')`,
      )
    ).rows[0]?.start as string;
    const w = held.find((s) => s.ids[0] === id);
    expect(w?.born).toHaveLength(1);
    const claim = JSON.parse(w?.born?.[0] as string) as Record<string, unknown>;
    const [read] = JSON.parse(JSON.stringify(await store.adopt([id]))) as Array<
      Record<string, unknown>
    >;
    // a born claim carries no variables (an instance with some raises none), so not their size
    expect(read?.['vars_bytes']).toBe(2);
    delete read?.['vars_bytes'];
    // nor the sizes of its label and options, which came in the start's own message
    expect(read?.['label_bytes']).toBe('same-read'.length);
    delete read?.['label_bytes'];
    delete read?.['options_bytes'];
    const sorted = (v: unknown): unknown =>
      Array.isArray(v)
        ? [...v].sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b)))
        : v;
    const norm = (o: Record<string, unknown>) =>
      Object.fromEntries(
        Object.keys(o)
          .sort()
          .map((k) => [k, sorted(o[k])]),
      );
    expect(Object.keys(claim).sort()).toEqual(Object.keys(read ?? {}).sort());
    expect(norm(claim)).toEqual(norm(read as Record<string, unknown>));
    // and run from the claim, once
    ex.wake(w);
    expect((await finished(direct, id)).status).toBe('completed');
  });

  it('a notice that looks like a claim but is not the start’s own reaches the client unchanged', async () => {
    const { ex } = await spiedExecutor();
    const adopt = vi.spyOn((ex as unknown as { store: ControlStore }).store, 'adopt');
    const p = await wired(ex);
    const notices: string[] = [];
    p.on('notice', (n) => notices.push(n.message ?? ''));
    const forged = `dfgate born claim ${'a'.repeat(24)} {"id" : "0000000f"}`;
    await p.query(`DO $$ BEGIN RAISE NOTICE '%', '${forged}'; END $$`);
    // a start whose statement raises a forged claim first: only the database's own counts
    await p.query(`CREATE FUNCTION public.forge() RETURNS text LANGUAGE plpgsql AS $f$
      BEGIN RAISE NOTICE '%', '${forged}'; RETURN 'SELECT 3 AS three'; END $f$`);
    const id = (await p.query<{ start: string }>(`SELECT df.start(public.forge(), 'forged')`))
      .rows[0]?.start as string;
    expect((await finished(direct, id)).status).toBe('completed');
    expect(notices).toEqual([forged, forged]);
    await p.query('DROP FUNCTION public.forge()');
    expect(adopt.mock.calls.flat(2)).not.toContain('0000000f');
  });

  it('no lease while work is left behind, or past the leases below the reserve', async () => {
    const { ex } = await spiedExecutor({ maxConcurrentInstances: 3, slotReserve: 1 });
    // two leases below the reserve: two offers, then none until a commit names them
    expect(ex.prelease()).toMatchObject({ owner: ex.owner });
    expect(ex.prelease()).toMatchObject({ owner: ex.owner });
    expect(ex.prelease()).toBeUndefined();
    ex.wake({ ids: [], steps: [], leased: ['0000000a', '0000000b'] });
    expect(ex.prelease()).toMatchObject({ owner: ex.owner });
  });

  it('a start whose commit the executor never hears of runs once its lease expires, once', async () => {
    const { ex } = await spiedExecutor({ leaseMs: 1500, pollMs: 300 });
    const p = await wired(ex, false);
    const id = (await p.query<{ start: string }>(`SELECT df.start('SELECT 42 AS x', 'lost')`))
      .rows[0]?.start as string;
    const at = await db.admin.query<{ lease_owner: string; lease_epoch: string }>(
      'SELECT lease_owner, lease_epoch FROM df.instances WHERE id = $1',
      [id],
    );
    expect(at.rows[0]).toEqual({ lease_owner: ex.owner, lease_epoch: '1' });
    const done = await finished(direct, id, 20_000);
    expect(done).toEqual({ status: 'completed', result: '{"rows": [{"x": 42}], "row_count": 1}' });
    // the poll's claim took it when the lease had expired: a new epoch
    const after = await db.admin.query<{ lease_epoch: string }>(
      'SELECT lease_epoch FROM df.instances WHERE id = $1',
      [id],
    );
    expect(Number(after.rows[0]?.lease_epoch)).toBeGreaterThan(1);
  });

  it('born leased past the free leases: handed back to the claim, each run once', async () => {
    const { ex } = await spiedExecutor({ maxConcurrentInstances: 1, slotReserve: 0 });
    const store = (ex as unknown as { store: ControlStore }).store;
    const handBack = vi.spyOn(store, 'handBack');
    await db.admin.query('CREATE TABLE born_back (n int)');
    await db.admin.query(`GRANT INSERT ON born_back TO ${role.ident}`);
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const rows = JSON.stringify([
        { i: 'cccc0001', t: 'SQL', q: `INSERT INTO born_back VALUES (${i})` },
      ]);
      const r = await direct.query<{ id: string }>('SELECT df._start_rows($1, $2, $3, $4) AS id', [
        rows,
        'back',
        ex.owner,
        30_000,
      ]);
      ids.push(r.rows[0]?.id as string);
    }
    ex.wake({ ids, steps: [], leased: ids });
    for (const id of ids) expect((await finished(direct, id)).status).toBe('completed');
    expect(handBack).toHaveBeenCalledTimes(1);
    expect(((handBack.mock.calls[0] as unknown[])[0] as string[]).length).toBe(2);
    expect(
      (
        await db.admin.query(
          'SELECT count(*)::int AS n, count(DISTINCT n)::int AS d FROM born_back',
        )
      ).rows[0],
    ).toEqual({ n: 3, d: 3 });
  });

  it('a lease asked for by hand must be bounded, and gives the caller nothing', async () => {
    const rows = JSON.stringify([{ i: 'dddd0001', t: 'SQL', q: 'SELECT 1' }]);
    for (const [owner, ms] of [
      ['', 30_000],
      ['x'.repeat(201), 30_000],
      ['someone', 999],
      ['someone', 300_001],
      ['someone', null],
    ] as const)
      await expect(
        direct.query('SELECT df._start_rows($1, NULL, $2, $3)', [rows, owner, ms]),
        `${owner.length} ${ms}`,
      ).rejects.toMatchObject({ code: '22023' });
    // a lease no executor holds: the instance, the caller's own, waits for the lease to expire
    const id = (
      await direct.query<{ id: string }>("SELECT df._start_rows($1, NULL, 'nobody', 1000) AS id", [
        rows,
      ])
    ).rows[0]?.id as string;
    const r = await db.admin.query<{ s: string; lease_owner: string }>(
      'SELECT submitted_by::text AS s, lease_owner FROM df.instances WHERE id = $1',
      [id],
    );
    expect(r.rows[0]).toEqual({ s: role.name, lease_owner: 'nobody' });
  });
});

/** Starts a two-step workflow whose first step sleeps 1.5 s, and waits until that step runs. */
async function slowFirstStep(ex: Executor, label: string): Promise<{ c: pg.Client; id: string }> {
  const role = await db.role(label);
  const c = await db.connect(role.url);
  const id = (
    await c.query<{ id: string }>(
      `SELECT df.start('SELECT pg_sleep(1.5)' ~> 'SELECT 2', 'again') AS id`,
    )
  ).rows[0]?.id as string;
  ex.wake(named(id));
  for (let i = 0; ; i++) {
    const r = await db.admin.query(
      `SELECT 1 FROM pg_stat_activity WHERE application_name = 'dfgate:step' AND query = 'SELECT pg_sleep(1.5)' AND state = 'active'`,
    );
    if (r.rowCount) break;
    if (i > 200) throw new Error('the first step never ran');
    await new Promise((r) => setTimeout(r, 25));
  }
  return { c, id };
}

async function epochOf(id: string): Promise<string | undefined> {
  const r = await db.admin.query<{ e: string }>(
    'SELECT lease_epoch::text AS e FROM df.instances WHERE id = $1',
    [id],
  );
  return r.rows[0]?.e;
}

async function doneSteps(id: string): Promise<number | undefined> {
  const r = await db.admin.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM df.events WHERE instance_id = $1 AND kind = 'done'`,
    [id],
  );
  return r.rows[0]?.n;
}

describe('a new lease of an instance whose driver here is still running', () => {
  it('a lease that expired under a running step is not claimed again by the executor driving it', async () => {
    const { ex, general } = await spiedExecutor({ leaseMs: 60_000 });
    const { c, id } = await slowFirstStep(ex, 'wake_lapsed');
    // the lease expires under the running step (as under a stalled event loop, or while
    // someone holds the row so the renewal skips it), and a claim runs
    await db.admin.query(
      `UPDATE df.instances SET lease_expires_at = clock_timestamp() - interval '1 second' WHERE id = $1`,
      [id],
    );
    ex.wake();
    await vi.waitFor(() => expect(general).toHaveBeenCalled(), { timeout: 5_000, interval: 10 });
    const answer = (await general.mock.results[0]?.value) as { rows: unknown[]; ready: number };
    // neither taken nor counted as ready (a ready count would make the executor claim again at once)
    expect(answer).toMatchObject({ rows: [], ready: 0 });
    expect(await epochOf(id)).toBe('1');
    // its driver goes on under the same lease: both steps, once each
    expect(await finished(c, id, 30_000)).toMatchObject({ status: 'completed' });
    expect(await epochOf(id)).toBe('1');
    expect(await doneSteps(id)).toBe(2);
  });

  it('an instance handed back under a running step and claimed again here: driven as soon as the old driver ends', async () => {
    // a long lease: without a successor, the new lease would sit undriven until it expired
    const { ex } = await spiedExecutor({ leaseMs: 60_000 });
    const { c, id } = await slowFirstStep(ex, 'wake_again');
    // the instance is unleased under its running driver (as when it parked and a signal made
    // it ready before that driver ended), and this executor's claim takes it
    await db.admin.query(
      `UPDATE df.instances SET lease_owner = NULL, lease_expires_at = NULL WHERE id = $1`,
      [id],
    );
    const t0 = Date.now();
    ex.wake();
    for (let i = 0; ; i++) {
      if ((await epochOf(id)) === '2') break;
      if (i > 200) throw new Error('never claimed again');
      await new Promise((r) => setTimeout(r, 10));
    }
    // epoch 1's checkpoint is refused; epoch 2 runs both steps once its driver has ended
    expect(await finished(c, id, 30_000)).toMatchObject({ status: 'completed' });
    expect(Date.now() - t0).toBeLessThan(15_000);
    expect(await doneSteps(id)).toBe(2);
  });
});
