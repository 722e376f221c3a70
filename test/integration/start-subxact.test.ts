/**
 * df.start inside subtransactions (savepoints, PL/pgSQL exception blocks,
 * triggers fired inside either), through dfgate and on a direct connection,
 * from node-postgres, psql (ON_ERROR_ROLLBACK) and psycopg2; and on a cluster
 * past its first xid epoch.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { migrate } from '../../src/db/migrate.js';
import { serverOsUser, startCluster } from '../../src/pg/cluster.js';
import { clientBin } from '../harness/bins.js';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { startTestProxy, viaPort } from '../harness/dfgate.js';
import { finished, startTestExecutor } from '../harness/executor.js';

const db = useTestDatabase();
let alice: TestRole;
let proxied: string;
let admin: pg.Client;

beforeAll(async () => {
  alice = await db.role('alice');
  admin = db.admin;
  proxied = viaPort(alice.url, (await startTestProxy(db.url)).port);
  await startTestExecutor(db.url);
  await admin.query(`CREATE TABLE public.orders (id int PRIMARY KEY, wf text)`);
  await admin.query(`GRANT ALL ON public.orders TO ${alice.ident}`);
  await admin.query(`CREATE FUNCTION public.start_order() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN NEW.wf := df.start('SELECT ' || NEW.id, 'order-' || NEW.id); RETURN NEW; END $$`);
  await admin.query(
    `CREATE TRIGGER orders_start BEFORE INSERT ON public.orders FOR EACH ROW EXECUTE FUNCTION public.start_order()`,
  );
});

let seq = 0;
function label(what: string): string {
  seq += 1;
  return `${what}-${seq}`;
}

/** The single value of a `SELECT <n>` step's df.result (undefined when there is none). */
function value(result: string | null): unknown {
  if (result === null) return undefined;
  const r = JSON.parse(result) as { rows?: Array<Record<string, unknown>> };
  return r.rows?.[0]?.['?column?'];
}

/** The instances with this label once finished: status and the value their `SELECT <n>` returned. */
async function instances(
  lbl: string,
): Promise<Array<{ id: string; status: string; result: unknown }>> {
  const ids = (
    await admin.query<{ id: string }>(
      `SELECT id FROM df.instances WHERE label = $1 ORDER BY created_at, id`,
      [lbl],
    )
  ).rows;
  const out: Array<{ id: string; status: string; result: unknown }> = [];
  for (const { id } of ids) {
    const f = await finished(admin, id);
    out.push({ id, status: f.status, result: value(f.result) });
  }
  return out;
}

