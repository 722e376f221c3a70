/**
 * The DSL's node constructors and operators (spec §2–§4) in TypeScript,
 * producing graph text byte-identical to the in-database functions of
 * migrations/0002_dsl.sql (test/golden/dsl-cases.json checks both). Pure.
 */
import { SqlState } from '../db/sqlstate.js';

export class DslError extends Error {
  override readonly name = 'DslError';
  constructor(
    message: string,
    readonly sqlstate: string = SqlState.InvalidParameterValue,
    /** 0-based byte offset of the offending call in the statement, when known. */
    public position?: number,
  ) {
    super(message);
  }
}

export const VALID_TYPES = [
  'SQL',
  'THEN',
  'IF',
  'JOIN',
  'LOOP',
  'BREAK',
  'RACE',
  'SLEEP',
  'WAIT_SCHEDULE',
  'HTTP',
  'HTTP_MULTIPART',
  'SIGNAL',
] as const;

/** JSON string escaping as PostgreSQL's escape_json (same as serde_json). */
export function jstr(s: string): string {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0) as number;
    if (ch === '"') out += '\\"';
    else if (ch === '\\') out += '\\\\';
    else if (ch === '\b') out += '\\b';
    else if (ch === '\f') out += '\\f';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (c < 0x20) out += '\\u' + c.toString(16).padStart(4, '0');
    else out += ch;
  }
  return out + '"';
}

export function node(
  type: string,
  o: {
    left?: string;
    right?: string;
    cond?: string;
    extras?: readonly string[];
    query?: string;
    name?: string;
  } = {},
): string {
  let s = `{"node_type":${jstr(type)}`;
  if (o.left !== undefined) s += `,"left_node":${o.left}`;
  if (o.right !== undefined) s += `,"right_node":${o.right}`;
  if (o.cond !== undefined) s += `,"condition_node":${o.cond}`;
  if (o.extras && o.extras.length > 0) s += `,"extra_nodes":[${o.extras.join(',')}]`;
  if (o.query !== undefined) s += `,"query":${jstr(o.query)}`;
  if (o.name !== undefined) s += `,"result_name":${jstr(o.name)}`;
  s += '}';
  if ((VALID_TYPES as readonly string[]).includes(type)) made(s);
  return s;
}

/**
 * The node texts node() wrote last (of a valid type): already canonical, so
 * asNode takes them as they are. Without this a chain `a ~> b ~> c ~> …`
 * parsed the whole graph so far again at every `~>` (quadratic in its
 * length); the left side of a `~>` is almost always one of the last few
 * written. Compared by identity first, so nothing is hashed.
 */
const RECENT: string[] = [];
let recentAt = 0;

function made(s: string): void {
  RECENT[recentAt] = s;
  recentAt = (recentAt + 1) % 16;
}

// ---- a JSON reader that keeps raw slices of values (like PostgreSQL's json type) ----

interface RawObject {
  readonly entries: ReadonlyArray<
    readonly [
      string,
      {
        readonly raw: string;
        readonly type: string;
        readonly str?: string;
        readonly items?: readonly string[];
      },
    ]
  >;
}

function parseRawObject(text: string): RawObject | undefined {
  type Raw = {
    raw: string;
    type: string;
    str?: string;
    items?: string[];
    entries?: Array<readonly [string, Raw]>;
  };
  let i = 0;
  const ws = (): void => {
    while (i < text.length && ' \t\n\r'.includes(text[i] as string)) i++;
  };
  const fail = (): never => {
    throw new Error('invalid json');
  };
  const str = (): string => {
    const start = i;
    i++;
    while (i < text.length && text[i] !== '"') i += text[i] === '\\' ? 2 : 1;
    if (i >= text.length) fail();
    i++;
    return JSON.parse(text.slice(start, i)) as string;
  };
  /** Parses "open item (, item)* close" around `item`. */
  const list = (close: string, item: () => void): void => {
    i++;
    ws();
    if (text[i] !== close) {
      for (;;) {
        item();
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === close) break;
        fail();
      }
    }
    i++;
  };
  const value = (): Raw => {
    ws();
    const start = i;
    const c = text[i];
    const out: Omit<Raw, 'raw'> = { type: '' };
    if (c === '"') {
      out.str = str();
      out.type = 'string';
    } else if (c === '{') {
      const entries: Array<readonly [string, Raw]> = [];
      list('}', () => {
        ws();
        if (text[i] !== '"') fail();
        const k = str();
        ws();
        if (text[i] !== ':') fail();
        i++;
        entries.push([k, value()]);
      });
      out.entries = entries;
      out.type = 'object';
    } else if (c === '[') {
      const items: string[] = [];
      list(']', () => items.push(value().raw));
      out.items = items;
      out.type = 'array';
    } else if (text.startsWith('true', i) || text.startsWith('false', i)) {
      i += text.startsWith('true', i) ? 4 : 5;
      out.type = 'boolean';
    } else if (text.startsWith('null', i)) {
      i += 4;
      out.type = 'null';
    } else {
      const m = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i));
      if (!m) fail();
      i += (m as RegExpExecArray)[0].length;
      out.type = 'number';
    }
    return { raw: text.slice(start, i), ...out };
  };
  try {
    const v = value();
    ws();
    if (i !== text.length) fail();
    return v.type === 'object' ? { entries: v.entries ?? [] } : undefined;
  } catch {
    return undefined;
  }
}

