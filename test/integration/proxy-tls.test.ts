/**
 * TLS on both sides: clients to dfgate (--tls-cert/--tls-key, SSLRequest and
 * PostgreSQL 17's direct TLS) and dfgate to a TLS-only upstream per sslmode.
 * This file runs its own cluster with ssl=on.
 */
import { spawn, execFileSync } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  mkdirSync,
  mkdtempSync,
  writeFileSync,
  readFileSync,
  rmSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import net from 'node:net';
import pg from 'pg';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import {
  startCluster,
  embeddedBinDir,
  serverOsUser,
  type RunningCluster,
} from '../../src/pg/cluster.js';
import { startProxy, type ProxyServer } from '../../src/proxy/server.js';
import { targetFromUrl } from '../../src/proxy/upstream.js';
import { encodeStartup } from '../../src/proxy/protocol/frontend.js';
import { existsSync } from 'node:fs';

const dir = mkdtempSync(path.join(tmpdir(), 'dfgate-tls-'));
chmodSync(dir, 0o755);
const f = (n: string): string => path.join(dir, n);
let cluster: RunningCluster;
const proxies: ProxyServer[] = [];
const password = 'tls-user-pw';
const user = 'tls_user';

function openssl(args: string[]): void {
  execFileSync('openssl', args, { stdio: 'ignore' });
}

/** A self-signed CA certificate (key and PEM file names inside the test directory). */
function selfSignedCa(key: string, pem: string, cn: string): void {
  openssl([
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    f(key),
    '-out',
    f(pem),
    '-days',
    '2',
    '-subj',
    `/CN=${cn}`,
  ]);
}

beforeAll(async () => {
  // a CA and a server certificate for 127.0.0.1
  selfSignedCa('ca.key', 'ca.pem', 'dfgate test CA');
  openssl([
    'req',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    f('server.key'),
    '-out',
    f('server.csr'),
    '-subj',
    '/CN=127.0.0.1',
  ]);
  writeFileSync(f('ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  openssl([
    'x509',
    '-req',
    '-in',
    f('server.csr'),
    '-CA',
    f('ca.pem'),
    '-CAkey',
    f('ca.key'),
    '-CAcreateserial',
    '-out',
    f('server.pem'),
    '-days',
    '2',
    '-extfile',
    f('ext.cnf'),
  ]);
  selfSignedCa('other.key', 'other-ca.pem', 'another CA');
  const binDir = inject('pgBinDir') || (await embeddedBinDir());
  // server key material readable by the server's OS user
  const pgDir = path.join(dir, 'pg');
  mkdirSync(pgDir, { recursive: true });
  for (const n of ['server.pem', 'server.key'])
    writeFileSync(path.join(pgDir, n), readFileSync(f(n)), { mode: 0o600 });
  const osUser = serverOsUser();
  if (osUser)
    for (const n of ['server.pem', 'server.key'])
      chownSync(path.join(pgDir, n), osUser.uid, osUser.gid);
  cluster = await startCluster({
    baseDir: path.join(dir, 'cluster'),
    binDir,
    password: 'tls-superuser',
    hbaFirst: ['hostnossl all all 127.0.0.1/32 reject'],
    settings: {
      ssl: 'on',
      ssl_cert_file: path.join(pgDir, 'server.pem'),
      ssl_key_file: path.join(pgDir, 'server.key'),
      fsync: 'off',
    },
  });
  const admin = new pg.Client({
    connectionString: cluster.url(),
    ssl: { rejectUnauthorized: false },
  });
  await admin.connect();
  await admin.query(`CREATE ROLE ${user} LOGIN PASSWORD '${password}'`);
  await admin.end();
}, 120_000);

afterAll(async () => {
  await Promise.all(proxies.map((p) => p.shutdown(0)));
  await cluster?.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function proxy(sslmode: string, extra = '', withTls = true): Promise<ProxyServer> {
  const p = await startProxy({
    host: '127.0.0.1',
    port: 0,
    upstream: targetFromUrl(
      `postgres://127.0.0.1:${cluster.port}/postgres?sslmode=${sslmode}${extra}`,
    ),
    log: pino({ level: 'silent' }),
    maxClientConnections: 100,
    connectTimeoutMs: 5000,
    maxMessageSize: 1 << 20,
    tlsCert: withTls ? f('server.pem') : undefined,
    tlsKey: withTls ? f('server.key') : undefined,
  });
  proxies.push(p);
  return p;
}

function userUrl(port: number, params = ''): string {
  return `postgres://${user}:${password}@127.0.0.1:${port}/postgres${params}`;
}

async function connect(port: number, ssl: pg.ClientConfig['ssl']): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: userUrl(port), ssl });
  c.on('error', () => undefined);
  await c.connect();
  return c;
}

