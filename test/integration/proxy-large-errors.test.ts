/**
 * Server errors and notices too long for dfgate to look into whole: any login
 * can make PostgreSQL send one of up to 1 GB (`RAISE EXCEPTION '%', repeat(...)`).
 * dfgate keeps only their first SERVER_INSPECT_MAX bytes and relays them as
 * they stream: the client gets exactly what PostgreSQL sent, the connection
 * stays usable, and no framer ever holds more than that prefix.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { hashingClient } from '../harness/wire.js';
import { watchFramers, type FramerWatch } from '../harness/framer-watch.js';
import { SERVER_INSPECT_MAX } from '../../src/proxy/server-conn.js';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { startTestProxy, viaPort } from '../harness/dfgate.js';

const db = useTestDatabase();
const N = 50_000_000;
const RAISE = `DO $$ BEGIN RAISE EXCEPTION '%', repeat('x', ${N}); END $$`;
const NOTICE = `DO $$ BEGIN RAISE NOTICE '%', repeat('y', ${N}); END $$`;

/** A login without any dfgate grant, and one that logs in with trust (for the raw client). */
let plain: TestRole;
let trust: TestRole;
const ports = { session: 0, transaction: 0 };

/** The framers of this process: the most bytes one held, the peak heap (harness/framer-watch.ts). */
let framers: FramerWatch;

beforeAll(async () => {
  plain = await db.role('plain', { grant: false });
  trust = await db.role('trust', { grant: false });
  await db.admin.query(`GRANT dfgate_trust_logins TO ${trust.ident}`);
  ports.session = (await startTestProxy(db.url, { poolMode: 'session' })).port;
  ports.transaction = (await startTestProxy(db.url, { poolMode: 'transaction' })).port;
  framers = watchFramers();
});

afterAll(() => {
  vi.restoreAllMocks();
});

/** A raw protocol client (trust login) that keeps only a hash of each answer. */
const rawClient = (port: number, user: string) => hashingClient(port, user, db.name);

describe.each(['session', 'transaction'] as const)('%s mode', (mode) => {
  it('a 50 MB error reaches node-postgres whole, and the connection stays usable', async () => {
    const c = await db.connect(viaPort(plain.url, ports[mode]));
    framers.maxHeld = 0;
    const err = (await c.query(RAISE).then(
      () => undefined,
      (e: unknown) => e,
    )) as { code?: string; message: string } | undefined;
    expect(err?.code).toBe('P0001');
    expect(err?.message.length).toBe(N);
    expect(err?.message === 'x'.repeat(N)).toBe(true);
    expect((await c.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    expect(framers.maxHeld).toBeLessThanOrEqual(5 + SERVER_INSPECT_MAX);
  });

  it('a 50 MB notice reaches node-postgres whole', async () => {
    const c = await db.connect(viaPort(plain.url, ports[mode]));
    const notices: string[] = [];
    c.on('notice', (n) => notices.push(n.message ?? ''));
    framers.maxHeld = 0;
    await c.query(NOTICE);
    expect(notices.map((m) => m.length)).toEqual([N]);
    expect(notices[0] === 'y'.repeat(N)).toBe(true);
    expect((await c.query('SELECT 2 AS two')).rows).toEqual([{ two: 2 }]);
    expect(framers.maxHeld).toBeLessThanOrEqual(5 + SERVER_INSPECT_MAX);
  });

  it('relays them byte for byte as PostgreSQL sends them, holding a bounded prefix', async () => {
    const direct = await rawClient(Number(new URL(db.url).port), trust.name);
    const via = await rawClient(ports[mode], trust.name);
    try {
      for (const [sql, types] of [
        [RAISE, ['E', 'Z']],
        [NOTICE, ['N', 'C', 'Z']],
      ] as const) {
        const want = await direct.query(sql);
        expect(want.types).toEqual(types);
        expect(want.length).toBeGreaterThan(N);
        framers.maxHeld = 0;
        const heapBefore = process.memoryUsage().heapUsed;
        framers.heapPeak = heapBefore;
        const got = await via.query(sql);
        expect(got).toEqual(want);
        // assembling the message whole held all of it (and decoded it into a string of N characters)
        expect(framers.maxHeld).toBeLessThanOrEqual(5 + SERVER_INSPECT_MAX);
        expect(framers.heapPeak - heapBefore).toBeLessThan(N / 4);
      }
      expect((await via.query('SELECT 1')).types).toEqual(['T', 'D', 'C', 'Z']);
    } finally {
      direct.end();
      via.end();
    }
  });
});
