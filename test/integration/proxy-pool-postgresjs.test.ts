/**
 * postgres.js (the `postgres` npm client, which prepares every query as a
 * named statement by default and pipelines on its connections) through
 * dfgate in --pool-mode transaction with a pool of 10: 50 connections of
 * concurrent tagged templates with parameters, sql.begin transactions and
 * statements reused many times, 0 errors, never more than 10 server
 * connections in pg_stat_activity.
 */
import pg from 'pg';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ProxyServer } from '../../src/proxy/server.js';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { startTestProxy } from '../harness/dfgate.js';

const db = useTestDatabase();
let app: TestRole;
let proxy: ProxyServer;
/** Highest number of server connections of the role seen since the last reset. */
let peak = 0;
let samples = 0;
let sampler: NodeJS.Timeout | undefined;

beforeAll(async () => {
  app = await db.role('pjs');
  await db.admin.query(`CREATE TABLE pjs (id int, k int, who text)`);
  await db.admin.query(`GRANT ALL ON pjs TO ${app.ident}`);
  proxy = await startTestProxy(db.url, {
    poolMode: 'transaction',
    poolSize: 10,
    maxServerConnections: 10,
    poolTimeoutMs: 60_000,
  });
  const watch = new pg.Client({ connectionString: db.url });
  watch.on('error', () => undefined);
  await watch.connect();
  let busy = false;
  sampler = setInterval(() => {
    if (busy) return;
    busy = true;
    watch
      .query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = $1`, [app.name])
      .then((r) => {
        peak = Math.max(peak, r.rows[0].n as number);
        samples++;
      })
      .catch(() => undefined)
      .finally(() => (busy = false));
  }, 10);
  afterAll(async () => {
    clearInterval(sampler);
    await watch.end();
  });
});

function client(max: number, opts: postgres.Options<Record<string, never>> = {}): postgres.Sql {
  return postgres({
    host: '127.0.0.1',
    port: proxy.port,
    user: app.name,
    password: app.password,
    database: db.name,
    max,
    idle_timeout: 0,
    connect_timeout: 30,
    onnotice: () => undefined,
    ...opts,
  });
}

describe('postgres.js through transaction pooling with a pool of 10', () => {
  it('50 connections: parameters, prepared statements reused, sql.begin transactions; 0 errors, at most 10 server connections', async () => {
    const sql = client(50);
    const errors: unknown[] = [];
    peak = 0;
    samples = 0;
    try {
      await Promise.all(
        Array.from({ length: 50 }, async (_, i) => {
          try {
            for (let k = 0; k < 10; k++) {
              // the same texts every time: postgres.js prepares them once per connection
              const [a] = await sql`SELECT ${i}::int + ${k}::int AS n, ${'w' + i}::text AS w`;
              expect(a).toEqual({ n: i + k, w: `w${i}` });
              const counted = await sql.begin(async (tx) => {
                await tx`INSERT INTO pjs VALUES (${i}, ${k}, ${'tx'})`;
                const [c] = await tx`SELECT count(*)::int AS n FROM pjs WHERE id = ${i}`;
                const [s] = await tx`SELECT current_setting('application_name') AS app`;
                return [c?.n, s?.app];
              });
              expect(counted).toEqual([k + 1, 'postgres.js']);
              const rows =
                await sql`SELECT k FROM pjs WHERE id = ${i} AND k = ANY(${sql.array([k, k + 100])}::int[])`;
              expect(rows.map((r) => r.k)).toEqual([k]);
              // a rolled-back transaction leaves nothing behind
              await sql
                .begin(async (tx) => {
                  await tx`INSERT INTO pjs VALUES (${i}, ${-1}, ${'rolled back'})`;
                  await tx`SELECT 1/0`;
                })
                .then(
                  () => errors.push(new Error('1/0 did not fail')),
                  (err: { code?: string }) => expect(err.code).toBe('22012'),
                );
            }
          } catch (err) {
            errors.push(err);
          }
        }),
      );
    } finally {
      await sql.end({ timeout: 5 });
    }
    expect(errors).toEqual([]);
    expect(samples).toBeGreaterThan(0);
    expect(peak).toBeGreaterThan(0);
    expect(peak).toBeLessThanOrEqual(10);
    const total = await db.admin.query(
      'SELECT count(*)::int AS n, count(*) FILTER (WHERE k = -1)::int AS rolled FROM pjs',
    );
    expect(total.rows[0]).toEqual({ n: 500, rolled: 0 });
  }, 180_000);

  it('a prepared statement is reused hundreds of times on one connection while the pool churns', async () => {
    const one = client(1);
    const churn = client(20);
    peak = 0;
    let stop = false;
    const churning = Promise.all(
      Array.from({ length: 20 }, async (_, j) => {
        while (!stop) await churn`SELECT pg_sleep(0.002), ${j}::int AS j`;
      }),
    );
    try {
      for (let k = 0; k < 300; k++) {
        const [r] = await one`SELECT ${k}::int * 2 AS twice`;
        expect(r?.['twice']).toBe(k * 2);
      }
      // postgres.js prepared it as a named statement (an unnamed one is not in
      // pg_prepared_statements); dfgate prepares it on whichever server
      // connection the transaction runs on
      const prepared = await one.begin(async (tx) => {
        await tx`SELECT ${1}::int * 2 AS twice`;
        const [p] =
          await tx`SELECT count(*)::int AS n FROM pg_prepared_statements WHERE statement LIKE 'SELECT $1::int * 2%'`;
        return p?.['n'] as number;
      });
      expect(prepared).toBe(1);
      // unsafe() with prepare: true, reused
      for (let k = 0; k < 50; k++) {
        const [u] = await one.unsafe('SELECT $1::text AS t', [`u${k}`], { prepare: true });
        expect(u?.['t']).toBe(`u${k}`);
      }
    } finally {
      stop = true;
      await churning;
      await Promise.all([one.end({ timeout: 5 }), churn.end({ timeout: 5 })]);
    }
    expect(peak).toBeLessThanOrEqual(10);
  }, 120_000);
});
