/**
 * Egress tricks a hostile workflow author might try, against a local server on
 * 127.0.0.1 only (names never go to DNS).
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { refusal } from '../../src/executor/egress.js';
import { sendHttp, type HttpRequest } from '../../src/executor/http.js';

let port: number;
const seen: Array<string | undefined> = [];
const server = http.createServer((req, res) => {
  seen.push(req.headers.host);
  req.resume();
  res.end('ok');
});

beforeAll(async () => {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  port = (server.address() as AddressInfo).port;
});
afterAll(() => new Promise<void>((r) => server.close(() => r())));

const get = (headers: Array<[string, string]>): HttpRequest => ({
  kind: 'HTTP',
  url: `http://127.0.0.1:${port}/`,
  method: 'GET',
  body: null,
  headers,
  timeoutSeconds: 5,
});

describe('a Host header set by the step', () => {
  const listed = { enabled: true, allowPrivate: true, allowHosts: ['127.0.0.1', '.example.com'] };

  it.each(['internal.corp', 'INTERNAL.corp:8080', 'example.com', '169.254.169.254', ' ', ''])(
    'naming a host outside http_allow_hosts (%j) fails the step before connecting',
    async (host) => {
      seen.length = 0;
      await expect(sendHttp(get([['Host', host]]), listed)).rejects.toThrow(
        /^Blocked: the Host header .* is not in the allowed endpoint list/,
      );
      expect(seen).toEqual([]);
    },
  );

  it.each(['127.0.0.1', `127.0.0.1:1234`, 'api.example.com', 'API.Example.COM.'])(
    'naming a listed host (%j) is sent',
    async (host) => {
      seen.length = 0;
      await sendHttp(get([['host', host]]), listed);
      expect(seen).toEqual([host]);
    },
  );

  it('is sent as given when http_allow_hosts is empty (any host may be called)', async () => {
    seen.length = 0;
    await sendHttp(get([['Host', 'internal.corp']]), {
      enabled: true,
      allowPrivate: true,
      allowHosts: [],
    });
    expect(seen).toEqual(['internal.corp']);
  });
});

describe('local-use NAT64 (64:ff9b:1::/96) with http_allow_private', () => {
  it.each([
    ['64:ff9b:1::a9fe:a9fe', true],
    ['64:ff9b:1::169.254.169.254', true],
    ['64:ff9b:1::0.0.0.0', true],
    ['64:ff9b:1::e000:1', true],
  ])('%s (an always-refused IPv4 address) stays refused', (addr, always) => {
    expect(refusal(addr, true)).toMatchObject({ always });
  });

  it.each(['64:ff9b:1::a00:1', '64:ff9b:1::7f00:1', '64:ff9b:1::808:808', '::1', 'fc00::1'])(
    '%s stays open',
    (addr) => {
      expect(refusal(addr, true)).toBeUndefined();
    },
  );

  it('without http_allow_private the prefix is refused as before', () => {
    expect(refusal('64:ff9b:1::808:808', false)).toMatchObject({ always: false });
  });
});
