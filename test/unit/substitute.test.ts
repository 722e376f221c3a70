/** Substitution (spec §7) and truthiness (spec §6.4), without a database. */
import { describe, expect, it } from 'vitest';
import {
  bracePass,
  substitute,
  SubstitutionError,
  type SubstitutionContext,
} from '../../src/executor/substitute.js';
import { truthyResult, truthyValue } from '../../src/executor/truthy.js';

const u = `{"rows":[{"id":7,"name":"O'Brien","tags":["a"],"gone":null}],"row_count":1}`;
const e = `{"rows":[],"row_count":0}`;
const r = `{"status":404,"body":"nope","ok":false}`;
const ctx: SubstitutionContext = {
  vars: { v: 'X', api_key: 'K', tricky: '$u' },
  instanceId: 'c0ffee12',
  label: null,
  results: new Map([
    ['u', u],
    ['e', e],
    ['r', r],
    ['big', `{"rows":[{"n":9223372036854775807,"p":"9.50"}],"row_count":1}`],
    ['batch', `{"rows":[{"id":1,"val":"a"},{"id":2,"val":"b'c"}],"row_count":2}`],
  ]),
};

describe('brace pass', () => {
  it.each([
    [`SELECT '{v}'`, `SELECT 'X'`],
    [`{"k": "{v}"}`, `{"k": "{v}"}`],
    [`{"a":1} {v}`, `{"a":1} X`],
    [`{{v}}`, `{{v}}`],
    [`{ v }`, `{ v }`],
    [`{sys_label}/{sys_instance_id}`, `/c0ffee12`],
    [`Bearer {api_key}`, `Bearer K`],
    [`{unknown} {v`, `{unknown} {v`],
  ])('%s → %s', (t, out) => expect(bracePass(t, ctx)).toBe(out));
});

describe('dollar pass, SQL mode (spec §7.6)', () => {
  it.each([
    ['SELECT $u', 'SELECT 7'],
    ['SELECT $u.name', `SELECT 'O''Brien'`],
    ['SELECT $u.tags', `SELECT '["a"]'`],
    ['SELECT $u.gone?', 'SELECT NULL'],
    ['SELECT $u.nope', 'SELECT $u.nope'],
    ['SELECT $e.id?', 'SELECT NULL'],
    ['SELECT $user', 'SELECT $user'],
    ['SELECT $u_2', 'SELECT $u_2'],
    ['SELECT $u.', 'SELECT 7.'],
    ['SELECT $r.status = 404', 'SELECT 404 = 404'],
    [`SELECT $r::jsonb->>'ok'`, `SELECT '${r}'::jsonb->>'ok'`],
    ['SELECT $big, $big.p', `SELECT 9223372036854775807, '9.50'`],
    ['SELECT $1, $$x$$', 'SELECT $1, $$x$$'],
    [
      'SELECT * FROM $batch.*',
      `SELECT * FROM (VALUES (1,'a'::text), (2,'b''c'::text)) AS "batch"("id", "val")`,
    ],
    ['SELECT count(*) FROM $e.*', `SELECT count(*) FROM (SELECT NULL WHERE false) AS "e"`],
    ['SELECT {tricky}', 'SELECT 7'],
  ])('%s', (t, out) => expect(substitute(t, ctx, 'sql')).toBe(out));

  it.each([
    ['SELECT $u.gone', '$u.gone is NULL'],
    ['SELECT $e', '$e has no rows — query returned zero results'],
  ])('%s fails: %s', (t, msg) => expect(() => substitute(t, ctx, 'sql')).toThrow(msg));
});

describe('dollar pass, raw mode', () => {
  it('formats values as text and refuses missing fields', () => {
    expect(substitute('https://x.example.net/u/$u.id', ctx, 'raw')).toBe(
      'https://x.example.net/u/7',
    );
    expect(substitute('{"name": "$u.name"}', ctx, 'raw')).toBe(`{"name": "O'Brien"}`);
    expect(substitute('/u/$u.nope?', ctx, 'raw')).toBe('/u/$u.nope?');
    expect(() => substitute('/u/$u.nope', ctx, 'raw')).toThrow(
      "$u.nope: result has no field 'nope' (available: gone, id, name, tags)",
    );
    expect(substitute('$batch.*', ctx, 'raw')).toBe(`[{"id":1,"val":"a"},{"id":2,"val":"b'c"}]`);
  });
});

