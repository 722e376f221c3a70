/**
 * A step whose statement returns no rows runs in one round trip
 * (docs/executor.md, "One round trip per step"): BEGIN, the statement, the
 * rules check, the checkpoint, COMMIT and the session reset as one message
 * group. Each case runs runSqlStep on a real step session and counts the
 * ReadyForQuery messages it received: one per round trip.
 */
import type pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { runSqlStep, type StepOutcome } from '../../src/executor/steps.js';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { countTrips, stepConn } from '../harness/executor.js';

const db = useTestDatabase();
let bob: TestRole;
let b: pg.Client;

beforeAll(async () => {
  bob = await db.role('trip_bob');
  b = await db.connect(bob.url);
  await b.query(`CREATE TABLE effects (n int)`);
  await b.query(`CREATE TABLE ruled (n int)`);
  await b.query(`CREATE RULE instead_select AS ON INSERT TO ruled DO INSTEAD SELECT 7 AS y`);
  await b.query(`CREATE TABLE ruled_also (n int)`);
  await b.query(
    `CREATE RULE also_log AS ON INSERT TO ruled_also DO ALSO INSERT INTO effects VALUES (99)`,
  );
  await b.query(`CREATE TABLE parent (id int PRIMARY KEY)`);
  await b.query(`CREATE TABLE child (p int REFERENCES parent DEFERRABLE INITIALLY DEFERRED)`);
  // a trigger that leaves session state behind: a setting and an advisory lock
  await b.query(`CREATE TABLE dirty (n int)`);
  await b.query(`CREATE FUNCTION dirty_session() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      PERFORM set_config('trip_test.left', 'behind', false);
      PERFORM pg_advisory_lock(4242);
      RETURN NEW;
    END $$`);
  await b.query(
    `CREATE TRIGGER dirty_session AFTER INSERT ON dirty FOR EACH ROW EXECUTE FUNCTION dirty_session()`,
  );
});

/** An instance of bob's with a step in flight: lease epoch 7, attempt k1 with token 'tok'. */
async function inFlight(): Promise<{ instance: string; node: string }> {
  const instance = (await b.query(`SELECT df.start('SELECT 1') AS id`)).rows[0].id as string;
  await db.admin.query(
    `UPDATE df.instances SET lease_epoch = 7, status = 'running' WHERE id = $1`,
    [instance],
  );
  await db.admin.query(
    `UPDATE df.nodes SET activation = 'k1', attempt_token = encode(sha256('tok'::bytea), 'hex') WHERE instance_id = $1`,
    [instance],
  );
  const node = (
    await db.admin.query(`SELECT root_node AS n FROM df.instances WHERE id = $1`, [instance])
  ).rows[0].n as string;
  return { instance, node };
}

interface Run {
  readonly out: StepOutcome;
  /** Round trips: ReadyForQuery messages received while the step ran. */
  readonly trips: number;
  readonly conn: { broken: boolean; clean: boolean };
  /** The step's outcome as df.events holds it. */
  readonly event: { kind: string; detail: { result?: string; error?: string } } | undefined;
}

async function step(sql: string, c: pg.Client, stepTimeoutMs = 0, oneTrip?: boolean): Promise<Run> {
  const { instance, node } = await inFlight();
  const conn = stepConn(c);
  const trips = countTrips(c);
  try {
    const out = await runSqlStep(
      conn,
      {
        instance,
        node,
        key: 'k1',
        epoch: 7,
        token: 'tok',
        sql,
        stamp: 's',
        ...(oneTrip === undefined ? {} : { oneTrip }),
      },
      undefined,
      stepTimeoutMs,
    );
    const event = (
      await db.admin.query(
        `SELECT kind, detail FROM df.events WHERE instance_id = $1 AND activation = 'k1'`,
        [instance],
      )
    ).rows[0];
    return { out, trips: trips.n, conn, event };
  } finally {
    trips.stop();
  }
}

const count = async (table: string): Promise<number> =>
  (await db.admin.query(`SELECT count(*)::int AS n FROM ${table}`)).rows[0].n as number;

