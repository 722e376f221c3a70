import { describe, expect, it } from 'vitest';
import { BornClaims } from '../../src/proxy/edge/born.js';

/** A NoticeResponse body (fields, no type byte or length) with message `m`. */
function notice(m: string): Buffer {
  const parts = [
    ['S', 'NOTICE'],
    ['V', 'NOTICE'],
    ['C', '00000'],
    ['M', m],
  ].map(([k, v]) => Buffer.concat([Buffer.from(k as string, 'latin1'), Buffer.from(`${v}\0`)]));
  return Buffer.concat([...parts, Buffer.from([0])]);
}

const claim = (id: string) => `{"id" : "${id}", "status" : "running"}`;

describe('BornClaims', () => {
  it('takes only the notice naming its nonce, once, and hands over only the ids asked for', () => {
    const b = new BornClaims();
    expect(b.notice(notice(`dfgate born claim ${'0'.repeat(24)} ${claim('0000000a')}`))).toBe(
      false,
    );
    const nonce = b.arm(30_000);
    expect(nonce).toMatch(/^[0-9a-f]{24}$/);
    expect(b.armed).toBe(true);
    expect(b.notice(notice(`dfgate born claim ${'0'.repeat(24)} ${claim('0000000a')}`))).toBe(
      false,
    );
    expect(b.notice(notice(`something else`))).toBe(false);
    expect(b.notice(notice(`dfgate born claim ${nonce} ${claim('0000000b')}`))).toBe(true);
    // used up: the same notice again is the client's
    expect(b.armed).toBe(false);
    expect(b.notice(notice(`dfgate born claim ${nonce} ${claim('0000000b')}`))).toBe(false);
    expect(b.take(['0000000c'])).toEqual([]);
    // take forgets the rest
    const n2 = b.arm(30_000);
    b.notice(notice(`dfgate born claim ${n2} ${claim('0000000d')}`));
    expect(b.take(['0000000d'])).toEqual([claim('0000000d')]);
    expect(b.take(['0000000d'])).toEqual([]);
  });

  it('a new nonce per start; a disarmed one takes nothing', () => {
    const b = new BornClaims();
    const a = b.arm(30_000);
    const c = b.arm(30_000);
    expect(a).not.toBe(c);
    expect(b.notice(notice(`dfgate born claim ${a} ${claim('0000000e')}`))).toBe(false);
    b.disarm();
    expect(b.notice(notice(`dfgate born claim ${c} ${claim('0000000e')}`))).toBe(false);
    expect(b.take(['0000000e'])).toEqual([]);
  });

  it('a matching notice without an instance id is taken from the client but hands over nothing', () => {
    const b = new BornClaims();
    const n = b.arm(30_000);
    expect(b.notice(notice(`dfgate born claim ${n} not json`))).toBe(true);
    expect(b.take(['0000000a'])).toEqual([]);
  });

  it('a claim whose commit comes after half of its lease is not handed over (the executor reads it)', () => {
    const b = new BornClaims();
    const t0 = performance.now();
    const n = b.arm(1000);
    expect(b.notice(notice(`dfgate born claim ${n} ${claim('0000000f')}`))).toBe(true);
    expect(b.holding).toBe(true);
    expect(b.take(['0000000f'], t0 + 501)).toEqual([]);
    expect(b.holding).toBe(false);
    const m = b.arm(1000);
    b.notice(notice(`dfgate born claim ${m} ${claim('0000000f')}`));
    expect(b.take(['0000000f'], performance.now() + 400)).toEqual([claim('0000000f')]);
  });
});