describe('TLS', () => {
  it('a client requiring TLS reaches a TLS-only upstream (sslmode=require) through dfgate, with scram-sha-256', async () => {
    const p = await proxy('require');
    const c = await connect(p.port, { ca: readFileSync(f('ca.pem')), rejectUnauthorized: true });
    const r = await c.query(
      `SELECT current_user AS u, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()`,
    );
    expect(r.rows[0]).toEqual({ u: user, ssl: true });
    expect(
      (c as unknown as { connection: { stream: tls.TLSSocket } }).connection.stream.encrypted,
    ).toBe(true);
    await c.end();
  });

  it('verify-full checks the upstream certificate against sslrootcert', async () => {
    const good = await proxy('verify-full', `&sslrootcert=${f('ca.pem')}`);
    const c = await connect(good.port, false);
    expect((await c.query('SELECT 1 AS one')).rows[0].one).toBe(1);
    await c.end();
    const bad = await proxy('verify-ca', `&sslrootcert=${f('other-ca.pem')}`);
    await expect(connect(bad.port, false)).rejects.toMatchObject({
      code: '08001',
      message: expect.stringContaining('TLS to the upstream failed (sslmode=verify-ca)'),
    });
  });

  it('sslmode=disable against a TLS-only server is refused by the server, relayed', async () => {
    const p = await proxy('disable');
    await expect(connect(p.port, false)).rejects.toMatchObject({ code: '28000' });
  });

  const psql = ['/usr/lib/postgresql/15/bin/psql', '/usr/bin/psql'].find((x) =>
    existsSync(x),
  ) as string;

  function runPsql(conninfo: string): Promise<{ code: number | null; out: string; err: string }> {
    return new Promise((resolve) => {
      const child = spawn(
        psql,
        [
          '-X',
          '-At',
          '-d',
          conninfo,
          '-c',
          'SELECT current_user, (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())',
        ],
        {
          env: { ...process.env, PGPASSWORD: password, PGCONNECT_TIMEOUT: '10' },
        },
      );
      let out = '';
      let err = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr.on('data', (d: Buffer) => (err += d.toString()));
      child.once('exit', (code) => resolve({ code, out, err }));
    });
  }

  it('the production combination: psql over TLS → dfgate → TLS upstream, scram-sha-256, channel_binding=disable', async () => {
    const p = await proxy('verify-full', `&sslrootcert=${f('ca.pem')}`);
    const base = `host=127.0.0.1 port=${p.port} dbname=postgres user=${user} sslmode=verify-full sslrootcert=${f('ca.pem')}`;
    const ok = await runPsql(`${base} channel_binding=disable`);
    expect(ok.err).toBe('');
    expect(ok.out.trim()).toBe(`${user}|t`);
    // libpq's default (channel_binding=prefer) cannot work across two TLS sessions: dfgate says what to change
    const fails = await runPsql(base);
    expect(fails.code).not.toBe(0);
    expect(fails.err).toContain('SCRAM channel binding cannot pass through dfgate');
    expect(fails.err).toContain('channel_binding=disable');
    // and channel_binding=require is refused by libpq itself, since dfgate never offers SCRAM-SHA-256-PLUS
    const req = await runPsql(`${base} channel_binding=require`);
    expect(req.code).not.toBe(0);
    expect(req.err).toMatch(/channel binding/i);
  });

  it('direct TLS (sslnegotiation=direct, ALPN "postgresql") is accepted when dfgate has a certificate', async () => {
    const p = await proxy('require');
    const s = tls.connect({
      host: '127.0.0.1',
      port: p.port,
      ca: readFileSync(f('ca.pem')),
      ALPNProtocols: ['postgresql'],
    });
    await new Promise((r) => s.once('secureConnect', r));
    expect(s.alpnProtocol).toBe('postgresql');
    s.write(
      encodeStartup({
        type: 'StartupMessage',
        version: 196608,
        params: [
          ['user', user],
          ['database', 'postgres'],
        ],
      }),
    );
    const first = await new Promise<Buffer>((r) => s.once('data', r));
    expect(String.fromCharCode(first[0] as number)).toBe('R');
    s.destroy();
  });

  it('direct TLS without a certificate, and plaintext after an SSLRequest, are refused', async () => {
    const plain = await proxy('require', '', false);
    const s = tls.connect({
      host: '127.0.0.1',
      port: plain.port,
      rejectUnauthorized: false,
      ALPNProtocols: ['postgresql'],
    });
    const failed = await new Promise<boolean>((r) => {
      s.once('secureConnect', () => r(false));
      s.once('error', () => r(true));
      s.once('close', () => r(true));
    });
    expect(failed).toBe(true);
    const withTls = await proxy('require');
    const raw = net.connect({ host: '127.0.0.1', port: withTls.port });
    raw.write(
      Buffer.concat([
        encodeStartup({ type: 'SSLRequest' }),
        encodeStartup({ type: 'StartupMessage', version: 196608, params: [['user', user]] }),
      ]),
    );
    const reply = await new Promise<Buffer>((r) => raw.once('data', r));
    expect(reply[0]).toBe(0x45); // 'E': unencrypted data after SSLRequest
    expect(reply.toString('latin1')).toContain('08P01');
    raw.destroy();
  });
});
