/**
 * The executor's LISTEN connection (src/executor/listen.ts) through a server
 * restart: while the server refuses connections every attempt fails, and once
 * it is back exactly one LISTEN session is open, and stop() closes it. (Each
 * failed attempt used to schedule two more: a restart of a few seconds left
 * dozens of sessions, and the process did not exit on SIGTERM.) The restart is
 * a TCP front on 127.0.0.1 that drops every connection while "down" and
 * relays to the test database otherwise.
 */
import net from 'node:net';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WakeListener } from '../../src/executor/listen.js';
import { useTestDatabase } from '../harness/db.js';

const db = useTestDatabase();
let front: net.Server;
let down = true;
const open = new Set<net.Socket>();

beforeAll(async () => {
  const target = Number(new URL(db.url).port);
  front = net.createServer((client) => {
    if (down) {
      client.destroy();
      return;
    }
    const server = net.connect(target, '127.0.0.1');
    open.add(client);
    const close = (): void => {
      open.delete(client);
      client.destroy();
      server.destroy();
    };
    client.on('error', close).on('close', close);
    server.on('error', close).on('close', close);
    client.pipe(server).pipe(client);
  });
  await new Promise<void>((r) => front.listen(0, '127.0.0.1', r));
});

afterAll(async () => {
  for (const s of open) s.destroy();
  await new Promise((r) => front.close(r));
});

async function listeners(): Promise<number> {
  const r = await db.admin.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND application_name = 'dfgate:listen'`,
    [db.name],
  );
  return r.rows[0]?.n ?? -1;
}

async function until(what: () => Promise<boolean>, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await what()) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return what();
}

describe('the LISTEN connection through a server restart', () => {
  it('keeps one attempt at a time, ends with one session, and stop() closes it', async () => {
    const url = new URL(db.url);
    url.port = String((front.address() as net.AddressInfo).port);
    let connected = 0;
    const l = new WakeListener(
      url.toString(),
      pino({ level: 'silent' }),
      () => undefined,
      () => connected++,
    );
    await l.start(); // refused: the server is "restarting"
    await new Promise((r) => setTimeout(r, 4500));
    expect(l.listening).toBe(false);
    down = false;
    expect(await until(async () => l.listening, 5000)).toBe(true);
    // any attempt still scheduled has had its chance to open a second session
    await new Promise((r) => setTimeout(r, 2500));
    expect(await listeners()).toBe(1);
    expect(connected).toBe(1);
    // the session is lost: one new one replaces it
    await db.admin.query(
      `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'dfgate:listen'`,
      [db.name],
    );
    expect(await until(async () => connected === 2 && (await listeners()) === 1, 5000)).toBe(true);
    await new Promise((r) => setTimeout(r, 1500));
    expect(await listeners()).toBe(1);
    await l.stop();
    expect(await until(async () => (await listeners()) === 0 && open.size === 0, 5000)).toBe(true);
  }, 30_000);
});
