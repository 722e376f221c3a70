/**
 * The admin HTTP port (`--admin-listen HOST:PORT`): /healthz (the process
 * answers), /readyz (the proxy accepts clients, the upstream answers a query,
 * the executor holds its LISTEN connection) and /metrics (Prometheus text).
 * Plain node:http; every other path is 404, every other method 405.
 */
import http from 'node:http';
import pg from 'pg';
import type { Logger } from 'pino';
import type { HostPort } from './config.js';
import type { Executor } from './executor/executor.js';
import { loopDelay, renderMetrics, type Gauge } from './metrics.js';
import type { ProxyServer } from './proxy/server.js';

export interface AdminSources {
  /** URL of the upstream database, probed by /readyz. */
  readonly upstream: string;
  readonly proxy?: ProxyServer | undefined;
  readonly executor?: Executor | undefined;
}

export interface AdminServer {
  readonly port: number;
  close(): Promise<void>;
}

const PROBE_TIMEOUT_MS = 2000;

async function probeUpstream(url: string): Promise<string | undefined> {
  const c = new pg.Client({
    connectionString: url,
    connectionTimeoutMillis: PROBE_TIMEOUT_MS,
    application_name: 'dfgate:readyz',
    statement_timeout: PROBE_TIMEOUT_MS,
  } as pg.ClientConfig);
  c.on('error', () => undefined);
  try {
    await c.connect();
    await c.query('SELECT 1');
    return undefined;
  } catch (err) {
    return (err as Error).message;
  } finally {
    await c.end().catch(() => undefined);
  }
}

/**
 * The upstream probe is shared: concurrent /readyz requests wait for the one probe in
 * flight, and its answer is reused for a second, so that requests to the (unauthenticated)
 * admin port never open more than one upstream connection at a time.
 */
const PROBE_REUSE_MS = 1000;
const probes = new Map<string, { at: number; result: Promise<string | undefined> }>();

function sharedProbe(url: string): Promise<string | undefined> {
  const last = probes.get(url);
  if (last && Date.now() - last.at < PROBE_REUSE_MS) return last.result;
  const entry = { at: Number.POSITIVE_INFINITY, result: probeUpstream(url) };
  probes.set(url, entry);
  void entry.result.finally(() => (entry.at = Date.now()));
  return entry.result;
}

async function readiness(src: AdminSources): Promise<{ ready: boolean; checks: object }> {
  const checks: Record<string, string> = {};
  if (src.proxy) checks['proxy'] = src.proxy.accepting ? 'ok' : 'shutting down';
  if (src.executor)
    checks['executor'] = src.executor.stats().listening ? 'ok' : 'LISTEN connection down';
  const up = await sharedProbe(src.upstream);
  checks['upstream'] = up === undefined ? 'ok' : `unreachable: ${up}`;
  return { ready: Object.values(checks).every((v) => v === 'ok'), checks };
}

function gauges(src: AdminSources): Gauge[] {
  const mem = process.memoryUsage();
  const out: Gauge[] = [
    { name: 'dfgate_up', help: 'Always 1 while dfgate answers.', value: 1 },
    {
      name: 'process_resident_memory_bytes',
      help: 'Resident memory of the dfgate process.',
      value: mem.rss,
    },
    {
      name: 'nodejs_heap_used_bytes',
      help: 'V8 heap in use.',
      value: mem.heapUsed,
    },
    {
      name: 'process_uptime_seconds',
      help: 'Seconds since the dfgate process started.',
      value: Math.round(process.uptime()),
    },
  ];
  if (src.proxy)
    out.push({
      name: 'dfgate_client_sessions',
      help: 'Client sessions open through the proxy.',
      value: src.proxy.sessions.size,
    });
  if (src.executor)
    out.push({
      name: 'dfgate_executor_active_instances',
      help: 'Instances this executor is driving (holds the lease of).',
      value: src.executor.stats().activeInstances,
    });
  return out;
}

export async function startAdmin(
  at: HostPort,
  src: AdminSources,
  log: Logger,
): Promise<AdminServer> {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const send = (status: number, type: string, body: string): void => {
      res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
      res.end(body);
    };
    if (!['/healthz', '/readyz', '/metrics'].includes(path ?? '')) {
      send(404, 'text/plain; charset=utf-8', 'not found: try /healthz, /readyz or /metrics\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('allow', 'GET, HEAD');
      send(405, 'text/plain; charset=utf-8', 'method not allowed\n');
      return;
    }
    if (path === '/healthz') {
      send(200, 'text/plain; charset=utf-8', 'ok\n');
      return;
    }
    if (path === '/metrics') {
      send(
        200,
        'text/plain; version=0.0.4; charset=utf-8',
        renderMetrics(gauges(src)) + loopDelay.render(),
      );
      return;
    }
    void readiness(src).then(
      (r) => send(r.ready ? 200 : 503, 'application/json', JSON.stringify(r) + '\n'),
      (err: unknown) =>
        send(503, 'application/json', JSON.stringify({ ready: false, error: String(err) }) + '\n'),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(at.port, at.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const addr = server.address();
  const port = typeof addr === 'object' && addr !== null ? addr.port : at.port;
  loopDelay.start();
  log.info({ listen: `${at.host}:${port}` }, 'admin port listening (/healthz, /readyz, /metrics)');
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        loopDelay.stop();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
