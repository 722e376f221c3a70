/**
 * Transaction pooling: the pools of one role and database hold at most
 * --pool-size server connections together, whatever startup parameters
 * their logins sent (docs/proxy.md, "One role, several pools"). Before, each
 * set of parameters got a pool of its own size, so one role's clients could
 * take every connection under --max-server-connections from the others.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { encodeFrontend } from '../../src/proxy/protocol/frontend.js';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { startTestProxy } from '../harness/dfgate.js';
import { dataRows, errorOf, loggedIn, raw, simpleQuery, startupMessage } from '../harness/wire.js';

const db = useTestDatabase();
let trust: TestRole;
let other: TestRole;

beforeAll(async () => {
  trust = await db.role('trust', { grant: false });
  other = await db.role('other', { grant: false });
  await db.admin.query(`GRANT dfgate_trust_logins TO ${trust.ident}, ${other.ident}`);
});

const Z = (t: string): boolean => t === 'Z';
const simple = simpleQuery;
const rowsOf = dataRows;

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
    await simple(a, 'BEGIN');
    await simple(b, 'BEGIN');
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
    expect(rowsOf(await simple(o1, 'SELECT 1'))).toEqual(['1']);
    expect(rowsOf(await simple(o2, 'SELECT 2'))).toEqual(['2']);
    await simple(a, 'COMMIT');
    await simple(b, 'COMMIT');
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
    expect(rowsOf(await simple(b, 'SELECT 2'))).toEqual(['2']);
    expect(cIn).toBe(false);
    // a leaves: its pool's idle connection is closed and c's login takes the place
    a.sock.end(encodeFrontend({ type: 'Terminate' }));
    const msgs = await cReady;
    expect(errorOf(msgs)).toBeUndefined();
    expect(rowsOf(await simple(c, 'SHOW extra_float_digits'))).toEqual(['3']);
    expect(rowsOf(await simple(b, 'SHOW extra_float_digits'))).toEqual(['2']);
    expect(await serverConnections(trust.name)).toBeLessThanOrEqual(2);
    for (const x of [b, c]) x.sock.destroy();
  });
});