for (const via of ['direct', 'dfgate'] as const) {
  describe(`df.start in subtransactions (${via})`, () => {
    let c: pg.Client;
    beforeAll(async () => {
      c = await db.connect(via === 'direct' ? alice.url : proxied);
    });
    // a failed test must not leave the next one inside its aborted transaction
    afterEach(async () => {
      await c.query('ROLLBACK');
    });

    it('the statements of the issue: a savepoint and a DO block with an exception handler', async () => {
      const l1 = label('sp');
      await c.query('BEGIN');
      await c.query('SAVEPOINT s');
      const started = await c.query<{ id: string }>(`SELECT df.start('SELECT 1', $1) AS id`, [l1]);
      expect(started.rows[0]?.id).toMatch(/^[0-9a-f]{8}$/);
      await c.query('COMMIT');
      expect(await instances(l1)).toEqual([
        { id: started.rows[0]?.id, status: 'completed', result: 1 },
      ]);

      const l2 = label('do');
      const notices: string[] = [];
      c.on('notice', (n) => notices.push(n.message ?? ''));
      try {
        await c.query(
          `DO $$ BEGIN BEGIN PERFORM df.start('SELECT 2', '${l2}'); EXCEPTION WHEN others THEN RAISE NOTICE '%', SQLERRM; END; END $$`,
        );
      } finally {
        c.removeAllListeners('notice');
      }
      expect(notices).toEqual([]);
      expect((await instances(l2)).map((i) => [i.status, i.result])).toEqual([['completed', 2]]);
    });

    it('released, rolled back to and nested savepoints: only the surviving starts run, after COMMIT', async () => {
      const keep = label('keep');
      const drop = label('drop');
      await c.query('BEGIN');
      await c.query(`SELECT df.start('SELECT 10', $1)`, [keep]); // top level first
      await c.query('SAVEPOINT a');
      await c.query(`SELECT df.start('SELECT 11', $1)`, [keep]);
      await c.query('SAVEPOINT b');
      await c.query(`SELECT df.start('SELECT 12', $1)`, [keep]);
      await c.query('RELEASE SAVEPOINT b');
      await c.query('SAVEPOINT c');
      await c.query(`SELECT df.start('SELECT 13', $1)`, [drop]);
      await c.query('SAVEPOINT d');
      await c.query(`SELECT df.start('SELECT 14', $1)`, [drop]);
      await c.query('ROLLBACK TO SAVEPOINT c');
      await c.query(`SELECT df.start('SELECT 15', $1)`, [keep]); // inside c, after its rollback
      await c.query('RELEASE SAVEPOINT a');
      // nothing is visible to the executor before the top-level commit
      const before = await admin.query(
        `SELECT count(*)::int AS n FROM df.instances WHERE label = ANY($1)`,
        [[keep, drop]],
      );
      expect(before.rows[0]).toEqual({ n: 0 });
      await c.query('COMMIT');
      expect((await instances(keep)).map((i) => [i.status, i.result]).sort()).toEqual([
        ['completed', 10],
        ['completed', 11],
        ['completed', 12],
        ['completed', 15],
      ]);
      expect(await instances(drop)).toEqual([]);
      // no orphaned nodes of the rolled-back starts
      const orphans = await admin.query(
        `SELECT count(*)::int AS n FROM df.nodes n WHERE NOT EXISTS (SELECT 1 FROM df.instances i WHERE i.id = n.instance_id)`,
      );
      expect(orphans.rows[0]).toEqual({ n: 0 });
    });

    it('a start in a savepoint whose whole transaction rolls back leaves nothing', async () => {
      const l = label('txrb');
      await c.query('BEGIN');
      await c.query('SAVEPOINT s');
      await c.query(`SELECT df.start('SELECT 1', $1)`, [l]);
      await c.query('RELEASE SAVEPOINT s');
      await c.query('ROLLBACK');
      expect(await instances(l)).toEqual([]);
    });

    it('exception blocks: a handled error rolls the start back, a clean block keeps it', async () => {
      const kept = label('exc-kept');
      const lost = label('exc-lost');
      await c.query(`DO $$
        BEGIN
          BEGIN
            PERFORM df.start('SELECT 1', '${lost}');
            RAISE EXCEPTION 'boom';
          EXCEPTION WHEN raise_exception THEN NULL;
          END;
          BEGIN
            BEGIN
              PERFORM df.start('SELECT 2', '${kept}');
            EXCEPTION WHEN division_by_zero THEN NULL;
            END;
          EXCEPTION WHEN others THEN NULL;
          END;
        END $$`);
      expect(await instances(lost)).toEqual([]);
      expect((await instances(kept)).map((i) => i.status)).toEqual(['completed']);
    });

    it('past the subtransaction xid cache: 100 writing exception blocks before the start', async () => {
      const l = label('overflow');
      await c.query('BEGIN');
      await c.query(`CREATE TEMP TABLE IF NOT EXISTS scratch (n int)`);
      await c.query(`DO $$ BEGIN FOR i IN 1..100 LOOP
          BEGIN INSERT INTO scratch VALUES (i); EXCEPTION WHEN others THEN NULL; END;
        END LOOP; END $$`);
      await c.query('SAVEPOINT s');
      await c.query(`SELECT df.start('SELECT 1', $1)`, [l]);
      await c.query('RELEASE SAVEPOINT s');
      await c.query('COMMIT');
      expect((await instances(l)).map((i) => i.status)).toEqual(['completed']);
    });

    it('a trigger that starts a workflow, fired inside a savepoint and inside an exception block', async () => {
      const base = via === 'direct' ? 100 : 200;
      await c.query('BEGIN');
      await c.query('SAVEPOINT s');
      await c.query(`INSERT INTO public.orders (id) VALUES ($1), ($2)`, [base + 1, base + 2]);
      await c.query('RELEASE SAVEPOINT s');
      await c.query('SAVEPOINT t');
      await c.query(`INSERT INTO public.orders (id) VALUES ($1)`, [base + 3]);
      await c.query('ROLLBACK TO SAVEPOINT t');
      await c.query('COMMIT');
      await c.query(`DO $$ BEGIN
          BEGIN INSERT INTO public.orders (id) VALUES (${base + 4}); END;
          BEGIN INSERT INTO public.orders (id) VALUES (${base + 5}); RAISE EXCEPTION 'undo';
          EXCEPTION WHEN raise_exception THEN NULL; END;
        END $$`);
      const rows = await admin.query<{ id: number; label: string }>(
        `SELECT o.id, i.label FROM public.orders o JOIN df.instances i ON i.id = o.wf
          WHERE o.id BETWEEN $1 AND $2 ORDER BY o.id`,
        [base, base + 99],
      );
      expect(rows.rows).toEqual([
        { id: base + 1, label: `order-${base + 1}` },
        { id: base + 2, label: `order-${base + 2}` },
        { id: base + 4, label: `order-${base + 4}` },
      ]);
      for (const id of [base + 3, base + 5]) expect(await instances(`order-${id}`)).toEqual([]);
      expect((await instances(`order-${base + 4}`)).map((i) => i.result)).toEqual([base + 4]);
    });

    it('node-postgres: a parameterized (extended protocol) start inside a savepoint', async () => {
      const l = label('pg-ext');
      await c.query('BEGIN');
      await c.query('SAVEPOINT sp1');
      await c.query({ text: 'SELECT df.start($1::text, $2::text) AS id', values: ['SELECT 7', l] });
      await c.query('RELEASE SAVEPOINT sp1');
      await c.query('COMMIT');
      expect((await instances(l)).map((i) => i.result)).toEqual([7]);
    });

    it('psql with ON_ERROR_ROLLBACK on: a start after a failed statement in the same transaction', async () => {
      const l = label('psql');
      const script = [
        '\\set ON_ERROR_ROLLBACK on',
        'BEGIN;',
        'SELECT 1/0;',
        `SELECT df.start('SELECT 8', '${l}') IS NOT NULL AS started;`,
        'COMMIT;',
      ].join('\n');
      const r = await runChild(
        clientBin('psql'),
        ['-X', '--no-psqlrc', '-At', '-d', via === 'direct' ? alice.url : proxied, '-f', '-'],
        script,
      );
      expect(r.err).toMatch(/ERROR:\s+division by zero/);
      expect(r.err).not.toMatch(/in the future|not inserted by this transaction/);
      expect(r.out.trim().split('\n')).toEqual(['BEGIN', 't', 'COMMIT']);
      expect((await instances(l)).map((i) => i.result)).toEqual([8]);
    });

    it('psycopg2: a start inside a nested transaction (savepoint)', async () => {
      const l = label('psycopg2');
      const py = `
import sys, psycopg2
conn = psycopg2.connect(sys.argv[1])
with conn:
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        cur.execute("SAVEPOINT nested")
        cur.execute("SELECT df.start(%s, %s)", ("SELECT 9", sys.argv[2]))
        print(cur.fetchone()[0])
        cur.execute("RELEASE SAVEPOINT nested")
        cur.execute("SAVEPOINT gone")
        cur.execute("SELECT df.start(%s, %s)", ("SELECT 10", sys.argv[2] + "-gone"))
        cur.execute("ROLLBACK TO SAVEPOINT gone")
conn.close()
`;
      const r = await runChild(python(), ['-c', py, via === 'direct' ? alice.url : proxied, l], '');
      expect(r.err).toBe('');
      expect(r.code).toBe(0);
      const rows = await instances(l);
      expect(rows.map((i) => [i.id, i.result])).toEqual([[r.out.trim(), 9]]);
      expect(await instances(`${l}-gone`)).toEqual([]);
    });
  });
}

