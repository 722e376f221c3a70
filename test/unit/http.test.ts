/**
 * The egress policy of HTTP steps (spec §9.6, DESIGN.md §5 Q8) without any
 * network: URL spellings are judged by checkEndpoint (which never connects),
 * addresses by refusal(), DNS answers by guardedLookup with injected answers.
 */
import { describe, expect, it } from 'vitest';
import {
  addressBlocked,
  checkEndpoint,
  guardedLookup,
  normaliseAllowEntry,
  refusal,
  type HttpPolicy,
  type LookupFunction,
} from '../../src/executor/egress.js';
import { idempotencyKey } from '../../src/executor/http.js';

type Outcome = 'ok' | 'blocked' | 'invalid' | 'userinfo';

/**
 * [URL, outcome without http_allow_private, outcome with it, normalised host].
 * Loopback and private spellings are refused only without the switch; "this
 * network", link-local and metadata spellings always.
 */
const TABLE: ReadonlyArray<readonly [string, Outcome, Outcome, string?]> = [
  // loopback, IPv4 spellings
  ['http://127.0.0.1:8080/', 'blocked', 'ok', '127.0.0.1'],
  ['http://2130706433:8080/', 'blocked', 'ok', '127.0.0.1'],
  ['http://0x7f000001:8080/', 'blocked', 'ok', '127.0.0.1'],
  ['http://0X7F000001/', 'blocked', 'ok', '127.0.0.1'],
  ['http://0177.0.0.1:8080/', 'blocked', 'ok', '127.0.0.1'],
  ['http://00000177.0.0.01/', 'blocked', 'ok', '127.0.0.1'],
  ['http://017700000001/', 'blocked', 'ok', '127.0.0.1'],
  ['http://127.1:8080/', 'blocked', 'ok', '127.0.0.1'],
  ['http://127.0.1/', 'blocked', 'ok', '127.0.0.1'],
  ['http://0x7f.1/', 'blocked', 'ok', '127.0.0.1'],
  ['http://0x7f.0x0.0x0.0x1/', 'blocked', 'ok', '127.0.0.1'],
  ['http://127.0.0.1.:8080/', 'blocked', 'ok', '127.0.0.1'],
  ['http://127.0.0.1%2e/', 'blocked', 'ok', '127.0.0.1'],
  ['http://%31%32%37.0.0.1:8080/', 'blocked', 'ok', '127.0.0.1'],
  ['http://127。0。0。1:8080/', 'blocked', 'ok', '127.0.0.1'],
  ['http://127．0．0．1/', 'blocked', 'ok', '127.0.0.1'],
  ['http://127｡0｡0｡1/', 'blocked', 'ok', '127.0.0.1'],
  ['http://１２７.０.０.１/', 'blocked', 'ok', '127.0.0.1'],
  ['http://127.255.255.254/', 'blocked', 'ok', '127.255.255.254'],
  ['HTTP://127.0.0.1/', 'blocked', 'ok', '127.0.0.1'],
  ['http://127.0.0.1:8080\\@example.invalid/', 'blocked', 'ok', '127.0.0.1'],
  // loopback, IPv6 spellings and IPv6 forms embedding 127.0.0.1
  ['http://[::1]:8080/', 'blocked', 'ok', '::1'],
  ['http://[0:0:0:0:0:0:0:1]/', 'blocked', 'ok', '::1'],
  ['http://[0000::0001]/', 'blocked', 'ok', '::1'],
  ['http://[::ffff:127.0.0.1]/', 'blocked', 'ok', '::ffff:7f00:1'],
  ['http://[::ffff:7f00:1]/', 'blocked', 'ok', '::ffff:7f00:1'],
  ['http://[::FFFF:7F00:1]/', 'blocked', 'ok', '::ffff:7f00:1'],
  ['http://[::ffff:0:7f00:1]/', 'blocked', 'ok', '::ffff:0:7f00:1'],
  ['http://[::127.0.0.1]/', 'blocked', 'ok', '::7f00:1'],
  ['http://[64:ff9b::7f00:1]/', 'blocked', 'ok', '64:ff9b::7f00:1'],
  ['http://[64:ff9b::127.0.0.1]/', 'blocked', 'ok', '64:ff9b::7f00:1'],
  ['http://[2002:7f00:1::]/', 'blocked', 'ok', '2002:7f00:1::'],
  ['http://[2002:7f00:0001:0:0:0:0:1]/', 'blocked', 'ok', '2002:7f00:1::1'],
  ['http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/', 'blocked', 'ok'], // Teredo, client 127.0.0.1
  // private ranges
  ['http://10.0.0.1/', 'blocked', 'ok', '10.0.0.1'],
  ['http://012.0.0.1/', 'blocked', 'ok', '10.0.0.1'],
  ['http://167772161/', 'blocked', 'ok', '10.0.0.1'],
  ['http://172.16.0.1/', 'blocked', 'ok', '172.16.0.1'],
  ['http://192.168.1.1/', 'blocked', 'ok', '192.168.1.1'],
  ['http://0xc0a80101/', 'blocked', 'ok', '192.168.1.1'],
  ['http://100.64.0.1/', 'blocked', 'ok', '100.64.0.1'],
  ['http://198.18.0.1/', 'blocked', 'ok', '198.18.0.1'],
  ['http://[fd12::1]/', 'blocked', 'ok', 'fd12::1'],
  ['http://[fc00::1]/', 'blocked', 'ok', 'fc00::1'],
  ['http://[::ffff:10.0.0.1]/', 'blocked', 'ok', '::ffff:a00:1'],
  ['http://[64:ff9b::192.168.0.1]/', 'blocked', 'ok', '64:ff9b::c0a8:1'],
  ['http://[2002:c0a8:101::1]/', 'blocked', 'ok', '2002:c0a8:101::1'],
  // "this network", link-local, metadata, multicast: refused always
  ['http://0:8080/', 'blocked', 'blocked', '0.0.0.0'],
  ['http://0.0.0.0/', 'blocked', 'blocked', '0.0.0.0'],
  ['http://0x0/', 'blocked', 'blocked', '0.0.0.0'],
  ['http://0.1.2.3/', 'blocked', 'blocked', '0.1.2.3'],
  ['http://169.254.169.254/latest/meta-data/', 'blocked', 'blocked', '169.254.169.254'],
  ['http://2852039166/', 'blocked', 'blocked', '169.254.169.254'],
  ['http://0xa9fea9fe/', 'blocked', 'blocked', '169.254.169.254'],
  ['http://169.254.43518/', 'blocked', 'blocked', '169.254.169.254'],
  ['http://0251.0376.0251.0376/', 'blocked', 'blocked', '169.254.169.254'],
  ['http://169.254.169.254./', 'blocked', 'blocked', '169.254.169.254'],
  ['http://169.254.1.1/', 'blocked', 'blocked', '169.254.1.1'],
  ['http://100.100.100.200/', 'blocked', 'blocked', '100.100.100.200'],
  ['http://168.63.129.16/', 'blocked', 'blocked', '168.63.129.16'],
  ['http://224.0.0.1/', 'blocked', 'blocked', '224.0.0.1'],
  ['http://255.255.255.255/', 'blocked', 'blocked', '255.255.255.255'],
  ['http://[::]/', 'blocked', 'blocked', '::'],
  ['http://[0::0]/', 'blocked', 'blocked', '::'],
  ['http://[fe80::1]/', 'blocked', 'blocked', 'fe80::1'],
  ['http://[FE80::A:B]/', 'blocked', 'blocked', 'fe80::a:b'],
  ['http://[febf::1]/', 'blocked', 'blocked', 'febf::1'],
  ['http://[ff02::1]/', 'blocked', 'blocked', 'ff02::1'],
  ['http://[fd00:ec2::254]/', 'blocked', 'blocked', 'fd00:ec2::254'],
  ['http://[fd20:ce::254]/', 'blocked', 'blocked', 'fd20:ce::254'],
  ['http://[::ffff:169.254.169.254]/', 'blocked', 'blocked', '::ffff:a9fe:a9fe'],
  ['http://[::ffff:a9fe:a9fe]/', 'blocked', 'blocked', '::ffff:a9fe:a9fe'],
  ['http://[::169.254.169.254]/', 'blocked', 'blocked', '::a9fe:a9fe'],
  ['http://[64:ff9b::a9fe:a9fe]/', 'blocked', 'blocked', '64:ff9b::a9fe:a9fe'],
  ['http://[2002:a9fe:a9fe::]/', 'blocked', 'blocked', '2002:a9fe:a9fe::'],
  ['http://[::ffff:0.0.0.0]/', 'blocked', 'blocked', '::ffff:0:0'],
  ['http://[64:ff9b::]/', 'blocked', 'blocked', '64:ff9b::'],
  ['http://[::ffff:100.100.100.200]/', 'blocked', 'blocked', '::ffff:6464:64c8'],
  // not URLs the parser accepts (zone ids, out-of-range numbers, double encoding)
  ['http://[fe80::1%25eth0]/', 'invalid', 'invalid'],
  ['http://[::1%251]/', 'invalid', 'invalid'],
  ['http://4294967296/', 'invalid', 'invalid'],
  ['http://1.2.3.4.5/', 'invalid', 'invalid'],
  ['http://%2531%2532%2537.0.0.1/', 'invalid', 'invalid'],
  ['http://127.0.0.1%00/', 'invalid', 'invalid'],
  ['http://[::1/', 'invalid', 'invalid'],
  // credentials in the URL: refused always
  ['http://user@127.0.0.1/', 'userinfo', 'userinfo'],
  ['http://user:pw@example.com/', 'userinfo', 'userinfo'],
  ['http://127.0.0.1:8080@example.com/', 'userinfo', 'userinfo'],
  ['http://example.com@169.254.169.254/', 'userinfo', 'userinfo'],
  ['http://:pw@example.com/', 'userinfo', 'userinfo'],
  // public addresses and names (names are judged when they resolve)
  ['http://93.184.216.34/', 'ok', 'ok', '93.184.216.34'],
  ['http://134744072/', 'ok', 'ok', '8.8.8.8'],
  ['http://172.32.0.1/', 'ok', 'ok', '172.32.0.1'],
  ['http://100.128.0.1/', 'ok', 'ok', '100.128.0.1'],
  ['http://[2606:4700::1111]/', 'ok', 'ok', '2606:4700::1111'],
  ['http://[::ffff:8.8.8.8]/', 'ok', 'ok', '::ffff:808:808'],
  ['http://[64:ff9b::808:808]/', 'ok', 'ok', '64:ff9b::808:808'],
  ['http://[2002:808:808::1]/', 'ok', 'ok', '2002:808:808::1'],
  ['https://Api.Example.COM:8443/x?y#z', 'ok', 'ok', 'api.example.com'],
  ['http://EXAMPLE.com./', 'ok', 'ok', 'example.com'],
  ['http://ＥＸＡＭＰＬＥ．com/', 'ok', 'ok', 'example.com'],
  ['http://bücher.example/', 'ok', 'ok', 'xn--bcher-kva.example'],
  ['http://%65xample.com/', 'ok', 'ok', 'example.com'],
  ['http://@example.com/', 'ok', 'ok', 'example.com'],
];

