/**
 * Function privileges (docs/security.md "Function privileges"): every function
 * in schema df against the table in the docs, no answers about other roles'
 * instances, df.role_grants from the catalog, df.version() for granted roles.
 */
import { readFileSync } from 'node:fs';
import type pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { rolesSql } from '../../src/roles.js';
import { useTestDatabase, type TestRole } from '../harness/db.js';

const db = useTestDatabase();
let alice: TestRole;
let bob: TestRole;
let a: pg.Client;
let b: pg.Client;

beforeAll(async () => {
  alice = await db.role('alice');
  bob = await db.role('bob');
  a = await db.connect(alice.url);
  b = await db.connect(bob.url);
});

interface DocRow {
  readonly public: string;
  readonly granted: string;
  readonly ungranted: string;
  readonly executor: string;
  readonly definer: string;
}

/** The function privilege table of docs/security.md, by signature. */
function docTable(): Map<string, DocRow> {
  const lines = readFileSync('docs/security.md', 'utf8').split('\n');
  const start = lines.findIndex(
    (l) => /^\|\s*function\s*\|/.test(l) && l.includes('SECURITY DEFINER'),
  );
  expect(start, 'the function privilege table in docs/security.md').toBeGreaterThan(0);
  const header = (lines[start] as string)
    .split('|')
    .slice(1, -1)
    .map((c) => c.trim());
  expect(header.slice(0, 6)).toEqual([
    'function',
    'PUBLIC',
    'granted role',
    'ungranted login',
    'df_executor',
    'SECURITY DEFINER',
  ]);
  const out = new Map<string, DocRow>();
  for (const line of lines.slice(start + 2)) {
    if (!line.startsWith('|')) break;
    const c = line
      .split('|')
      .slice(1, -1)
      .map((x) => x.trim());
    const sig = (c[0] ?? '').replace(/^`|`$/g, '');
    expect(out.has(sig), `duplicate row ${sig}`).toBe(false);
    out.set(sig, {
      public: c[1] ?? '',
      granted: c[2] ?? '',
      ungranted: c[3] ?? '',
      executor: c[4] ?? '',
      definer: c[5] ?? '',
    });
  }
  return out;
}

const yn = (v: boolean): string => (v ? 'yes' : 'no');

describe('function privileges', () => {
  it('every df function has a row in docs/security.md, and its EXECUTE privileges and SECURITY DEFINER flag match it', async () => {
    const http = await db.role('http', { http: true });
    const deleg = await db.role('deleg', { grant: false });
    await db.admin.query(`SELECT df.grant_usage($1, with_grant => true)`, [deleg.name]);
    const none = await db.role('none', { grant: false });
    const can = (role: string): string =>
      `(has_schema_privilege('${role}', 'df', 'USAGE') AND has_function_privilege('${role}', p.oid, 'EXECUTE'))`;
    const r = await db.admin.query<{
      sig: string;
      pub: boolean;
      plain: boolean;
      http: boolean;
      deleg: boolean;
      none: boolean;
      ex: boolean;
      sd: boolean;
    }>(
      `SELECT p.oid::regprocedure::text AS sig,
              (p.proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) x
                                            WHERE x.grantee = 0 AND x.privilege_type = 'EXECUTE')) AS pub,
              ${can(alice.name)} AS plain, ${can(http.name)} AS http, ${can(deleg.name)} AS deleg,
              ${can(none.name)} AS none, ${can('df_executor')} AS ex, p.prosecdef AS sd
         FROM pg_proc p WHERE p.pronamespace = 'df'::regnamespace ORDER BY 1`,
    );
    const doc = docTable();
    const inDb = new Set(r.rows.map((x) => x.sig));
    expect(
      r.rows.map((x) => x.sig).filter((s) => !doc.has(s)),
      'functions without a row in docs/security.md',
    ).toEqual([]);
    expect(
      [...doc.keys()].filter((s) => !inDb.has(s)),
      'rows of docs/security.md naming no function',
    ).toEqual([]);
    const mismatches: string[] = [];
    for (const row of r.rows) {
      const d = doc.get(row.sig) as DocRow;
      // the granted-role column: yes, or only with include_http / with_grant, or no
      const granted = row.plain
        ? 'yes'
        : row.http && !row.deleg
          ? 'include_http'
          : row.deleg && !row.http
            ? 'with_grant'
            : row.http || row.deleg
              ? 'include_http and with_grant'
              : 'no';
      const actual: DocRow = {
        public: yn(row.pub),
        granted,
        ungranted: yn(row.none),
        executor: yn(row.ex),
        definer: yn(row.sd),
      };
      if (JSON.stringify(actual) !== JSON.stringify(d))
        mismatches.push(
          `${row.sig}: docs ${JSON.stringify(d)}, database ${JSON.stringify(actual)}`,
        );
    }
    expect(mismatches).toEqual([]);
  });

  it('every SECURITY DEFINER function, and every other that pins one, pins search_path to pg_catalog, pg_temp', async () => {
    // pg_temp last: with pg_catalog alone, a temporary table named pg_roles would be found first
    const r = await db.admin.query<{ sig: string }>(
      `SELECT p.oid::regprocedure::text AS sig FROM pg_proc p
        WHERE p.pronamespace = 'df'::regnamespace
          AND (p.prosecdef OR EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%'))
          AND NOT COALESCE('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false) ORDER BY 1`,
    );
    expect(r.rows).toEqual([]);
  });

  it('df.version() works for a granted role', async () => {
    expect((await a.query(`SELECT df.version() AS v`)).rows[0].v).toMatch(
      /^0\.2\.6 \(dfgate schema \d+\)$/,
    );
    for (const table of ['df.schema_migrations', 'df.config'])
      await expect(a.query(`SELECT * FROM ${table}`), table).rejects.toMatchObject({
        code: '42501',
      });
  });
});

