/**
 * Migration 0034 replaced the CHECK constraints of df.nodes and df.instances
 * with one check each that calls a PL/pgSQL function. It must refuse exactly
 * the rows the old constraints refused, naming the same constraint with the
 * same SQLSTATE and message. The test builds the old constraints from the
 * migrations that declared them (0001, 0014) on copies of the columns
 * (schema `oracle`), the new check as installed on another copy (schema
 * `fresh`), inserts every combination of good, bad and NULL values into both
 * and compares what each answered, then does the same for updates. Real
 * PostgreSQL; PostgreSQL itself is the oracle.
 */
import { readFileSync } from 'node:fs';
import type pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { useTestDatabase, type TestRole } from '../harness/db.js';

const db = useTestDatabase();
let role: TestRole;
let c: pg.Client;

/** `CONSTRAINT <name> CHECK (<expr>)` clauses of a migration, with balanced parentheses. */
function checksOf(file: string, prefix: string): string[] {
  const text = readFileSync(new URL(`../../migrations/${file}`, import.meta.url), 'utf8');
  const out: string[] = [];
  const re = new RegExp(`CONSTRAINT (${prefix}\\w+_check) CHECK \\(`, 'g');
  for (let m = re.exec(text); m; m = re.exec(text)) {
    let depth = 1;
    let i = m.index + m[0].length;
    for (; depth > 0; i++) depth += text[i] === '(' ? 1 : text[i] === ')' ? -1 : 0;
    out.push(text.slice(m.index, i));
  }
  return out;
}

const NODE_COLUMNS = `id varchar(8) NOT NULL, instance_id varchar(8) NOT NULL, node_type text NOT NULL,
  query text, result_name text, left_node varchar(8), right_node varchar(8),
  status text NOT NULL DEFAULT 'pending', result jsonb`;
const INSTANCE_COLUMNS = `id varchar(8) NOT NULL, root_node varchar(8) NOT NULL,
  status text NOT NULL DEFAULT 'pending', on_failure_instance varchar(8)`;

beforeAll(async () => {
  role = await db.role('rowcheck');
  c = await db.connect(role.url);
  const nodeChecks = checksOf('0001_storage.sql', 'nodes_');
  const instanceChecks = [
    ...checksOf('0001_storage.sql', 'instances_'),
    ...checksOf('0014_retry.sql', 'instances_'),
  ];
  expect(nodeChecks).toHaveLength(9);
  expect(instanceChecks).toHaveLength(4);
  const installed = async (name: string): Promise<string> =>
    (
      await db.admin.query<{ d: string }>(
        `SELECT pg_get_constraintdef(oid) AS d FROM pg_constraint WHERE conname = $1`,
        [name],
      )
    ).rows[0]?.d.replace(/ NOT VALID$/, '') as string;
  await db.admin.query(`
    CREATE SCHEMA oracle; CREATE SCHEMA fresh;
    CREATE TABLE oracle.nodes (${NODE_COLUMNS}, ${nodeChecks.join(', ')});
    CREATE TABLE oracle.instances (${INSTANCE_COLUMNS}, ${instanceChecks.join(', ')});
    CREATE TABLE fresh.nodes (${NODE_COLUMNS}, CONSTRAINT nodes_row_check ${await installed('nodes_row_check')});
    CREATE TABLE fresh.instances (${INSTANCE_COLUMNS},
      CONSTRAINT instances_row_check ${await installed('instances_row_check')});
    -- what one statement answered: ok, or its SQLSTATE, constraint and message
    CREATE FUNCTION pg_temp.answer(sql text) RETURNS text LANGUAGE plpgsql AS $$
    DECLARE s text; k text; m text;
    BEGIN
      EXECUTE sql;
      RETURN 'ok';
    EXCEPTION WHEN OTHERS THEN
      GET STACKED DIAGNOSTICS s = RETURNED_SQLSTATE, k = CONSTRAINT_NAME, m = MESSAGE_TEXT;
      RETURN s || ' ' || k || ' ' || m;
    END $$;
  `);
});

