/** Role isolation (DESIGN.md §4 "Identity"): a step of role A reaches nothing of role B's, whatever it tries. */
import type pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { finished, startTestExecutor } from '../harness/executor.js';

const db = useTestDatabase();
let alice: TestRole;
let bob: TestRole;
let a: pg.Client;

beforeAll(async () => {
  alice = await db.role('alice');
  bob = await db.role('bob');
  a = await db.connect(alice.url);
  const b = await db.connect(bob.url);
  await b.query(`CREATE TABLE bob_secret (s text); INSERT INTO bob_secret VALUES ('bob only')`);
  await a.query(`CREATE TABLE alice_log (who text, what text)`);
  await startTestExecutor(db.url);
});

async function step(
  sql: string,
): Promise<{ status: string; error: string | null; result: string | null }> {
  const id = (await a.query(`SELECT df.start($1) AS id`, [sql])).rows[0].id as string;
  const r = await finished(a, id);
  const n = (
    await a.query(`SELECT result #>> '{}' AS e FROM df.nodes WHERE instance_id = $1`, [id])
  ).rows[0];
  return {
    status: r.status,
    result: r.result,
    error: r.status === 'failed' ? (n?.e ?? null) : null,
  };
}

describe('steps run as the submitter and cannot escape', () => {
  it('current_user is the submitter; the session user is its step login, a member of that role only', async () => {
    const r = await step(
      `SELECT current_user AS cu, session_user AS su, (SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = session_user) AS memberships`,
    );
    const row = JSON.parse(r.result as string).rows[0];
    expect(row.cu).toBe(alice.name);
    expect(row.su).toMatch(/^dfgate_step_\d+$/);
    expect(row.memberships).toBe(1);
  });

  it('reading B’s table is denied', async () => {
    const r = await step(`SELECT * FROM public.bob_secret`);
    expect(r.status).toBe('failed');
    expect(r.error).toContain('permission denied for table bob_secret');
  });

  it.each([
    ['RESET ROLE', 'changing the role'],
    [`SET ROLE bob_placeholder`, 'changing the role'],
    [`SET SESSION AUTHORIZATION bob_placeholder`, 'changing the role'],
    [
      `SELECT set_config('role', 'bob_placeholder', false)`,
      "changing the role (set_config('role', …))",
    ],
    [`BEGIN`, 'transaction control statements'],
    [`DECLARE c CURSOR WITH HOLD FOR SELECT 1`, 'holdable cursors'],
  ])('%s is refused by parse tree', async (sql, msg) => {
    const r = await step(sql.replace('bob_placeholder', bob.ident));
    expect(r.status).toBe('failed');
    expect(r.error).toContain(msg);
  });

  it('dynamic SQL in a DO block cannot take B’s role: the step login holds only A', async () => {
    const r = await step(
      `DO $$ BEGIN EXECUTE 'SET ROLE ${bob.name}'; EXECUTE 'INSERT INTO public.alice_log SELECT current_user, s FROM public.bob_secret'; END $$`,
    );
    expect(r.status).toBe('failed');
    expect(r.error).toMatch(/permission denied to set role|must be member of role/);
    const r2 = await step(
      `DO $$ BEGIN EXECUTE 'RESET ROLE'; INSERT INTO public.alice_log VALUES (current_user, 'after reset'); END $$`,
    );
    // RESET ROLE inside dynamic SQL returns to the step login, which has nothing of its own
    expect(r2.status).toBe('failed');
    expect(r2.error).toContain('permission denied');
  });

  it('a function with a SET role clause cannot be created for B, and set_config in dynamic SQL fails', async () => {
    const r = await step(`DO $$ BEGIN PERFORM set_config('role', '${bob.name}', false); END $$`);
    expect(r.status).toBe('failed');
    expect(r.error).toMatch(/permission denied to set role|must be member of role/);
  });

  it('a function with a SET role clause naming B fails when the step calls it', async () => {
    // A's own step may not even create it ...
    const create = await step(
      `CREATE FUNCTION public.as_bob_a() RETURNS text LANGUAGE sql SET role = ${bob.ident} AS 'SELECT current_user::text'`,
    );
    expect(create.status).toBe('failed');
    expect(create.error).toMatch(/permission denied to set role/);
    // ... and one prepared by an administrator fails when the step calls it
    await db.admin.query(
      `CREATE FUNCTION public.as_bob() RETURNS text LANGUAGE sql SET role = ${bob.ident} AS 'SELECT current_user::text'`,
    );
    await db.admin.query(`GRANT EXECUTE ON FUNCTION public.as_bob() TO ${alice.ident}`);
    const r = await step(`SELECT public.as_bob() AS who`);
    expect(r.status).toBe('failed');
    expect(r.error).toMatch(/permission denied to set role|must be member of role/);
  });

  it('a deferred constraint trigger fires as the submitter, inside the step', async () => {
    await a.query(`CREATE TABLE deferred_t (id int);
      CREATE FUNCTION note_deferred() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO public.alice_log VALUES (current_user, 'deferred'); RETURN NULL; END $$;
      CREATE CONSTRAINT TRIGGER deferred_note AFTER INSERT ON deferred_t DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION note_deferred();`);
    const r = await step(`INSERT INTO public.deferred_t VALUES (1)`);
    expect(r.status).toBe('completed');
    const log = (await a.query(`SELECT who FROM alice_log WHERE what = 'deferred'`)).rows;
    expect(log).toEqual([{ who: alice.name }]);
  });

  it('session state left by one step does not reach the next', async () => {
    await db.admin.query(`CREATE SCHEMA trap AUTHORIZATION ${alice.ident}`);
    await a.query(`CREATE TABLE trap.alice_log (who text, what text)`);
    const id = (
      await a.query(
        `SELECT df.start($$SET search_path = trap, public$$ ~> $$CREATE TEMP TABLE tmp_x (a int)$$ ~> $$SELECT current_setting('search_path') AS sp, to_regclass('pg_temp.tmp_x') IS NULL AS no_temp$$) AS id`,
      )
    ).rows[0].id;
    const r = await finished(a, id);
    expect(r.status).toBe('completed');
    const row = JSON.parse((r.result as string).replace(/\s/g, '')).rows[0];
    expect(row.sp).not.toContain('trap');
    expect(row.no_temp).toBe(true);
  });

  it('the role’s own settings apply to its steps; one only a superuser may set is left out, not fatal', async () => {
    const carol = await db.role('carol');
    // log_min_duration_statement: a superuser-only parameter, set for carol by a superuser
    await db.admin.query(
      `ALTER ROLE ${carol.ident} SET work_mem = '7MB'; ALTER ROLE ${carol.ident} SET log_min_duration_statement = -1; ALTER ROLE ${carol.ident} SET lock_timeout = '9s'`,
    );
    const c = await db.connect(carol.url);
    const id = (
      await c.query(
        `SELECT df.start($$SELECT current_setting('work_mem') AS wm, current_setting('lock_timeout') AS lt$$) AS id`,
      )
    ).rows[0].id;
    const r = await finished(c, id);
    expect(r.status).toBe('completed');
    const row = JSON.parse(r.result as string).rows[0];
    expect(row).toEqual({ wm: '7MB', lt: '9s' });
    await c.end();
  });

  it('the control tables stay out of reach', async () => {
    const r = await step(`UPDATE df.instances SET runnable = true`);
    expect(r.status).toBe('failed');
    const r2 = await step(`SELECT df._record_event('00000000', 1, 'x', 'y', 'done', '{}')`);
    expect(r2.status).toBe('failed');
    expect(r2.error).toContain('permission denied for function _record_event');
  });
});
