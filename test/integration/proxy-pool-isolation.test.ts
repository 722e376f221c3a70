/**
 * Transaction pooling keeps one client's session out of the next borrower's
 * (docs/proxy.md, "Transaction pooling"): a hostile review found each way
 * in below, on a pool of one server connection shared by two clients. A
 * client that leaves mid-COPY, a cancel racing its COMMIT, a SET that commits despite an earlier error, a
 * DEALLOCATE of dfgate's statement name and a FunctionCall each left state
 * or a pinned connection behind for the other client.
 */
import net from 'node:net';
import { beforeAll, describe, expect, it } from 'vitest';
import { encodeFrontend, encodeStartup } from '../../src/proxy/protocol/frontend.js';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { startTestProxy } from '../harness/dfgate.js';
import {
  dataRows,
  errorOf,
  loggedIn,
  raw,
  simpleQuery,
  startupMessage,
  type Raw,
} from '../harness/wire.js';

const db = useTestDatabase();
let trust: TestRole;
let other: TestRole;

beforeAll(async () => {
  trust = await db.role('trust', { grant: false });
  other = await db.role('other', { grant: false });
  await db.admin.query(`GRANT dfgate_trust_logins TO ${trust.ident}, ${other.ident}`);
  await db.admin.query(`GRANT CREATE ON DATABASE ${db.name} TO ${trust.ident}`);
});

const q = (sql: string): Buffer => encodeFrontend({ type: 'Query', sql });
const Z = (t: string): boolean => t === 'Z';

const rows = dataRows;
const simple = simpleQuery;

async function extended(
  c: Raw,
  name: string,
  sql: string | undefined,
): Promise<Array<[string, Buffer]>> {
  const msgs: Buffer[] = [];
  if (sql !== undefined) msgs.push(encodeFrontend({ type: 'Parse', name, sql, paramTypes: [] }));
  msgs.push(
    encodeFrontend({
      type: 'Bind',
      portal: '',
      statement: name,
      paramFormats: [],
      params: [],
      resultFormats: [],
    }),
    encodeFrontend({ type: 'Execute', portal: '', maxRows: 0 }),
    encodeFrontend({ type: 'Sync' }),
  );
  c.sock.write(Buffer.concat(msgs));
  return c.until(Z);
}