describe('truthiness', () => {
  it.each([
    [true, true],
    [false, false],
    [0, false],
    [2, true],
    ['', false],
    [' TRUE ', true],
    ['t', true],
    ['yes', true],
    ['no', false],
    ['f', false],
    ['0.00', false],
    ['1e3', true],
    ['nan', true],
    ['on', true],
    ['off', true],
    ['1.5x', true],
    [[], false],
    [{}, false],
    [[0], true],
    [null, false],
  ])('%j → %s', (v, t) => expect(truthyValue(v)).toBe(t));
  it('SQL results by the first column of the first row', () => {
    expect(truthyResult('{"rows":[],"row_count":0}')).toBe(false);
    expect(truthyResult('{"rows":[{"count":0}],"row_count":1}')).toBe(false);
    expect(truthyResult('{"rows":[{"b":true,"a":false}],"row_count":1}')).toBe(true);
    expect(truthyResult('{"rows":[{}],"row_count":1}')).toBe(true);
    expect(truthyResult('{"signal_name":"x","timed_out":true,"data":null}')).toBe(true);
  });
});

describe('how far substitution may grow a text (hostile review: a result named hundreds of times)', () => {
  const blob = 'a'.repeat(3_000_000);
  const huge: SubstitutionContext = {
    vars: { big: 'v'.repeat(1_000_000) },
    instanceId: 'c0ffee12',
    label: null,
    results: new Map([['x', `{"rows":[{"x":"${blob}"}],"row_count":1}`]]),
  };
  const refs = (ref: string, n: number): string =>
    `SELECT 1 AS one /* ${Array.from({ length: n }, () => ref).join(' ')} */`;
  const tooLong =
    /^substitution would make the step's text longer than \d+ characters \(twice the text and the values it can name, and 1 MiB more\); name each large result or variable once, or pass it through a table$/;

  it('a 3 MB result named a few times is substituted', () => {
    const out = substitute(refs('$x', 2), huge, 'sql');
    expect(out.length).toBe(refs('', 2).length + 2 * (blob.length + 2));
  });
  it('named 170 times, the node fails instead of building 510 MB of text', () => {
    expect(() => substitute(refs('$x', 170), huge, 'sql')).toThrow(SubstitutionError);
    expect(() => substitute(refs('$x', 170), huge, 'sql')).toThrow(tooLong);
    expect(() => substitute(refs('$x.x', 170), huge, 'raw')).toThrow(tooLong);
  });
  it('a large variable named many times fails the same way', () => {
    expect(() => substitute(refs('{big}', 10), huge, 'sql')).toThrow(tooLong);
    expect(substitute(refs('{big}', 2), huge, 'sql').length).toBe(
      refs('', 2).length + 2 * 1_000_000,
    );
  });
  it('never builds more than the longest step text the executor runs (maxChars)', () => {
    const capped: SubstitutionContext = { ...huge, maxChars: 5_000_000 };
    const capMessage =
      /^substitution would make the step's text longer than 5000000 characters, the longest step text dfgate runs \(four times --max-result-bytes, at least 16 MiB\); name each large result or variable once, or pass it through a table$/;
    // twice fits the relative limit (about 10 MB) but not the cap
    expect(substitute(refs('$x', 2), huge, 'sql').length).toBeGreaterThan(5_000_000);
    expect(() => substitute(refs('$x', 2), capped, 'sql')).toThrow(capMessage);
    expect(() => substitute(refs('{big}', 6), capped, 'raw')).toThrow(capMessage);
    // once fits both
    expect(substitute(refs('$x', 1), capped, 'sql').length).toBe(
      refs('', 1).length + blob.length + 2,
    );
    // a cap above the relative limit changes nothing
    expect(() => substitute(refs('$x', 170), { ...huge, maxChars: 1e12 }, 'sql')).toThrow(tooLong);
  });
  it('small values may be named as often as a text names them', () => {
    const out = substitute(refs('$u.id {v}', 5000), ctx, 'sql');
    expect(out).toBe(refs('7 X', 5000));
  });
});
