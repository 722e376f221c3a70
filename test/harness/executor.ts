/** Running the executor in tests, and waiting for instances. */
import type pg from 'pg';
import pino from 'pino';
import { afterAll } from 'vitest';
import { Executor, type ExecutorOptions } from '../../src/executor/executor.js';

const running: Executor[] = [];
afterAll(async () => {
  await Promise.all(running.splice(0).map((e) => e.stop()));
});

export async function startTestExecutor(
  controlUrl: string,
  opts: Partial<ExecutorOptions> = {},
): Promise<Executor> {
  const ex = new Executor({
    controlUrl,
    log: pino({ level: process.env['DFGATE_TEST_LOG'] ?? 'silent' }),
    stepAuth: 'login',
    stepSecret: 'test-step-secret',
    leaseMs: 3000,
    pollMs: 200,
    maxConcurrentSteps: 8,
    maxConcurrentInstances: 64,
    maxLoopIterations: 100_000,
    ...opts,
  });
  await ex.start();
  running.push(ex);
  return ex;
}

/** Waits until the instance is terminal; returns status and df.result. */
export async function finished(
  c: pg.ClientBase,
  id: string,
  timeoutMs = 20_000,
): Promise<{ status: string; result: string | null }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await c.query<{ status: string; result: string | null }>(
      `SELECT df.status($1) AS status, df.result($1) AS result`,
      [id],
    );
    const row = r.rows[0] as { status: string; result: string | null };
    if (['completed', 'failed', 'cancelled'].includes(row.status)) return row;
    if (Date.now() > deadline)
      throw new Error(`instance ${id} still ${row.status} after ${timeoutMs} ms`);
    await new Promise((res) => setTimeout(res, 25));
  }
}

/** A step connection for runSqlStep (steps.ts) on a session of the tests' own: no role settings to restore. */
export function stepConn(client: pg.Client): {
  client: pg.Client;
  resets: string[];
  broken: boolean;
  clean: boolean;
  ready: Promise<boolean>;
  encoding: string;
} {
  return {
    client,
    resets: [],
    broken: false,
    clean: false,
    ready: Promise.resolve(true),
    encoding: 'UTF8',
  };
}

/** Counts the ReadyForQuery messages `client` receives from now on: one per round trip. */
export function countTrips(client: pg.Client): { readonly n: number; stop(): void } {
  const con = (client as unknown as { connection: NodeJS.EventEmitter }).connection;
  const counter = {
    n: 0,
    stop: () => con.off('readyForQuery', count),
  };
  const count = (): void => void counter.n++;
  con.on('readyForQuery', count);
  return counter;
}
