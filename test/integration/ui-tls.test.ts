/**
 * The web console over HTTPS (docs/ui.md, "HTTPS"): with a certificate and
 * key the console is served by node:https only, sets its session cookie with
 * `Secure`, sends Strict-Transport-Security, and its origin check accepts
 * `https://host` and refuses `http://host`. A throwaway self-signed
 * certificate for 127.0.0.1 is made with openssl and trusted by the client.
 */
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import pino from 'pino';
import { Agent, fetch, type Response } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { spawnDfgate } from '../harness/dfgate.js';
import { startUi, type UiServer } from '../../src/ui/server.js';

const db = useTestDatabase();
const dir = mkdtempSync(path.join(tmpdir(), 'dfgate-ui-tls-'));
const certFile = path.join(dir, 'console.pem');
const keyFile = path.join(dir, 'console.key');
/** What the console answers with under TLS (and must not send otherwise). */
const SECURE_COOKIE =
  /^dfgate_session=[A-Za-z0-9_-]{43}; Path=\/; HttpOnly; SameSite=Strict; Secure$/;
const HSTS = 'max-age=31536000';

let ui: UiServer;
let trusting: Agent;
let alice: TestRole;
let bob: TestRole;
/** `https://127.0.0.1:PORT`: the console's own origin, as a browser sends it. */
let origin: string;

beforeAll(async () => {
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      keyFile,
      '-out',
      certFile,
      '-days',
      '2',
      '-subj',
      '/CN=127.0.0.1',
      '-addext',
      'subjectAltName=IP:127.0.0.1',
    ],
    { stdio: 'ignore' },
  );
  trusting = new Agent({ connect: { ca: readFileSync(certFile) } });
  alice = await db.role('alice');
  bob = await db.role('bob');
  ui = await startUi({
    listen: { host: '127.0.0.1', port: 0 },
    upstream: db.url,
    log: pino({ level: process.env['DFGATE_TEST_LOG'] ?? 'silent' }),
    tlsCert: certFile,
    tlsKey: keyFile,
  });
  origin = `https://127.0.0.1:${ui.port}`;
});
afterAll(async () => {
  await ui?.close();
  await trusting?.close();
  rmSync(dir, { recursive: true, force: true });
});

interface Browser {
  cookie: string;
  csrf: string;
}

/** A request to the console over HTTPS, trusting the test certificate. */
function get(url: string, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(url, { headers, dispatcher: trusting });
}

async function post(
  url: string,
  b: Browser | undefined,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<Response> {
  const h: Record<string, string> = { 'Content-Type': 'application/json', ...headers };
  if (b) {
    h['Cookie'] = b.cookie;
    h['X-CSRF-Token'] = b.csrf;
  }
  return fetch(url, {
    method: 'POST',
    headers: h,
    body: JSON.stringify(body),
    dispatcher: trusting,
  });
}

async function login(base: string, role: TestRole): Promise<{ b: Browser; setCookie: string }> {
  const r = await post(
    `${base}/api/login`,
    undefined,
    { role: role.name, password: role.password },
    { Origin: base },
  );
  expect(r.status).toBe(200);
  const setCookie = r.headers.get('set-cookie') ?? '';
  const csrf = ((await r.json()) as { csrf: string }).csrf;
  return { b: { cookie: setCookie.split(';')[0] as string, csrf }, setCookie };
}

/** Everything a plain-TCP client gets back for a cleartext HTTP request, until the server closes. */
function cleartext(port: number, request: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    let out = '';
    const timer = setTimeout(() => {
      s.destroy();
      reject(
        new Error(`the TLS port kept a cleartext connection open; got ${JSON.stringify(out)}`),
      );
    }, 10_000);
    s.on('data', (d: Buffer) => (out += d.toString('latin1')));
    s.on('error', () => undefined);
    s.on('close', () => {
      clearTimeout(timer);
      resolve(out);
    });
    s.write(request);
  });
}