describe('df._activate still refuses rows of other transactions', () => {
  it('a non-runnable row committed earlier is refused as an unknown id (P0002), also inside a savepoint', async () => {
    const c = await db.connect(alice.url);
    await c.query('BEGIN');
    await c.query(
      `INSERT INTO df.instances (id, label, root_node) VALUES ('01dc0de1', 'planted', '0000a001')`,
    );
    await c.query(
      `INSERT INTO df.nodes (id, instance_id, node_type, query) VALUES ('0000a001', '01dc0de1', 'SQL', 'SELECT 1')`,
    );
    await c.query('COMMIT');
    // the same answer as for an id that does not exist (docs/security.md, threat model)
    await expect(c.query(`SELECT df._activate('01dc0de1')`)).rejects.toMatchObject({
      code: 'P0002',
      message: 'Instance not found or access denied: 01dc0de1',
    });
    await c.query('BEGIN');
    await c.query('SAVEPOINT s');
    await c.query(`INSERT INTO public.orders (id) VALUES (999)`); // the transaction has xids now
    await expect(c.query(`SELECT df._activate('01dc0de1')`)).rejects.toMatchObject({
      code: 'P0002',
    });
    await c.query('ROLLBACK');
  });

  it('df._xid_after widens across an epoch boundary and refuses older xids', async () => {
    const r = await admin.query(`SELECT
        df._xid_after('4294967290'::xid, ((5::numeric * 4294967296) + 4294967280)::text::xid8)::text AS same_epoch,
        df._xid_after('10'::xid, ((5::numeric * 4294967296) + 4294967280)::text::xid8)::text AS next_epoch,
        df._xid_after('4294967200'::xid, ((5::numeric * 4294967296) + 4294967280)::text::xid8)::text AS older,
        df._xid_after('4294967290'::xid, ((6::numeric * 4294967296) + 10)::text::xid8)::text AS older_across,
        df._xid_after('700'::xid, '700'::xid8)::text AS itself`);
    expect(r.rows[0]).toEqual({
      same_epoch: String(5 * 4294967296 + 4294967290),
      next_epoch: String(6 * 4294967296 + 10),
      older: null,
      older_across: null,
      itself: '700',
    });
  });
});