function get(
  o: RawObject,
  k: string,
): { raw: string; type: string; str?: string; items?: readonly string[] } | undefined {
  let found;
  for (const [key, v] of o.entries) if (key === k) found = v; // json -> takes the last duplicate
  return found;
}

function shapeError(o: RawObject): string | undefined {
  for (const k of ['query', 'result_name']) {
    const v = get(o, k);
    if (v && v.type !== 'string' && v.type !== 'null')
      return `invalid type: ${v.type}, expected a string for field \`${k}\``;
  }
  const e = get(o, 'extra_nodes');
  if (e && e.type !== 'array' && e.type !== 'null')
    return `invalid type: ${e.type}, expected a sequence for field \`extra_nodes\``;
  return undefined;
}

function canonical(o: RawObject, rename?: string): string {
  const child = (k: string): string | undefined => {
    const v = get(o, k);
    return v && v.type !== 'null' ? v.raw : undefined;
  };
  const extras = get(o, 'extra_nodes');
  const q = get(o, 'query');
  const n = get(o, 'result_name');
  return node(get(o, 'node_type')?.str as string, {
    ...(child('left_node') !== undefined ? { left: child('left_node') as string } : {}),
    ...(child('right_node') !== undefined ? { right: child('right_node') as string } : {}),
    ...(child('condition_node') !== undefined ? { cond: child('condition_node') as string } : {}),
    ...(extras?.type === 'array' ? { extras: extras.items as string[] } : {}),
    ...(q?.type === 'string' ? { query: q.str as string } : {}),
    ...(rename !== undefined
      ? { name: rename }
      : n?.type === 'string'
        ? { name: n.str as string }
        : {}),
  });
}

/** The same node with its result_name set (df.as). `nodeText` is canonical node text. */
export function withName(nodeText: string, name: string): string {
  return canonical(parseRawObject(nodeText) as RawObject, name);
}

/** The node text of a graph value, or undefined when it should be wrapped as SQL. */
export function asNode(s: string, start: boolean): string | undefined {
  if (RECENT.includes(s)) return s; // canonical(parseRawObject(s)) would give it back unchanged
  if (!s.replace(/^[ \t\n\r]+/, '').startsWith('{')) return undefined;
  const o = parseRawObject(s);
  if (!o) return undefined;
  const t = get(o, 'node_type');
  if (!t || t.type !== 'string') return undefined;
  const type = t.str as string;
  const err = shapeError(o);
  const valid = (VALID_TYPES as readonly string[]).includes(type);
  if (start) {
    if (!valid)
      throw new DslError(
        `Invalid durable function: Unknown node_type '${type}'. Valid types: ${VALID_TYPES.join(', ')}`,
      );
    if (err)
      throw new DslError(
        `Invalid durable function: Malformed Durofut JSON with node_type '${type}': ${err}`,
      );
  } else {
    if (err)
      throw new DslError(`Invalid Durofut JSON: failed to deserialize workflow step: ${err}`);
    if (!valid) return undefined;
  }
  return canonical(o);
}

/** The composition rule (spec §2.3). The helper guard needs statement state, so it is the caller's. */
export function compose(s: string): string {
  return asNode(s, false) ?? node('SQL', { query: s });
}
