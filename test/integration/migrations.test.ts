import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { loadMigrations, migrate, MigrationError } from '../../src/db/migrate.js';
import { catalogSnapshot } from '../harness/catalog.js';
import { useTestDatabase, withDatabase, quoteIdent } from '../harness/db.js';
import { withUser } from '../harness/urls.js';

const db = useTestDatabase();

async function freshDatabase(suffix: string): Promise<pg.Client> {
  const name = `${db.name}_${suffix}`;
  await db.admin.query(`CREATE DATABASE ${quoteIdent(name)}`);
  const c = await db.connect(withDatabase(db.adminUrl, name));
  return c;
}

async function dropDatabase(client: pg.Client): Promise<void> {
  const name = client.database ?? '';
  await client.end();
  await db.admin.query(`DROP DATABASE ${quoteIdent(name)} WITH (FORCE)`);
}

describe('migrations', () => {
  it('a fresh install equals upgrading one step at a time', async () => {
    const all = loadMigrations();
    expect(all.length).toBeGreaterThanOrEqual(2);
    const fresh = await freshDatabase('fresh');
    const stepped = await freshDatabase('stepped');
    const res = await migrate(fresh);
    expect(res.applied).toEqual(all.map((m) => m.version));
    for (const m of all) {
      const r = await migrate(stepped, { target: m.version });
      expect(r.applied).toEqual([m.version]);
    }
    const a = await catalogSnapshot(fresh);
    const b = await catalogSnapshot(stepped);
    expect(a['functions']?.length).toBeGreaterThan(10);
    expect(b).toEqual(a);
    await dropDatabase(fresh);
    await dropDatabase(stepped);
  });

  it('running twice is a no-op', async () => {
    const before = await catalogSnapshot(db.admin);
    const res = await migrate(db.admin);
    expect(res.applied).toEqual([]);
    expect(res.from).toBe(loadMigrations().length);
    expect(await catalogSnapshot(db.admin)).toEqual(before);
  });

  it('refuses a schema newer than it knows', async () => {
    const c = await freshDatabase('newer');
    await migrate(c);
    await c.query(
      `INSERT INTO df.schema_migrations (version, name, checksum) VALUES (9999, 'future', 'x')`,
    );
    await expect(migrate(c)).rejects.toMatchObject({ code: 'schema_newer' });
    await expect(migrate(c)).rejects.toThrow(/newer than this dfgate knows/);
    await dropDatabase(c);
  });

  it('refuses an edited migration file', async () => {
    const c = await freshDatabase('edited');
    const all = loadMigrations();
    await migrate(c, { target: 1 });
    const edited = all.map((m) => (m.version === 1 ? { ...m, checksum: 'different' } : m));
    const err = await migrate(c, { migrations: edited }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MigrationError);
    expect((err as MigrationError).code).toBe('checksum_mismatch');
    await dropDatabase(c);
  });

  it('a schema owner that is no superuser (as on managed PostgreSQL) migrates, grants, and its roles start instances', async () => {
    // the owner: a login with CREATEROLE only, owning the database it migrates
    const owner = await db.role('schema_owner', { grant: false, createrole: true });
    const dbName = `${db.name}_owned`;
    await db.admin.query(`CREATE DATABASE ${quoteIdent(dbName)} OWNER ${owner.ident}`);
    const o = await db.connect(withDatabase(owner.url, dbName));
    expect((await migrate(o)).applied).toEqual(loadMigrations().map((m) => m.version));
    const app = `${owner.name}_app`;
    await o.query(`CREATE ROLE ${quoteIdent(app)} LOGIN PASSWORD 'app-pw'`);
    await o.query(`SELECT df.grant_usage($1)`, [app]);
    const a = await db.connect(withDatabase(withUser(owner.url, app, 'app-pw'), dbName));
    // the instance row is written by df._activate_graph, as the owner, in the app's name
    const id = (await a.query(`SELECT df.start(df.seq('SELECT 1', 'SELECT 2'), 'owned') AS id`))
      .rows[0].id as string;
    const row = (
      await a.query(
        `SELECT submitted_by::text AS s, runnable, status FROM df.instances WHERE id = $1`,
        [id],
      )
    ).rows[0];
    expect(row).toEqual({ s: app, runnable: true, status: 'pending' });
    // the trigger still refuses the app another role's name
    await expect(
      a.query(`INSERT INTO df.nodes (id, instance_id, node_type, query, submitted_by)
               VALUES ('0000000a', '0000000b', 'SQL', 'SELECT 1', '${owner.name}'::regrole)`),
    ).rejects.toMatchObject({ code: '42501' });
    await a.end();
    await o.end();
    await db.admin.query(`DROP DATABASE ${quoteIdent(dbName)} WITH (FORCE)`);
    await db.admin.query(`DROP ROLE ${quoteIdent(app)}`);
  });

  it('concurrent migrators serialise on the advisory lock', async () => {
    const c1 = await freshDatabase('race');
    const c2 = await db.connect(withDatabase(db.adminUrl, c1.database ?? ''));
    const [r1, r2] = await Promise.all([migrate(c1), migrate(c2)]);
    expect([...r1.applied, ...r2.applied].sort((x, y) => x - y)).toEqual(
      loadMigrations().map((m) => m.version),
    );
    await c2.end();
    await dropDatabase(c1);
  });
});
