/**
 * Step logins (DESIGN.md §4 "Identity"): each submitting role R gets its own
 * login, a member of R and of nothing else. Its password is derived from a
 * dfgate secret, and the database stores only a SCRAM verifier, so nothing
 * secret lives in the database. A step connection logs in as it, then
 * SET ROLE R and applies R's role-level settings.
 */
import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';
import type pg from 'pg';

export function stepLoginName(roleOid: number): string {
  return `dfgate_step_${roleOid}`;
}

export function stepPassword(secret: string, login: string): string {
  return createHmac('sha256', secret).update(`dfgate step login:${login}`).digest('base64url');
}

/** A SCRAM-SHA-256 verifier as PostgreSQL stores it (RFC 5802/7677). */
export function scramVerifier(password: string, iterations = 4096): string {
  const salt = randomBytes(16);
  const salted = pbkdf2Sync(password.normalize('NFKC'), salt, iterations, 32, 'sha256');
  const clientKey = createHmac('sha256', salted).update('Client Key').digest();
  const storedKey = createHash('sha256').update(clientKey).digest();
  const serverKey = createHmac('sha256', salted).update('Server Key').digest();
  return `SCRAM-SHA-256$${iterations}:${salt.toString('base64')}$${storedKey.toString('base64')}:${serverKey.toString('base64')}`;
}

export function quoteIdent(s: string): string {
  return `"${s.replace(/"/g, '""')}"`;
}

/**
 * A string literal, exactly as pg.escapeLiteral writes it (an E'' literal,
 * backslashes doubled, when the text has one), built by whole-string
 * replaces: pg's loop appends a character at a time, which for a result of
 * 3 MB left millions of string pieces behind (about 100 MB) until the text
 * was flattened.
 */
export function quoteLiteral(s: string): string {
  const body = s.replace(/'/g, "''");
  return s.includes('\\') ? ` E'${body.replace(/\\/g, '\\\\')}'` : `'${body}'`;
}

export class IdentityError extends Error {
  override readonly name = 'IdentityError';
}

/**
 * Creates (or re-keys) R's step login on the control connection. Throws an
 * IdentityError naming the SQL an administrator must run when the control
 * role may not do it.
 */
export async function ensureStepLogin(
  control: pg.ClientBase,
  roleName: string,
  roleOid: number,
  secret: string,
): Promise<string> {
  const login = stepLoginName(roleOid);
  const verifier = scramVerifier(stepPassword(secret, login));
  const sql = [
    `DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${login}') THEN CREATE ROLE ${quoteIdent(login)} LOGIN NOINHERIT; END IF; END $$`,
    `ALTER ROLE ${quoteIdent(login)} LOGIN PASSWORD '${verifier}'`,
    `GRANT ${quoteIdent(roleName)} TO ${quoteIdent(login)}`,
  ];
  try {
    // one provisioner at a time per role, across dfgate processes
    await control.query('BEGIN');
    await control.query('SELECT pg_advisory_xact_lock(hashtext($1))', [
      `dfgate step login ${roleOid}`,
    ]);
    for (const q of sql) await control.query(q);
    await control.query('COMMIT');
  } catch (err) {
    await control.query('ROLLBACK').catch(() => undefined);
    throw new IdentityError(
      `cannot provision the step login of role "${roleName}": ${(err as Error).message}. An administrator runs: ` +
        `CREATE ROLE ${quoteIdent(login)} LOGIN NOINHERIT PASSWORD '<from dfgate roles>'; GRANT ${quoteIdent(roleName)} TO ${quoteIdent(login)};`,
    );
  }
  const attrs = await control.query<{ bad: boolean }>(
    `SELECT rolsuper OR rolcreaterole OR rolcreatedb OR rolbypassrls OR rolreplication AS bad FROM pg_roles WHERE rolname = $1`,
    [login],
  );
  if (attrs.rows[0]?.bad) {
    throw new IdentityError(
      `step login ${login} has role attributes beyond LOGIN (superuser, createrole, createdb, bypassrls or replication); an administrator removes them`,
    );
  }
  const extra = await control.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid
      WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = $1) AND r.oid <> $2`,
    [login, roleOid],
  );
  if ((extra.rows[0]?.n ?? 0) > 0) {
    throw new IdentityError(
      `step login ${login} is a member of roles other than "${roleName}"; revoke them, it must hold only that role's privileges`,
    );
  }
  return login;
}
