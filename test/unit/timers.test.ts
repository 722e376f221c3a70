/**
 * Which timers a due-timer batch fires (src/executor/timers.ts): exactly the
 * ones the driver would, found by the deterministic core; and when a
 * claim's answer must be read again (drive-cache.ts).
 */
import { describe, expect, it } from 'vitest';
import { runCore } from '../../src/executor/core.js';
import { claimReadIsCurrent } from '../../src/executor/drive-cache.js';
import { buildGraph, type NodeRow } from '../../src/executor/graph.js';
import { nextCron } from '../../src/executor/options.js';
import type { DueInstance } from '../../src/executor/timer-store.js';
import { dueTimers } from '../../src/executor/timers.js';

const ID = '0000abcd';
const row = (
  id: string,
  t: string,
  q: string | null,
  l: string | null = null,
  r: string | null = null,
): NodeRow => ({ id, node_type: t, query: q, result_name: null, left_node: l, right_node: r });

type Ev = NonNullable<DueInstance['events']>[number];

function instance(graph: NodeRow[], events: Ev[], extra: Partial<DueInstance> = {}): DueInstance {
  return {
    id: ID,
    label: null,
    root_node: graph[0]?.id as string,
    status: 'running',
    role_name: 'alice',
    role_oid: 16384,
    rolsuper: false,
    vars: {},
    lease_epoch: '3',
    event_seq: String(events.reduce((m, e) => Math.max(m, e.s), 0)),
    options: {},
    events,
    nodes: null,
    graph,
    read_at: new Date(),
    ...extra,
  };
}

/** The timers the core arms first for `graph` at `t0`, as `armed` events (seq 1, 2, …). */
function armAll(graph: NodeRow[], t0: Date): Ev[] {
  const core = runCore({
    graph: buildGraph(graph[0]?.id as string, graph),
    instanceId: ID,
    label: null,
    vars: {},
    events: new Map(),
    now: t0,
    maxLoopIterations: 100,
    nextCron,
  });
  return core.actions
    .filter((a) => a.a === 'timer')
    .map((a, i) => ({
      a: a.key,
      k: 'armed' as const,
      d: { at: (a as { at: Date }).at.toISOString() },
      s: i + 1,
    }));
}

const t0 = new Date('2026-01-01T00:00:00Z');
const later = (s: number): Date => new Date(t0.getTime() + s * 1000);

describe('dueTimers', () => {
  const both = [
    row('aaaaaaa1', 'JOIN', null, 'aaaaaaa2', 'aaaaaaa3'),
    row('aaaaaaa2', 'SLEEP', '5'),
    row('aaaaaaa3', 'SLEEP', '10'),
  ];

  it('fires the armed timers due now, in the order the driver records them', () => {
    const armed = armAll(both, t0);
    expect(armed).toHaveLength(2);
    expect(dueTimers(instance(both, armed), later(4), 100)).toEqual([]);
    expect(dueTimers(instance(both, armed), later(5), 100)).toEqual([
      { key: armed[0]?.a, node: 'aaaaaaa2', result: '{"slept": true, "seconds": 5}' },
    ]);
    expect(dueTimers(instance(both, armed), later(11), 100).map((t) => t.node)).toEqual([
      'aaaaaaa2',
      'aaaaaaa3',
    ]);
  });

  it('never fires a timer already fired, nor one in a branch that lost its RACE', () => {
    const race = [
      row('bbbbbbb1', 'THEN', null, 'bbbbbbb2', 'bbbbbbb5'),
      row('bbbbbbb2', 'RACE', null, 'bbbbbbb3', 'bbbbbbb4'),
      row('bbbbbbb3', 'SLEEP', '60'),
      row('bbbbbbb4', 'SLEEP', '1'),
      row('bbbbbbb5', 'WAIT_SCHEDULE', '{"cron_expr": "0 12 * * *"}'),
    ];
    const armed = armAll(race, t0);
    expect(armed).toHaveLength(2);
    // the one-second sleep wins the race; then the schedule is armed
    const won: Ev = { a: armed[1]?.a as string, k: 'done', d: { result: '{}' }, s: 3 };
    const noon: Ev = {
      a: `${ID}::1/bbbbbbb5`,
      k: 'armed',
      d: { at: '2026-01-01T12:00:00.000Z' },
      s: 4,
    };
    const inst = instance(race, [...armed, won, noon]);
    // at noon the 60 s sleep is long due, but only the schedule fires
    expect(dueTimers(inst, new Date('2026-01-01T12:00:00Z'), 100)).toEqual([
      { key: noon.a, node: 'bbbbbbb5', result: '{"scheduled": true}' },
    ]);
    const fired: Ev = { a: noon.a, k: 'done', d: { result: '{"scheduled": true}' }, s: 5 };
    expect(dueTimers(instance(race, [...armed, won, noon, fired]), later(86_400), 100)).toEqual([]);
  });

  it('leaves to the driver an instance whose role is gone or a superuser, or whose graph is broken', () => {
    const armed = armAll(both, t0);
    expect(dueTimers(instance(both, armed, { role_name: null }), later(11), 100)).toEqual([]);
    expect(dueTimers(instance(both, armed, { rolsuper: true }), later(11), 100)).toEqual([]);
    const broken = [
      row('ccccccc1', 'THEN', null, 'ccccccc2', 'ccccccc9'),
      row('ccccccc2', 'SLEEP', '1'),
    ];
    expect(dueTimers(instance(broken, []), later(11), 100)).toEqual([]);
  });
});

describe('claimReadIsCurrent', () => {
  it('a claim that read fewer events than the instance counts is read again', () => {
    const ev = (s: number): Ev => ({ a: `k${s}`, k: 'done', d: {}, s });
    expect(claimReadIsCurrent(instance([], [], { event_seq: '0' }))).toBe(true);
    expect(claimReadIsCurrent(instance([], [ev(1), ev(2)], { event_seq: '2' }))).toBe(true);
    expect(claimReadIsCurrent(instance([], [ev(1)], { event_seq: '2' }))).toBe(false);
    // events below an iter summary are deleted; the latest one stays
    expect(claimReadIsCurrent(instance([], [ev(7), ev(9)], { event_seq: '9' }))).toBe(true);
  });
});
