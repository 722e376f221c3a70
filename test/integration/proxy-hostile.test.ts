/**
 * A hostile client before login: what it can make dfgate hold in memory, and
 * the SSL/GSSAPI negotiation it may repeat. Each case is compared with a
 * direct connection to PostgreSQL where PostgreSQL's answer is observable.
 */
import net from 'node:net';
import { beforeAll, describe, expect, it } from 'vitest';
import { decodeErrorFields } from '../../src/proxy/protocol/backend.js';
import { encodeFrontend, encodeStartup } from '../../src/proxy/protocol/frontend.js';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { startTestProxy } from '../harness/dfgate.js';
import { raw, render, startupMessage } from '../harness/wire.js';

const db = useTestDatabase();
let via: number;
let direct: number;
let scram: TestRole;
let trust: TestRole;

beforeAll(async () => {
  scram = await db.role('hostile_scram');
  trust = await db.role('hostile_trust');
  await db.admin.query(`GRANT dfgate_trust_logins TO ${trust.ident}`);
  // edge validation on: dfgate assembles whole Query and Parse messages to look into them
  via = (await startTestProxy(db.url, { edgeValidation: true, maxMessageSize: 256 << 20 })).port;
  direct = Number(new URL(db.url).port);
});

const startup = (user: string): Buffer => startupMessage(user, db.name);

/** A message header declaring a body of `body` bytes. */
function header(type: string, body: number): Buffer {
  const h = Buffer.alloc(5);
  h[0] = type.charCodeAt(0);
  h.writeInt32BE(body + 4, 1);
  return h;
}

/** The SQLSTATE of every message (non-errors as their type). */
function errors(msgs: Array<[string, Buffer]>): string[] {
  return msgs.map(([t, body]) =>
    t === 'E' ? (decodeErrorFields(body).get('C') ?? '?') : `message ${t}`,
  );
}

/** Resolves true when the socket closes within `ms`, false otherwise. */
function closesWithin(sock: net.Socket, ms: number): Promise<boolean> {
  if (sock.destroyed) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    sock.once('close', () => {
      clearTimeout(t);
      resolve(true);
    });
  });
}

describe('memory a client can claim before login', () => {
  /**
   * Logs in as `user` up to the server's first authentication request, then
   * sends a 200 MiB password message's header and 1 MiB of it. Returns the
   * SQLSTATEs of what came back: PostgreSQL's 28P01 for SASL (which the TCP
   * reset of the unread bytes may swallow), nothing for md5.
   */
  async function longPassword(port: number, user: string): Promise<string[]> {
    const r = await raw(port);
    r.sock.write(startup(user));
    const asked = await r.until((t) => t === 'R');
    expect(asked.map(([t]) => t)).toEqual(['R']);
    r.sock.write(Buffer.concat([header('p', 200 << 20), Buffer.alloc(1 << 20, 0x61)]));
    // PostgreSQL refuses it on the header (longer than PG_MAX_AUTH_TOKEN_LENGTH) and closes
    expect(await closesWithin(r.sock, 5000)).toBe(true);
    return errors(await r.until(() => false));
  }

  it('a password message longer than 65535 bytes is refused on its header, as PostgreSQL does', async () => {
    const md5 = await db.role('hostile_md5', { grant: false });
    await db.admin.query(
      `SET password_encryption = 'md5'; ALTER ROLE ${md5.ident} PASSWORD '${md5.password}'; RESET password_encryption`,
    );
    await db.admin.query(`GRANT dfgate_md5_logins TO ${md5.ident}`);
    for (const user of [scram.name, md5.name]) {
      const expected = await longPassword(direct, user);
      expect(expected.filter((c) => c !== '28P01')).toEqual([]);
      expect((await longPassword(via, user)).filter((c) => c !== '28P01')).toEqual([]);
    }
  });

  it('a large message sent before login is not read past 256 KiB until login completes', async () => {
    const p = await startTestProxy(db.url, {
      edgeValidation: true,
      maxMessageSize: 256 << 20,
      startupTimeoutMs: 4000,
    });
    const r = await raw(p.port);
    // the SCRAM exchange never completes: dfgate must not buffer the Query behind it
    const payload = Buffer.alloc(48 << 20, 0x61);
    const before = process.memoryUsage().arrayBuffers;
    r.sock.write(Buffer.concat([startup(scram.name), header('Q', 200 << 20)]));
    r.sock.write(payload);
    await new Promise((res) => setTimeout(res, 2000));
    const grown = process.memoryUsage().arrayBuffers - before;
    // the client's 48 MiB payload is allocated before `before`; what grew is dfgate's
    expect(grown).toBeLessThan(16 << 20);
    // --startup-timeout still ends it
    expect(await closesWithin(r.sock, 5000)).toBe(true);
  });

  it('a pipelined Query of 1 MiB sent with the startup packet still runs once login completes', async () => {
    const r = await raw(via);
    const filler = 'x'.repeat(1 << 20);
    r.sock.write(
      Buffer.concat([
        startup(trust.name),
        encodeFrontend({ type: 'Query', sql: `SELECT length('${filler}') AS n` }),
      ]),
    );
    let ready = 0;
    const msgs = await r.until((t) => t === 'Z' && ++ready === 2);
    const rows = msgs.filter(([t]) => t === 'D');
    expect(rows).toHaveLength(1);
    expect((rows[0] as [string, Buffer])[1].subarray(6).toString()).toBe(String(1 << 20));
    r.sock.destroy();
  });
});

