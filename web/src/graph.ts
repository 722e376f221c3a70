/**
 * The drawn workflow: stored nodes (or a graph value, for the Start preview)
 * turned into boxes and arrows, laid out by dagre. THEN nodes become plain
 * arrows; IF gets a decision box with "then"/"else" arms (its condition runs
 * first); JOIN/RACE a fork box and a merge box around their branches; LOOP a
 * box with the iteration, its body, and an arrow back.
 */
import { graphlib, layout } from '@dagrejs/dagre';
import type { NodeView } from './api';

export interface Box {
  readonly id: string;
  /** The stored node this box stands for (merge boxes use their fork's node). */
  readonly node: NodeView;
  readonly kind: 'step' | 'if' | 'fork' | 'merge' | 'loop';
  readonly title: string;
  readonly detail: string;
  readonly status: string;
  x: number;
  y: number;
  readonly width: number;
  readonly height: number;
}

export interface Arrow {
  readonly from: string;
  readonly to: string;
  readonly label: string;
  readonly back: boolean;
  points: Array<{ x: number; y: number }>;
}

export interface Drawing {
  readonly boxes: Box[];
  readonly arrows: Arrow[];
  readonly width: number;
  readonly height: number;
}

function config(q: string | null): Record<string, unknown> {
  if (q === null) return {};
  try {
    const v = JSON.parse(q) as unknown;
    return typeof v === 'object' && v !== null && !Array.isArray(v)
      ? (v as Record<string, unknown>)
      : {};
  } catch {
    return {};
  }
}

function oneLine(s: string, max: number): string {
  const t = s.replace(/\s+/g, ' ').trim();
  return t.length > max ? t.slice(0, max - 1) + '…' : t;
}

/** Title and detail of a step box, from its type and query. */
export function describe(n: NodeView): { title: string; detail: string } {
  const cfg = config(n.query);
  const named = n.resultName ? ` → $${n.resultName}` : '';
  switch (n.type) {
    case 'SQL':
      return { title: `SQL${named}`, detail: oneLine(n.query ?? '', 42) };
    case 'SLEEP':
      return { title: 'SLEEP', detail: `${n.query ?? ''} s` };
    case 'SIGNAL':
      return {
        title: 'WAIT FOR SIGNAL',
        detail: oneLine(String(cfg['signal_name'] ?? ''), 36),
      };
    case 'WAIT_SCHEDULE':
      return { title: 'WAIT FOR SCHEDULE', detail: oneLine(String(cfg['cron_expr'] ?? ''), 36) };
    case 'HTTP':
    case 'HTTP_MULTIPART':
      return {
        title: `${n.type}${named}`,
        detail: oneLine(`${String(cfg['method'] ?? 'GET')} ${String(cfg['url'] ?? '')}`, 42),
      };
    case 'BREAK':
      return { title: 'BREAK', detail: '' };
    default:
      return { title: n.type, detail: '' };
  }
}

export function shownStatus(n: NodeView): string {
  return n.inferred ?? n.status;
}

/** Stored-node shape from a graph value (the Start page's preview): synthetic ids p0, p1, … */
export function nodesFromGraph(graphText: string): NodeView[] {
  const out: NodeView[] = [];
  let seq = 0;
  const walk = (o: Record<string, unknown>): string => {
    const id = `p${seq++}`;
    const child = (k: string): string | null => {
      const v = o[k];
      return typeof v === 'object' && v !== null ? walk(v as Record<string, unknown>) : null;
    };
    const left = child('left_node');
    const right = child('right_node');
    const cond = child('condition_node');
    const extras = Array.isArray(o['extra_nodes'])
      ? (o['extra_nodes'] as unknown[]).map((x) => walk(x as Record<string, unknown>))
      : [];
    const type = String(o['node_type']);
    let query = typeof o['query'] === 'string' ? o['query'] : null;
    if (cond !== null || extras.length > 0) {
      const cfg = config(query);
      if (cond !== null) cfg['condition_node'] = cond;
      if (extras.length > 0) cfg['extra_nodes'] = extras;
      query = JSON.stringify(cfg);
    }
    out.push({
      id,
      type,
      query,
      resultName: typeof o['result_name'] === 'string' ? o['result_name'] : null,
      left,
      right,
      status: 'pending',
      inferred: null,
      result: null,
      error: null,
      attempts: 0,
      updatedAt: '',
      finishedAt: null,
      iteration: null,
      substituted: null,
    });
    return id;
  };
  walk(JSON.parse(graphText) as Record<string, unknown>);
  return out;
}

const CHAR_W = 7.4;