describe('one round trip per step', () => {
  it('an INSERT: statement, checkpoint and COMMIT in one round trip, its empty result recorded', async () => {
    const c = await db.connect(bob.url);
    const r = await step('INSERT INTO effects VALUES (1)', c);
    expect(r.out).toMatchObject({
      k: 'done',
      event: { detail: { result: '{"rows":[],"row_count":0}' } },
    });
    expect(r.trips).toBe(1);
    expect(r.event).toEqual({ kind: 'done', detail: { result: '{"rows":[],"row_count":0}' } });
    expect(await count('effects')).toBe(1);
    expect(r.conn).toEqual(expect.objectContaining({ broken: false, clean: true }));
    // the same text again (its plan cached): one round trip again
    expect((await step('INSERT INTO effects VALUES (2)', c)).trips).toBe(1);
    expect(await count('effects')).toBe(2);
    await c.end();
  });

  it('asked not to (alone, its mark still on the way), an INSERT takes two, with the same outcome', async () => {
    const c = await db.connect(bob.url);
    const r = await step('INSERT INTO effects VALUES (3)', c, 0, false);
    expect(r.trips).toBe(2);
    expect(r.event).toEqual({ kind: 'done', detail: { result: '{"rows":[],"row_count":0}' } });
    await c.end();
  });

  it('a SELECT takes two (its rows are read before its checkpoint is written)', async () => {
    const c = await db.connect(bob.url);
    const r = await step('SELECT 41 + 1 AS answer', c);
    expect(r.out).toMatchObject({ k: 'done' });
    expect(r.trips).toBe(2);
    expect(r.event?.detail.result).toBe('{"rows":[{"answer":42}],"row_count":1}');
    await c.end();
  });

  it("a table's rules: the outcome a prepared statement gets (a rule's rows dropped, its writes made)", async () => {
    const c = await db.connect(bob.url);
    // an INSTEAD rule's SELECT: a prepared statement returns none of its rows, nor does the step
    const r = await step('INSERT INTO ruled VALUES (1)', c);
    expect(r.event).toEqual({ kind: 'done', detail: { result: '{"rows":[],"row_count":0}' } });
    expect(r.trips).toBe(1);
    expect(await count('ruled')).toBe(0);
    // an ALSO rule's write commits with the step
    const also = await step('INSERT INTO ruled_also VALUES (1)', c);
    expect(also.out).toMatchObject({ k: 'done' });
    expect(await count('ruled_also')).toBe(1);
    expect(
      (await db.admin.query(`SELECT count(*)::int AS n FROM effects WHERE n = 99`)).rows[0].n,
    ).toBe(1);
    await c.end();
  });

  it("a rule's rows are dropped as they come, however many; one row over the cap cuts the connection, and the effect lands once", async () => {
    const c = await db.connect(bob.url);
    await b.query(`CREATE TABLE many_rows (n int)`);
    await b.query(
      `CREATE RULE rows_back AS ON UPDATE TO many_rows DO ALSO SELECT repeat('x', 1000) FROM generate_series(1, 5000)`,
    );
    await b.query(`INSERT INTO many_rows VALUES (1)`);
    const { instance, node } = await inFlight();
    const conn = stepConn(c);
    const req = { instance, node, key: 'k1', epoch: 7, token: 'tok', stamp: 's' };
    // 5 MB of rows against a cap of 100 kB: dropped, the step done in one round trip
    expect(
      await runSqlStep(
        conn,
        { ...req, sql: 'UPDATE many_rows SET n = n + 1' },
        undefined,
        0,
        100_000,
      ),
    ).toMatchObject({ k: 'done', event: { detail: { result: '{"rows":[],"row_count":0}' } } });
    expect((await db.admin.query(`SELECT n FROM many_rows`)).rows).toEqual([{ n: 2 }]);

    await b.query(`CREATE TABLE big_row (n int)`);
    await b.query(
      `CREATE RULE row_back AS ON UPDATE TO big_row DO ALSO SELECT repeat('x', 1000000)`,
    );
    await b.query(`INSERT INTO big_row VALUES (1)`);
    const second = await inFlight();
    const req2 = { ...req, ...second, sql: 'UPDATE big_row SET n = n + 1' };
    const pid = (c as unknown as { processID: number }).processID;
    const first = await runSqlStep(conn, req2, undefined, 0, 100_000);
    expect(first.k).toBe('retry');
    expect(conn.broken).toBe(true);
    // its backend ends (its COMMIT may have run): then the next attempt, the other way
    for (let i = 0; i < 200; i++) {
      const left = await db.admin.query(`SELECT 1 FROM pg_stat_activity WHERE pid = $1`, [pid]);
      if (left.rows.length === 0) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const c2 = await db.connect(bob.url);
    const conn2 = stepConn(c2);
    const trips = countTrips(c2);
    const again = await runSqlStep(conn2, req2, undefined, 0, 100_000);
    // done now, or refused because the first attempt's COMMIT ran (its outcome stands): once either way
    expect(['done', 'abandoned']).toContain(again.k);
    expect(trips.n).toBeGreaterThanOrEqual(2);
    expect((await db.admin.query(`SELECT n FROM big_row`)).rows).toEqual([{ n: 2 }]);
    const events = await db.admin.query(
      `SELECT kind FROM df.events WHERE instance_id = $1 AND activation = 'k1'`,
      [second.instance],
    );
    expect(events.rows).toEqual([{ kind: 'done' }]);
    await c2.end();
  });

  it('a failing statement: nothing of the trip commits, the failure is recorded, the connection kept', async () => {
    const c = await db.connect(bob.url);
    const before = await count('effects');
    const r = await step('INSERT INTO effects VALUES (1 / 0)', c);
    expect(r.out).toMatchObject({
      k: 'failed',
      error: 'SQL execution failed: error returned from database: division by zero',
    });
    expect(r.event).toEqual({
      kind: 'failed',
      detail: { error: 'SQL execution failed: error returned from database: division by zero' },
    });
    expect(await count('effects')).toBe(before);
    expect(r.conn.broken).toBe(false);
    expect((await c.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    await c.end();
  });

  it('a stray parameter fails as it does in the other path', async () => {
    const c = await db.connect(bob.url);
    const r = await step('UPDATE effects SET n = n WHERE n = $1', c);
    expect(r.out).toMatchObject({ k: 'failed' });

    expect((r.out as { error: string }).error).toMatch(
      /^SQL execution failed: error returned from database: bind message supplies 0 parameters, but prepared statement "" requires 1$/,
    );
    await c.end();
  });

  it('a deferred constraint fails at the checkpoint: the step fails, nothing commits', async () => {
    const c = await db.connect(bob.url);
    const r = await step('INSERT INTO child VALUES (42)', c);
    expect(r.out).toMatchObject({ k: 'failed' });
    expect((r.out as { error: string }).error).toMatch(
      /^SQL execution failed: error returned from database: insert or update on table "child" violates foreign key constraint/,
    );
    expect(await count('child')).toBe(0);
    await c.end();
  });

  it("the step's statement_timeout holds", async () => {
    const c = await db.connect(bob.url);
    const r = await step('INSERT INTO effects SELECT 1 FROM pg_sleep(3)', c, 200);
    expect(r.out).toMatchObject({
      k: 'failed',
      error:
        'SQL execution failed: error returned from database: canceling statement due to statement timeout',
    });
    await c.end();
  });

  it('the session is reset in the same trip: what a trigger left behind is gone', async () => {
    const c = await db.connect(bob.url);
    const r = await step('INSERT INTO dirty VALUES (1)', c);
    expect(r.out).toMatchObject({ k: 'done' });
    expect(r.trips).toBe(1);
    expect(r.conn.clean).toBe(true);
    const s = await c.query(
      `SELECT current_setting('trip_test.left', true) AS left,
              (SELECT count(*)::int FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS locks`,
    );
    expect(s.rows[0]).toEqual({ left: '', locks: 0 });
    await c.end();
  });
});