/** Runs each statement template on oracle.<table> and fresh.<table>; the differing answers. */
async function differences(table: string, statements: string[]): Promise<string[]> {
  const r = await db.admin.query<{ sql: string; old: string; new: string }>(
    `SELECT s AS sql, pg_temp.answer(format(s, 'oracle')) AS old, pg_temp.answer(format(s, 'fresh')) AS new
       FROM unnest($1::text[]) s`,
    [statements.map((s) => s.replace(`%s.${table}`, `%I.${table}`))],
  );
  expect(r.rows).toHaveLength(statements.length);
  return r.rows.filter((x) => x.old !== x.new).map((x) => `${x.sql}: ${x.old} vs ${x.new}`);
}

const lit = (v: string | null): string => (v === null ? 'NULL' : `'${v}'`);
const TYPES = ['SQL', 'THEN', 'IF', 'JOIN', 'LOOP', 'BREAK', 'RACE', 'SLEEP'];
const MORE_TYPES = ['WAIT_SCHEDULE', 'HTTP', 'HTTP_MULTIPART', 'SIGNAL', 'NOPE', 'sql'];

describe('the row check of df.nodes (migration 0034)', () => {
  it('refuses the rows the nine old constraints refused, naming the same one', async () => {
    const rows: string[] = [];
    for (const id of ['aaaa0001', 'AAAA0001'])
      for (const inst of ['bbbb0001', 'bbbb001'])
        for (const type of [...TYPES, ...MORE_TYPES])
          for (const left of [null, 'cccc0001', 'cccc'])
            for (const right of [null, 'dddd0001', 'dddd'])
              for (const query of [null, 'SELECT 1'])
                for (const status of ['pending', 'completed', 'failed', 'running', 'done'])
                  for (const result of [null, '1'])
                    for (const name of [null, 'ok_name', 'no way'])
                      rows.push(
                        `(${[id, inst, type, query, name, left, right, status, result].map(lit).join(', ')})`,
                      );
    const statements = rows.map(
      (row) =>
        `INSERT INTO %s.nodes (id, instance_id, node_type, query, result_name, left_node, right_node, status, result) VALUES ${row}`,
    );
    expect(statements.length).toBe(2 * 2 * 14 * 3 * 3 * 2 * 5 * 2 * 3);
    expect(await differences('nodes', statements)).toEqual([]);
    // the same rows were refused on both sides, and not too few of them
    const n = await db.admin.query<{ o: string; f: string }>(
      `SELECT (SELECT count(*) FROM oracle.nodes) AS o, (SELECT count(*) FROM fresh.nodes) AS f`,
    );
    expect(n.rows[0]?.o).toBe(n.rows[0]?.f);
    expect(Number(n.rows[0]?.o)).toBeGreaterThan(100);
    expect(Number(n.rows[0]?.o)).toBeLessThan(statements.length / 4);
  });

  it('checks updates the same way', async () => {
    await db.admin.query(`
      DELETE FROM oracle.nodes; DELETE FROM fresh.nodes;
      INSERT INTO oracle.nodes (id, instance_id, node_type, query) VALUES ('aaaa0001', 'bbbb0001', 'SQL', 'x');
      INSERT INTO fresh.nodes (id, instance_id, node_type, query) VALUES ('aaaa0001', 'bbbb0001', 'SQL', 'x');`);
    const statements: string[] = [];
    for (const status of ['pending', 'completed', 'failed', 'running', 'done', null])
      for (const result of [null, '1'])
        for (const set of [
          `status = ${lit(status)}, result = ${lit(result)}`,
          `left_node = 'eeee', status = ${lit(status)}`,
          `node_type = 'THEN', query = NULL, status = ${lit(status)}`,
          `result_name = 'x y', id = 'EEEE0001'`,
        ])
          statements.push(`UPDATE %s.nodes SET ${set} WHERE id = 'aaaa0001'`);
    expect(await differences('nodes', statements)).toEqual([]);
  });

  it('a role writing df.nodes by hand meets it: 23514 and the old constraint name', async () => {
    const err = await c
      .query(
        `INSERT INTO df.nodes (id, instance_id, node_type, query) VALUES ('aaaa0001', 'bbbb0001', 'THEN', 'x')`,
      )
      .catch((e: unknown) => e);
    expect(err).toMatchObject({
      code: '23514',
      constraint: 'nodes_structure_check',
      table: 'nodes',
      schema: 'df',
      message: 'new row for relation "nodes" violates check constraint "nodes_structure_check"',
    });
  });
});

