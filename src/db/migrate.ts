/**
 * Schema migrations: numbered plain `.sql` files in `migrations/`
 * (`0001_name.sql`, ...), applied in order, each in its own transaction, under
 * a session advisory lock so concurrent dfgate processes do not race, and
 * recorded in `df.schema_migrations` with a checksum of the file. A database
 * whose schema is newer than this build knows is refused, and so is an applied
 * migration whose file has since changed.
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';

export interface Migration {
  readonly version: number;
  readonly name: string;
  readonly sql: string;
  readonly checksum: string;
}

export class MigrationError extends Error {
  override readonly name = 'MigrationError';
  constructor(
    message: string,
    readonly code: 'schema_newer' | 'checksum_mismatch' | 'bad_file' | 'failed',
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** Lock key: the bytes "dfgt" as an int32, class 0 of the two-key form. */
const LOCK_KEY = 0x64666774;

export function migrationsDir(): string {
  // dist/src/db/migrate.js or src/db/migrate.ts → <root>/migrations
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const candidate = path.join(dir, 'migrations');
    try {
      readdirSync(candidate);
      return candidate;
    } catch {
      dir = path.dirname(dir);
    }
  }
  throw new MigrationError('cannot find the migrations/ directory', 'bad_file');
}

export function loadMigrations(dir = migrationsDir()): readonly Migration[] {
  const out: Migration[] = [];
  for (const file of readdirSync(dir).sort()) {
    if (!file.endsWith('.sql')) continue;
    const m = /^(\d{4})_([a-z0-9_]+)\.sql$/.exec(file);
    if (!m)
      throw new MigrationError(
        `migration file name ${file} does not match NNNN_name.sql`,
        'bad_file',
      );
    const version = Number(m[1]);
    const sql = readFileSync(path.join(dir, file), 'utf8');
    const expected = out.length + 1;
    if (version !== expected) {
      throw new MigrationError(
        `migration ${file}: expected version ${expected} (no gaps, no duplicates)`,
        'bad_file',
      );
    }
    out.push({
      version,
      name: m[2] ?? '',
      sql,
      checksum: createHash('sha256').update(sql).digest('hex'),
    });
  }
  return out;
}

export interface MigrateResult {
  readonly from: number;
  readonly to: number;
  readonly applied: readonly number[];
}

export interface MigrateOptions {
  /** Stop after this version (tests apply the steps one by one). */
  readonly target?: number;
  readonly migrations?: readonly Migration[];
  readonly onApplied?: (m: Migration, ms: number) => void;
}

/** Applies pending migrations on an open connection (not inside a transaction). */
export async function migrate(
  client: pg.ClientBase,
  opts: MigrateOptions = {},
): Promise<MigrateResult> {
  const migrations = opts.migrations ?? loadMigrations();
  const target = opts.target ?? migrations.length;
  await client.query('SELECT pg_advisory_lock($1, 0)', [LOCK_KEY]);
  try {
    await client.query(`
      CREATE SCHEMA IF NOT EXISTS df;
      CREATE TABLE IF NOT EXISTS df.schema_migrations (
        version    integer PRIMARY KEY,
        name       text NOT NULL,
        checksum   text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now()
      );
      REVOKE ALL ON SCHEMA df FROM PUBLIC;
      REVOKE ALL ON df.schema_migrations FROM PUBLIC;`);
    const applied = await client.query<{ version: number; name: string; checksum: string }>(
      'SELECT version, name, checksum FROM df.schema_migrations ORDER BY version',
    );
    const from = applied.rows.reduce((max, r) => Math.max(max, r.version), 0);
    const known = migrations.length;
    if (from > known) {
      throw new MigrationError(
        `the df schema is at version ${from}, newer than this dfgate knows (${known}); upgrade dfgate before running it against this database`,
        'schema_newer',
      );
    }
    for (const row of applied.rows) {
      const m = migrations[row.version - 1];
      if (m && m.checksum !== row.checksum) {
        throw new MigrationError(
          `migration ${row.version} (${row.name}) was applied from a different file than this dfgate ships (checksum mismatch); migrations are forward-only and must not be edited`,
          'checksum_mismatch',
        );
      }
    }
    const done: number[] = [];
    for (const m of migrations) {
      if (m.version <= from || m.version > target) continue;
      const started = Date.now();
      await client.query('BEGIN');
      try {
        await client.query(m.sql);
        await client.query(
          'INSERT INTO df.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)',
          [m.version, m.name, m.checksum],
        );
        await client.query('COMMIT');
      } catch (err) {
        await client.query('ROLLBACK').catch(() => undefined);
        const msg = err instanceof Error ? err.message : String(err);
        throw new MigrationError(`migration ${m.version} (${m.name}) failed: ${msg}`, 'failed', {
          cause: err,
        });
      }
      done.push(m.version);
      opts.onApplied?.(m, Date.now() - started);
    }
    return { from, to: Math.max(from, ...done), applied: done };
  } finally {
    await client.query('SELECT pg_advisory_unlock($1, 0)', [LOCK_KEY]).catch(() => undefined);
  }
}
