/**
 * What a SQL step's checkpoint carries (src/executor/carry.ts, migration
 * 0020): computed by the deterministic core from the step's result, without
 * a database.
 */
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { carry, type CarryInput } from '../../src/executor/carry.js';
import { runCore, type EventKind, type StoredEvent } from '../../src/executor/core.js';
import type { StoredStamp } from '../../src/executor/drive-cache.js';
import { buildGraph, type NodeRow } from '../../src/executor/graph.js';

const sql = (id: string, q: string): NodeRow => ({
  id,
  node_type: 'SQL',
  query: q,
  result_name: null,
  left_node: null,
  right_node: null,
});
const node = (id: string, t: string, l: string | null, r: string | null, q: string | null = null) =>
  ({ id, node_type: t, query: q, result_name: null, left_node: l, right_node: r }) as NodeRow;
const res = (v: number): string => `{"rows":[{"v":${v}}],"row_count":1}`;

function input(
  rows: NodeRow[],
  done: Array<[string, string]>,
  step: { node: string; result: string },
  opts: { retry?: { maxAttempts: number; maxBackoffMs: number | null } } = {},
): CarryInput & { base: CarryInput['core'] } {
  const base = {
    graph: buildGraph((rows[0] as NodeRow).id, rows),
    instanceId: 'i0000001',
    label: null,
    vars: {},
    maxLoopIterations: 1000,
    nextCron: () => new Date('2026-01-01T00:05:00Z'),
    ...(opts.retry ? { retry: opts.retry } : {}),
  };
  const events = new Map<string, Map<EventKind, StoredEvent>>();
  let seq = 0;
  for (const [key, result] of done)
    events.set(key, new Map([['done', { seq: ++seq, kind: 'done', detail: { result } }]]));
  // the step's activation key, as the core hands it out
  const action = runCore({ ...base, events, now: new Date() }).actions.find(
    (a) => a.node === step.node,
  );
  expect(action, `an action for ${step.node}`).toBeDefined();
  const stored = new Map<string, StoredStamp>();
  return {
    base,
    core: base,
    events,
    stored,
    key: action?.key as string,
    node: step.node,
    stamp: 'i0000001::1',
    result: step.result,
  };
}

const sha = (t: string): string => createHash('sha256').update(t, 'utf8').digest('hex');

describe('what a checkpoint carries', () => {
  // ('a' ~> 'b') ~> 'c'
  const chain = [
    node('a0000001', 'THEN', 'a0000002', 'a0000005'),
    node('a0000002', 'THEN', 'a0000003', 'a0000004'),
    sql('a0000003', 'SELECT 1'),
    sql('a0000004', 'SELECT 2'),
    sql('a0000005', 'SELECT 3'),
  ];

  it('the next step of a chain: its attempt mark, under a token only the executor holds', () => {
    const inp = input(chain, [], { node: 'a0000003', result: res(1) });
    const c = carry(inp);
    expect(c).toBeDefined();
    const after = JSON.parse(c?.json as string);
    expect(after.finish).toBeUndefined();
    expect(after.marks).toHaveLength(1);
    const m = after.marks[0];
    expect(m.node).toBe('a0000004');
    const pre = c?.premarks.get(m.activation);
    expect(pre).toBeDefined();
    expect(m.token_hash).toBe(sha(pre?.token as string));
    expect(m.token_hash).not.toContain(pre?.token);
    expect(m.attempt).toBe(1);
    expect(m.stamp).toBe(pre?.stamp);
    // the next step is running, and so the database will hold it
    expect(c?.stored.get('a0000004')).toEqual({ status: 'running', stamp: pre?.stamp });
    expect(c?.stored.get('a0000003')).toMatchObject({ status: 'completed' });
    expect(c?.finishes).toBe(false);
  });

  it('a step that completes an inner sequence carries that node’s completion', () => {
    const first = input(chain, [], { node: 'a0000003', result: res(1) });
    const inp = input(chain, [[first.key, res(1)]], { node: 'a0000004', result: res(2) });
    const after = JSON.parse(carry(inp)?.json as string);
    expect(after.marks.map((m: { node: string }) => m.node)).toEqual(['a0000005']);
    const stamps = after.stamps as Array<{ id: string; status: string }>;
    expect(stamps.find((s) => s.id === 'a0000002')?.status).toBe('completed');
  });

  it('the last step completes the instance with its output', () => {
    const a = input(chain, [], { node: 'a0000003', result: res(1) });
    const b = input(chain, [[a.key, res(1)]], { node: 'a0000004', result: res(2) });
    const inp = input(
      chain,
      [
        [a.key, res(1)],
        [b.key, res(2)],
      ],
      { node: 'a0000005', result: res(3) },
    );
    const c = carry(inp);
    const after = JSON.parse(c?.json as string);
    expect(after.finish).toEqual({ output: res(3) });
    expect(after.marks).toBeUndefined();
    expect(c?.finishes).toBe(true);
    const root = (after.stamps as Array<{ id: string; status: string }>).find(
      (s) => s.id === 'a0000001',
    );
    expect(root?.status).toBe('completed');
  });

  it('under a retry policy no next attempt is carried (its mark writes the retry keys); a completion still is', () => {
    const retry = { retry: { maxAttempts: 3, maxBackoffMs: null } };
    expect(carry(input(chain, [], { node: 'a0000003', result: res(1) }, retry))).toBeUndefined();
    const c = carry(
      input([sql('b0000001', 'SELECT 1')], [], { node: 'b0000001', result: res(7) }, retry),
    );
    expect(JSON.parse(c?.json as string).finish).toEqual({ output: res(7) });
  });

  it('a one-step workflow completes in its checkpoint', () => {
    const c = carry(input([sql('b0000001', 'SELECT 1')], [], { node: 'b0000001', result: res(7) }));
    expect(JSON.parse(c?.json as string).finish).toEqual({ output: res(7) });
  });

  it('nothing is carried when a timer, or a step of the other branch still to come, follows', () => {
    const sleepNext = [
      node('c0000001', 'THEN', 'c0000002', 'c0000003'),
      sql('c0000002', 'SELECT 1'),
      node('c0000003', 'SLEEP', null, null, '{"seconds":5}'),
    ];
    expect(carry(input(sleepNext, [], { node: 'c0000002', result: res(1) }))).toBeUndefined();
    // JOIN: the other branch's step is an action too (it may be in flight): left to the driver
    const join = [
      node('d0000001', 'JOIN', 'd0000002', 'd0000003'),
      sql('d0000002', 'SELECT 1'),
      sql('d0000003', 'SELECT 2'),
    ];
    const c = carry(input(join, [], { node: 'd0000002', result: res(1) }));
    const marks = c ? (JSON.parse(c.json).marks as Array<{ node: string }>) : [];
    // the other branch is marked only if the core would start it now; never the step itself
    expect(marks.some((m) => m.node === 'd0000002')).toBe(false);
  });
  // a retry policy's attempt details on the step's own node: executor-retry.test.ts
});
