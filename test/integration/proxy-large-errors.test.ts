/**
 * Server errors and notices too long for dfgate to look into whole: any login
 * can make PostgreSQL send one of up to 1 GB (`RAISE EXCEPTION '%', repeat(...)`).
 * dfgate keeps only their first SERVER_INSPECT_MAX bytes and relays them as
 * they stream: the client gets exactly what PostgreSQL sent, the connection
 * stays usable, and no framer ever holds more than that prefix.
 */
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { Framer, type Piece } from '../../src/proxy/protocol/frame.js';
import { encodeFrontend } from '../../src/proxy/protocol/frontend.js';
import { startupMessage } from '../harness/wire.js';
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

/** The most bytes a framer held (a message partly assembled) after any push, and the peak heap. */
let maxHeld = 0;
let heapPeak = 0;

beforeAll(async () => {
  plain = await db.role('plain', { grant: false });
  trust = await db.role('trust', { grant: false });
  await db.admin.query(`GRANT dfgate_trust_logins TO ${trust.ident}`);
  ports.session = (await startTestProxy(db.url, { poolMode: 'session' })).port;
  ports.transaction = (await startTestProxy(db.url, { poolMode: 'transaction' })).port;
  const push = Framer.prototype.push;
  vi.spyOn(Framer.prototype, 'push').mockImplementation(function (
    this: Framer,
    chunk: Buffer,
  ): Piece[] {
    const out = push.call(this, chunk);
    maxHeld = Math.max(maxHeld, this.held);
    heapPeak = Math.max(heapPeak, process.memoryUsage().heapUsed);
    return out;
  });
});

afterAll(() => {
  vi.restoreAllMocks();
});

/** Message boundaries of a backend stream, from headers only (bodies are never kept). */
class Headers {
  private head = Buffer.alloc(0);
  private left = 0;
  private type = 0;
  readonly types: string[] = [];

  /** Feeds bytes; the offset just past the first ReadyForQuery completed in them, or -1. */
  feed(d: Buffer): number {
    let pos = 0;
    while (pos < d.length) {
      if (this.left > 0) {
        const n = Math.min(this.left, d.length - pos);
        pos += n;
        this.left -= n;
        if (this.left === 0 && this.type === 0x5a) return pos;
        continue;
      }
      const n = Math.min(5 - this.head.length, d.length - pos);
      this.head = Buffer.concat([this.head, d.subarray(pos, pos + n)]);
      pos += n;
      if (this.head.length < 5) break;
      this.type = this.head[0] as number;
      this.types.push(String.fromCharCode(this.type));
      this.left = this.head.readInt32BE(1) - 4;
      this.head = Buffer.alloc(0);
    }
    return -1;
  }
}

interface Answer {
  /** Types of the messages up to and including ReadyForQuery. */
  readonly types: string[];
  readonly length: number;
  readonly sha256: string;
}

/**
 * A raw protocol client that logs in (trust) and reads each answer as it
 * streams, keeping only its hash, so that this process never holds it.
 */
async function rawClient(port: number, user: string) {
  const sock = net.connect({ host: '127.0.0.1', port });
  sock.on('error', () => undefined);
  await once(sock, 'connect');
  let sink: ((d: Buffer) => void) | undefined;
  sock.on('data', (d: Buffer) => sink?.(d));
  const exchange = (bytes: Buffer): Promise<Answer> =>
    new Promise((resolve, reject) => {
      const headers = new Headers();
      const hash = createHash('sha256');
      let length = 0;
      const closed = (): void => reject(new Error('connection closed'));
      sock.once('close', closed);
      sink = (d) => {
        const end = headers.feed(d);
        const part = end < 0 ? d : d.subarray(0, end);
        hash.update(part);
        length += part.length;
        if (end < 0) return;
        sink = undefined;
        sock.off('close', closed);
        resolve({ types: headers.types, length, sha256: hash.digest('hex') });
      };
      sock.write(bytes);
    });
  await exchange(startupMessage(user, db.name));
  return {
    query: (sql: string) => exchange(encodeFrontend({ type: 'Query', sql })),
    end: () => sock.end(encodeFrontend({ type: 'Terminate' })),
  };
}

describe.each(['session', 'transaction'] as const)('%s mode', (mode) => {
  it('a 50 MB error reaches node-postgres whole, and the connection stays usable', async () => {
    const c = await db.connect(viaPort(plain.url, ports[mode]));
    maxHeld = 0;
    const err = (await c.query(RAISE).then(
      () => undefined,
      (e: unknown) => e,
    )) as { code?: string; message: string } | undefined;
    expect(err?.code).toBe('P0001');
    expect(err?.message.length).toBe(N);
    expect(err?.message === 'x'.repeat(N)).toBe(true);
    expect((await c.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    expect(maxHeld).toBeLessThanOrEqual(5 + SERVER_INSPECT_MAX);
  });

  it('a 50 MB notice reaches node-postgres whole', async () => {
    const c = await db.connect(viaPort(plain.url, ports[mode]));
    const notices: string[] = [];
    c.on('notice', (n) => notices.push(n.message ?? ''));
    maxHeld = 0;
    await c.query(NOTICE);
    expect(notices.map((m) => m.length)).toEqual([N]);
    expect(notices[0] === 'y'.repeat(N)).toBe(true);
    expect((await c.query('SELECT 2 AS two')).rows).toEqual([{ two: 2 }]);
    expect(maxHeld).toBeLessThanOrEqual(5 + SERVER_INSPECT_MAX);
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
        maxHeld = 0;
        const heapBefore = process.memoryUsage().heapUsed;
        heapPeak = heapBefore;
        const got = await via.query(sql);
        expect(got).toEqual(want);
        // assembling the message whole held all of it (and decoded it into a string of N characters)
        expect(maxHeld).toBeLessThanOrEqual(5 + SERVER_INSPECT_MAX);
        expect(heapPeak - heapBefore).toBeLessThan(N / 4);
      }
      expect((await via.query('SELECT 1')).types).toEqual(['T', 'D', 'C', 'Z']);
    } finally {
      direct.end();
      via.end();
    }
  });
});