function outcome(url: string, policy: HttpPolicy): { outcome: Outcome; host?: string } {
  try {
    return { outcome: 'ok', host: checkEndpoint(url, policy).host };
  } catch (err) {
    const m = (err as Error).message;
    if (/restricted range/.test(m)) return { outcome: 'blocked' };
    if (/not a valid URL/.test(m)) return { outcome: 'invalid' };
    if (/credentials/.test(m)) return { outcome: 'userinfo' };
    throw err;
  }
}

describe('URL spellings', () => {
  const closed: HttpPolicy = { enabled: true, allowPrivate: false, allowHosts: [] };
  const open: HttpPolicy = { ...closed, allowPrivate: true };

  it('has a table of at least 60 spellings', () => {
    expect(TABLE.length).toBeGreaterThanOrEqual(60);
  });

  it.each(TABLE)('%s: %s without http_allow_private, %s with it', (url0, shut, opened, host) => {
    const url = url0 as string;
    const a = outcome(url, closed);
    const b = outcome(url, open);
    expect(a.outcome).toBe(shut);
    expect(b.outcome).toBe(opened);
    if (opened === 'ok' && host !== undefined) expect(b.host).toBe(host);
    // whatever the spelling, the refusal names the canonical address
    if (shut === 'blocked' && host !== undefined)
      expect(() => checkEndpoint(url, closed)).toThrow(`for '${host}'`);
  });

  it('sends the normalised URL', () => {
    expect(checkEndpoint('http://2130706433:8080/a b?c', open).href).toBe(
      'http://127.0.0.1:8080/a%20b?c',
    );
    expect(checkEndpoint('http://127.0.0.1:8080\\@example.invalid/', open).href).toBe(
      'http://127.0.0.1:8080/@example.invalid/',
    );
    expect(checkEndpoint('HTTPS://ＥＸＡＭＰＬＥ.com./x', open).href).toBe(
      'https://example.com./x',
    );
  });

  it('explains a refusal: the canonical address, its range, and whether the switch opens it', () => {
    expect(() => checkEndpoint('http://0x7f000001/', closed)).toThrow(
      "Blocked: the resolved IP address for '127.0.0.1' is in a restricted range. df.http() cannot access private or internal network addresses. (127.0.0.1 is loopback, 127.0.0.0/8; an administrator may open loopback and private ranges with df.config http_allow_private.)",
    );
    expect(() => checkEndpoint('http://2852039166/', open)).toThrow(
      '(169.254.169.254 is link-local (cloud metadata services live here), 169.254.0.0/16; refused even with http_allow_private.)',
    );
    expect(() => checkEndpoint('http://[64:ff9b::7f00:1]/', closed)).toThrow(
      '(64:ff9b::7f00:1 is the NAT64 form of 127.0.0.1, loopback, 127.0.0.0/8;',
    );
    expect(() => checkEndpoint('http://user:pw@example.com/', open)).toThrow(
      'Blocked: URLs with credentials (user:password@host) are not permitted. Send credentials in a header, for example Authorization.',
    );
  });

  it('applies the switches, the scheme and the host list', () => {
    expect(() => checkEndpoint('ftp://x/', open)).toThrow("Blocked: unsupported URL scheme 'ftp'");
    expect(() => checkEndpoint('file:///etc/passwd', open)).toThrow(
      "Blocked: unsupported URL scheme 'file'",
    );
    expect(() => checkEndpoint('no-scheme', open)).toThrow(
      "Blocked: unsupported URL scheme 'no-scheme'",
    );
    expect(() => checkEndpoint('https://x.example.com/', { ...open, enabled: false })).toThrow(
      /disabled/,
    );
    const listed = { ...open, allowHosts: ['.Example.com', 'exact.org.', 'BÜCHER.example'] };
    expect(checkEndpoint('https://a.b.example.com/', listed).host).toBe('a.b.example.com');
    expect(checkEndpoint('https://EXACT.org./', listed).host).toBe('exact.org');
    expect(checkEndpoint('https://bücher.example/', listed).host).toBe('xn--bcher-kva.example');
    for (const bad of [
      'https://example.com/',
      'https://sub.exact.org/',
      'https://exact.org.evil.example/',
      'https://evilexample.com/',
    ])
      expect(() => checkEndpoint(bad, listed)).toThrow(/not in the allowed endpoint list/);
    // the host the list sees is the host connected to
    const invalid = { ...open, allowHosts: ['example.invalid'] };
    expect(() => checkEndpoint('http://127.0.0.1:8080\\@example.invalid/', invalid)).toThrow(
      "Blocked: '127.0.0.1' is not in the allowed endpoint list (df.config http_allow_hosts).",
    );
    expect(() => checkEndpoint('http://127.0.0.1:8080@example.invalid/', invalid)).toThrow(
      /credentials/,
    );
    // an address on the list is still judged by the address rules
    expect(() =>
      checkEndpoint('http://2130706433/', { ...closed, allowHosts: ['127.0.0.1'] }),
    ).toThrow(/restricted range/);
  });

  it('normalises http_allow_hosts entries like hosts', () => {
    expect(normaliseAllowEntry('API.Example.COM.')).toBe('api.example.com');
    expect(normaliseAllowEntry('.Bücher.example')).toBe('.xn--bcher-kva.example');
    expect(normaliseAllowEntry('[::1]')).toBe('::1');
    expect(normaliseAllowEntry('0:0:0:0:0:0:0:1')).toBe('::1');
    expect(normaliseAllowEntry('2130706433')).toBe('127.0.0.1');
    expect(normaliseAllowEntry('')).toBeUndefined();
    expect(normaliseAllowEntry('.')).toBeUndefined();
    expect(normaliseAllowEntry('a b')).toBeUndefined();
  });
});

