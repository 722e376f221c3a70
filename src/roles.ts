/**
 * `dfgate roles`: the SQL an administrator runs to provision the step logins
 * (DESIGN.md §4 "Identity") when dfgate's control role may not create roles.
 * Passwords derive from DFGATE_STEP_SECRET; only SCRAM verifiers are printed.
 */
import pg from 'pg';
import type { Config } from './config.js';
import { quoteIdent, scramVerifier, stepLoginName, stepPassword } from './executor/identity.js';

export async function rolesSql(url: string, secret: string): Promise<string> {
  const c = new pg.Client({ connectionString: url, application_name: 'dfgate roles' });
  await c.connect();
  try {
    // df.role_grants reads the catalog (explicit USAGE grants on schema df).
    // A step login that is a member of a superuser can become superuser, so
    // superusers are left out unless superuser instances are enabled.
    const r = await c.query<{ role_name: string; oid: number }>(
      `SELECT g.role_name, r.oid::int AS oid FROM df.role_grants g JOIN pg_roles r ON r.rolname = g.role_name
        WHERE NOT r.rolsuper OR COALESCE((SELECT value::text::boolean FROM df.config WHERE key = 'enable_superuser_instances'), false)
        ORDER BY 1`,
    );
    const out = [
      '-- dfgate step logins: one per role granted with df.grant_usage, a member of that role only.',
      '-- Run as a role that may create roles; re-run after granting usage to new roles.',
      'BEGIN;',
    ];
    for (const row of r.rows) {
      const login = stepLoginName(row.oid);
      out.push(
        '',
        `-- ${row.role_name}`,
        `DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${login}') THEN CREATE ROLE ${quoteIdent(login)} LOGIN NOINHERIT; END IF; END $$;`,
        `ALTER ROLE ${quoteIdent(login)} LOGIN PASSWORD '${scramVerifier(stepPassword(secret, login))}';`,
        `GRANT ${quoteIdent(row.role_name)} TO ${quoteIdent(login)};`,
      );
    }
    out.push('', 'COMMIT;', '');
    return out.join('\n');
  } finally {
    await c.end();
  }
}

export async function runRoles(cfg: Config): Promise<number> {
  if (!cfg.stepSecret) {
    process.stderr.write(
      'dfgate roles: set DFGATE_STEP_SECRET (the same secret the dfgate processes use): step login passwords derive from it\n',
    );
    return 2;
  }
  process.stdout.write(await rolesSql(cfg.upstream as string, cfg.stepSecret));
  return 0;
}
