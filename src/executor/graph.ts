/** The stored graph of an instance (spec §5.4), as the executor reads it from df.nodes. */

export type NodeType =
  | 'SQL'
  | 'THEN'
  | 'IF'
  | 'JOIN'
  | 'LOOP'
  | 'BREAK'
  | 'RACE'
  | 'SLEEP'
  | 'WAIT_SCHEDULE'
  | 'HTTP'
  | 'HTTP_MULTIPART'
  | 'SIGNAL';

export interface GraphNode {
  readonly id: string;
  readonly type: NodeType;
  readonly query: string | null;
  readonly resultName: string | null;
  readonly left: string | null;
  readonly right: string | null;
  /** IF / LOOP condition node (from query.condition_node). */
  readonly condition: string | null;
  /** JOIN branches 3… (from query.extra_nodes). */
  readonly extras: readonly string[];
}

export interface Graph {
  readonly root: string;
  readonly nodes: ReadonlyMap<string, GraphNode>;
  /** Nodes that are the root of a JOIN/RACE branch (their loops run in the branch scope). */
  readonly branchRoots: ReadonlySet<string>;
}

export interface NodeRow {
  readonly id: string;
  readonly node_type: string;
  readonly query: string | null;
  readonly result_name: string | null;
  readonly left_node: string | null;
  readonly right_node: string | null;
}

export class GraphError extends Error {
  override readonly name = 'GraphError';
}

function config(row: NodeRow): Record<string, unknown> {
  if (row.query === null) return {};
  try {
    const v = JSON.parse(row.query) as unknown;
    return typeof v === 'object' && v !== null && !Array.isArray(v)
      ? (v as Record<string, unknown>)
      : {};
  } catch {
    return {};
  }
}

export function buildGraph(root: string, rows: readonly NodeRow[]): Graph {
  const nodes = new Map<string, GraphNode>();
  const branchRoots = new Set<string>();
  for (const r of rows) {
    const type = r.node_type as NodeType;
    const cfg = type === 'IF' || type === 'LOOP' || type === 'JOIN' ? config(r) : {};
    const condition =
      typeof cfg['condition_node'] === 'string' ? (cfg['condition_node'] as string) : null;
    const extras = Array.isArray(cfg['extra_nodes'])
      ? (cfg['extra_nodes'] as unknown[]).filter((x): x is string => typeof x === 'string')
      : [];
    nodes.set(r.id, {
      id: r.id,
      type,
      query: r.query,
      resultName: r.result_name,
      left: r.left_node,
      right: r.right_node,
      condition,
      extras,
    });
  }
  for (const n of nodes.values()) {
    if (n.type === 'JOIN' || n.type === 'RACE') {
      for (const b of [n.left, n.right, ...n.extras]) if (b) branchRoots.add(b);
    }
  }
  if (!nodes.has(root)) throw new GraphError(`root node ${root} is missing`);
  return { root, nodes, branchRoots };
}
