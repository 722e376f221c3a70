/** Running dfgate for tests: in-process proxies and real child processes of the CLI. */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { afterAll } from 'vitest';
import { startProxy, type ProxyOptions, type ProxyServer } from '../../src/proxy/server.js';
import type { UpstreamTarget } from '../../src/proxy/upstream.js';

export function upstreamOf(
  url: string,
  sslmode: UpstreamTarget['sslmode'] = 'disable',
): UpstreamTarget {
  const u = new URL(url);
  return { host: u.hostname, port: Number(u.port), sslmode };
}

/** A URL like `url` but pointing at 127.0.0.1:port (dfgate). */
export function viaPort(url: string, port: number, params = ''): string {
  const u = new URL(url);
  u.host = `127.0.0.1:${port}`;
  return u.toString() + params;
}

/** The proxy tests run in transaction pooling mode (DFGATE_POOL_MODE=transaction). */
export const POOLED = process.env['DFGATE_POOL_MODE'] === 'transaction';

const proxies: ProxyServer[] = [];
afterAll(async () => {
  await Promise.all(proxies.splice(0).map((p) => p.shutdown(0)));
});

export async function startTestProxy(
  upstreamUrl: string,
  opts: Partial<ProxyOptions> = {},
): Promise<ProxyServer> {
  const p = await startProxy({
    host: '127.0.0.1',
    port: 0,
    upstream: upstreamOf(upstreamUrl),
    log: pino({ level: process.env['DFGATE_TEST_LOG'] ?? 'silent' }),
    maxClientConnections: 1000,
    connectTimeoutMs: 5000,
    maxMessageSize: 64 * 1024 * 1024,
    // DFGATE_POOL_MODE=transaction runs the proxy tests against transaction pooling
    // (spawned dfgate processes read the same variable)
    poolMode: POOLED ? 'transaction' : 'session',
    ...opts,
  });
  proxies.push(p);
  return p;
}

export interface DfgateProcess {
  readonly proc: ChildProcess;
  readonly port: number;
  readonly output: () => string;
  /** Sends a signal and waits for the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

const children: ChildProcess[] = [];
afterAll(() => {
  for (const c of children.splice(0)) if (c.exitCode === null) c.kill('SIGKILL');
});

/** Starts `dfgate` (dist/src/cli.js) with --listen 127.0.0.1:0 and waits until it listens. */
export async function spawnDfgate(
  args: string[],
  env: Record<string, string> = {},
): Promise<DfgateProcess> {
  const proc = spawn(
    process.execPath,
    [path.resolve('dist/src/cli.js'), '--listen', '127.0.0.1:0', ...args],
    {
      env: { ...process.env, DFGATE_LOG_LEVEL: 'info', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  children.push(proc);
  let out = '';
  proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) =>
    proc.once('exit', (code) => resolve(code)),
  );
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`dfgate did not start:\n${out}`)), 30_000);
    const check = (): void => {
      const m = /"listen":"127\.0\.0\.1:(\d+)"/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    };
    proc.stdout?.on('data', check);
    void exited.then(() => reject(new Error(`dfgate exited:\n${out}`)));
  });
  return {
    proc,
    port,
    output: () => out,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (proc.exitCode === null) proc.kill(signal);
      return await exited;
    },
  };
}

/** kB of a /proc/<pid>/status field (0 once the process is gone). */
export function procKb(pid: number, field: 'VmHWM' | 'VmRSS'): number {
  let status: string;
  try {
    status = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return 0;
  }
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status);
  return m ? Number(m[1]) : 0;
}

/** `p`, or a failure (with the end of its output) as soon as the dfgate process `d` exits. */
export async function whileAliveOf<T>(d: DfgateProcess, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const died = new Promise<never>((_, reject) => {
    timer = setInterval(() => {
      if (d.proc.exitCode !== null || d.proc.signalCode !== null)
        reject(
          new Error(
            `dfgate exited (${d.proc.exitCode ?? d.proc.signalCode}):\n${d.output().slice(-3000)}`,
          ),
        );
    }, 50);
  });
  try {
    return await Promise.race([p, died]);
  } finally {
    clearInterval(timer);
  }
}