export function draw(nodes: readonly NodeView[], root: string): Drawing {
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const boxes = new Map<string, Box>();
  const arrows: Arrow[] = [];
  const addBox = (
    id: string,
    node: NodeView,
    kind: Box['kind'],
    title: string,
    detail: string,
  ): string => {
    const width = Math.max(96, Math.ceil(Math.max(title.length, detail.length) * CHAR_W) + 28);
    const height = detail ? 62 : 44;
    boxes.set(id, {
      id,
      node,
      kind,
      title,
      detail,
      status: shownStatus(node),
      x: 0,
      y: 0,
      width,
      height,
    });
    return id;
  };
  const link = (from: readonly string[], to: readonly string[], label = '', back = false): void => {
    for (const f of from)
      for (const t of to) arrows.push({ from: f, to: t, label, back, points: [] });
  };
  /** Nodes drawn so far: a tree names each node once, so a node named again is not drawn again. */
  const drawn = new Set<string>();
  /** Draws node `id`; returns the boxes control enters by and leaves by. */
  const build = (id: string | null, depth: number): { entries: string[]; exits: string[] } => {
    const n = id === null ? undefined : byId.get(id);
    // a graph written by hand may name a node twice: drawn once, or every level below it
    // would double the drawing (df.start accepts only trees)
    if (!n || depth > 300 || drawn.has(n.id)) return { entries: [], exits: [] };
    drawn.add(n.id);
    const cfg = config(n.query);
    switch (n.type) {
      case 'THEN': {
        const a = build(n.left, depth + 1);
        const b = build(n.right, depth + 1);
        link(a.exits, b.entries);
        return {
          entries: a.entries.length ? a.entries : b.entries,
          exits: b.exits.length ? b.exits : a.exits,
        };
      }
      case 'IF': {
        const condId = typeof cfg['condition_node'] === 'string' ? cfg['condition_node'] : null;
        const rows =
          typeof cfg['result_name'] === 'string' ? `$${cfg['result_name']} has rows` : '';
        const box = addBox(n.id, n, 'if', 'IF', condId ? 'condition is true?' : rows);
        const c = build(condId, depth + 1);
        link(c.exits, [box]);
        const t = build(n.left, depth + 1);
        const e = build(n.right, depth + 1);
        link([box], t.entries, 'then');
        link([box], e.entries, 'else');
        return { entries: c.entries.length ? c.entries : [box], exits: [...t.exits, ...e.exits] };
      }
      case 'JOIN':
      case 'RACE': {
        const branches = [n.left, n.right];
        if (Array.isArray(cfg['extra_nodes']))
          for (const x of cfg['extra_nodes'] as unknown[])
            if (typeof x === 'string') branches.push(x);
        const fork = addBox(
          n.id,
          n,
          'fork',
          n.type,
          n.type === 'JOIN' ? `${branches.length} branches, wait for all` : 'first to finish wins',
        );
        const merge = addBox(
          `${n.id}:end`,
          n,
          'merge',
          n.type === 'JOIN' ? 'all done' : 'first done',
          '',
        );
        branches.forEach((b, i) => {
          const r = build(b, depth + 1);
          link([fork], r.entries, `branch ${i + 1}`);
          link(r.exits, [merge]);
        });
        return { entries: [fork], exits: [merge] };
      }
      case 'LOOP': {
        const condId = typeof cfg['condition_node'] === 'string' ? cfg['condition_node'] : null;
        const it = n.iteration !== null ? `iteration ${n.iteration + 1}` : '';
        const box = addBox(
          n.id,
          n,
          'loop',
          condId ? 'LOOP while' : 'LOOP',
          [it, n.resultName ? `→ $${n.resultName}` : ''].filter(Boolean).join(' ') || 'until BREAK',
        );
        const body = build(n.left, depth + 1);
        link([box], body.entries, 'body');
        const c = build(condId, depth + 1);
        if (c.entries.length) {
          link(body.exits, c.entries);
          link(c.exits, [box], 'again', true);
        } else link(body.exits, [box], 'again', true);
        return { entries: [box], exits: [box] };
      }
      default: {
        const d = describe(n);
        const box = addBox(n.id, n, 'step', d.title, d.detail);
        return { entries: [box], exits: [box] };
      }
    }
  };
  build(root, 0);

  const g = new graphlib.Graph({ multigraph: true });
  g.setGraph({ rankdir: 'TB', nodesep: 28, ranksep: 38, marginx: 12, marginy: 12 });
  g.setDefaultEdgeLabel(() => ({}));
  for (const b of boxes.values()) g.setNode(b.id, { width: b.width, height: b.height });
  arrows.forEach((a, i) =>
    g.setEdge(
      a.from,
      a.to,
      { label: a.label, width: a.label ? a.label.length * 6 : 0, height: a.label ? 14 : 0 },
      `e${i}`,
    ),
  );
  layout(g);
  for (const b of boxes.values()) {
    const p = g.node(b.id) as { x: number; y: number } | undefined;
    if (p) {
      b.x = p.x;
      b.y = p.y;
    }
  }
  arrows.forEach((a, i) => {
    const e = g.edge(a.from, a.to, `e${i}`) as
      { points?: Array<{ x: number; y: number }> } | undefined;
    a.points = e?.points ?? [];
  });
  const gl = g.graph() as { width?: number; height?: number };
  return {
    boxes: [...boxes.values()],
    arrows,
    width: Math.ceil(gl.width ?? 200),
    height: Math.ceil(gl.height ?? 100),
  };
}
