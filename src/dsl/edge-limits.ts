/**
 * Limits on what the edge compiles, checked by one linear scan before
 * anything else (libpg-query, the tree walk and the DSL evaluation all grow
 * with nesting and call count; a few of them more than linearly). A statement
 * over any limit goes to the database unchanged, where the in-database
 * df.start does the same work and raises the same errors.
 */
/** Longer statements (UTF-16 code units) are left to the database. */
export const ANALYZE_MAX = 16 * 1024;
/** UTF-8 bytes of the longest statement the proxy hands to the edge (4 per code unit, generously). */
export const ANALYZE_BYTES_MAX = ANALYZE_MAX * 4;
/**
 * Longer texts of several statements (a simple Query) are left to the
 * database: many starts in one message are compiled together (docs/proxy.md,
 * "Starts in one message"), each statement within the limits of one.
 */
export const BATCH_MAX = 256 * 1024;
/** UTF-8 bytes of the longest Query text the proxy hands to the edge. */
export const BATCH_BYTES_MAX = BATCH_MAX * 4;
/** The longest text (UTF-8 bytes) of a Query (several statements) or a Parse (one) the edge compiles. */
export function textBytesMax(parse: boolean): number {
  return parse ? ANALYZE_BYTES_MAX : BATCH_BYTES_MAX;
}
/**
 * Is a Query or Parse message body of this length (bytes) one the edge never
 * compiles? Then the proxy streams it through unassembled. A Parse body also
 * holds the statement name (allowed up to 64 KiB here; PostgreSQL truncates
 * names to 63 bytes) and up to 65,535 parameter type OIDs.
 */
export function edgeSkips(parse: boolean, bodyLength: number): boolean {
  const max = textBytesMax(parse) + 1 + (parse ? 64 * 1024 + 1 + 2 + 4 * 65535 : 0);
  return bodyLength > max;
}
/** Deeper nesting of parentheses and brackets (outside literals and comments) is left to the database. */
export const DEPTH_MAX = 16;
/**
 * More parentheses, brackets, commas and operator characters (outside
 * literals and comments) are left to the database: they bound the size of
 * the parse tree, the number of calls and arguments, and the length of
 * operator chains (which nest like parentheses).
 */
export const NODES_MAX = 64;

const NODE_CHARS = new Set([
  ',',
  '+',
  '-',
  '*',
  '/',
  '<',
  '>',
  '=',
  '~',
  '!',
  '@',
  '#',
  '%',
  '^',
  '&',
  '|',
  '?',
]);

/**
 * Is a text within the edge's limits? One pass over it that skips string
 * literals ('…', E'…', $tag$…$tag$), quoted identifiers and comments; the
 * limits of one statement apply to each statement between top-level
 * semicolons, and the whole text is at most BATCH_MAX long.
 */
export function withinLimits(sql: string): boolean {
  const n = sql.length;
  if (n > BATCH_MAX) return false;
  let depth = 0;
  let nodes = 0;
  let from = 0;
  let i = 0;
  while (i < n) {
    const c = sql[i] as string;
    if (c === ';' && depth === 0) {
      if (i - from > ANALYZE_MAX) return false;
      nodes = 0;
      from = ++i;
    } else if (c === '(' || c === '[') {
      if (++depth > DEPTH_MAX || ++nodes > NODES_MAX) return false;
      i++;
    } else if (c === ')' || c === ']') {
      if (depth > 0) depth--;
      i++;
    } else if (c === "'") {
      const prev = i > 0 ? sql[i - 1] : '';
      const escapes = (prev === 'E' || prev === 'e') && !/[A-Za-z0-9_$]/.test(sql[i - 2] ?? '');
      i++;
      while (i < n) {
        const d = sql[i];
        if (escapes && d === '\\') i += 2;
        else if (d === "'") {
          if (sql[i + 1] === "'") i += 2;
          else break;
        } else i++;
      }
      i++;
    } else if (c === '"') {
      const end = sql.indexOf('"', i + 1);
      i = end < 0 ? n : end + 1;
    } else if (c === '-' && sql[i + 1] === '-') {
      const end = sql.indexOf('\n', i);
      i = end < 0 ? n : end + 1;
    } else if (c === '/' && sql[i + 1] === '*') {
      let nest = 1;
      i += 2;
      while (i < n && nest > 0) {
        if (sql[i] === '/' && sql[i + 1] === '*') (nest++, (i += 2));
        else if (sql[i] === '*' && sql[i + 1] === '/') (nest--, (i += 2));
        else i++;
      }
    } else if (c === '$' && !/[A-Za-z0-9_]/.test(sql[i - 1] ?? '')) {
      const tag = /^\$([A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$/.exec(
        sql.slice(i, i + 64),
      );
      if (!tag) {
        i++;
        continue;
      }
      const end = sql.indexOf(tag[0], i + tag[0].length);
      i = end < 0 ? n : end + tag[0].length;
    } else {
      if (NODE_CHARS.has(c) && ++nodes > NODES_MAX) return false;
      i++;
    }
  }
  return n - from <= ANALYZE_MAX;
}

/** A token of libpg-query's scanner: byte offsets and text. */
interface Token {
  readonly start: number;
  readonly text: string;
}

const OPERATOR = /^[+\-*/<>=~!@#%^&|?]+$/;

/**
 * The limits once more, on PostgreSQL's own tokens of the statement at bytes
 * [from, to) (`tokens` sorted by offset): nesting, and parentheses, brackets,
 * commas and operators. withinLimits' quick scan can be misled where its
 * lexing differs from PostgreSQL's (a comment that ends at a carriage
 * return, a dollar quote that is really part of an identifier), hiding
 * operators that then cost the compile worker seconds; these tokens cannot.
 */
export function tokensWithinLimits(tokens: readonly Token[], from: number, to: number): boolean {
  let lo = 0;
  let hi = tokens.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if ((tokens[mid] as Token).start < from) lo = mid + 1;
    else hi = mid;
  }
  let depth = 0;
  let nodes = 0;
  for (let i = lo; i < tokens.length; i++) {
    const t = tokens[i] as Token;
    if (t.start >= to) break;
    const x = t.text;
    if (x === '(' || x === '[') {
      if (++depth > DEPTH_MAX || ++nodes > NODES_MAX) return false;
    } else if (x === ')' || x === ']') {
      if (depth > 0) depth--;
    } else if ((x === ',' || OPERATOR.test(x)) && ++nodes > NODES_MAX) return false;
  }
  return true;
}
