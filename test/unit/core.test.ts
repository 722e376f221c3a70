/** The deterministic core without a database: events in, outcome and actions out. */
import { describe, expect, it } from 'vitest';
import {
  BREAK_OUTSIDE_LOOP,
  runCore,
  type CoreInput,
  type EventKind,
  type StoredEvent,
} from '../../src/executor/core.js';
import { buildGraph, type NodeRow } from '../../src/executor/graph.js';

const sql = (id: string, q: string, name: string | null = null): NodeRow => ({
  id,
  node_type: 'SQL',
  query: q,
  result_name: name,
  left_node: null,
  right_node: null,
});
const node = (
  id: string,
  t: string,
  l: string | null,
  r: string | null,
  q: string | null = null,
): NodeRow => ({ id, node_type: t, query: q, result_name: null, left_node: l, right_node: r });
const res = (v: number): string => `{"rows":[{"v":${v}}],"row_count":1}`;

function core(
  rows: NodeRow[],
  events: Array<[string, EventKind, Record<string, unknown>, number]>,
  now = new Date('2026-01-01T00:00:00Z'),
) {
  const map = new Map<string, Map<EventKind, StoredEvent>>();
  for (const [key, kind, detail, seq] of events) {
    const m = map.get(key) ?? new Map();
    m.set(kind, { kind, detail, seq });
    map.set(key, m);
  }
  const input: CoreInput = {
    graph: buildGraph((rows[0] as NodeRow).id, rows),
    instanceId: 'i0000001',
    label: null,
    vars: {},
    events: map,
    now,
    maxLoopIterations: 100_000,
    nextCron: () => new Date('2026-01-01T00:05:00Z'),
  };
  return runCore(input);
}

