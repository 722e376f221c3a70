/** Graph validation of spec §2.5, the same checks and texts as df._validate in migrations/0003_start.sql. Pure. */
import { VALID_TYPES } from './nodes.js';

type J = null | boolean | number | string | J[] | { [k: string]: J };

function typeOf(v: J | undefined): string | undefined {
  if (v === undefined) return undefined;
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  return typeof v === 'object' ? 'object' : typeof v;
}

/**
 * 'Invalid durable function graph: <path>: <message>' for the first problem in
 * pre-order, or undefined. With `exactOnly`, a problem whose text would embed
 * PostgreSQL's own JSON parser message (which JavaScript's cannot match) is
 * left to the database: undefined.
 */
export function validateGraph(graphText: string, exactOnly = false): string | undefined {
  let root: J;
  try {
    root = JSON.parse(graphText) as J;
  } catch {
    return undefined; // not a graph: the start rule wraps it as SQL
  }
  const stack: Array<[J, string, number]> = [[root, 'root', 0]];
  let count = 0;
  const bad = (path: string, msg: string): string =>
    `Invalid durable function graph: ${path}: ${msg}`;
  while (stack.length) {
    const [n, path, depth] = stack.pop() as [J, string, number];
    if (++count > 10_000)
      return bad(
        'root',
        'Workflow exceeds maximum node count of 10000. Simplify the workflow or break it into multiple instances.',
      );
    if (depth > 256)
      return bad(
        path,
        'Graph exceeds maximum nesting depth of 256. Simplify the workflow or break it into multiple instances.',
      );
    const o = n as { [k: string]: J };
    if (typeof o['node_type'] !== 'string')
      return bad(path, 'missing or non-string field `node_type`');
    const t = o['node_type'];
    if (!(VALID_TYPES as readonly string[]).includes(t))
      return bad(path, `Unknown node_type '${t}'. Valid types: ${VALID_TYPES.join(', ')}`);
    for (const k of ['query', 'result_name']) {
      const ty = typeOf(o[k]);
      if (ty !== undefined && ty !== 'string' && ty !== 'null')
        return bad(path, `invalid type: ${ty}, expected a string for field \`${k}\``);
    }
    const et = typeOf(o['extra_nodes']);
    if (et !== undefined && et !== 'array' && et !== 'null')
      return bad(path, `invalid type: ${et}, expected a sequence for field \`extra_nodes\``);
    for (const k of ['left_node', 'right_node']) {
      const ty = typeOf(o[k]);
      if (ty !== undefined && ty !== 'object' && ty !== 'null')
        return bad(path, 'Durofut children must be JSON objects');
    }
    const ct = typeOf(o['condition_node']);
    const hasCond = ct !== undefined && ct !== 'null';
    if (hasCond && ct !== 'object')
      return bad(path, 'condition_node must be a Durofut JSON object');
    const extras = Array.isArray(o['extra_nodes']) ? (o['extra_nodes'] as J[]) : [];
    if (extras.some((x) => typeOf(x) !== 'object'))
      return bad(path, 'extra_nodes entries must be Durofut JSON objects');
    if (hasCond && t !== 'IF' && t !== 'LOOP')
      return bad(path, `condition_node is not valid for ${t} nodes`);
    if (extras.length > 0 && t !== 'JOIN')
      return bad(path, `extra_nodes is not valid for ${t} nodes`);
    if ((t === 'IF' || t === 'LOOP' || t === 'JOIN') && typeof o['query'] === 'string') {
      let cfg: J | undefined;
      let parseError: string | undefined;
      try {
        cfg = JSON.parse(o['query']) as J;
      } catch (e) {
        parseError = (e as Error).message;
      }
      if (typeOf(cfg) === 'object') {
        if ((t === 'IF' || t === 'LOOP') && 'condition_node' in (cfg as object))
          return bad(
            path,
            `condition_node in ${t} must be a first-class Durofut field, not embedded in query`,
          );
        if (t === 'JOIN' && 'extra_nodes' in (cfg as object))
          return bad(
            path,
            'extra_nodes in JOIN must be a first-class Durofut field, not embedded in query',
          );
      }
      if (hasCond || extras.length > 0) {
        if (parseError !== undefined)
          return exactOnly
            ? undefined
            : bad(path, `query in ${t} must be valid JSON config: ${parseError}`);
        if (typeOf(cfg) !== 'object')
          return bad(path, `query in ${t} must be a JSON config object`);
      }
    }
    for (let i = extras.length - 1; i >= 0; i--)
      stack.push([extras[i] as J, `${path}.extra_nodes[${i}]`, depth + 1]);
    if (hasCond) stack.push([o['condition_node'] as J, `${path}.condition_node`, depth + 1]);
    if (typeOf(o['right_node']) === 'object')
      stack.push([o['right_node'] as J, `${path}.right`, depth + 1]);
    if (typeOf(o['left_node']) === 'object')
      stack.push([o['left_node'] as J, `${path}.left`, depth + 1]);
  }
  return undefined;
}
