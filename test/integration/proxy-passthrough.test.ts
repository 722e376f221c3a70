/** Everything that is not a df.* control call passes through dfgate untouched (node-postgres). */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { pipeline } from 'node:stream/promises';
import { Readable, Writable } from 'node:stream';
import pg from 'pg';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import { beforeAll, describe, expect, it } from 'vitest';
import { encodeFrontend, encodeStartup } from '../../src/proxy/protocol/frontend.js';
import { loggedIn, unnamedExecute } from '../harness/wire.js';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import {
  POOLED,
  spawnDfgate,
  startTestProxy,
  viaPort,
  type DfgateProcess,
} from '../harness/dfgate.js';

const db = useTestDatabase();
let role: TestRole;
let port: number;
let url: string;

beforeAll(async () => {
  role = await db.role('app');
  port = (await startTestProxy(db.url)).port;
  url = viaPort(role.url, port);
});

async function client(u = url): Promise<pg.Client> {
  return await db.connect(u);
}

describe('pass-through with node-postgres', () => {
  it('simple and parameterised queries, types and NULLs', async () => {
    const c = await client();
    const r = await c.query(
      `SELECT 1::int AS a, 'ü 🚀'::text AS b, NULL::int AS c, 12345678901234::int8::text AS d, current_user AS u`,
    );
    expect(r.rows).toEqual([{ a: 1, b: 'ü 🚀', c: null, d: '12345678901234', u: role.name }]);
    const p = await c.query(`SELECT $1::int + $2::int AS s, $3::text AS t`, [
      40,
      2,
      'x'.repeat(100_000),
    ]);
    expect(p.rows[0].s).toBe(42);
    expect(p.rows[0].t).toHaveLength(100_000);
  });

  it('a named prepared statement reused 1,000 times', async () => {
    const c = await client();
    for (let i = 0; i < 1000; i++) {
      const r = await c.query({ name: 'add_one', text: 'SELECT $1::int + 1 AS n', values: [i] });
      expect(r.rows[0].n).toBe(i + 1);
    }
    // transaction mode prepares it under a name of dfgate's own, once per server connection
    const ps = await c.query(
      `SELECT count(*)::int AS n FROM pg_prepared_statements WHERE name = $1 AND statement = 'SELECT $1::int + 1 AS n'`,
      [
        POOLED
          ? (
              await c.query(
                `SELECT name FROM pg_prepared_statements WHERE statement = 'SELECT $1::int + 1 AS n'`,
              )
            ).rows[0]?.name
          : 'add_one',
      ],
    );
    expect(ps.rows[0].n).toBe(1);
  });

  it('queued queries, multiple result sets, and a transaction with an error and ROLLBACK', async () => {
    const c = await client();
    const results = await Promise.all(
      Array.from({ length: 50 }, (_, i) => c.query(`SELECT ${i} AS i`)),
    );
    expect(results.map((r) => r.rows[0].i)).toEqual(Array.from({ length: 50 }, (_, i) => i));
    const multi = (await c.query(
      `SELECT 1 AS a; SELECT 2 AS b; SELECT 3 AS c`,
    )) as unknown as pg.QueryResult[];
    expect(multi.map((r) => r.rows[0])).toEqual([{ a: 1 }, { b: 2 }, { c: 3 }]);
    await c.query(`CREATE TABLE t_tx (id int PRIMARY KEY)`);
    await c.query('BEGIN');
    await c.query(`INSERT INTO t_tx VALUES (1)`);
    await expect(c.query(`INSERT INTO t_tx VALUES (1)`)).rejects.toMatchObject({ code: '23505' });
    await expect(c.query(`SELECT 1`)).rejects.toMatchObject({ code: '25P02' });
    await c.query('ROLLBACK');
    expect((await c.query(`SELECT count(*)::int AS n FROM t_tx`)).rows[0].n).toBe(0);
  });

  it('a pipeline of extended-protocol messages with an error in the middle, same as direct', async () => {
    const trustUser = await db.role('pipe', { grant: false });
    await db.admin.query(`GRANT dfgate_trust_logins TO ${trustUser.ident}`);
    const run = async (p: number): Promise<string> => {
      const r = await loggedIn(p, trustUser.name, db.name);
      const sock = r.sock;
      const msgs = [];
      for (let i = 0; i < 3; i++) {
        msgs.push(
          unnamedExecute(i === 1 ? 'SELECT 1/0' : `SELECT ${i}`),
          encodeFrontend({ type: 'Sync' }),
        );
      }
      sock.write(Buffer.concat(msgs));
      let zs = 0;
      const got = await r.until((t) => t === 'Z' && ++zs === 3);
      sock.end(encodeFrontend({ type: 'Terminate' }));
      return got
        .map(([t, body]) =>
          t === 'E' ? `E(${body.toString('latin1').match(/C(\w{5})/)?.[1]})` : t,
        )
        .join('');
    };
    const direct = await run(Number(new URL(db.url).port));
    expect(direct).toContain('E(22012)');
    expect(await run(port)).toBe(direct);
  });

  it('LISTEN/NOTIFY across two clients', async () => {
    const a = await client();
    const b = await client();
    const got = new Promise<string>((resolve) =>
      a.on('notification', (n) => resolve(n.payload ?? '')),
    );
    if (POOLED) {
      // a LISTEN cannot follow the client to its next server connection: refused, never lost
      await expect(a.query('LISTEN dfgate_chan')).rejects.toMatchObject({
        code: '0A000',
        message: expect.stringContaining('--pool-mode transaction'),
      });
      return;
    }
    await a.query('LISTEN dfgate_chan');
    await b.query(`SELECT pg_notify('dfgate_chan', 'hello ü')`);
    expect(await got).toBe('hello ü');
  });

  it('notices and parameter changes reach the client', async () => {
    const c = await client();
    const notices: string[] = [];
    c.on('notice', (n) => notices.push(n.message ?? ''));
    await c.query(`DO $$ BEGIN RAISE NOTICE 'from the server'; END $$`);
    expect(notices).toEqual(['from the server']);
    await c.query(`SET application_name = 'via-dfgate'`);
    expect((await c.query(`SHOW application_name`)).rows[0].application_name).toBe('via-dfgate');
  });

  it('client.cancel of pg_sleep(10) within 1 s', async () => {
    const c = await client();
    const started = Date.now();
    const q = c.query(`SELECT pg_sleep(10)`);
    await new Promise((r) => setTimeout(r, 200));
    const canceller = new pg.Client({ connectionString: url });
    (canceller as unknown as { cancel(c: pg.Client, q: unknown): void }).cancel(
      c,
      (c as unknown as { activeQuery: unknown }).activeQuery,
    );
    await expect(q).rejects.toMatchObject({ code: '57014' });
    expect(Date.now() - started).toBeLessThan(1500);
    expect((await c.query('SELECT 1 AS ok')).rows[0].ok).toBe(1);
  });

  it('a cancel request with a key dfgate never relayed reaches no one', async () => {
    const c = await client();
    const pid = (await c.query('SELECT pg_backend_pid() AS p')).rows[0].p as number;
    const q = c.query(`SELECT pg_sleep(1.5) AS slept`);
    await new Promise((r) => setTimeout(r, 100));
    const sock = net.connect({ host: '127.0.0.1', port });
    sock.write(encodeStartup({ type: 'CancelRequest', pid, key: Buffer.from([1, 2, 3, 4]) }));
    await new Promise((r) => sock.once('close', r));
    expect((await q).rows[0]).toEqual({ slept: '' });
  });
});

