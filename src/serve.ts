/** `dfgate` (serve): migrations, then the proxy in front of the upstream. */
import pg from 'pg';
import type { Config } from './config.js';
import { migrate } from './db/migrate.js';
import type { Logger } from './log.js';
import { startProxy, type ProxyServer } from './proxy/server.js';
import { targetFromUrl } from './proxy/upstream.js';
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

export async function serve(cfg: Config, log: Logger): Promise<ProxyServer> {
  const upstream = cfg.upstream as string;
  if (cfg.migrate) await migrateUpstream(upstream, log);
  if (cfg.executor)
    log.warn(
      'the executor is not part of this build yet: instances are recorded but not run (issue 6)',
    );
  return await startProxy({
    host: cfg.listen.host,
    port: cfg.listen.port,
    upstream: targetFromUrl(upstream),
    log: log.child({ component: 'proxy' }),
    maxClientConnections: cfg.maxClientConnections,
    connectTimeoutMs: cfg.connectTimeoutMs,
    maxMessageSize: cfg.maxMessageSize,
    tlsCert: cfg.tlsCert,
    tlsKey: cfg.tlsKey,
  });
}

/** Runs until SIGTERM/SIGINT, then shuts down gracefully. */
export async function serveForever(cfg: Config, log: Logger): Promise<number> {
  let proxy: ProxyServer;
  try {
    proxy = await serve(cfg, log);
  } catch (err) {
    log.error({ upstream: maskSecrets(cfg.upstream ?? '') }, maskSecrets((err as Error).message));
    return 1;
  }
  return await new Promise<number>((resolve) => {
    const stop = (signal: string): void => {
      log.info({ signal }, 'shutting down');
      void proxy.shutdown(cfg.shutdownTimeoutMs).then(() => resolve(0));
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
}