describe('the row checks and the caller’s search_path', () => {
  it('answer the same when the caller’s own operators ~ and = say yes to everything', async () => {
    await db.admin.query(`
      CREATE SCHEMA evil;
      CREATE FUNCTION evil.yes(text, text) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true';
      CREATE OPERATOR evil.~ (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.yes);
      CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.yes);
      GRANT USAGE ON SCHEMA evil, fresh TO ${role.name};
      GRANT INSERT ON fresh.nodes, fresh.instances TO ${role.name};`);
    const t = await db.connect(role.url);
    await t.query(`SET search_path = evil, pg_catalog`);
    expect((await t.query(`SELECT 'a' ~ 'b' AS m, 'a' = 'b' AS e`)).rows[0]).toEqual({
      m: true,
      e: true,
    });
    const refused = async (sql: string): Promise<unknown> =>
      (await t.query(sql).then(
        () => ({}),
        (e: { code?: string; constraint?: string }) => ({ code: e.code, constraint: e.constraint }),
      )) as unknown;
    const node = (id: string, type: string, left: string | null, query: string | null): string =>
      `INSERT INTO fresh.nodes (id, instance_id, node_type, left_node, query) VALUES (${[id, 'bbbb0001', type, left, query].map(lit).join(', ')})`;
    expect(await refused(node('nothex!!', 'SQL', null, 'x'))).toEqual({
      code: '23514',
      constraint: 'nodes_id_check',
    });
    expect(await refused(node('aaaa0001', 'NOPE', null, 'x'))).toEqual({
      code: '23514',
      constraint: 'nodes_node_type_check',
    });
    expect(await refused(node('aaaa0001', 'THEN', 'cccc0001', 'x'))).toEqual({
      code: '23514',
      constraint: 'nodes_structure_check',
    });
    expect(
      await refused(
        `INSERT INTO fresh.instances (id, root_node, status) VALUES ('aaaa0001', 'bbbb0001', 'gone')`,
      ),
    ).toEqual({ code: '23514', constraint: 'instances_status_check' });
    expect(await refused(node('aaaa0002', 'SQL', null, 'x'))).toEqual({});
  });
});

describe('the row check of df.instances (migration 0034)', () => {
  it('refuses the rows the four old constraints refused, naming the same one', async () => {
    const statements: string[] = [];
    for (const id of ['aaaa0001', 'AAAA0001', 'aaaa00011'])
      for (const root of ['bbbb0001', 'bbbb'])
        for (const status of ['pending', 'running', 'completed', 'failed', 'cancelled', 'gone'])
          for (const onFailure of [null, 'cccc0001', 'c'])
            statements.push(
              `INSERT INTO %s.instances (id, root_node, status, on_failure_instance) VALUES (${[id, root, status, onFailure].map(lit).join(', ')})`,
            );
    for (const set of [`status = 'gone'`, `status = NULL`, `on_failure_instance = 'x'`, `id = 'X'`])
      statements.push(`UPDATE %s.instances SET ${set} WHERE id = 'aaaa0001'`);
    expect(await differences('instances', statements)).toEqual([]);
  });
});
