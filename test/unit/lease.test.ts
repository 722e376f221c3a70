import { describe, expect, it } from 'vitest';
import { withLease } from '../../src/proxy/edge/lease.js';
import { bornClaims } from '../../src/executor/adopt.js';
import { literal } from '../../src/dsl/edge.js';

describe('withLease', () => {
  const text = `SELECT df._start_rows(E'[{"i":"0000000a","t":"SQL","q":"SELECT ''é''"}]', 'l') AS "start"`;
  const at = Buffer.from(text, 'utf8').indexOf(') AS "start"');
  const identity = (p: number) => p;

  it('adds the lease, and the nonce when there is one, before the call’s closing parenthesis', () => {
    const a = withLease(text, identity, at, { owner: 'o-1', ms: 30000 });
    expect(a?.text).toBe(text.replace(`'l') AS`, `'l', ${literal('o-1')}, 30000) AS`));
    const b = withLease(text, identity, at, { owner: 'o-1', ms: 30000 }, 'ab'.repeat(12));
    expect(b?.text).toBe(
      text.replace(`'l') AS`, `'l', ${literal('o-1')}, 30000, ${literal('ab'.repeat(12))}) AS`),
    );
  });

  it('maps server positions past the insertion back into the client’s text (in characters)', () => {
    const b = withLease(text, identity, at, { owner: 'o-1', ms: 30000 }, 'ab'.repeat(12));
    const chars = [...text];
    const close = [...Buffer.from(text, 'utf8').subarray(0, at).toString('utf8')].length;
    const ins = `, ${literal('o-1')}, 30000, ${literal('ab'.repeat(12))}`.length;
    expect(b?.position(5)).toBe(5);
    expect(b?.position(close + ins + 1)).toBe(close + 1);
    expect(b?.position(close + 3)).toBe(close); // inside the insertion: the call's end
    expect(chars.length).toBeGreaterThan(close);
  });

  it('refuses a byte that is not a closing parenthesis', () => {
    expect(withLease(text, identity, 3, { owner: 'o', ms: 1000 })).toBeUndefined();
  });
});

describe('bornClaims', () => {
  const ok = {
    id: '0000000a',
    label: null,
    root_node: '0000000b',
    status: 'running',
    lease_epoch: '1',
    event_seq: '0',
    options: {},
    vars: {},
    role_oid: 16384,
    role_name: 'app',
    rolsuper: false,
    events: [],
    nodes: [{ id: '0000000b', st: 'pending', sd: null }],
    graph: [{ id: '0000000b', node_type: 'SQL', query: 'SELECT 1' }],
  };

  it('takes a claim born leased here for an id asked for, once', () => {
    const t = JSON.stringify(ok);
    expect(bornClaims([t, t], ['0000000a'])).toEqual([ok]);
    expect(bornClaims([t], ['0000000c'])).toEqual([]);
  });

  it('leaves anything else to the read', () => {
    for (const bad of [
      { ...ok, lease_epoch: '2' },
      { ...ok, event_seq: '3' },
      { ...ok, status: 'pending' },
      { ...ok, events: [{ a: 'x', k: 'done', d: {}, s: 1 }] },
      { ...ok, graph: null },
      { ...ok, role_oid: '16384' },
    ])
      expect(bornClaims([JSON.stringify(bad)], ['0000000a'])).toEqual([]);
    expect(bornClaims(['{not json'], ['0000000a'])).toEqual([]);
  });
});
