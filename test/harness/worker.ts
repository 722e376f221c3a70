/**
 * `dfgate worker` processes (the executor alone, from dist/) for the crash
 * tests: 1 s leases and a 0.2 s poll, so that a killed worker's instances
 * are taken over quickly. Any left running when the file ends (a failed
 * test, one frozen with SIGSTOP that ignored SIGTERM) is SIGKILLed.
 *
 * DFGATE_TEST_WORKER_LOGS=<dir> keeps each worker's log, at debug level, in
 * <dir>/worker-<test pid>-<n>.log (to read what a crash test's workers did).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll } from 'vitest';

const children = new Set<ChildProcess>();
let spawned = 0;
afterAll(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

export interface WorkerOptions {
  /** More command-line options. */
  readonly extra?: readonly string[];
  /** Collect stderr (then handed to `onExit`) instead of ignoring it. */
  readonly onExit?: (code: number | null, signal: NodeJS.Signals | null, stderr: string) => void;
  /** The worker's log lines at debug level, as they come (instead of DFGATE_TEST_WORKER_LOGS). */
  readonly log?: (text: string) => void;
}

/** Starts `dfgate worker` against `url` (a superuser's, migrated) with the step secret `secret`. */
export function spawnWorker(url: string, secret: string, opts: WorkerOptions = {}): ChildProcess {
  const logs = process.env['DFGATE_TEST_WORKER_LOGS'];
  if (logs) fs.mkdirSync(logs, { recursive: true });
  const out = opts.log
    ? 'pipe'
    : logs
      ? fs.openSync(path.join(logs, `worker-${process.pid}-${++spawned}.log`), 'w')
      : 'ignore';
  const p = spawn(
    process.execPath,
    [
      path.resolve('dist/src/cli.js'),
      'worker',
      '--upstream',
      `${url}?sslmode=disable`,
      '--no-migrate',
      '--lease-seconds',
      '1',
      '--poll-interval',
      '0.2',
      '--log-level',
      logs || opts.log ? 'debug' : 'warn',
      ...(opts.extra ?? []),
    ],
    {
      env: { ...process.env, DFGATE_STEP_SECRET: secret },
      stdio: ['ignore', out, opts.onExit ? 'pipe' : out],
    },
  );
  if (opts.log) p.stdout?.on('data', (d: Buffer) => opts.log?.(d.toString()));
  let err = '';
  p.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  children.add(p);
  p.once('exit', (code, sig) => {
    children.delete(p);
    opts.onExit?.(code, sig, err);
  });
  if (typeof out === 'number') fs.closeSync(out); // the child has its own copy
  return p;
}
