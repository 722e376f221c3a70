/** `dfgate` (serve) and `dfgate worker`: migrations, the executor, and the proxy. */
import pg from 'pg';
import type { Config } from './config.js';
import { startAdmin, type AdminServer } from './admin.js';
import { migrate } from './db/migrate.js';
import { warmCompiler } from './dsl/edge-pool.js';
import type { Executor } from './executor/executor.js';
import { startExecutor } from './executor/start.js';
import type { Logger } from './log.js';
import { startProxy, type ProxyServer } from './proxy/server.js';
import { targetFromUrl } from './proxy/upstream.js';
import { startUi, type UiServer } from './ui/server.js';
import { maskSecrets } from './url.js';

export async function migrateUpstream(url: string, log: Logger): Promise<void> {
  const client = new pg.Client({ connectionString: url, application_name: 'dfgate migrate' });
  await client.connect();
  try {
    const res = await migrate(client, {
      onApplied: (m, ms) => log.info({ version: m.version, name: m.name, ms }, 'migration applied'),
    });
    log.info(
      { from: res.from, to: res.to },
      res.applied.length ? 'schema migrated' : 'schema up to date',
    );
  } finally {
    await client.end().catch(() => undefined);
  }
}

async function timedWarmUp(rounds: number, log: Logger): Promise<void> {
  if (rounds <= 0) return;
  const t0 = performance.now();
  const { done, of } = await warmCompiler(rounds);
  const ms = Math.round(performance.now() - t0);
  if (done === of) log.debug({ rounds, ms }, 'compiler warmed up');
  else log.warn({ rounds, ms, workers: of, warmed: done }, 'compiler warm-up cut short');
}

export interface Running {
  readonly proxy: ProxyServer | undefined;
  readonly executor: Executor | undefined;
  readonly admin: AdminServer | undefined;
  readonly ui?: UiServer | undefined;
}

export async function serve(cfg: Config, log: Logger, withProxy = true): Promise<Running> {
  const upstream = cfg.upstream as string;
  // the compile workers warm up while the schema migrates; the proxy listens once they are warm
  const warmed = withProxy ? timedWarmUp(cfg.warmUpRounds, log) : Promise.resolve();
  if (cfg.migrate) await migrateUpstream(upstream, log);
  // before the executor: a signal during the warm-up then finds nothing running to hand back
  await warmed;
  const executor =
    cfg.executor || !withProxy
      ? await startExecutor(
          { ...cfg, executorUrl: cfg.executorUrl ?? upstream },
          log.child({ component: 'executor' }),
        )
      : undefined;
  const admin = async (proxy: ProxyServer | undefined): Promise<AdminServer | undefined> =>
    cfg.adminListen
      ? startAdmin(
          cfg.adminListen,
          { upstream, proxy, executor },
          log.child({ component: 'admin' }),
        )
      : undefined;
  const ui = async (): Promise<UiServer | undefined> =>
    cfg.uiListen
      ? startUi({
          listen: cfg.uiListen,
          upstream,
          log: log.child({ component: 'ui' }),
          tlsCert: cfg.tlsCert,
          tlsKey: cfg.tlsKey,
          executor,
        })
      : undefined;
  if (!withProxy)
    return { proxy: undefined, executor, admin: await admin(undefined), ui: await ui() };
  const proxy = await startProxy({
    host: cfg.listen.host,
    port: cfg.listen.port,
    upstream: targetFromUrl(upstream),
    log: log.child({ component: 'proxy' }),
    maxClientConnections: cfg.maxClientConnections,
    connectTimeoutMs: cfg.connectTimeoutMs,
    startupTimeoutMs: cfg.startupTimeoutMs,
    maxMessageSize: cfg.maxMessageSize,
    tlsCert: cfg.tlsCert,
    tlsKey: cfg.tlsKey,
    onDfCommit: executor ? (started) => executor.wake(started) : undefined,
    prelease: executor ? () => executor.prelease() : undefined,
    edgeValidation: true,
    startNew: executor ? (req) => executor.startNew(req) : undefined,
    poolMode: cfg.poolMode,
    poolSize: cfg.poolSize,
    maxServerConnections: cfg.maxServerConnections,
    poolTimeoutMs: cfg.poolTimeoutMs,
    serverIdleTimeoutMs: cfg.serverIdleTimeoutMs,
  });
  return { proxy, executor, admin: await admin(proxy), ui: await ui() };
}

/** Runs until SIGTERM/SIGINT, then shuts down gracefully. */
export async function serveForever(cfg: Config, log: Logger, withProxy = true): Promise<number> {
  let running: Running;
  try {
    running = await serve(cfg, log, withProxy);
  } catch (err) {
    log.error({ upstream: maskSecrets(cfg.upstream ?? '') }, maskSecrets((err as Error).message));
    return 1;
  }
  return await new Promise<number>((resolve) => {
    const stop = (signal: string): void => {
      log.info({ signal }, 'shutting down');
      void (async () => {
        await running.ui?.close();
        await running.proxy?.shutdown(cfg.shutdownTimeoutMs);
        await running.executor?.stop(cfg.shutdownTimeoutMs);
        await running.admin?.close();
        resolve(0);
      })();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
}