describe('repeated SSL and GSSAPI negotiation', () => {
  /** Sends the packets one at a time, each after the previous answer, and returns everything received. */
  async function negotiate(port: number, packets: Buffer[]): Promise<string> {
    const s = net.connect({ host: '127.0.0.1', port });
    s.on('error', () => undefined);
    await new Promise((res) => s.once('connect', res));
    const got: Buffer[] = [];
    let wake: (() => void) | undefined;
    s.on('data', (d: Buffer) => {
      got.push(d);
      wake?.();
    });
    const closed = new Promise<void>((res) => s.once('close', () => res()));
    for (const p of packets) {
      const answered = new Promise<void>((res) => (wake = res));
      s.write(p);
      await Promise.race([answered, closed, new Promise((res) => setTimeout(res, 3000))]);
      if (s.destroyed) break;
    }
    await Promise.race([closed, new Promise((res) => setTimeout(res, 3000))]);
    s.destroy();
    const all = Buffer.concat(got);
    // single-byte answers first ('N'), then messages
    let i = 0;
    while (i < all.length && (all[i] === 0x4e || all[i] === 0x53 || all[i] === 0x47)) i++;
    return `${all.subarray(0, i).toString()}\n${render(all.subarray(i))}`;
  }

  const ssl = encodeStartup({ type: 'SSLRequest' });
  const gss = encodeStartup({ type: 'GSSENCRequest' });

  it('SSLRequest twice is answered as PostgreSQL answers it', async () => {
    const expected = await negotiate(direct, [ssl, ssl]);
    expect(expected).toMatch(
      /^N\nE S=FATAL \| V=FATAL \| C=0A000 \| M=unsupported frontend protocol 1234\.5679/,
    );
    expect(await negotiate(via, [ssl, ssl])).toBe(expected);
  });

  // dfgate answers GSSENCRequest N, as a PostgreSQL built without GSSAPI does (the
  // embedded PostgreSQL 17 of the tests gives exactly these answers); a server with
  // GSSAPI would answer G, so these are not compared with the test cluster.
  const unsupported = (v: string): string =>
    `E S=FATAL | V=FATAL | C=0A000 | M=unsupported frontend protocol 1234.${v}: server supports 3.0 to 3.0`;
  it.each([
    ['GSSENCRequest twice', [gss, gss], `N\n${unsupported('5680')}`],
    ['SSLRequest, GSSENCRequest, SSLRequest', [ssl, gss, ssl], `NN\n${unsupported('5679')}`],
    ['GSSENCRequest, SSLRequest, GSSENCRequest', [gss, ssl, gss], `NN\n${unsupported('5680')}`],
  ])('%s: each is answered once, then FATAL 0A000', async (_name, packets, expected) => {
    expect(await negotiate(via, packets)).toBe(expected);
  });
});