describe('df.role_grants', () => {
  it('df.role_grants is the catalog’s truth: a granted role can record nothing there, not a superuser, not granted_by', async () => {
    const me = (await db.admin.query(`SELECT current_user AS u`)).rows[0].u as string;
    const lead = await db.role('lead', { grant: false });
    await db.admin.query(`SELECT df.grant_usage($1, with_grant => true)`, [lead.name]);
    const dave = await db.role('dave', { grant: false });
    const l = await db.connect(lead.url);
    await l.query(`SELECT df.grant_usage($1)`, [dave.name]);
    // the reported attack: a granted role records the superuser for `dfgate roles`
    await expect(a.query(`SELECT df._record_grant($1)`, [me])).rejects.toMatchObject({
      code: '42883',
    });
    await expect(a.query(`SELECT df._record_grant($1)`, [dave.name])).rejects.toMatchObject({
      code: '42883',
    });
    await expect(
      a.query(`INSERT INTO df.role_grants VALUES ($1, true, 'x')`, [me]),
    ).rejects.toThrow(); // a view of the catalog: nothing to write
    await expect(a.query(`SELECT * FROM df.role_grants`)).rejects.toMatchObject({
      code: '42501',
    });
    const rows = (
      await db.admin.query<{ role_name: string; include_http: boolean; granted_by: string }>(
        `SELECT role_name, include_http, granted_by FROM df.role_grants WHERE role_name = ANY ($1) ORDER BY 1`,
        [[me, alice.name, bob.name, lead.name, dave.name]],
      )
    ).rows;
    expect(rows).toEqual(
      [
        { role_name: alice.name, include_http: false, granted_by: me },
        { role_name: bob.name, include_http: false, granted_by: me },
        { role_name: dave.name, include_http: false, granted_by: lead.name },
        { role_name: lead.name, include_http: false, granted_by: me },
      ].sort((x, y) => (x.role_name < y.role_name ? -1 : 1)),
    );
    const sql = await rolesSql(db.url, 'test-step-secret');
    expect(sql).not.toContain(`GRANT "${me}" TO`);
    expect(sql).toContain(`GRANT "${dave.name}" TO`);
    // a superuser given usage explicitly is printed only while superuser instances are enabled
    const boss = await db.role('boss', { superuser: true });
    expect(await rolesSql(db.url, 'test-step-secret')).not.toContain(`GRANT "${boss.name}" TO`);
    await db.admin.query(
      `UPDATE df.config SET value = 'true' WHERE key = 'enable_superuser_instances'`,
    );
    expect(await rolesSql(db.url, 'test-step-secret')).toContain(`GRANT "${boss.name}" TO`);
    await db.admin.query(
      `UPDATE df.config SET value = 'false' WHERE key = 'enable_superuser_instances'`,
    );
    // revoking removes the row at once
    await l.query(`SELECT df.revoke_usage($1)`, [dave.name]);
    expect(
      (
        await db.admin.query(`SELECT count(*)::int AS n FROM df.role_grants WHERE role_name = $1`, [
          dave.name,
        ])
      ).rows[0].n,
    ).toBe(0);
  });
});

