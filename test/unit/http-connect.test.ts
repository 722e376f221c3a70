/**
 * The HTTP connector and the response body cap against local servers on
 * 127.0.0.1 only: names resolve through an injected lookup, never DNS.
 */
import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { guardedConnector, type LookupFunction } from '../../src/executor/egress.js';
import { DEFAULT_MAX_BODY_BYTES, sendHttp, type HttpRequest } from '../../src/executor/http.js';

let port: number;
let connections = 0;
const requests: http.IncomingMessage[] = [];
/** What the /big handler wrote before its response closed, and whether it got to the end. */
const big: { written: number; finished: boolean; closed?: Promise<void> } = {
  written: 0,
  finished: false,
};
const BIG = 64 * 1024 * 1024;

const server = http.createServer((req, res) => {
  requests.push(req);
  req.resume();
  const u = new URL(req.url ?? '/', 'http://x');
  if (u.pathname === '/big') {
    // writes up to 64 MiB as fast as the client reads; stops when the connection closes
    big.written = 0;
    big.finished = false;
    big.closed = new Promise((r) => res.on('close', () => r()));
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    const chunk = Buffer.alloc(64 * 1024, 1);
    const pump = (): void => {
      while (big.written < BIG && !res.destroyed) {
        big.written += chunk.length;
        if (!res.write(chunk)) {
          res.once('drain', pump);
          return;
        }
      }
      if (!res.destroyed) {
        big.finished = true;
        res.end();
      }
    };
    pump();
    return;
  }
  if (u.pathname === '/declared') {
    res.writeHead(200, { 'content-length': String(100 * 1024 * 1024) });
    res.write('x');
    return;
  }
  if (u.pathname === '/exact') {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('y'.repeat(1024));
    return;
  }
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ host: req.headers.host, key: req.headers['idempotency-key'] ?? null }));
});
server.on('connection', () => connections++);

beforeAll(async () => {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  port = (server.address() as AddressInfo).port;
});

afterAll(() => {
  server.closeAllConnections();
  server.close();
});

const get = (url: string, headers: Array<[string, string]> = []): HttpRequest => ({
  kind: 'HTTP',
  url,
  method: 'GET',
  body: null,
  headers,
  timeoutSeconds: 10,
});

/** Resolves every name to the given addresses, without DNS. */
const answers =
  (...addresses: string[]): LookupFunction =>
  (_host, _opts, cb) =>
    cb(
      null,
      addresses.map((address) => ({ address, family: net.isIPv6(address) ? 6 : 4 })),
    );

const closed = { enabled: true, allowPrivate: false, allowHosts: [] };
const open = { ...closed, allowPrivate: true };

