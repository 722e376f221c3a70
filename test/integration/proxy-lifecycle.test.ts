/** Authentication relay, limits, malformed input, upstream loss, client loss and graceful shutdown. */
import { spawn } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { Writable } from 'node:stream';
import pg from 'pg';
import pino from 'pino';
import { beforeAll, describe, expect, it } from 'vitest';
import { encodeFrontend, encodeStartup } from '../../src/proxy/protocol/frontend.js';
import { parseStrict } from '../harness/json.js';
import { errorOf, loggedIn, raw } from '../harness/wire.js';
import { useTestDatabase, withUser, type TestRole } from '../harness/db.js';
import { POOLED, spawnDfgate, startTestProxy, viaPort } from '../harness/dfgate.js';
import { WORKER_START_MS } from '../../src/dsl/edge-pool.js';

const db = useTestDatabase();
let port: number;
let scram: TestRole;
let trust: TestRole;

beforeAll(async () => {
  port = (await startTestProxy(db.url)).port;
  scram = await db.role('scram');
  trust = await db.role('trust');
  await db.admin.query(`GRANT dfgate_trust_logins TO ${trust.ident}`);
});

describe('authentication relay', () => {
  it('trust, md5 and scram-sha-256 roles log in through dfgate without dfgate knowing passwords', async () => {
    const md5 = await db.role('md5', { grant: false });
    await db.admin.query(
      `SET password_encryption = 'md5'; ALTER ROLE ${md5.ident} PASSWORD '${md5.password}'; RESET password_encryption`,
    );
    await db.admin.query(`GRANT dfgate_md5_logins TO ${md5.ident}`);
    expect(
      (
        await db.admin.query(`SELECT left(rolpassword, 3) AS p FROM pg_authid WHERE rolname = $1`, [
          md5.name,
        ])
      ).rows[0].p,
    ).toBe('md5');
    for (const [r, url] of [
      [trust, withUser(viaPort(db.url, port), trust.name, undefined)],
      [md5, viaPort(md5.url, port)],
      [scram, viaPort(scram.url, port)],
    ] as const) {
      const c = await db.connect(url);
      expect((await c.query('SELECT current_user AS u')).rows[0].u).toBe(r.name);
      await c.end();
    }
  });

  it('a wrong password gets 28P01 from the server, relayed unchanged', async () => {
    const bad = new pg.Client({
      connectionString: withUser(viaPort(db.url, port), scram.name, 'wrong'),
    });
    await expect(bad.connect()).rejects.toMatchObject({
      code: '28P01',
      message: `password authentication failed for user "${scram.name}"`,
    });
  });

  it('SCRAM-SHA-256-PLUS is never offered to clients', async () => {
    const r = await raw(port);
    r.sock.write(
      encodeStartup({
        type: 'StartupMessage',
        version: 196608,
        params: [
          ['user', scram.name],
          ['database', db.name],
        ],
      }),
    );
    const msgs = await r.until((t) => t === 'R');
    const body = msgs[msgs.length - 1]?.[1] as Buffer;
    expect(body.readInt32BE(0)).toBe(10);
    expect(body.subarray(4).toString()).toBe('SCRAM-SHA-256\0\0');
    r.sock.destroy();
  });

  it('protocol version negotiation passes through like a direct connection', async () => {
    const kinds = async (p: number): Promise<string> => {
      const r = await raw(p);
      r.sock.write(
        encodeStartup({
          type: 'StartupMessage',
          version: 196610,
          params: [
            ['user', trust.name],
            ['database', db.name],
            ['_pq_.bogus', 'x'],
          ],
        }),
      );
      const msgs = await r.until((t) => t === 'Z' || t === 'E');
      r.sock.end(encodeFrontend({ type: 'Terminate' }));
      return msgs
        .map(([t]) => t)
        .filter((t) => t !== 'S')
        .join('');
    };
    const direct = await kinds(Number(new URL(db.url).port));
    expect(direct.startsWith(db.major >= 18 ? 'v' : 'v')).toBe(true);
    expect(await kinds(port)).toBe(direct);
  });

  it('replication connections are refused with a clear error', async () => {
    const r = await raw(port);
    r.sock.write(
      encodeStartup({
        type: 'StartupMessage',
        version: 196608,
        params: [
          ['user', trust.name],
          ['database', db.name],
          ['replication', 'database'],
        ],
      }),
    );
    const e = errorOf(await r.until((t) => t === 'E'));
    expect(e).toMatchObject({
      V: 'FATAL',
      C: '0A000',
      M: 'replication connections are not supported through dfgate',
    });
    await r.closed;
  });

  it('GSSENCRequest is answered N; SSLRequest without certificates is answered N', async () => {
    for (const type of ['GSSENCRequest', 'SSLRequest'] as const) {
      const s = net.connect({ host: '127.0.0.1', port });
      s.write(encodeStartup({ type }));
      const answer = await new Promise<Buffer>((r) => s.once('data', r));
      expect(answer.toString()).toBe('N');
      s.destroy();
    }
  });
});