/** A cleartext request to a TLS port is not answered as HTTP (at most a bare 400) and gets nothing of the console. */
async function expectNoCleartext(port: number): Promise<void> {
  const page = await cleartext(port, `GET / HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`);
  expect(page).toMatch(/^(?:$|HTTP\/1\.1 400 )/);
  expect(page).not.toContain('<html');
  const body = JSON.stringify({ role: alice.name, password: alice.password });
  const loginReply = await cleartext(
    port,
    `POST /api/login HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: application/json\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
  expect(loginReply).not.toContain('dfgate_session');
  expect(loginReply).not.toMatch(/^HTTP\/1\.1 200 /);
  const viaFetch = await globalThis
    .fetch(`http://127.0.0.1:${port}/`)
    .then((r) => `status ${r.status}`)
    .catch((e: unknown) => e);
  expect(viaFetch).toBeInstanceOf(Error);
}

describe('the console over HTTPS', () => {
  it('serves the login page with the given certificate, and HSTS', async () => {
    expect(ui.url).toBe(`${origin}/`);
    const r = await get(`${origin}/login`);
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toBe('text/html; charset=utf-8');
    expect(r.headers.get('strict-transport-security')).toBe(HSTS);
    expect(r.headers.get('content-security-policy')).toContain("default-src 'none'");
    expect(await r.text()).toContain('<title>dfgate console</title>');
    const asset = await get(`${origin}/assets/app.js`);
    expect(asset.status).toBe(200);
    expect(asset.headers.get('strict-transport-security')).toBe(HSTS);
    // errors carry it too
    const none = await get(`${origin}/api/nope`);
    expect(none.status).toBe(404);
    expect(none.headers.get('strict-transport-security')).toBe(HSTS);

    // the certificate on the wire is the one given
    const served = await new Promise<string>((resolve, reject) => {
      const s = tls.connect(
        { host: '127.0.0.1', port: ui.port, ca: readFileSync(certFile) },
        () => {
          resolve(s.getPeerX509Certificate()?.fingerprint256 ?? '');
          s.end();
        },
      );
      s.on('error', reject);
    });
    expect(served).toBe(new X509Certificate(readFileSync(certFile)).fingerprint256);
    // and a client that does not trust it refuses the connection
    const untrusting = new Agent();
    const refused = await fetch(`${origin}/login`, { dispatcher: untrusting }).catch(
      (e: unknown) => e,
    );
    await untrusting.close();
    expect(refused).toBeInstanceOf(Error);
    expect(String((refused as Error & { cause?: { code?: string } }).cause?.code)).toBe(
      'DEPTH_ZERO_SELF_SIGNED_CERT',
    );
  });

  it('does not answer cleartext HTTP on the TLS port', async () => {
    await expectNoCleartext(ui.port);
  });

  it('logs in with a Secure, HttpOnly, SameSite=Strict cookie; an http:// origin may not log in', async () => {
    const wrong = await post(
      `${origin}/api/login`,
      undefined,
      { role: alice.name, password: 'wrong' },
      { Origin: origin },
    );
    expect(wrong.status).toBe(401);
    expect(wrong.headers.get('set-cookie')).toBeNull();

    const { b, setCookie } = await login(origin, alice);
    expect(setCookie).toMatch(SECURE_COOKIE);
    const s = await get(`${origin}/api/session`, { Cookie: b.cookie });
    expect(s.status).toBe(200);
    expect(s.headers.get('strict-transport-security')).toBe(HSTS);
    expect(await s.json()).toMatchObject({ role: alice.name, usage: true });

    for (const o of [`http://127.0.0.1:${ui.port}`, 'https://evil.example']) {
      const r = await post(
        `${origin}/api/login`,
        undefined,
        { role: alice.name, password: alice.password },
        { Origin: o },
      );
      expect(r.status).toBe(403);
      expect(await r.json()).toMatchObject({ code: 'csrf' });
      expect(r.headers.get('set-cookie')).toBeNull();
    }
  });

  it('accepts writes from https://127.0.0.1:PORT and refuses http:// and foreign origins', async () => {
    const { b } = await login(origin, alice);
    const check = (o: string | undefined, extra: Record<string, string> = {}): Promise<Response> =>
      post(
        `${origin}/api/check`,
        b,
        { source: `'SELECT 1'` },
        { ...(o ? { Origin: o } : {}), ...extra },
      );

    const ok = await check(origin);
    expect(ok.status).toBe(200);
    expect(await ok.json()).toMatchObject({ ok: true });
    for (const o of [
      `http://127.0.0.1:${ui.port}`,
      `https://127.0.0.1:${ui.port + 1 === 65536 ? 1 : ui.port + 1}`,
      'https://evil.example',
      'null',
    ]) {
      const r = await check(o);
      expect([o, r.status]).toEqual([o, 403]);
      expect(await r.json()).toMatchObject({ code: 'csrf' });
    }
    expect((await check(origin, { 'Sec-Fetch-Site': 'cross-site' })).status).toBe(403);
    expect((await check(origin, { 'Sec-Fetch-Site': 'same-origin' })).status).toBe(200);

    // cancel: a real write, done as the role
    const a = await db.connect(alice.url);
    const id = (await a.query(`SELECT df.start('SELECT 1', 'tls-cancel') AS id`)).rows[0]
      .id as string;
    const plain = await post(
      `${origin}/api/instances/${id}/cancel`,
      b,
      {},
      {
        Origin: `http://127.0.0.1:${ui.port}`,
      },
    );
    expect(plain.status).toBe(403);
    const status = async (): Promise<string> =>
      (await db.admin.query(`SELECT status FROM df.instances WHERE id = $1`, [id])).rows[0].status;
    expect(await status()).not.toBe('cancelled');
    const cancelled = await post(`${origin}/api/instances/${id}/cancel`, b, {}, { Origin: origin });
    expect(cancelled.status).toBe(200);
    expect(((await cancelled.json()) as { message: string }).message).toMatch(
      new RegExp(`^Instance ${id} cancelled`),
    );
    expect(await status()).toBe('cancelled');

    // logout: refused from http://, done from https://, and the cookie is cleared as Secure
    const badOut = await post(
      `${origin}/api/logout`,
      b,
      {},
      { Origin: `http://127.0.0.1:${ui.port}` },
    );
    expect(badOut.status).toBe(403);
    expect((await get(`${origin}/api/session`, { Cookie: b.cookie })).status).toBe(200);
    const out = await post(`${origin}/api/logout`, b, {}, { Origin: origin });
    expect(out.status).toBe(200);
    expect(out.headers.get('set-cookie')).toBe(
      'dfgate_session=; Path=/; HttpOnly; SameSite=Strict; Secure; Max-Age=0',
    );
    expect((await get(`${origin}/api/session`, { Cookie: b.cookie })).status).toBe(401);
  });

  it("shows a role only its own instances; another role's id is not found", async () => {
    const a = await db.connect(alice.url);
    const bc = await db.connect(bob.url);
    const mine = (await a.query(`SELECT df.start('SELECT 1', 'tls-mine') AS id`)).rows[0]
      .id as string;
    const theirs = (await bc.query(`SELECT df.start('SELECT 2', 'tls-theirs') AS id`)).rows[0]
      .id as string;
    const { b } = await login(origin, alice);
    const list = await get(`${origin}/api/instances`, { Cookie: b.cookie });
    expect(list.status).toBe(200);
    const ids = ((await list.json()) as { rows: Array<{ id: string }> }).rows.map((r) => r.id);
    expect(ids).toContain(mine);
    expect(ids).not.toContain(theirs);
    expect((await get(`${origin}/api/instances/${mine}`, { Cookie: b.cookie })).status).toBe(200);
    const hidden = await get(`${origin}/api/instances/${theirs}`, { Cookie: b.cookie });
    expect(hidden.status).toBe(404);
    expect(await hidden.json()).toMatchObject({ code: 'not_found' });
    expect((await get(`${origin}/instances/${theirs}`, { Cookie: b.cookie })).status).toBe(404);
    expect((await get(`${origin}/instances/${mine}`, { Cookie: b.cookie })).status).toBe(200);
    const cancel = await post(
      `${origin}/api/instances/${theirs}/cancel`,
      b,
      {},
      { Origin: origin },
    );
    expect(cancel.status).toBe(404);
    expect(
      (await db.admin.query(`SELECT status FROM df.instances WHERE id = $1`, [theirs])).rows[0]
        .status,
    ).not.toBe('cancelled');
  });
});

describe('dfgate --ui-listen with --tls-cert/--tls-key', () => {
  it('prints an https:// URL that serves the console over TLS only', async () => {
    const d = await spawnDfgate([
      '--upstream',
      `${db.url}?sslmode=disable`,
      '--no-migrate',
      '--no-executor',
      '--ui-listen',
      '127.0.0.1:0',
      '--tls-cert',
      certFile,
      '--tls-key',
      keyFile,
    ]);
    let m: RegExpExecArray | null = null;
    for (let i = 0; i < 200 && !m; i++) {
      m = /"url":"(https:\/\/127\.0\.0\.1:(\d+)\/)"[^\n]*"msg":"web console listening"/.exec(
        d.output(),
      );
      if (!m) await new Promise((r) => setTimeout(r, 50));
    }
    expect(m, d.output()).not.toBeNull();
    const url = (m as RegExpExecArray)[1] as string;
    const port = Number((m as RegExpExecArray)[2]);
    const page = await get(url);
    expect(page.status).toBe(200);
    expect(page.headers.get('strict-transport-security')).toBe(HSTS);
    const base = url.slice(0, -1);
    const { b, setCookie } = await login(base, alice);
    expect(setCookie).toMatch(SECURE_COOKIE);
    const ok = await post(`${base}/api/check`, b, { source: `'SELECT 1'` }, { Origin: base });
    expect(ok.status).toBe(200);
    const plain = await post(
      `${base}/api/check`,
      b,
      { source: `'SELECT 1'` },
      {
        Origin: `http://127.0.0.1:${port}`,
      },
    );
    expect(plain.status).toBe(403);
    await expectNoCleartext(port);
    expect(await d.stop()).toBe(0);
  });
});