describe('a cluster past its first xid epoch (pg_resetwal --epoch)', () => {
  const bin = [inject('pgBinDir'), '/usr/lib/postgresql/15/bin'].find(
    (d) => d && existsSync(path.join(d, 'pg_resetwal')) && existsSync(path.join(d, 'initdb')),
  );
  const base = mkdtempSync(path.join(tmpdir(), 'dfgate-epoch-'));
  afterAll(() => rmSync(base, { recursive: true, force: true }));

  it('starts in savepoints and exception blocks at epoch 7', { timeout: 120_000 }, async () => {
    expect(bin, 'no PostgreSQL bin directory with pg_resetwal').toBeDefined();
    const opts = { baseDir: base, binDir: bin, password: 'epoch-test', settings: { fsync: 'off' } };
    let cluster = await startCluster(opts);
    await cluster.stop();
    const user = serverOsUser();
    const resetwal = path.join(bin as string, 'pg_resetwal');
    const args = ['--epoch=7', '-D', cluster.dataDir];
    const res = user
      ? spawnSync('runuser', ['-u', 'postgres', '--', resetwal, ...args], { encoding: 'utf8' })
      : spawnSync(resetwal, args, { encoding: 'utf8' });
    expect(res.status, res.stderr).toBe(0);
    cluster = await startCluster(opts);
    try {
      const c = new pg.Client({ connectionString: cluster.url() });
      await c.connect();
      try {
        await migrate(c);
        await c.query(
          `UPDATE df.config SET value = 'true' WHERE key = 'enable_superuser_instances'`,
        );
        const epoch = await c.query<{ e: string }>(
          `SELECT (pg_current_xact_id()::text::numeric / 4294967296)::bigint::text AS e`,
        );
        expect(epoch.rows[0]?.e).toBe('7');
        await c.query('BEGIN');
        await c.query(`SELECT df.start('SELECT 1', 'epoch-top')`);
        await c.query('SAVEPOINT a');
        await c.query(`SELECT df.start('SELECT 1', 'epoch-sp')`);
        await c.query('SAVEPOINT b');
        await c.query(`SELECT df.start('SELECT 1', 'epoch-nested')`);
        await c.query('RELEASE SAVEPOINT b');
        await c.query('SAVEPOINT c');
        await c.query(`SELECT df.start('SELECT 1', 'epoch-gone')`);
        await c.query('ROLLBACK TO SAVEPOINT c');
        await c.query('COMMIT');
        await c.query(`DO $$ BEGIN BEGIN PERFORM df.start('SELECT 1', 'epoch-do'); END; END $$`);
        const rows = await c.query(`SELECT label, runnable FROM df.instances ORDER BY label`);
        expect(rows.rows).toEqual([
          { label: 'epoch-do', runnable: true },
          { label: 'epoch-nested', runnable: true },
          { label: 'epoch-sp', runnable: true },
          { label: 'epoch-top', runnable: true },
        ]);
      } finally {
        await c.end();
      }
    } finally {
      await cluster.stop();
    }
  });
});

/** A Python 3 that has psycopg2 (Debian's python3-psycopg2 lives in /usr/bin/python3). */
function python(): string {
  for (const p of ['/usr/bin/python3', 'python3']) {
    const r = spawnSync(p, ['-c', 'import psycopg2'], { encoding: 'utf8' });
    if (r.status === 0) return p;
  }
  throw new Error('psycopg2 not found: apt-get install python3-psycopg2 (the CI script does)');
}

interface Run {
  readonly code: number | null;
  readonly out: string;
  readonly err: string;
}

/** Runs a client without blocking the event loop (the proxy under test lives in this process). */
function runChild(bin: string, args: string[], input: string): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(bin, args, {
      env: { ...process.env, PAGER: '', PGCONNECT_TIMEOUT: '10' },
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, out, err: err.replace(/WARNING:\s+psql major version.*\n.*\n/g, '') });
    });
    child.stdin.end(input);
  });
}