describe('transaction pooling between two clients of one role', () => {
  it('a client that disconnects mid COPY FROM STDIN leaves a clean connection', async () => {
    const p = await startTestProxy(db.url, {
      poolMode: 'transaction',
      poolSize: 1,
      poolTimeoutMs: 5_000,
    });
    const a = await loggedIn(p.port, trust.name, db.name);
    const b = await loggedIn(p.port, trust.name, db.name);
    await simple(a, 'CREATE TABLE copied (n int)');
    a.sock.write(q('COPY copied FROM STDIN'));
    await a.until((t) => t === 'G');
    a.sock.write(encodeFrontend({ type: 'CopyData', data: Buffer.from('1\n2\n') }));
    await new Promise((r) => setTimeout(r, 50));
    a.sock.destroy();
    const bm = await simple(b, 'SELECT count(*) FROM copied');
    expect(errorOf(bm)).toBeUndefined();
    expect(rows(bm)).toEqual(['0']);
    const bm2 = await simple(b, 'SELECT 7');
    expect(rows(bm2)).toEqual(['7']);
  });

  it('a client that sends Terminate mid COPY FROM STDIN leaves a clean connection', async () => {
    const p = await startTestProxy(db.url, {
      poolMode: 'transaction',
      poolSize: 1,
      poolTimeoutMs: 5_000,
    });
    const a = await loggedIn(p.port, trust.name, db.name);
    const b = await loggedIn(p.port, trust.name, db.name);
    await simple(a, 'CREATE TABLE copied2 (n int)');
    a.sock.write(q('COPY copied2 FROM STDIN'));
    await a.until((t) => t === 'G');
    a.sock.write(encodeFrontend({ type: 'CopyData', data: Buffer.from('1\n') }));
    a.sock.end(encodeFrontend({ type: 'Terminate' }));
    const bm = await simple(b, 'SELECT count(*) FROM copied2');
    expect(errorOf(bm)).toBeUndefined();
    expect(rows(bm)).toEqual(['0']);
  });

  it('a cancel sent just before COMMIT does not cancel the next borrower of the backend', async () => {
    const p = await startTestProxy(db.url, {
      poolMode: 'transaction',
      poolSize: 1,
      poolTimeoutMs: 10_000,
    });
    let hits = 0;
    for (let i = 0; i < 8; i++) {
      const a = await raw(p.port);
      a.sock.write(startupMessage(trust.name, db.name));
      const login = await a.until(Z);
      const k = login.find(([t]) => t === 'K')?.[1] as Buffer;
      const b = await loggedIn(p.port, trust.name, db.name);
      a.sock.write(q('BEGIN'));
      await a.until(Z);
      // b waits for the only connection
      b.sock.write(q('SELECT pg_sleep(1)'));
      await new Promise((r) => setTimeout(r, 50));
      // a cancels (nothing of its own runs: an idle transaction), then commits at once
      const c = net.connect({ host: '127.0.0.1', port: p.port });
      await new Promise((r) => c.once('connect', r));
      c.write(
        encodeStartup({ type: 'CancelRequest', pid: k.readInt32BE(0), key: k.subarray(4, 8) }),
      );
      a.sock.write(q('COMMIT'));
      await a.until(Z);
      const bm = await b.until(Z);
      if (errorOf(bm)?.['C'] === '57014') hits++;
      c.destroy();
      a.sock.destroy();
      b.sock.destroy();
    }
    expect(hits).toBe(0);
  });

  it('a SET that commits in a transaction that saw an error does not stay behind for the next client', async () => {
    const p = await startTestProxy(db.url, { poolMode: 'transaction', poolSize: 1 });
    const a = await loggedIn(p.port, trust.name, db.name);
    const b = await loggedIn(p.port, trust.name, db.name);
    await simple(
      a,
      `CREATE SCHEMA evil; CREATE TABLE evil.seen (v text); CREATE FUNCTION evil.lower(text) RETURNS text LANGUAGE sql AS $$ INSERT INTO evil.seen VALUES ($1) RETURNING pg_catalog.lower($1) $$`,
    );
    for (const sql of [
      'BEGIN',
      'SAVEPOINT s',
      'SELECT 1/0',
      'ROLLBACK TO s',
      'SET search_path = evil, pg_catalog',
      'COMMIT',
    ])
      await simple(a, sql);
    // b, which never SET anything, borrows the same (only) connection
    const bm = await simple(
      b,
      `SELECT current_setting('search_path') UNION ALL SELECT lower('B SECRET')`,
    );
    const seen = rows(await simple(a, 'SELECT count(*) FROM evil.seen'));
    expect({ bRows: rows(bm), seen }).toEqual({
      bRows: ['"$user", public', 'b secret'],
      seen: ['0'],
    });
  });

  it('DEALLOCATE of a dfgate_ server statement by one client does not break another client', async () => {
    const p = await startTestProxy(db.url, { poolMode: 'transaction', poolSize: 1 });
    const a = await loggedIn(p.port, trust.name, db.name);
    const b = await loggedIn(p.port, trust.name, db.name);
    expect(rows(await extended(b, 's1', 'SELECT 42'))).toEqual(['42']);
    const names = rows(
      await simple(a, `SELECT name FROM pg_prepared_statements WHERE name LIKE 'dfgate_%'`),
    );
    expect(names.length).toBe(1);
    for (const sql of [`DEALLOCATE "${names[0]}"`, `DEALLOCATE PREPARE ${names[0]}`])
      await simple(a, sql); // (refused, or the server drops it)
    const bm = await extended(b, 's1', undefined);
    expect(errorOf(bm)).toBeUndefined();
    expect(rows(bm)).toEqual(['42']);
  });

  it('a session advisory lock taken with FunctionCall does not stay on the pooled connection', async () => {
    const p = await startTestProxy(db.url, { poolMode: 'transaction', poolSize: 1 });
    const a = await loggedIn(p.port, trust.name, db.name);
    const b = await loggedIn(p.port, trust.name, db.name);
    const oid = Number(
      rows(await simple(a, `SELECT 'pg_advisory_lock(bigint)'::regprocedure::oid`))[0],
    );
    const arg = Buffer.alloc(8);
    arg.writeBigInt64BE(4242n);
    a.sock.write(
      encodeFrontend({ type: 'FunctionCall', oid, argFormats: [1], args: [arg], resultFormat: 0 }),
    );
    const am = await a.until(Z);
    expect(errorOf(am)).toBeUndefined();
    const bm = await simple(
      b,
      `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()`,
    );
    expect(rows(bm)).toEqual(['0']);
  });
});