describe('malformed input', () => {
  it.each([
    [
      'an oversized message',
      () => Buffer.concat([Buffer.from([0x51]), Buffer.from([0x7f, 0, 0, 0])]),
      '54000',
    ],
    ['an unknown message type', () => Buffer.from([0x7a, 0, 0, 0, 4]), '08P01'],
  ])('%s gets FATAL and a closed connection, after login', async (_n, bytes, code) => {
    const r = await loggedIn(port, trust.name, db.name);
    r.sock.write(bytes());
    const e = errorOf(await r.until((t) => t === 'E'));
    expect(e).toMatchObject({ V: 'FATAL', C: code });
    await r.closed;
  });

  it('a length below 4 closes the connection without a message, as PostgreSQL does', async () => {
    const r = await loggedIn(port, trust.name, db.name);
    r.sock.write(Buffer.from([0x51, 0, 0, 0, 2]));
    expect(await r.until(() => false)).toEqual([]);
    await r.closed;
  });

  it('a bad startup packet length closes the connection without a message, as PostgreSQL does', async () => {
    for (const bytes of [
      [0, 0, 0, 3, 0, 0, 0, 0],
      [0, 0, 0x7f, 0, 0, 3, 0, 0],
    ]) {
      const r = await raw(port);
      r.sock.write(Buffer.from(bytes));
      expect(await r.until(() => false)).toEqual([]);
      await r.closed;
    }
  });

  it("a bad startup packet layout or protocol version gets PostgreSQL's FATAL", async () => {
    const packet = (version: number, text: string): Buffer => {
      const b = Buffer.alloc(8 + text.length);
      b.writeInt32BE(b.length, 0);
      b.writeInt32BE(version, 4);
      b.write(text, 8, 'latin1');
      return b;
    };
    for (const [bytes, code, message] of [
      [
        packet(196608, `user\0${trust.name}\0`),
        '08P01',
        'invalid startup packet layout: expected terminator as last byte',
      ],
      [
        packet(9 << 16, `user\0${trust.name}\0\0`),
        '0A000',
        'unsupported frontend protocol 9.0: server supports 3.0 to 3.0',
      ],
    ] as const) {
      const r = await raw(port);
      r.sock.write(bytes);
      expect(errorOf(await r.until((t) => t === 'E'))).toMatchObject({
        V: 'FATAL',
        C: code,
        M: message,
      });
      await r.closed;
    }
  });
});