describe('instances of other roles', () => {
  it('a caller learns nothing about another role’s instance: every function answers as for an unknown id, without waiting for its lock', async () => {
    const bobId = (
      await b.query(`SELECT df.start(df.wait_for_signal('go') ~> 'SELECT 1', 'bob-wf') AS id`)
    ).rows[0].id as string;
    // give bob's instance the state a running one has: a lease epoch, a node with an attempt token
    await db.admin.query(
      `UPDATE df.instances SET lease_epoch = 7, status = 'running' WHERE id = $1`,
      [bobId],
    );
    await db.admin.query(
      `UPDATE df.nodes SET activation = 'k1', attempt_token = encode(sha256('secret'::bytea), 'hex') WHERE instance_id = $1`,
      [bobId],
    );
    const node = (
      await db.admin.query(`SELECT root_node AS n FROM df.instances WHERE id = $1`, [bobId])
    ).rows[0].n as string;
    let unknown = '';
    do {
      unknown = Math.floor(Math.random() * 0xffffffff)
        .toString(16)
        .padStart(8, '0');
    } while (
      (await db.admin.query(`SELECT 1 FROM df.instances WHERE id = $1`, [unknown])).rowCount
    );
    const calls: string[] = [
      `SELECT df._complete_step($1, '${node}', 'k1', 7, 'guess', 'done', '{"result":"x"}')`,
      `SELECT df._complete_step($1, '${node}', 'k1', 7, 'guess', 'done', '{"result":"x"}', 's')`,
      `SELECT df._activate($1)`,
      `SELECT df._activate($1, '{}')`,
      `SELECT df._activate_graph($1, '${node}', NULL, '{}')`,
      `SELECT df._record_event($1, 7, NULL, NULL, 'x', '{}')`,
      `SELECT df.signal($1, 'go')`,
      `SELECT df.cancel($1)`,
      `SELECT df.status($1)`,
      `SELECT df.result($1)`,
      `SELECT df.await_instance($1, 1)`,
      `SELECT * FROM df.instance_info($1)`,
      `SELECT * FROM df.instance_executions($1)`,
      `SELECT * FROM df.instance_nodes($1)`,
      `SELECT * FROM df.instance_nodes($1, 1)`,
      `SELECT df.explain($1)`,
      `SELECT df._root_generation($1)`,
      `SELECT df._output($1)`,
      `SELECT * FROM df._derived_status($1)`,
    ];
    const answer = async (sql: string, id: string): Promise<string> => {
      try {
        const r = await a.query({ text: sql, values: [id], rowMode: 'array' });
        return JSON.stringify({ rows: r.rows }).replaceAll(id, '<id>');
      } catch (err) {
        const e = err as { code?: string; message: string; detail?: string; hint?: string };
        return JSON.stringify({
          code: e.code,
          message: e.message,
          detail: e.detail,
          hint: e.hint,
        }).replaceAll(id, '<id>');
      }
    };
    // the administrator holds bob's row locked: an answer that waits for it would time out (55P03)
    const holder = await db.connect(db.url);
    await holder.query('BEGIN');
    await holder.query(`SELECT 1 FROM df.instances WHERE id = $1 FOR UPDATE`, [bobId]);
    await a.query(`SET lock_timeout = '300ms'`);
    const differ: string[] = [];
    try {
      for (const sql of calls) {
        const mine = await answer(sql, bobId);
        const none = await answer(sql, unknown);
        if (mine !== none) differ.push(`${sql}\n  bob's id: ${mine}\n  unknown: ${none}`);
      }
    } finally {
      await a.query(`RESET lock_timeout`);
      await holder.query('ROLLBACK');
    }
    expect(differ).toEqual([]);
    // and bob's instance is untouched
    const row = (
      await db.admin.query(
        `SELECT status, lease_epoch::int AS e, event_seq::int AS s, runnable FROM df.instances WHERE id = $1`,
        [bobId],
      )
    ).rows[0];
    expect(row).toEqual({ status: 'running', e: 7, s: 0, runnable: true });
    expect(
      (
        await db.admin.query(`SELECT count(*)::int AS n FROM df.signals WHERE instance_id = $1`, [
          bobId,
        ])
      ).rows[0].n,
    ).toBe(0);
  }, 30_000);
});
