/** The PostgreSQL client programs (psql, pgbench) the tests drive: the system's, as CI installs them. */
import { existsSync } from 'node:fs';
import path from 'node:path';

export function clientBin(name: string): string {
  for (const dir of [process.env['DFGATE_TEST_PGBIN'], '/usr/lib/postgresql/15/bin', '/usr/bin']) {
    if (dir && existsSync(path.join(dir, name))) return path.join(dir, name);
  }
  throw new Error(`${name} not found: install postgresql-client (the CI script does)`);
}