describe('limits and upstream trouble', () => {
  it('--max-client-connections refuses the next client with 53300', async () => {
    const p = (await startTestProxy(db.url, { maxClientConnections: 2 })).port;
    const a = await db.connect(viaPort(scram.url, p));
    const b = await db.connect(viaPort(scram.url, p));
    await expect(db.connect(viaPort(scram.url, p))).rejects.toMatchObject({
      code: '53300',
      message: 'sorry, too many clients already',
    });
    await a.end();
    await new Promise((r) => setTimeout(r, 100));
    const c = await db.connect(viaPort(scram.url, p));
    expect((await c.query('SELECT 1 AS x')).rows[0].x).toBe(1);
    await b.end();
    await c.end();
  });

  it('half-open connections count against --max-client-connections and are closed after --startup-timeout', async () => {
    const limit = 20;
    const p = (
      await startTestProxy(db.url, { maxClientConnections: limit, startupTimeoutMs: 1000 })
    ).port;
    // a startup packet announcing 40 bytes, of which 6 arrive
    const halfOpen = await Promise.all(Array.from({ length: limit }, () => raw(p)));
    for (const r of halfOpen) r.sock.write(Buffer.from([0, 0, 0, 40, 0, 3]));
    await new Promise((r) => setTimeout(r, 100));
    const t0 = Date.now();
    await expect(db.connect(viaPort(scram.url, p))).rejects.toMatchObject({
      code: '53300',
      message: 'sorry, too many clients already',
    });
    // closed without a word, as PostgreSQL does at authentication_timeout
    for (const r of halfOpen) expect(await r.until(() => false)).toEqual([]);
    const waited = Date.now() - t0;
    expect(waited).toBeGreaterThan(700);
    expect(waited).toBeLessThan(5000);
    const c = await db.connect(viaPort(scram.url, p));
    expect((await c.query('SELECT 1 AS x')).rows[0].x).toBe(1);
    await c.end();
  });

  it('--startup-timeout also covers the relayed authentication exchange', async () => {
    const p = (await startTestProxy(db.url, { startupTimeoutMs: 1000 })).port;
    const r = await raw(p);
    r.sock.write(
      encodeStartup({
        type: 'StartupMessage',
        version: 196608,
        params: [
          ['user', scram.name],
          ['database', db.name],
        ],
      }),
    );
    const t0 = Date.now();
    // the server asks for SCRAM; the client never answers
    const msgs = await r.until(() => false);
    expect(msgs.map(([t]) => t)).toEqual(['R']);
    expect(Date.now() - t0).toBeGreaterThan(700);
    expect(Date.now() - t0).toBeLessThan(5000);
  });

  it('an unreachable or silent upstream gives the client an ErrorResponse, not a closed socket', async () => {
    const closedPort = await new Promise<number>((resolve) => {
      const s = net.createServer();
      s.listen(0, '127.0.0.1', () => {
        const p = (s.address() as net.AddressInfo).port;
        s.close(() => resolve(p));
      });
    });
    const refused = (await startTestProxy(`postgres://x@127.0.0.1:${closedPort}/db`)).port;
    await expect(db.connect(viaPort(scram.url, refused))).rejects.toMatchObject({
      code: '08001',
      message: expect.stringContaining('dfgate could not connect to the upstream server'),
    });
    const silent = net.createServer(() => undefined);
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
    const proxy = await startTestProxy(
      `postgres://x@127.0.0.1:${(silent.address() as net.AddressInfo).port}/db`,
      {
        connectTimeoutMs: 400,
        upstream: {
          host: '127.0.0.1',
          port: (silent.address() as net.AddressInfo).port,
          sslmode: 'prefer',
        },
      },
    );
    const t0 = Date.now();
    await expect(db.connect(viaPort(scram.url, proxy.port))).rejects.toMatchObject({
      code: '08001',
      message: expect.stringContaining('timed out'),
    });
    expect(Date.now() - t0).toBeLessThan(3000);
    silent.close();
  });

  it('a backend terminated by the server reports 57P01 to the client', async () => {
    const app = `dfgate-term-${Date.now()}`;
    const r = await loggedIn(port, trust.name, db.name, [['application_name', app]]);
    // inside a transaction, so that the backend is the client's in transaction mode too
    r.sock.write(encodeFrontend({ type: 'Query', sql: 'BEGIN' }));
    await r.until((t) => t === 'Z');
    await db.admin.query(
      'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1',
      [app],
    );
    const e = errorOf(await r.until((t) => t === 'E'));
    expect(e).toMatchObject({
      V: 'FATAL',
      C: '57P01',
      M: 'terminating connection due to administrator command',
    });
    await r.closed;
  });

  it('losing the upstream connection mid-session is reported as 08006', async () => {
    // a TCP relay between dfgate and PostgreSQL that the test can cut
    const pgPort = Number(new URL(db.url).port);
    const cut: net.Socket[] = [];
    const relay = net.createServer((inbound) => {
      const out = net.connect({ host: '127.0.0.1', port: pgPort });
      cut.push(inbound, out);
      inbound.pipe(out).pipe(inbound);
      inbound.on('error', () => undefined);
      out.on('error', () => undefined);
    });
    await new Promise<void>((r) => relay.listen(0, '127.0.0.1', () => r()));
    const p = (
      await startTestProxy(`postgres://x@127.0.0.1:${(relay.address() as net.AddressInfo).port}/db`)
    ).port;
    const r = await loggedIn(p, trust.name, db.name);
    r.sock.write(encodeFrontend({ type: 'Query', sql: 'BEGIN' }));
    await r.until((t) => t === 'Z');
    for (const s of cut) s.destroy();
    const e = errorOf(await r.until((t) => t === 'E'));
    expect(e).toMatchObject({ V: 'FATAL', C: '08006' });
    await r.closed;
    relay.close();
  });

  it('a client that goes away mid-result is logged as a client disconnect, not as upstream loss', async () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        lines.push(...chunk.toString().split('\n').filter(Boolean));
        cb();
      },
    });
    const p = (await startTestProxy(db.url, { log: pino({ level: 'debug' }, sink) })).port;
    for (const how of ['half-close', 'destroy'] as const) {
      const r = await loggedIn(p, trust.name, db.name);
      r.sock.write(encodeFrontend({ type: 'Query', sql: 'SELECT generate_series(1, 300000)' }));
      await r.until((t) => t === 'D');
      if (how === 'destroy') r.sock.destroy();
      else r.sock.end(); // no Terminate; keeps reading
      const rest = await r.until(() => false);
      expect(rest.filter(([t]) => t === 'E')).toEqual([]);
      await r.closed;
    }
    await new Promise((r) => setTimeout(r, 200));
    const msgs = lines.map((l) => (JSON.parse(l) as { msg: string }).msg);
    expect(msgs.filter((m) => /^client disconnected/.test(m))).toHaveLength(2);
    expect(msgs).not.toContain('upstream connection lost');
  });

  it('a client that disconnects leaves no backend behind', async () => {
    const appName = `dfgate-leak-${Date.now()}`;
    for (let i = 0; i < 5; i++) {
      const c = new pg.Client({
        connectionString: viaPort(scram.url, port),
        application_name: appName,
      });
      c.on('error', () => undefined);
      await c.connect();
      await c.query('SELECT 1');
      // drop the socket without Terminate
      (c as unknown as { connection: { stream: net.Socket } }).connection.stream.destroy();
    }
    // transaction mode keeps the (idle, clean) server connections in its pool
    const count = async (): Promise<number> =>
      (
        await db.admin.query(
          `SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1${POOLED ? ` AND state <> 'idle'` : ''}`,
          [appName],
        )
      ).rows[0].n;
    for (let i = 0; i < 50 && (await count()) > 0; i++)
      await new Promise((r) => setTimeout(r, 100));
    expect(await count()).toBe(0);
  });
});