describe('connecting', () => {
  it('refuses a name that resolves to a refused address, before connecting', async () => {
    const before = { connections, requests: requests.length };
    await expect(
      sendHttp(get(`http://svc.test:${port}/`), closed, { lookup: answers('127.0.0.1') }),
    ).rejects.toThrow(
      "Blocked: the resolved IP address for 'svc.test' is in a restricted range. df.http() cannot access private or internal network addresses. (svc.test is 127.0.0.1, loopback, 127.0.0.0/8; an administrator may open loopback and private ranges with df.config http_allow_private.)",
    );
    await expect(
      sendHttp(get(`http://meta.test:${port}/`), open, {
        lookup: answers('169.254.169.254', '::ffff:169.254.169.254'),
      }),
    ).rejects.toThrow(/for 'meta\.test' is in a restricted range.*refused even with/);
    expect({ connections, requests: requests.length }).toEqual(before);
  });

  it('uses the injected lookup and only the permitted answers', async () => {
    const env = JSON.parse(
      await sendHttp(get(`http://svc.test:${port}/`), open, {
        // the refused answer is dropped; only 127.0.0.1 is connected to
        lookup: answers('169.254.169.254', '127.0.0.1'),
      }),
    ) as { status: number; body: string };
    expect(env.status).toBe(200);
    expect(JSON.parse(env.body)).toEqual({ host: `svc.test:${port}`, key: null });
  });

  it("judges the socket's actual peer after connecting", async () => {
    // an inner connector that ignores the name and connects to 127.0.0.1, as a lying resolver would
    const received: Buffer[] = [];
    const raw = net.createServer((s) => s.on('data', (d: Buffer) => received.push(d)));
    await new Promise<void>((r) => raw.listen(0, '127.0.0.1', () => r()));
    const rawPort = (raw.address() as AddressInfo).port;
    let accepted = 0;
    raw.on('connection', () => accepted++);
    const connect = guardedConnector(false, answers('93.184.216.34'), (_opts, cb) => {
      const s = net.connect(rawPort, '127.0.0.1');
      s.once('connect', () => cb(null, s));
      s.once('error', (e) => cb(e, null));
    });
    const result = await new Promise<{ err: Error | null; destroyed: boolean | undefined }>((r) =>
      connect({ hostname: 'svc.test', protocol: 'http:', port: String(rawPort) }, (err, s) =>
        r({ err, destroyed: s?.destroyed }),
      ),
    );
    expect(result.err?.message).toBe(
      "Blocked: the resolved IP address for 'svc.test' is in a restricted range. df.http() cannot access private or internal network addresses. (svc.test is 127.0.0.1, loopback, 127.0.0.0/8; an administrator may open loopback and private ranges with df.config http_allow_private.)",
    );
    await new Promise((r) => setTimeout(r, 50));
    expect(accepted).toBe(1);
    expect(Buffer.concat(received).length).toBe(0); // not one byte of a request
    // an IP literal is judged before any connection is opened
    let opened = 0;
    const literal = guardedConnector(false, answers(), (_o, cb) => {
      opened++;
      cb(new Error('must not connect'), null);
    });
    const err = await new Promise<Error | null>((r) =>
      literal({ hostname: '[::ffff:7f00:1]', protocol: 'http:', port: '80' }, (...a: unknown[]) =>
        r(a[0] as Error | null),
      ),
    );
    expect(err?.message).toMatch(/for '::ffff:7f00:1' is in a restricted range/);
    expect(opened).toBe(0);
    raw.close();
  });
});

describe('the response body cap', () => {
  it('is 4 MiB by default', () => {
    expect(DEFAULT_MAX_BODY_BYTES).toBe(4 * 1024 * 1024);
  });

  it('stops reading past the cap and closes the connection', async () => {
    await expect(
      sendHttp(get(`http://127.0.0.1:${port}/big`), open, { maxBodyBytes: 1024 * 1024 }),
    ).rejects.toThrow(
      `HTTP response body of GET http://127.0.0.1:${port}/big exceeds the limit of 1 MiB (1048576 bytes); dfgate stopped reading it. Raise the limit with dfgate's --max-result-bytes option.`,
    );
    await big.closed;
    expect(big.finished).toBe(false);
    // what the server got out before the close: the cap plus socket buffers, far from 64 MiB
    expect(big.written).toBeLessThan(16 * 1024 * 1024);
  });

  it('refuses a declared Content-Length over the cap without reading', async () => {
    await expect(
      sendHttp(get(`http://127.0.0.1:${port}/declared`), open, { maxBodyBytes: 1024 }),
    ).rejects.toThrow(/exceeds the limit of 1 KiB \(1024 bytes\)/);
  });

  it('accepts a body of exactly the cap', async () => {
    const env = JSON.parse(
      await sendHttp(get(`http://127.0.0.1:${port}/exact`), open, { maxBodyBytes: 1024 }),
    ) as { body: string };
    expect(env.body.length).toBe(1024);
  });
});

describe('Idempotency-Key', () => {
  it('is sent when given, and an explicit header of any case wins', async () => {
    const body = async (headers: Array<[string, string]>, key?: string): Promise<unknown> =>
      JSON.parse(
        (
          JSON.parse(
            await sendHttp(
              get(`http://127.0.0.1:${port}/`, headers),
              open,
              key === undefined ? {} : { idempotencyKey: key },
            ),
          ) as { body: string }
        ).body,
      );
    expect(await body([], 'dfgate-abc')).toMatchObject({ key: 'dfgate-abc' });
    expect(await body([['IDEMPOTENCY-KEY', 'mine']], 'dfgate-abc')).toMatchObject({ key: 'mine' });
    expect(await body([])).toMatchObject({ key: null });
  });
});
