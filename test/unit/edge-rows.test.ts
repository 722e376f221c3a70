/** src/dsl/edge-rows.ts: the node rows the proxy sends for df._start_rows, and what keeps df._start_graph. */
import { describe, expect, it } from 'vitest';
import { graphRows } from '../../src/dsl/edge-rows.js';
import { node } from '../../src/dsl/nodes.js';

interface Row {
  i: string;
  t: string;
  q?: string;
  n?: string;
  l?: string;
  r?: string;
}

const rows = (g: string): Row[] => JSON.parse(graphRows(g) as string) as Row[];
const sql = (q: string, name?: string): string =>
  node('SQL', { query: q, ...(name ? { name } : {}) });

describe('graphRows', () => {
  it('a single step: one row, the root', () => {
    expect(rows(sql('SELECT 1', 'x'))).toEqual([
      { i: expect.stringMatching(/^[0-9a-f]{8}$/), t: 'SQL', q: 'SELECT 1', n: 'x' },
    ]);
  });

  it('pre-order, the root first, each child id drawn with its parent', () => {
    const g = node('THEN', {
      left: node('RACE', { left: sql('SELECT 1'), right: node('SLEEP', { query: '5' }) }),
      right: node('JOIN', {
        left: node('SIGNAL', { query: 'go' }),
        right: node('WAIT_SCHEDULE', { query: '0 3 * * *' }),
      }),
    });
    const r = rows(g);
    expect(r.map((x) => x.t)).toEqual([
      'THEN',
      'RACE',
      'SQL',
      'SLEEP',
      'JOIN',
      'SIGNAL',
      'WAIT_SCHEDULE',
    ]);
    const [then, race, one, sleep, join, signal, cron] = r as [Row, Row, Row, Row, Row, Row, Row];
    expect([then.l, then.r, race.l, race.r, join.l, join.r]).toEqual([
      race.i,
      join.i,
      one.i,
      sleep.i,
      signal.i,
      cron.i,
    ]);
    expect(new Set(r.map((x) => x.i)).size).toBe(7);
    expect(then.q).toBeUndefined();
    expect(sleep.q).toBe('5');
  });

  it('text survives exactly: quotes, backslashes, tabs, newlines, non-ASCII', () => {
    const q = `SELECT 'a''b', E'\\\\', '\t\n', '日本 ☕'`;
    expect(rows(sql(q))[0]?.q).toBe(q);
  });

  it('anything df._start_graph must check or rewrite itself stays a graph', () => {
    const leaf = sql('SELECT 1');
    for (const [why, g] of [
      ['IF', node('IF', { left: leaf, right: leaf, cond: leaf, query: '{}' })],
      ['LOOP', node('LOOP', { left: leaf, cond: leaf, query: '{}' })],
      ['JOIN with extra nodes', node('JOIN', { left: leaf, right: leaf, extras: [leaf] })],
      ['HTTP', node('HTTP', { query: '{"url":"http://127.0.0.1/"}' })],
      ['BREAK', node('BREAK', { query: '' })],
      ['a \\u escape', sql('SELECT \u0001')],
      ['an unknown key', `{"node_type":"SQL","query":"SELECT 1","extra":1}`],
      ['a query that is not text', `{"node_type":"SQL","query":5}`],
      ['a leaf without a query', `{"node_type":"SQL"}`],
      ['a leaf with children', `{"node_type":"SQL","query":"x","left_node":${leaf}}`],
      ['THEN with a query', node('THEN', { left: leaf, right: leaf, query: 'x' })],
      ['THEN without a right node', `{"node_type":"THEN","left_node":${leaf}}`],
      ['a result name the table refuses', sql('SELECT 1', '1x')],
      ['not JSON', 'SELECT 1'],
      [
        'more than 32 nodes',
        Array.from({ length: 17 }, () => leaf).reduce((a, b) =>
          node('THEN', { left: a, right: b }),
        ),
      ],
    ] as const)
      expect(graphRows(g), why).toBeUndefined();
    // 32 nodes still go as rows
    const chain = Array.from({ length: 16 }, () => leaf).reduce((a, b) =>
      node('THEN', { left: a, right: b }),
    );
    expect(rows(chain)).toHaveLength(31);
  });
});