describe('addresses', () => {
  it('judges every textual form of an address, embedded IPv4 by the IPv4 rules', () => {
    for (const a of [
      '169.254.169.254',
      '0.0.0.0',
      '0.255.255.255',
      '100.100.100.200',
      'fe80::1',
      'fe80::1%eth0',
      '::',
      'fd00:ec2::254',
      '::ffff:169.254.169.254',
      '::ffff:0:a9fe:a9fe',
      '64:ff9b::169.254.169.254',
      '2002:a9fe:a9fe::1',
      '::0.0.0.0',
      'not an address',
      '',
    ])
      expect([a, addressBlocked(a, true)]).toEqual([a, true]);
    for (const a of [
      '10.1.2.3',
      '127.0.0.1',
      '127.255.255.255',
      '172.20.0.1',
      '192.168.1.1',
      '100.64.0.1',
      '::1',
      '0:0:0:0:0:0:0:1',
      'fd12::1',
      '::ffff:127.0.0.1',
      '::ffff:7f00:1',
      '::127.0.0.1',
      '64:ff9b::7f00:1',
      '2002:7f00:1::',
      '2001:0:4136:e378:8000:63bf:80ff:fffe',
    ]) {
      expect([a, addressBlocked(a, false)]).toEqual([a, true]);
      expect([a, addressBlocked(a, true)]).toEqual([a, false]);
    }
    for (const a of [
      '93.184.216.34',
      '8.8.8.8',
      '172.32.0.1',
      '100.128.0.1',
      '2606:4700::1111',
      '::ffff:8.8.8.8',
      '64:ff9b::808:808',
      '2002:808:808::',
    ])
      expect([a, addressBlocked(a, false)]).toEqual([a, false]);
    expect(refusal('::ffff:a9fe:a9fe', true)).toEqual({
      always: true,
      reason:
        'the IPv4-mapped form of 169.254.169.254, link-local (cloud metadata services live here), 169.254.0.0/16',
    });
  });

  it('answers a lookup only with permitted addresses (the ones then connected to)', async () => {
    const fake =
      (answers: string[]): LookupFunction =>
      (_h, _o, cb) =>
        cb(
          null,
          answers.map((address) => ({ address, family: address.includes(':') ? 6 : 4 })),
        );
    const ask = (answers: string[], all = false) =>
      new Promise<{ err: Error | null; address: unknown }>((resolve) =>
        guardedLookup(false, fake(answers))('h.example', { all }, (err, address) =>
          resolve({ err, address }),
        ),
      );
    expect((await ask(['10.0.0.1', '93.184.216.34'])).address).toBe('93.184.216.34');
    expect(
      (await ask(['10.0.0.1', '93.184.216.34', '2606:4700::1111', '::ffff:7f00:1'], true)).address,
    ).toEqual([
      { address: '93.184.216.34', family: 4 },
      { address: '2606:4700::1111', family: 6 },
    ]);
    const blocked = await ask(['169.254.169.254', '127.0.0.1']);
    expect(blocked.err?.message).toBe(
      "Blocked: the resolved IP address for 'h.example' is in a restricted range. df.http() cannot access private or internal network addresses. (h.example is 169.254.169.254, link-local (cloud metadata services live here), 169.254.0.0/16; refused even with http_allow_private.)",
    );
    expect((blocked.err as NodeJS.ErrnoException).code).toBe('EDFGATEBLOCKED');
  });
});

describe('Idempotency-Key', () => {
  it('is a function of instance, root node and activation key only', () => {
    const k = idempotencyKey('a1b2c3d4', 'e5f6a7b8', 'root::1/n1');
    expect(k).toMatch(/^dfgate-[0-9a-f]{40}$/);
    expect(idempotencyKey('a1b2c3d4', 'e5f6a7b8', 'root::1/n1')).toBe(k);
    const others = [
      idempotencyKey('a1b2c3d4', 'e5f6a7b8', 'root::1/n2'),
      idempotencyKey('a1b2c3d4', 'e5f6a7b8', 'loop1::2/n1'),
      idempotencyKey('a1b2c3d5', 'e5f6a7b8', 'root::1/n1'),
      idempotencyKey('a1b2c3d4', 'e5f6a7b9', 'root::1/n1'),
    ];
    expect(new Set([k, ...others]).size).toBe(5);
  });
});
