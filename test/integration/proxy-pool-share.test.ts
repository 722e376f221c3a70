/**
 * Transaction pooling: the pools of one role and database hold at most
 * --pool-size server connections together, whatever startup parameters
 * their logins sent (docs/proxy.md, "One role, several pools"). Before, each
 * set of parameters got a pool of its own size, so one role's clients could
 * take every connection under --max-server-connections from the others.
 */
import net from 'node:net';
import { beforeAll, describe, expect, it } from 'vitest';
import { encodeFrontend } from '../../src/proxy/protocol/frontend.js';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { startTestProxy } from '../harness/dfgate.js';
import { dataRows, errorOf, loggedIn, raw, simpleQuery, startupMessage } from '../harness/wire.js';

const db = useTestDatabase();
let trust: TestRole;
let other: TestRole;
let third: TestRole;
let fourth: TestRole;
let fifth: TestRole;

beforeAll(async () => {
  trust = await db.role('trust', { grant: false });
  other = await db.role('other', { grant: false });
  third = await db.role('third', { grant: false });
  fourth = await db.role('fourth', { grant: false });
  fifth = await db.role('fifth', { grant: false });
  await db.admin.query(
    `GRANT dfgate_trust_logins TO ${trust.ident}, ${other.ident}, ${third.ident}, ${fourth.ident}, ${fifth.ident}`,
  );
});

const Z = (t: string): boolean => t === 'Z';

/** A login with extra_float_digits = `n`: a startup parameter PostgreSQL does not report back. */
const digits = (n: number): Array<[string, string]> => [['extra_float_digits', String(n)]];

/** The server connections `role` holds now. */
async function serverConnections(role: string): Promise<number> {
  const r = await db.admin.query<{ n: number }>(
    'SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = $1 AND datname = $2',
    [role, db.name],
  );
  return r.rows[0]?.n ?? -1;
}

