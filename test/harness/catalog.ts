/** A textual snapshot of everything in the df schema, for schema-equality tests. */
import type pg from 'pg';

const QUERIES: Readonly<Record<string, string>> = {
  columns: `SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                   pg_get_expr(d.adbin, d.adrelid) AS dflt
              FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
              JOIN pg_namespace n ON n.oid = c.relnamespace
              LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
             WHERE n.nspname = 'df' AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r','v','p')
             ORDER BY 1, 2`,
  constraints: `SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint
                 WHERE connamespace = 'df'::regnamespace ORDER BY 1, 2`,
  indexes: `SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'df' ORDER BY 1`,
  functions: `SELECT p.oid::regprocedure::text, md5(pg_get_functiondef(p.oid)), p.proacl::text,
                     obj_description(p.oid, 'pg_proc')
                FROM pg_proc p WHERE p.pronamespace = 'df'::regnamespace ORDER BY 1`,
  operators: `SELECT o.oid::regoperator::text, o.oprcode::text FROM pg_operator o
               WHERE o.oprnamespace = 'df'::regnamespace ORDER BY 1`,
  policies: `SELECT tablename, policyname, roles::text, cmd, qual, with_check FROM pg_policies
              WHERE schemaname = 'df' ORDER BY 1, 2`,
  triggers: `SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) FROM pg_trigger
              WHERE NOT tgisinternal AND tgrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'df'::regnamespace)
              ORDER BY 1, 2`,
  grants: `SELECT c.relname, c.relacl::text, c.relrowsecurity FROM pg_class c
            WHERE c.relnamespace = 'df'::regnamespace ORDER BY 1`,
  column_grants: `SELECT c.relname, a.attname, a.attacl::text FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                   WHERE c.relnamespace = 'df'::regnamespace AND a.attacl IS NOT NULL ORDER BY 1, 2`,
  schema: `SELECT nspacl::text FROM pg_namespace WHERE nspname = 'df'`,
  config: `SELECT key, value::text FROM df.config ORDER BY 1`,
};

export async function catalogSnapshot(client: pg.ClientBase): Promise<Record<string, unknown[]>> {
  const out: Record<string, unknown[]> = {};
  for (const [k, q] of Object.entries(QUERIES)) {
    out[k] = (await client.query({ text: q, rowMode: 'array' })).rows;
  }
  return out;
}