describe('COPY with backpressure and bounded memory', () => {
  let dfgate: DfgateProcess;
  beforeAll(async () => {
    dfgate = await spawnDfgate([
      '--upstream',
      `${db.url}?sslmode=disable`,
      '--no-migrate',
      '--no-executor',
    ]);
  });

  function rssKb(pid: number): number {
    const s = readFileSync(`/proc/${pid}/status`, 'utf8');
    return Number(/VmRSS:\s+(\d+)/.exec(s)?.[1]);
  }

  it('100 MB in with COPY FROM and out with COPY TO, dfgate RSS stays bounded', async () => {
    const c = await db.connect(viaPort(role.url, dfgate.port));
    await c.query(`CREATE TABLE big (id int, payload text)`);
    const line = 'x'.repeat(1000);
    const rows = 100_000; // ~100 MB
    let peak = 0;
    const sampler = setInterval(
      () => (peak = Math.max(peak, rssKb(dfgate.proc.pid as number))),
      50,
    );
    const before = rssKb(dfgate.proc.pid as number);
    let i = 0;
    const source = new Readable({
      read() {
        if (i >= rows) this.push(null);
        else this.push(`${i++}\t${line}\n`);
      },
    });
    await pipeline(source, c.query(copyFrom('COPY big FROM STDIN')));
    expect(
      (await c.query(`SELECT count(*)::int AS n, sum(length(payload))::bigint AS b FROM big`))
        .rows[0],
    ).toEqual({ n: rows, b: String(rows * 1000) });
    let bytes = 0;
    let slowdowns = 0;
    const sink = new Writable({
      highWaterMark: 16 * 1024,
      write(chunk: Buffer, _e, cb) {
        bytes += chunk.length;
        // a slow consumer: dfgate must apply backpressure instead of buffering
        if (++slowdowns % 200 === 0) setTimeout(cb, 5);
        else cb();
      },
    });
    await pipeline(c.query(copyTo('COPY big TO STDOUT')), sink);
    clearInterval(sampler);
    expect(bytes).toBeGreaterThan(rows * 1000);
    const growthMb = (peak - before) / 1024;
    expect(growthMb).toBeLessThan(64);
  });
});
