/**
 * Per-file test databases: each integration test file gets its own database
 * cloned from the migrated template and its own uniquely named roles; both
 * are dropped when the file finishes.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, inject } from 'vitest';
import { withDatabase, withUser } from './urls.js';

const TEMPLATE_DB = 'dfgate_template';

export { withDatabase, withUser };

export interface TestRole {
  readonly name: string;
  readonly password: string;
  /** URL that logs in as this role to the file's database over TCP. */
  readonly url: string;
  /** The name quoted as an identifier. */
  readonly ident: string;
}

export interface RoleOptions {
  readonly login?: boolean;
  readonly superuser?: boolean;
  readonly createrole?: boolean;
  /** Give df usage with df.grant_usage (default true for login roles). */
  readonly grant?: boolean;
  readonly http?: boolean;
  /** Use this exact suffix (may need quoting, e.g. mixed case). */
  readonly raw?: string;
}

export interface TestDb {
  readonly name: string;
  /** Superuser URL for this file's database. */
  readonly url: string;
  readonly adminUrl: string;
  readonly major: number;
  /** Superuser client on this database. */
  readonly admin: pg.Client;
  role(label: string, opts?: RoleOptions): Promise<TestRole>;
  /** A connected client (closed automatically after the file). */
  connect(url: string): Promise<pg.Client>;
}

export function quoteIdent(name: string): string {
  return '"' + name.replace(/"/g, '""') + '"';
}

/** Registers beforeAll/afterAll hooks; the returned handle is usable inside tests. */
export function useTestDatabase(): TestDb {
  const adminUrl = inject('adminUrl');
  const major = inject('serverMajor');
  const id = randomBytes(4).toString('hex');
  const name = `t_${id}`;
  const url = withDatabase(adminUrl, name);
  const roles: string[] = [];
  const clients: pg.Client[] = [];
  let admin: pg.Client | undefined;

  const handle: TestDb = {
    name,
    url,
    adminUrl,
    major,
    get admin(): pg.Client {
      if (!admin) throw new Error('test database not ready (use inside a test or hook)');
      return admin;
    },
    async role(label, opts = {}): Promise<TestRole> {
      const roleName = `t${id}_${opts.raw ?? label}`;
      const password = randomBytes(9).toString('base64url');
      const ident = quoteIdent(roleName);
      const login = opts.login ?? true;
      const attrs = [
        login ? 'LOGIN' : 'NOLOGIN',
        opts.superuser ? 'SUPERUSER' : '',
        opts.createrole ? 'CREATEROLE' : '',
      ];
      await handle.admin.query(`CREATE ROLE ${ident} ${attrs.join(' ')} PASSWORD '${password}'`);
      roles.push(roleName);
      await handle.admin.query(`GRANT CONNECT, TEMP ON DATABASE ${quoteIdent(name)} TO ${ident}`);
      await handle.admin.query(`GRANT USAGE, CREATE ON SCHEMA public TO ${ident}`);
      if (opts.grant ?? login) {
        await handle.admin.query(`SELECT df.grant_usage($1, include_http => $2)`, [
          roleName,
          opts.http ?? false,
        ]);
      }
      return { name: roleName, password, ident, url: withUser(url, roleName, password) };
    },
    async connect(target: string): Promise<pg.Client> {
      const c = new pg.Client({ connectionString: target });
      c.on('error', () => undefined);
      await c.connect();
      clients.push(c);
      return c;
    },
  };

  beforeAll(async () => {
    const root = new pg.Client({ connectionString: adminUrl });
    await root.connect();
    await root.query(`CREATE DATABASE ${quoteIdent(name)} TEMPLATE ${TEMPLATE_DB}`);
    await root.end();
    admin = new pg.Client({ connectionString: url });
    admin.on('error', () => undefined);
    await admin.connect();
  });

  afterAll(async () => {
    await Promise.all(clients.map((c) => c.end().catch(() => undefined)));
    await admin?.end().catch(() => undefined);
    const root = new pg.Client({ connectionString: adminUrl });
    await root.connect();
    await root.query(`DROP DATABASE IF EXISTS ${quoteIdent(name)} WITH (FORCE)`);
    for (const r of roles) await root.query(`DROP ROLE IF EXISTS ${quoteIdent(r)}`);
    await root.end();
  });

  return handle;
}
