/** The SSRF rules of HTTP steps (spec §9.6, DESIGN.md §5 Q8), without any network. */
import type dns from 'node:dns';
import { describe, expect, it } from 'vitest';
import { addressBlocked, checkEndpoint, guardedLookup, hostOf } from '../../src/executor/http.js';

describe('addresses', () => {
  it('refuses link-local and metadata addresses always, private ranges unless allowed', () => {
    for (const a of [
      '169.254.169.254',
      '0.0.0.0',
      '100.100.100.200',
      'fe80::1',
      '::',
      'fd00:ec2::254',
      '::ffff:169.254.169.254',
    ])
      expect([a, addressBlocked(a, true)]).toEqual([a, true]);
    for (const a of [
      '10.1.2.3',
      '127.0.0.1',
      '172.20.0.1',
      '192.168.1.1',
      '100.64.0.1',
      '::1',
      'fd12::1',
      '::ffff:127.0.0.1',
    ]) {
      expect([a, addressBlocked(a, false)]).toEqual([a, true]);
      expect([a, addressBlocked(a, true)]).toEqual([a, false]);
    }
    for (const a of ['93.184.216.34', '8.8.8.8', '172.32.0.1', '100.128.0.1', '2606:4700::1111'])
      expect([a, addressBlocked(a, false)]).toEqual([a, false]);
    expect(addressBlocked('not an address', true)).toBe(true);
  });

  it('extracts hosts as spec §9.6 says', () => {
    expect(hostOf('https://User:pw@Api.Example.COM:8443/x?y#z')).toBe('api.example.com');
    expect(hostOf('http://[::1]:80/')).toBe('::1');
    expect(hostOf('http://a@b@c.example/')).toBe('c.example');
    expect(hostOf('no-scheme')).toBeUndefined();
    expect(hostOf('http:///path')).toBeUndefined();
  });

  it('applies the switches before any connection', () => {
    const open = { enabled: true, allowPrivate: false, allowHosts: [] };
    expect(checkEndpoint('https://api.example.com/x', open)).toBe('api.example.com');
    expect(() => checkEndpoint('ftp://x/', open)).toThrow("Blocked: unsupported URL scheme 'ftp'");
    expect(() => checkEndpoint('http://10.0.0.1/', open)).toThrow(/restricted range/);
    expect(() => checkEndpoint('http://[fe80::1]/', { ...open, allowPrivate: true })).toThrow(
      /restricted range/,
    );
    expect(() => checkEndpoint('https://x.example.com/', { ...open, enabled: false })).toThrow(
      /disabled/,
    );
    const listed = { ...open, allowHosts: ['.example.com', 'exact.org'] };
    expect(checkEndpoint('https://a.b.example.com/', listed)).toBe('a.b.example.com');
    expect(checkEndpoint('https://exact.org/', listed)).toBe('exact.org');
    expect(() => checkEndpoint('https://example.com/', listed)).toThrow(
      /not in the allowed endpoint list/,
    );
    expect(() => checkEndpoint('https://sub.exact.org/', listed)).toThrow(
      /not in the allowed endpoint list/,
    );
  });

  it('answers a lookup only with permitted addresses (the ones then connected to)', async () => {
    const fake = (answers: string[]): typeof dns.lookup =>
      ((_h: string, _o: unknown, cb: (e: null, a: dns.LookupAddress[]) => void) =>
        cb(
          null,
          answers.map((address) => ({ address, family: address.includes(':') ? 6 : 4 })),
        )) as never;
    const ask = (answers: string[], all = false) =>
      new Promise<{ err: Error | null; address: unknown }>((resolve) =>
        guardedLookup(false, fake(answers))('h.example', { all }, (err, address) =>
          resolve({ err, address }),
        ),
      );
    expect((await ask(['10.0.0.1', '93.184.216.34'])).address).toBe('93.184.216.34');
    expect((await ask(['10.0.0.1', '93.184.216.34', '2606:4700::1111'], true)).address).toEqual([
      { address: '93.184.216.34', family: 4 },
      { address: '2606:4700::1111', family: 6 },
    ]);
    const blocked = await ask(['169.254.169.254', '127.0.0.1']);
    expect(blocked.err?.message).toBe(
      "Blocked: the resolved IP address for 'h.example' is in a restricted range. df.http() cannot access private or internal network addresses.",
    );
  });
});
