/**
 * The edge's cheaper form of a start (docs/proxy.md, "What the edge
 * forwards"): a workflow the proxy compiled and validated goes to the
 * database as its node rows, flattened here in pre-order (the root first),
 * for df._start_rows, instead of as a graph that df._start_graph evaluates,
 * validates and flattens again in PL/pgSQL. The rows are exactly those
 * df._start_graph would insert, with node ids drawn here.
 *
 * Only plain shapes take this form: nodes of the types below, each with no
 * keys but node_type, query, result_name and object children left_node /
 * right_node, strings for query and result_name, no JSON \u escape anywhere
 * (PostgreSQL and JavaScript read some of them differently), and the
 * structure the table's check constraints require. Anything else (IF, LOOP,
 * JOIN with extra nodes, HTTP steps, whose checks df._start_graph alone
 * makes) stays a df._start_graph call. The database trusts neither form:
 * df._activate_graph checks the rows the caller inserted either way.
 */
import { randomFillSync } from 'node:crypto';

/** Node types whose rows are the graph's own fields (no condition or extra nodes, no HTTP checks). */
const LEAVES = new Set(['SQL', 'SLEEP', 'WAIT_SCHEDULE', 'SIGNAL']);
const PAIRS = new Set(['THEN', 'RACE', 'JOIN']);
const KEYS = new Set(['node_type', 'query', 'result_name', 'left_node', 'right_node']);
const NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** More nodes than this stay a df._start_graph call (it draws many ids in one statement). */
const ROWS_MAX = 32;

interface Row {
  i: string;
  t: string;
  q?: string;
  n?: string;
  l?: string;
  r?: string;
}

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

/** Random bytes for 1,024 node ids at a time: one call to the CSPRNG for many compiles; each byte is used once. */
const idPool = Buffer.alloc(4 * 1024);
let idNext = idPool.length;

function drawId(): string {
  if (idNext + 4 > idPool.length) {
    randomFillSync(idPool);
    idNext = 0;
  }
  const id = idPool.toString('hex', idNext, idNext + 4);
  idNext += 4;
  return id;
}

/** The rows of `graph` (node JSON text) as JSON text for df._start_rows, or undefined to keep df._start_graph. */
export function graphRows(graph: string): string | undefined {
  if (graph.includes('\\u')) return undefined;
  let root: unknown;
  try {
    root = JSON.parse(graph);
  } catch {
    return undefined;
  }
  const ids = new Set<string>();
  const fresh = (): string => {
    for (;;) {
      const id = drawId();
      if (!ids.has(id)) {
        ids.add(id);
        return id;
      }
    }
  };
  const rows: Row[] = [];
  const stack: Array<[unknown, string]> = [[root, fresh()]];
  while (stack.length > 0) {
    const [n, id] = stack.pop() as [unknown, string];
    if (!isObject(n) || rows.length >= ROWS_MAX) return undefined;
    if (Object.keys(n).some((k) => !KEYS.has(k))) return undefined;
    const { node_type: t, query: q, result_name: nm, left_node: left, right_node: right } = n;
    if (typeof t !== 'string') return undefined;
    if (q !== undefined && q !== null && typeof q !== 'string') return undefined;
    if (nm !== undefined && nm !== null && (typeof nm !== 'string' || !NAME.test(nm)))
      return undefined;
    const hasQuery = typeof q === 'string';
    if (LEAVES.has(t)) {
      if (left !== undefined || right !== undefined || !hasQuery) return undefined;
    } else if (PAIRS.has(t)) {
      if (!isObject(left) || !isObject(right) || (t !== 'JOIN' && hasQuery)) return undefined;
    } else return undefined;
    const row: Row = { i: id, t };
    if (hasQuery) row.q = q;
    if (typeof nm === 'string') row.n = nm;
    rows.push(row);
    if (PAIRS.has(t)) {
      row.l = fresh();
      row.r = fresh();
      // pre-order: the left subtree comes out before the right one
      stack.push([right, row.r], [left, row.l]);
    }
  }
  return JSON.stringify(rows);
}

/** The SQL of a compiled graph's steps, leftmost first: at most 8, and 16 KiB in all. */
export function graphSteps(graph: string): string[] {
  const out: string[] = [];
  let chars = 0;
  const walk = (n: unknown): void => {
    if (out.length >= 8 || n === null || typeof n !== 'object') return;
    const o = n as Record<string, unknown>;
    const q = o['query'];
    if (o['node_type'] === 'SQL' && typeof q === 'string') {
      chars += q.length;
      if (chars <= 16_384) out.push(q);
      return;
    }
    for (const v of Object.values(o)) walk(v);
  };
  walk(JSON.parse(graph));
  return out;
}