describe('one role logging in with different startup parameters', () => {
  it('its pools share --pool-size: a third set of parameters waits, then gets 53300, and other roles keep their room', async () => {
    const p = await startTestProxy(db.url, {
      poolMode: 'transaction',
      poolSize: 2,
      maxServerConnections: 4,
      poolTimeoutMs: 400,
    });
    const a = await loggedIn(p.port, trust.name, db.name, digits(1));
    const b = await loggedIn(p.port, trust.name, db.name, digits(2));
    await simpleQuery(a, 'BEGIN');
    await simpleQuery(b, 'BEGIN');
    // a third pool of the same role: no room among the role's two, and nothing idle to close
    const c = await raw(p.port);
    c.sock.write(startupMessage(trust.name, db.name, digits(3)));
    const e = errorOf(await c.until((t) => t === 'E'));
    expect(e).toMatchObject({ C: '53300', V: 'FATAL' });
    expect(e?.['M']).toMatch(/all 2 it may hold \(--pool-size, shared by its logins/);
    expect(await serverConnections(trust.name)).toBe(2);
    // another role still finds room under --max-server-connections
    const o1 = await loggedIn(p.port, other.name, db.name, digits(1));
    const o2 = await loggedIn(p.port, other.name, db.name, digits(2));
    expect(dataRows(await simpleQuery(o1, 'SELECT 1'))).toEqual(['1']);
    expect(dataRows(await simpleQuery(o2, 'SELECT 2'))).toEqual(['2']);
    await simpleQuery(a, 'COMMIT');
    await simpleQuery(b, 'COMMIT');
    for (const x of [a, b, o1, o2]) x.sock.destroy();
    await p.shutdown(1000);
  });

  it("a waiting login takes the idle connection of another pool of the role once that pool's clients left, never the last one of a pool in use", async () => {
    const p = await startTestProxy(db.url, {
      poolMode: 'transaction',
      poolSize: 2,
      maxServerConnections: 10,
      poolTimeoutMs: 5_000,
    });
    const a = await loggedIn(p.port, trust.name, db.name, digits(1));
    const b = await loggedIn(p.port, trust.name, db.name, digits(2));
    // both idle, each the last connection of a pool with a client: neither may be closed
    const c = await raw(p.port);
    c.sock.write(startupMessage(trust.name, db.name, digits(3)));
    let cIn = false;
    const cReady = c.until(Z).then((m) => {
      cIn = true;
      return m;
    });
    await new Promise((r) => setTimeout(r, 300));
    expect(cIn).toBe(false);
    expect(dataRows(await simpleQuery(b, 'SELECT 2'))).toEqual(['2']);
    expect(cIn).toBe(false);
    // a leaves: its pool's idle connection is closed and c's login takes the place
    a.sock.end(encodeFrontend({ type: 'Terminate' }));
    const msgs = await cReady;
    expect(errorOf(msgs)).toBeUndefined();
    expect(dataRows(await simpleQuery(c, 'SHOW extra_float_digits'))).toEqual(['3']);
    expect(dataRows(await simpleQuery(b, 'SHOW extra_float_digits'))).toEqual(['2']);
    expect(await serverConnections(trust.name)).toBeLessThanOrEqual(2);
    for (const x of [b, c]) x.sock.destroy();
    await p.shutdown(1000);
  });
});

describe('pool accounting when clients leave at the wrong moment (hostile review of the change above)', () => {
  it("a login that goes away before authenticating leaves the pool's only connection to its connected client", async () => {
    const p = await startTestProxy(db.url, {
      poolMode: 'transaction',
      poolSize: 1,
      poolTimeoutMs: 2_000,
    });
    const a = await loggedIn(p.port, trust.name, db.name);
    expect(dataRows(await simpleQuery(a, 'SELECT 1'))).toEqual(['1']);
    const s = net.connect({ host: '127.0.0.1', port: p.port }, () => {
      s.write(startupMessage(trust.name, db.name));
      setTimeout(() => s.resetAndDestroy(), 5);
    });
    s.on('error', () => undefined);
    await new Promise((r) => setTimeout(r, 500));
    const m = await simpleQuery(a, 'SELECT 2');
    expect(errorOf(m)).toBeUndefined();
    expect(dataRows(m)).toEqual(['2']);
    a.sock.destroy();
    await p.shutdown(1000);
  });

  it('a login over --max-server-connections waits for a connection some pool can spare, and never cuts off connected clients', async () => {
    const p = await startTestProxy(db.url, {
      poolMode: 'transaction',
      poolSize: 3,
      maxServerConnections: 2,
      poolTimeoutMs: 500,
    });
    const a = await loggedIn(p.port, trust.name, db.name);
    const b = await loggedIn(p.port, other.name, db.name);
    const c = await raw(p.port);
    c.sock.write(startupMessage(third.name, db.name));
    expect(errorOf(await c.until((t) => t === 'E'))).toMatchObject({ C: '53300' });
    expect(dataRows(await simpleQuery(a, 'SELECT 1'))).toEqual(['1']);
    expect(dataRows(await simpleQuery(b, 'SELECT 2'))).toEqual(['2']);
    // once a pool has no clients, its idle connection makes room
    a.sock.end(encodeFrontend({ type: 'Terminate' }));
    await new Promise((r) => setTimeout(r, 200));
    const d = await loggedIn(p.port, third.name, db.name);
    expect(dataRows(await simpleQuery(d, 'SELECT 3'))).toEqual(['3']);
    for (const x of [b, d]) x.sock.destroy();
    await p.shutdown(1000);
  });

  it('a client that leaves while its lent connection is being checked is given back once: the role never holds more than --pool-size', async () => {
    const p = await startTestProxy(db.url, {
      poolMode: 'transaction',
      poolSize: 1,
      poolTimeoutMs: 1_000,
    });
    for (let round = 0; round < 2; round++) {
      const c = await loggedIn(p.port, fourth.name, db.name);
      await simpleQuery(c, 'SELECT 1/0'); // the connection is checked before its next lend
      const pid = (
        await db.admin.query<{ pid: number }>(
          'SELECT pid FROM pg_stat_activity WHERE usename = $1 AND datname = $2',
          [fourth.name, db.name],
        )
      ).rows[0]?.pid as number;
      process.kill(pid, 'SIGSTOP'); // the check waits
      c.sock.write(encodeFrontend({ type: 'Query', sql: 'SELECT 1' }));
      await new Promise((r) => setTimeout(r, 100));
      c.sock.resetAndDestroy(); // the client leaves during the check
      await new Promise((r) => setTimeout(r, 100));
      process.kill(pid, 'SIGCONT');
      await new Promise((r) => setTimeout(r, 300));
    }
    // every way the connection could be given back has had its turn (the reset's timer is 10 s)
    await new Promise((r) => setTimeout(r, 10_500));
    expect(p.pools?.stats().total).toBeLessThanOrEqual(1);
    const x = await loggedIn(p.port, fourth.name, db.name);
    const y = await loggedIn(p.port, fourth.name, db.name);
    await simpleQuery(x, 'BEGIN');
    y.sock.write(encodeFrontend({ type: 'Query', sql: 'BEGIN' }));
    expect(errorOf(await y.until((t) => t === 'E'))).toMatchObject({ C: '53300' });
    expect(await serverConnections(fourth.name)).toBe(1);
    await simpleQuery(x, 'COMMIT');
    x.sock.destroy();
    await p.shutdown(1000);
  });

  it('a connection closed while its backend is busy keeps its place until the backend is gone (its statement is cancelled)', async () => {
    const p = await startTestProxy(db.url, {
      poolMode: 'transaction',
      poolSize: 1,
      poolTimeoutMs: 1_000,
    });
    const a = await loggedIn(p.port, fifth.name, db.name);
    a.sock.write(encodeFrontend({ type: 'Query', sql: 'SELECT pg_sleep(30)' }));
    await new Promise((r) => setTimeout(r, 200));
    a.sock.resetAndDestroy(); // its connection is busy: the reset waits, then gives up after 10 s
    let most = 0;
    const watch = setInterval(() => {
      void serverConnections(fifth.name).then((n) => (most = Math.max(most, n)));
    }, 100);
    try {
      const b = await loggedIn(p.port, fifth.name, db.name);
      expect(dataRows(await simpleQuery(b, 'SELECT 1'))).toEqual(['1']);
      await new Promise((r) => setTimeout(r, 11_000));
      // the busy backend was cancelled and has left: b keeps the one place
      expect(await serverConnections(fifth.name)).toBe(1);
      await simpleQuery(b, 'BEGIN');
      const c = await loggedIn(p.port, fifth.name, db.name);
      c.sock.write(encodeFrontend({ type: 'Query', sql: 'BEGIN' }));
      expect(errorOf(await c.until((t) => t === 'E'))).toMatchObject({ C: '53300' });
      await simpleQuery(b, 'COMMIT');
      // one place over --pool-size at most, while a login authenticated beside the busy one
      expect(most).toBeLessThanOrEqual(2);
      b.sock.destroy();
    } finally {
      clearInterval(watch);
    }
    await p.shutdown(1000);
  });
});