describe('deterministic core', () => {
  const chain = [
    node('a0000001', 'THEN', 'a0000002', 'a0000003'),
    sql('a0000002', 'SELECT 1 AS v', 'one'),
    sql('a0000003', 'SELECT $one + 1'),
  ];

  it('runs the first step, then substitutes its result into the second', () => {
    const first = core(chain, []);
    expect(first.outcome).toEqual({ k: 'blocked' });
    expect(first.actions).toEqual([
      { a: 'sql', key: 'i0000001::1/a0000002', node: 'a0000002', sql: 'SELECT 1 AS v' },
    ]);
    const second = core(chain, [['i0000001::1/a0000002', 'done', { result: res(1) }, 1]]);
    expect(second.actions).toEqual([
      { a: 'sql', key: 'i0000001::1/a0000003', node: 'a0000003', sql: 'SELECT 1 + 1' },
    ]);
    expect(second.stamps.get('a0000002')).toEqual({
      status: 'completed',
      result: res(1),
      stamp: 'i0000001::1',
    });
    const done = core(chain, [
      ['i0000001::1/a0000002', 'done', { result: res(1) }, 1],
      ['i0000001::1/a0000003', 'done', { result: res(2) }, 2],
    ]);
    expect(done.outcome).toEqual({ k: 'done', result: res(2), seq: 2 });
  });

  it('JOIN starts every branch in its own scope and waits for all', () => {
    const g = [
      node('b0000001', 'JOIN', 'b0000002', 'b0000003'),
      sql('b0000002', 'SELECT 1'),
      sql('b0000003', 'SELECT 2'),
    ];
    const r = core(g, [['i0000001::1::b0000002::1/b0000002', 'failed', { error: 'boom' }, 1]]);
    expect(r.outcome).toEqual({ k: 'blocked' });
    expect(r.actions.map((a) => a.key)).toEqual(['i0000001::1::b0000003::1/b0000003']);
    const f = core(g, [
      ['i0000001::1::b0000002::1/b0000002', 'failed', { error: 'boom' }, 1],
      ['i0000001::1::b0000003::1/b0000003', 'done', { result: res(2) }, 2],
    ]);
    expect(f.outcome).toMatchObject({ k: 'failed', error: 'JOIN branch 1 failed: boom' });
  });

  it('RACE is won by the branch whose event committed first, and drops the loser', () => {
    const g = [
      node('c0000001', 'RACE', 'c0000002', 'c0000003'),
      sql('c0000002', 'SELECT 1'),
      node('c0000003', 'SLEEP', null, null, '5'),
    ];
    const r = core(g, [['i0000001::1::c0000002::1/c0000002', 'done', { result: res(1) }, 7]]);
    expect(r.outcome).toEqual({ k: 'done', result: res(1), seq: 7 });
    expect(r.actions).toEqual([]);
  });

  it('a sleep is armed once with its deadline, and fires when it passes', () => {
    const g = [node('d0000001', 'SLEEP', null, null, '0.25')];
    const arm = core(g, []);
    expect(arm.actions).toEqual([
      {
        a: 'timer',
        key: 'i0000001::1/d0000001',
        node: 'd0000001',
        at: new Date('2026-01-01T00:00:00.250Z'),
        armed: false,
        result: '{"slept": true, "seconds": 0.25}',
      },
    ]);
    const wait = core(
      g,
      [['i0000001::1/d0000001', 'armed', { at: '2026-01-01T00:00:00.250Z' }, 1]],
      new Date('2026-01-01T00:00:10Z'),
    );
    expect(wait.actions[0]).toMatchObject({ a: 'timer', armed: true });
  });

  it('loops summarise finished iterations and replay from the summary', () => {
    const g = [node('e0000001', 'LOOP', 'e0000002', null), sql('e0000002', 'SELECT 1')];
    const it1 = core(g, [['i0000001::1/e0000002', 'done', { result: res(1) }, 1]]);
    expect(it1.actions).toEqual([
      {
        a: 'iter',
        key: 'i0000001#iter/e0000001',
        node: 'e0000001',
        detail: { i: 1, results: [], last: res(1), seq: 1 },
      },
      { a: 'sql', key: 'i0000001::2/e0000002', node: 'e0000002', sql: 'SELECT 1' },
    ]);
    expect(it1.obsolete).toEqual(['i0000001::1/', 'i0000001::1::']);
    const resumed = core(g, [
      ['i0000001#iter/e0000001', 'iter', { i: 41, results: [], last: res(1), seq: 80 }, 80],
    ]);
    expect(resumed.actions).toEqual([
      { a: 'sql', key: 'i0000001::42/e0000002', node: 'e0000002', sql: 'SELECT 1' },
    ]);
    expect(resumed.stamps.get('e0000001')).toMatchObject({
      status: 'running',
      stamp: 'i0000001::42',
    });
  });

  it('a break ends the loop with its value; outside a loop it fails the instance', () => {
    const g = [
      node('f0000001', 'LOOP', 'f0000002', null),
      node('f0000002', 'BREAK', null, null, '{"break_value":"{\\"n\\": 2}"}'),
    ];
    expect(core(g, []).outcome).toMatchObject({ k: 'done', result: '{"n":2}' });
    expect(
      core([node('f0000003', 'BREAK', null, null, '{"break_value":null}')], []).outcome,
    ).toMatchObject({
      k: 'failed',
      error: expect.stringContaining('df.break() was called outside of a loop'),
    });
  });

  it('a break outside every loop fails the BREAK node and each node it passed through (spec §6.8, §6.13)', () => {
    // 'SELECT 1' ~> df.if('SELECT true', df.break('nowhere'), 'SELECT 2')
    const g = [
      node('b0000001', 'THEN', 'b0000002', 'b0000003'),
      sql('b0000002', 'SELECT 1'),
      node('b0000003', 'IF', 'b0000004', 'b0000005', '{"condition_node":"b0000006"}'),
      node('b0000004', 'BREAK', null, null, '{"break_value":"nowhere"}'),
      sql('b0000005', 'SELECT 2'),
      sql('b0000006', 'SELECT true'),
    ];
    const r = core(g, [
      ['i0000001::1/b0000002', 'done', { result: res(1) }, 1],
      ['i0000001::1/b0000006', 'done', { result: '{"rows":[{"bool":true}],"row_count":1}' }, 2],
    ]);
    expect(r.outcome).toEqual({ k: 'failed', error: BREAK_OUTSIDE_LOOP, seq: 2 });
    expect(r.actions).toEqual([]);
    const failed = { status: 'failed', result: BREAK_OUTSIDE_LOOP, stamp: 'i0000001::1' };
    expect(Object.fromEntries(r.stamps)).toEqual({
      b0000001: failed,
      b0000002: { status: 'completed', result: res(1), stamp: 'i0000001::1' },
      b0000003: failed,
      b0000004: failed,
      b0000006: {
        status: 'completed',
        result: '{"rows":[{"bool":true}],"row_count":1}',
        stamp: 'i0000001::1',
      },
    });
  });

  it('a break in a JOIN branch outside every loop fails that branch and the JOIN, not its siblings', () => {
    const g = [
      node('c0000001', 'JOIN', 'c0000002', 'c0000003'),
      sql('c0000002', 'SELECT 1'),
      node('c0000003', 'THEN', 'c0000004', 'c0000005'),
      sql('c0000004', 'SELECT 2'),
      node('c0000005', 'BREAK', null, null, null),
    ];
    const r = core(g, [
      ['i0000001::1::c0000002::1/c0000002', 'done', { result: res(1) }, 1],
      ['i0000001::1::c0000003::1/c0000004', 'done', { result: res(2) }, 2],
    ]);
    expect(r.outcome).toMatchObject({ k: 'failed', error: BREAK_OUTSIDE_LOOP });
    const statuses = Object.fromEntries([...r.stamps].map(([id, st]) => [id, st.status]));
    expect(statuses).toEqual({
      c0000001: 'failed',
      c0000002: 'completed',
      c0000003: 'failed',
      c0000004: 'completed',
      c0000005: 'failed',
    });
    expect(r.stamps.get('c0000005')).toEqual({
      status: 'failed',
      result: BREAK_OUTSIDE_LOOP,
      stamp: 'i0000001::1::c0000003::1',
    });
  });

  it('a break after a step reaches a RACE no earlier than that step finished', () => {
    const g = [
      node('e0000001', 'RACE', 'e0000002', 'e0000005'),
      node('e0000002', 'THEN', 'e0000003', 'e0000004'),
      sql('e0000003', 'SELECT 1'),
      node('e0000004', 'BREAK', null, null, null),
      sql('e0000005', 'SELECT 2'),
    ];
    const r = core(g, [
      ['i0000001::1::e0000002::1/e0000003', 'done', { result: res(1) }, 3],
      ['i0000001::1::e0000005::1/e0000005', 'done', { result: res(2) }, 2],
    ]);
    expect(r.outcome).toEqual({ k: 'done', result: res(2), seq: 2 });
  });

  it('a break a loop catches leaves the nodes it passed through completed with its value', () => {
    const g = [
      node('d0000001', 'LOOP', 'd0000002', null),
      node('d0000002', 'THEN', 'd0000003', 'd0000004'),
      sql('d0000003', 'SELECT 1'),
      node('d0000004', 'BREAK', null, null, '{"break_value":"out"}'),
    ];
    const r = core(g, [['i0000001::1/d0000003', 'done', { result: res(1) }, 1]]);
    expect(r.outcome).toEqual({ k: 'done', result: '"out"', seq: 1 });
    const statuses = Object.fromEntries(
      [...r.stamps].map(([id, st]) => [id, [st.status, st.result]]),
    );
    expect(statuses).toEqual({
      d0000001: ['completed', '"out"'],
      d0000002: ['completed', '"out"'],
      d0000003: ['completed', res(1)],
      d0000004: ['completed', '"out"'],
    });
  });
});
