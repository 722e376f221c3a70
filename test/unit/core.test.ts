/** The deterministic core without a database: events in, outcome and actions out. */
import { describe, expect, it } from 'vitest';
import {
  BREAK_OUTSIDE_LOOP,
  backoffMs,
  runCore,
  type RetryPolicy,
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
  retry?: RetryPolicy,
  stepTextMax?: number,
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
    ...(retry ? { retry } : {}),
    ...(stepTextMax !== undefined ? { stepTextMax } : {}),
  };
  return runCore(input);
}

describe('deterministic core', () => {
  const chain = [
    node('a0000001', 'THEN', 'a0000002', 'a0000003'),
    sql('a0000002', 'SELECT 1 AS v', 'one'),
    sql('a0000003', 'SELECT $one + 1'),
  ];

  it('fails a step whose substituted text would pass the longest step text, without building it', () => {
    const big = `{"rows":[{"v":"${'x'.repeat(600)}"}],"row_count":1}`;
    const events: Array<[string, EventKind, Record<string, unknown>, number]> = [
      ['i0000001::1/a0000002', 'done', { result: big }, 1],
    ];
    const within = core(chain, events, undefined, undefined, 2000);
    expect(within.actions).toHaveLength(1);
    const past = core(chain, events, undefined, undefined, 500);
    expect(past.actions).toEqual([]);
    expect(past.outcome).toMatchObject({ k: 'failed' });
    expect((past.outcome as { error: string }).error).toMatch(
      /longer than 500 characters, the longest step text dfgate runs/,
    );
  });

  it('runs the first step, then substitutes its result into the second', () => {
    const first = core(chain, []);
    expect(first.outcome).toEqual({ k: 'blocked' });
    expect(first.actions).toEqual([
      { a: 'sql', key: 'i0000001::1/a0000002', node: 'a0000002', sql: 'SELECT 1 AS v', attempt: 1 },
    ]);
    const second = core(chain, [['i0000001::1/a0000002', 'done', { result: res(1) }, 1]]);
    expect(second.actions).toEqual([
      { a: 'sql', key: 'i0000001::1/a0000003', node: 'a0000003', sql: 'SELECT 1 + 1', attempt: 1 },
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

  it('a sleep or a signal timeout past the latest time dfgate can represent fails its node, never arms a timer', () => {
    const far = core([node('d0000001', 'SLEEP', null, null, '1e300')], []);
    expect(far.actions).toEqual([]);
    expect(far.outcome).toMatchObject({
      k: 'failed',
      error: "sleep duration '1e300' seconds is out of range: it would end after the year 275760",
    });
    // the largest sleep that still ends in time is armed as any other
    const near = core([node('d0000001', 'SLEEP', null, null, '8000000000000')], []);
    expect(near.actions[0]).toMatchObject({ a: 'timer', armed: false });
    const wait = core(
      [node('d0000002', 'SIGNAL', null, null, '{"signal_name": "go", "timeout_seconds": 1e300}')],
      [],
    );
    expect(wait.actions).toEqual([]);
    expect(wait.outcome).toMatchObject({
      k: 'failed',
      error: "signal timeout '1e+300' seconds is out of range: it would end after the year 275760",
    });
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
      { a: 'sql', key: 'i0000001::2/e0000002', node: 'e0000002', sql: 'SELECT 1', attempt: 1 },
    ]);
    expect(it1.obsolete).toEqual(['i0000001::1/', 'i0000001::1::']);
    const resumed = core(g, [
      ['i0000001#iter/e0000001', 'iter', { i: 41, results: [], last: res(1), seq: 80 }, 80],
    ]);
    expect(resumed.actions).toEqual([
      { a: 'sql', key: 'i0000001::42/e0000002', node: 'e0000002', sql: 'SELECT 1', attempt: 1 },
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

  describe('retries (max_attempts, max_backoff)', () => {
    const g = [sql('f0000001', 'SELECT 1')];
    const k1 = 'i0000001::1/f0000001';
    const t0 = new Date('2026-01-01T00:00:00Z');
    const policy = (maxAttempts: number, maxBackoffMs: number | null = null): RetryPolicy => ({
      maxAttempts,
      maxBackoffMs,
    });

    it('without a policy a failed step fails at once, as in pg_durable', () => {
      const r = core(g, [[k1, 'failed', { error: 'boom' }, 1]]);
      expect(r.outcome).toEqual({ k: 'failed', error: 'boom', seq: 1 });
      expect(r.stamps.get('f0000001')?.attempts).toBeUndefined();
    });

    it('a failed attempt arms a backoff, then runs the next attempt under its own key', () => {
      const failed1: Array<[string, EventKind, Record<string, unknown>, number]> = [
        [k1, 'failed', { error: 'boom 1' }, 1],
      ];
      const arm = core(g, failed1, t0, policy(3));
      expect(arm.outcome).toEqual({ k: 'blocked' });
      const wait = backoffMs('i0000001', k1, 1, null);
      expect(wait).toBeGreaterThan(900);
      expect(wait).toBeLessThanOrEqual(1000);
      expect(arm.actions).toEqual([
        {
          a: 'backoff',
          key: `${k1}@2`,
          node: 'f0000001',
          at: new Date(t0.getTime() + wait),
          armed: false,
          attempt: 2,
        },
      ]);
      expect(arm.stamps.get('f0000001')).toEqual({
        status: 'running',
        result: null,
        stamp: 'i0000001::1',
        attempts: {
          attempt: 1,
          max_attempts: 3,
          last_error: 'boom 1',
          retry_at: new Date(t0.getTime() + wait).toISOString(),
        },
      });
      const at = new Date(t0.getTime() + wait).toISOString();
      const armed = [...failed1, [`${k1}@2`, 'armed', { at }, 2]] as typeof failed1;
      // before the due time: still waiting (the recorded time, not a new one, even later)
      const early = core(g, armed, new Date(t0.getTime() + wait - 1), policy(3));
      expect(early.actions).toEqual([
        {
          a: 'backoff',
          key: `${k1}@2`,
          node: 'f0000001',
          at: new Date(at),
          armed: true,
          attempt: 2,
        },
      ]);
      const due = core(g, armed, new Date(t0.getTime() + wait), policy(3));
      expect(due.actions).toEqual([
        { a: 'sql', key: `${k1}@2`, node: 'f0000001', sql: 'SELECT 1', attempt: 2 },
      ]);
      expect(due.stamps.get('f0000001')?.attempts).toEqual({
        attempt: 2,
        max_attempts: 3,
        last_error: 'boom 1',
      });
    });

    it('fails twice then succeeds with 3 attempts; fails after 2 with max_attempts 2', () => {
      const evs: Array<[string, EventKind, Record<string, unknown>, number]> = [
        [k1, 'failed', { error: 'boom 1' }, 1],
        [`${k1}@2`, 'armed', { at: '2026-01-01T00:00:01Z' }, 2],
        [`${k1}@2`, 'failed', { error: 'boom 2' }, 3],
        [`${k1}@3`, 'armed', { at: '2026-01-01T00:00:03Z' }, 4],
        [`${k1}@3`, 'done', { result: res(3) }, 5],
      ];
      const ok = core(g, evs, new Date('2026-01-01T00:00:04Z'), policy(3));
      expect(ok.outcome).toEqual({ k: 'done', result: res(3), seq: 5 });
      expect(ok.stamps.get('f0000001')?.attempts).toEqual({
        attempt: 3,
        max_attempts: 3,
        last_error: 'boom 2',
      });
      const two = core(g, evs.slice(0, 3), new Date('2026-01-01T00:00:04Z'), policy(2));
      expect(two.outcome).toEqual({ k: 'failed', error: 'boom 2', seq: 3 });
      expect(two.actions).toEqual([]);
      expect(two.stamps.get('f0000001')).toMatchObject({
        status: 'failed',
        result: 'boom 2',
        attempts: { attempt: 2, max_attempts: 2, last_error: 'boom 1' },
      });
    });

    it('the backoff doubles from 1 s, is capped at max_backoff, and its jitter is fixed per attempt', () => {
      for (let k = 1; k <= 6; k++) {
        const w = backoffMs('i0000001', k1, k, null);
        expect(w).toBeLessThanOrEqual(1000 * 2 ** (k - 1));
        expect(w).toBeGreaterThanOrEqual(0.9 * 1000 * 2 ** (k - 1));
        expect(backoffMs('i0000001', k1, k, null)).toBe(w);
      }
      expect(backoffMs('i0000001', k1, 10, 5000)).toBeLessThanOrEqual(5000);
      expect(backoffMs('i0000001', k1, 10, 5000)).toBeGreaterThanOrEqual(4500);
      const jitters = new Set(
        ['i0000001', 'i0000002', 'i0000003'].map((i) => backoffMs(i, k1, 3, null)),
      );
      expect(jitters.size).toBeGreaterThan(1);
    });

    it('a JOIN waits while one branch backs off, and fails only after its last attempt', () => {
      const j = [
        node('f0000010', 'JOIN', 'f0000011', 'f0000012'),
        sql('f0000011', 'SELECT 1'),
        sql('f0000012', 'SELECT 2'),
      ];
      const b1 = 'i0000001::1::f0000011::1/f0000011';
      const b2 = 'i0000001::1::f0000012::1/f0000012';
      const r = core(
        j,
        [
          [b1, 'failed', { error: 'x' }, 1],
          [b2, 'done', { result: res(2) }, 2],
        ],
        t0,
        policy(2),
      );
      expect(r.outcome).toEqual({ k: 'blocked' });
      expect(r.actions.map((a) => [a.a, a.key])).toEqual([['backoff', `${b1}@2`]]);
      const f = core(
        j,
        [
          [b1, 'failed', { error: 'x' }, 1],
          [b2, 'done', { result: res(2) }, 2],
          [`${b1}@2`, 'armed', { at: t0.toISOString() }, 3],
          [`${b1}@2`, 'failed', { error: 'y' }, 4],
        ],
        t0,
        policy(2),
      );
      expect(f.outcome).toMatchObject({ k: 'failed', error: 'JOIN branch 1 failed: y' });
    });
  });
});