describe('graceful shutdown (SIGTERM to the dfgate process)', () => {
  it('stops accepting, lets open transactions finish, closes idle sessions with 57P01, then exits', async () => {
    const d = await spawnDfgate([
      '--upstream',
      `${db.url}?sslmode=disable`,
      '--no-migrate',
      '--no-executor',
      '--shutdown-timeout',
      '20',
    ]);
    const url = viaPort(scram.url, d.port);
    const busy = await db.connect(url);
    const idle = await db.connect(url);
    const idleErrors: Array<{ code?: string }> = [];
    idle.on('error', (e) => idleErrors.push(e as { code?: string }));
    await busy.query('CREATE TABLE IF NOT EXISTS shutdown_t (id int)');
    await busy.query('BEGIN');
    await busy.query('INSERT INTO shutdown_t VALUES (1)');
    const exited = d.stop('SIGTERM');
    await new Promise((r) => setTimeout(r, 300));
    expect(idleErrors.map((e) => e.code)).toContain('57P01');
    // the listening socket is closed at once: a new client is refused by the OS, not by PostgreSQL
    await expect(db.connect(url)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    await busy.query('INSERT INTO shutdown_t VALUES (2)');
    await busy.query('COMMIT');
    expect(await exited).toBe(0);
    expect((await db.admin.query('SELECT count(*)::int AS n FROM shutdown_t')).rows[0].n).toBe(2);
  });

  it('terminates sessions still busy when the timeout expires', async () => {
    const d = await spawnDfgate([
      '--upstream',
      `${db.url}?sslmode=disable`,
      '--no-migrate',
      '--no-executor',
      '--shutdown-timeout',
      '1',
    ]);
    const c = await db.connect(viaPort(scram.url, d.port));
    const errs: Array<{ code?: string }> = [];
    c.on('error', (e) => errs.push(e as { code?: string }));
    await c.query('BEGIN');
    const t0 = Date.now();
    expect(await d.stop('SIGTERM')).toBe(0);
    expect(Date.now() - t0).toBeLessThan(5000);
    await new Promise((r) => setTimeout(r, 100));
    expect(errs.map((e) => e.code)).toContain('57P01');
  });
});

describe('log lines', () => {
  it('every line dfgate writes is strict JSON, without repeated keys', async () => {
    const d = await spawnDfgate(
      [
        '--upstream',
        `${db.url}?sslmode=disable`,
        '--no-migrate',
        '--no-executor',
        // long enough that the two half-open connections below still count when the third
        // client comes, on a loaded machine too (1 s was not, once)
        '--startup-timeout',
        '4',
        '--max-client-connections',
        '3',
      ],
      { DFGATE_LOG_LEVEL: 'trace' },
    );
    const ok = await db.connect(viaPort(scram.url, d.port));
    await ok.query('SELECT 1');
    await expect(
      db.connect(withUser(viaPort(db.url, d.port), scram.name, 'wrong')),
    ).rejects.toMatchObject({ code: '28P01' });
    for (const bytes of [Buffer.from([0x7a, 0, 0, 0, 4]), Buffer.from([0x51, 0, 0, 0, 2])]) {
      const r = await loggedIn(d.port, trust.name, db.name);
      r.sock.write(bytes);
      await r.closed;
    }
    const mid = await loggedIn(d.port, trust.name, db.name);
    mid.sock.write(encodeFrontend({ type: 'Query', sql: 'SELECT generate_series(1, 100000)' }));
    await mid.until((t) => t === 'D');
    mid.sock.destroy();
    // Sockets count from accept: the two half-open ones below must not be accepted while
    // this session is still open (its close follows the destroy by a few ms), or the
    // second of them is over the limit and the third client finds room.
    const closedSessions = (): number => d.output().split('"msg":"session closed"').length - 1;
    for (const t0 = Date.now(); closedSessions() < 4;) {
      expect(Date.now() - t0, d.output()).toBeLessThan(10_000);
      await new Promise((r) => setTimeout(r, 10));
    }
    const half = await Promise.all([raw(d.port), raw(d.port)]);
    for (const r of half) r.sock.write(Buffer.from([0, 0, 0, 40]));
    await expect(db.connect(viaPort(scram.url, d.port))).rejects.toMatchObject({ code: '53300' });
    for (const r of half) await r.closed;
    await ok.end();
    expect(await d.stop('SIGTERM')).toBe(0);
    const lines = d
      .output()
      .split('\n')
      .filter((l) => l.trim());
    expect(lines.length).toBeGreaterThan(10);
    for (const l of lines) expect(() => parseStrict(l), l).not.toThrow();
    const text = lines.join('\n');
    for (const m of [
      'closing client connection with an error',
      'closing client connection without a message',
      'client disconnected without Terminate',
      'refusing a client: --max-client-connections reached',
      'within --startup-timeout',
    ])
      expect(text).toContain(m);
  });
});

describe('compiler warm-up (docs/proxy.md)', () => {
  it('dfgate warms its compiler before it listens, and --warm-up 0 skips it', async () => {
    const args = ['--upstream', `${db.url}?sslmode=disable`, '--no-migrate', '--no-executor'];
    const warm = await spawnDfgate(args, { DFGATE_LOG_LEVEL: 'debug' });
    try {
      const lines = warm
        .output()
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => parseStrict(l) as { msg: string; rounds?: number; ms?: number });
      const warmed = lines.findIndex((l) => l.msg === 'compiler warmed up');
      const listening = lines.findIndex((l) => l.msg.includes('listening'));
      expect(warmed).toBeGreaterThanOrEqual(0);
      expect(lines[warmed]).toMatchObject({ rounds: 20, ms: expect.any(Number) });
      expect(listening).toBeGreaterThan(warmed);
      // and it compiles client statements as before
      const c = await db.connect(viaPort(trust.url, warm.port));
      try {
        const r = await c.query(`SELECT df.start('SELECT 1', 'warm') AS id`);
        expect(r.rows[0].id).toMatch(/^[0-9a-f]{8}$/);
      } finally {
        await c.end();
      }
    } finally {
      await warm.stop();
    }
    const cold = await spawnDfgate([...args, '--warm-up', '0'], { DFGATE_LOG_LEVEL: 'debug' });
    try {
      expect(cold.output()).not.toContain('compiler warmed up');
    } finally {
      await cold.stop();
    }
  });

  /**
   * Runs dfgate from a copy of the build whose compile worker `patch` changed
   * (inside the checkout, so that its imports resolve to this node_modules);
   * `use` gets its output so far and its port once it listens.
   */
  async function withPatchedWorker(
    patch: (text: string) => string,
    use: (out: () => string, port: number) => Promise<void>,
  ): Promise<void> {
    mkdirSync(path.resolve('node_modules/.cache'), { recursive: true });
    const dir = mkdtempSync(path.resolve('node_modules/.cache/dfgate-patched-worker-'));
    try {
      cpSync(path.resolve('dist/src'), path.join(dir, 'src'), { recursive: true });
      const worker = path.join(dir, 'src/dsl/edge-worker.js');
      writeFileSync(worker, patch(readFileSync(worker, 'utf8')));
      const proc = spawn(
        process.execPath,
        [
          path.join(dir, 'src/cli.js'),
          '--listen',
          '127.0.0.1:0',
          '--upstream',
          `${db.url}?sslmode=disable`,
          '--no-migrate',
          '--no-executor',
        ],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let out = '';
      proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
      proc.stderr.on('data', (d: Buffer) => (out += d.toString()));
      try {
        const t0 = Date.now();
        while (!/"msg":"proxy listening"/.test(out)) {
          expect(Date.now() - t0, out).toBeLessThan(15_000);
          expect(proc.exitCode, out).toBeNull();
          await new Promise((r) => setTimeout(r, 50));
        }
        await use(() => out, Number(/"listen":"127\.0\.0\.1:(\d+)"/.exec(out)?.[1]));
      } finally {
        proc.kill('SIGKILL');
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  /** Inserts `code` into the worker's text just before `before`. */
  function inserting(before: string, code: string): (text: string) => string {
    return (text) => {
      const at = text.indexOf(before);
      expect(at).toBeGreaterThan(0);
      return text.slice(0, at) + code + text.slice(at);
    };
  }

  it('a compile worker that cannot start: the warm-up is cut short and dfgate listens', async () => {
    // a worker that dies while loading
    await withPatchedWorker(
      inserting('await loadParser();', "throw new Error('the parser did not load');\n"),
      async (out, port) => {
        expect(out()).toContain('"msg":"compiler warm-up cut short"');
        // statements that mention df. are left to the database
        const c = await db.connect(viaPort(trust.url, port));
        try {
          const r = await c.query(
            `SELECT df.start('SELECT 1', 'no-worker') AS id, current_query() AS q`,
          );
          expect(r.rows[0].id).toMatch(/^[0-9a-f]{8}$/);
          // as sent: not compiled on the event loop either
          expect(r.rows[0].q).toContain(`df.start('SELECT 1', 'no-worker')`);
        } finally {
          await c.end();
        }
      },
    );
  });

  it('a compile worker that never becomes ready is ended: the statements waiting for it go to the database', async () => {
    // a worker whose parser never finishes loading (alive, never 'ready')
    await withPatchedWorker(
      inserting(
        'await loadParser();',
        'setInterval(() => {}, 1000);\nawait new Promise(() => {});\n',
      ),
      async (_out, port) => {
        const c = await db.connect(viaPort(trust.url, port));
        try {
          const t0 = Date.now();
          const r = await c.query(
            `SELECT df.start('SELECT 1', 'stuck-worker') AS id, current_query() AS q`,
          );
          expect(r.rows[0].id).toMatch(/^[0-9a-f]{8}$/);
          // as sent, once the worker's start-up time ran out (it started with the process)
          expect(r.rows[0].q).toContain(`df.start('SELECT 1', 'stuck-worker')`);
          expect(Date.now() - t0).toBeLessThan(WORKER_START_MS + 5000);
        } finally {
          await c.end();
        }
      },
    );
  });

  it('compile workers killed by the statements they compile, many times in a row: dfgate keeps compiling at the edge', async () => {
    // a worker that dies on a statement marked /*die*/ (as a crash on some input would)
    await withPatchedWorker(
      inserting(
        "port.on('message', (job) => {",
        "port.on('message', (job) => { if ('sql' in job && job.sql.includes('/*die*/')) process.exit(1); });\n",
      ),
      async (_out, port) => {
        const c = await db.connect(viaPort(trust.url, port));
        try {
          // what the database ran: df._start_rows when the edge compiled it, df.start when not
          const edge = async (n: number): Promise<boolean> => {
            const r = await c.query<{ id: string; q: string }>(
              `SELECT df.start('SELECT ${n}') AS id, current_query() AS q`,
            );
            expect(r.rows[0]?.id).toMatch(/^[0-9a-f]{8}$/);
            return (r.rows[0]?.q ?? '').includes('df._start_rows');
          };
          expect(await edge(0)).toBe(true);
          // more deaths in a row than the pool gives up after for workers that cannot start
          for (let i = 1; i <= 8; i++) {
            const r = await c.query<{ id: string; q: string }>(
              `SELECT df.start('SELECT ${i}') /*die*/ AS id, current_query() AS q`,
            );
            // the dying worker's statement went to the database unchanged, and ran there
            expect(r.rows[0]?.q).toContain('df.start(');
            expect(r.rows[0]?.id).toMatch(/^[0-9a-f]{8}$/);
          }
          expect(await edge(100)).toBe(true);
        } finally {
          await c.end();
        }
      },
    );
  });
});
