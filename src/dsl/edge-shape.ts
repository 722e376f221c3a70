/**
 * The token-level shape of a df.start call in a client statement (libpg-query's
 * scanner): where each argument starts and ends, where the call closes, and
 * where an alias goes so the rewritten call keeps naming its column "start".
 */
import type { ScanToken } from 'libpg-query';

/** A node of libpg-query's JSON parse tree. */
export type Ast = { [k: string]: unknown };

/** The parameters of df.start, in order. */
export const START_PARAMS = [
  'fut',
  'label',
  'database',
  'transaction_mode',
  'idempotency_key',
  'max_attempts',
  'max_backoff',
  'on_failure',
] as const;
export type StartParam = (typeof START_PARAMS)[number];

const CLAUSE = new Set([
  'FROM',
  'WHERE',
  'GROUP',
  'HAVING',
  'WINDOW',
  'ORDER',
  'LIMIT',
  'OFFSET',
  'FETCH',
  'FOR',
  'UNION',
  'INTERSECT',
  'EXCEPT',
  'INTO',
  'RETURNING',
  'ON',
]);

export interface Call {
  readonly start: number;
  readonly end: number;
  /** Argument expressions: parameter name → byte span of the expression and its AST. */
  readonly args: Map<
    StartParam,
    { readonly start: number; readonly end: number; readonly ast: unknown }
  >;
}

/** Token-level shape of a call: its closing parenthesis and the span of each argument. */
export function callShape(fc: Ast, tokens: ScanToken[]): Call | undefined {
  const loc = fc['location'] as number;
  let i = tokens.findIndex((t) => t.start >= loc);
  while (i >= 0 && i < tokens.length && tokens[i]?.text !== '(') i++;
  if (i < 0 || i >= tokens.length) return undefined;
  const spans: Array<[number, number]> = [];
  let depth = 0;
  let argFirst = -1;
  let end = -1;
  for (let j = i; j < tokens.length; j++) {
    const t = tokens[j] as ScanToken;
    if (t.text === '(' || t.text === '[') {
      depth++;
      if (depth === 1) continue;
    } else if (t.text === ')' || t.text === ']') {
      depth--;
      if (depth === 0) {
        if (argFirst >= 0) spans.push([argFirst, j - 1]);
        end = t.end;
        break;
      }
    } else if (depth === 1 && t.text === ',') {
      if (argFirst < 0) return undefined;
      spans.push([argFirst, j - 1]);
      argFirst = -1;
      continue;
    }
    if (depth >= 1 && argFirst < 0) argFirst = j;
  }
  const asts = (fc['args'] as unknown[] | undefined) ?? [];
  if (end < 0 || spans.length !== asts.length) return undefined;
  const args: Call['args'] = new Map();
  let positional = 0;
  for (let a = 0; a < asts.length; a++) {
    const [f, l] = spans[a] as [number, number];
    const na = (asts[a] as Ast)['NamedArgExpr'] as Ast | undefined;
    let first = f;
    let name: string;
    if (na) {
      const arrow = tokens[f + 1]?.text;
      if (arrow !== '=>' && arrow !== ':=') return undefined;
      first = f + 2;
      name = na['name'] as string;
    } else {
      if (args.size > positional) return undefined; // positional after named: PostgreSQL says so
      name = START_PARAMS[positional++] as string;
    }
    const p = name as StartParam;
    if (!(START_PARAMS as readonly string[]).includes(name) || args.has(p) || first > l)
      return undefined;
    args.set(p, {
      start: (tokens[first] as ScanToken).start,
      end: (tokens[l] as ScanToken).end,
      ast: na ? na['arg'] : asts[a],
    });
  }
  return { start: loc, end, args };
}

/** Where ` AS "start"` goes so that the rewritten call keeps naming its column. */
export function aliasPoint(names: number, call: Call, tokens: ScanToken[]): number | undefined {
  let wraps = 0;
  for (const t of tokens) {
    if (t.start < names) continue;
    if (t.start >= call.start) break;
    if (t.text === '(') wraps++;
    else if (t.text === ')') wraps--;
  }
  let depth = 0;
  let last = call.end;
  for (const t of tokens) {
    if (t.start < call.end) continue;
    if (t.text === '(' || t.text === '[') depth++;
    else if (t.text === ')' || t.text === ']') {
      if (depth > 0) depth--;
      else if (wraps > 0) wraps--;
      else return last;
    } else if (depth === 0 && (t.text === ',' || t.text === ';')) return last;
    else if (depth === 0 && CLAUSE.has(t.text.toUpperCase())) return last;
    last = t.end;
  }
  return last;
}
