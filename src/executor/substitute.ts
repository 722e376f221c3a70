/**
 * Substitution (spec §7): the brace pass ({var}, {sys_instance_id},
 * {sys_label}), then the dollar pass ($name, $name?, $name.col, $name.col?,
 * $name.*) over its output, in SQL mode (values become SQL literals) or raw
 * mode (values inserted as text).
 */
import { field, parseJson, stringify, type JValue } from './json.js';

export class SubstitutionError extends Error {
  override readonly name = 'SubstitutionError';
}

export type Mode = 'sql' | 'raw';

export interface SubstitutionContext {
  readonly vars: Readonly<Record<string, string>>;
  readonly instanceId: string;
  readonly label: string | null;
  /** Named results in their in-memory text form. */
  readonly results: ReadonlyMap<string, string>;
  /**
   * The longest text substitution may build: the longest step text the
   * executor runs (sqlcheck.ts, stepTextMax). Absent: only the relative limit.
   */
  readonly maxChars?: number;
}

const IDENT = /^[A-Za-z_][A-Za-z0-9_]*$/;
const IDENT_CHAR = /[A-Za-z0-9_]/;
const MAX_EXPANSION_ROWS = 10_000;

/**
 * How long a step's text may grow by substitution: twice what it and every
 * value it could name take together, and 1 MiB more. A value substituted a
 * few times fits; one named hundreds of times (a 3 MB result in a comment
 * 170 times made 510 MB of SQL and froze the process for seconds) fails
 * the node instead of building the text. Never past `ctx.maxChars`: a text
 * longer than that would be refused unrun, so it is not built either.
 */
export function substitutionLimit(text: string, ctx: SubstitutionContext): Limit {
  let total = text.length;
  for (const v of ctx.results.values()) total += v.length;
  for (const v of Object.values(ctx.vars)) total += typeof v === 'string' ? v.length : 0;
  const relative = 2 * total + 1024 * 1024;
  return ctx.maxChars !== undefined && ctx.maxChars < relative
    ? { chars: ctx.maxChars, why: LONGEST_STEP }
    : { chars: relative, why: RELATIVE };
}

/** The longest text a substitution may build, and what the error says of it. */
interface Limit {
  readonly chars: number;
  readonly why: string;
}

const RELATIVE = ' (twice the text and the values it can name, and 1 MiB more)';
const LONGEST_STEP =
  ', the longest step text dfgate runs (four times --max-result-bytes, at least 16 MiB)';

function checkLength(out: string, limit: Limit): void {
  if (out.length > limit.chars)
    throw new SubstitutionError(
      `substitution would make the step's text longer than ${limit.chars} characters${limit.why}; name each large result or variable once, or pass it through a table`,
    );
}

export function bracePass(
  text: string,
  ctx: SubstitutionContext,
  limit = substitutionLimit(text, ctx),
): string {
  let out = '';
  let i = 0;
  for (;;) {
    checkLength(out, limit);
    const open = text.indexOf('{', i);
    if (open < 0) return out + text.slice(i);
    out += text.slice(i, open);
    const close = text.indexOf('}', open + 1);
    if (close < 0) return out + text.slice(open);
    const name = text.slice(open + 1, close);
    if (name === 'sys_instance_id') out += ctx.instanceId;
    else if (name === 'sys_label') out += ctx.label ?? '';
    else if (IDENT.test(name) && Object.prototype.hasOwnProperty.call(ctx.vars, name))
      out += ctx.vars[name];
    else out += text.slice(open, close + 1);
    i = close + 1;
  }
}

function quote(s: string): string {
  return `'${s.replace(/'/g, "''")}'`;
}

function format(v: JValue, mode: Mode): string {
  switch (v.t) {
    case 'str':
      return mode === 'sql' ? quote(v.v) : v.v;
    case 'num':
      return v.v;
    case 'bool':
      return v.v ? 'true' : 'false';
    case 'null':
      return 'NULL';
    case 'arr':
    case 'obj':
      return mode === 'sql' ? quote(stringify(v)) : stringify(v);
  }
}

function rowsOf(v: JValue | undefined): readonly JValue[] | undefined {
  if (!v) return undefined;
  const rows = field(v, 'rows');
  return rows && rows.t === 'arr' ? rows.v : undefined;
}

function scalar(
  name: string,
  text: string,
  v: JValue | undefined,
  nullSafe: boolean,
  mode: Mode,
): string {
  const rows = rowsOf(v);
  if (!rows) return mode === 'sql' ? quote(text) : text;
  if (rows.length === 0) {
    if (nullSafe) return 'NULL';
    throw new SubstitutionError(`$${name} has no rows — query returned zero results`);
  }
  const first = rows[0] as JValue;
  if (first.t !== 'obj') throw new SubstitutionError(`$${name}: first row is not an object`);
  if (first.v.length === 0) throw new SubstitutionError(`$${name}: first row has no columns`);
  const val = (first.v[0] as readonly [string, JValue])[1];
  if (val.t === 'null') {
    if (nullSafe) return 'NULL';
    throw new SubstitutionError(`$${name} is NULL — first column of first row is NULL`);
  }
  return format(val, mode);
}

/** A field reference; undefined means "leave the reference in the text". */
function fieldRef(
  name: string,
  col: string,
  v: JValue | undefined,
  nullSafe: boolean,
  mode: Mode,
): string | undefined {
  if (!v) throw new SubstitutionError(`$${name}.${col}: result is not valid JSON`);
  let obj: JValue;
  const rows = rowsOf(v);
  if (rows) {
    if (rows.length === 0) {
      if (nullSafe) return 'NULL';
      throw new SubstitutionError(`$${name} has no rows — query returned zero results`);
    }
    obj = rows[0] as JValue;
    if (obj.t !== 'obj') throw new SubstitutionError(`$${name}.${col}: first row is not an object`);
  } else if (v.t === 'obj') {
    obj = v;
  } else {
    throw new SubstitutionError(`$${name}.${col}: result is neither a row set nor a JSON object`);
  }
  const val = field(obj, col);
  if (val === undefined) {
    if (mode === 'sql' || nullSafe) return undefined;
    const keys = obj.t === 'obj' ? [...new Set(obj.v.map(([k]) => k))].sort() : [];
    throw new SubstitutionError(
      `$${name}.${col}: result has no field '${col}' (available: ${keys.join(', ')})`,
    );
  }
  if (val.t === 'null') {
    if (nullSafe) return 'NULL';
    throw new SubstitutionError(`$${name}.${col} is NULL`);
  }
  return format(val, mode);
}

function quoteIdent(s: string): string {
  return `"${s.replace(/"/g, '""')}"`;
}

function expansion(name: string, parsed: Parsed, mode: Mode): string {
  if (parsed.v === undefined)
    throw new SubstitutionError(`$${name}.* — invalid result JSON: ${parsed.error}`);
  const v = parsed.v;
  const rows = rowsOf(v);
  if (!rows) throw new SubstitutionError(`$${name}.* — invalid result format`);
  if (rows.length > MAX_EXPANSION_ROWS) {
    throw new SubstitutionError(
      `$${name}.* — result has ${rows.length} rows, exceeding the maximum of ${MAX_EXPANSION_ROWS} for row-set expansion. Use pagination or intermediate tables for large result sets.`,
    );
  }
  if (mode === 'raw') return '[' + rows.map(stringify).join(',') + ']';
  if (rows.length === 0) return `(SELECT NULL WHERE false) AS ${quoteIdent(name)}`;
  const first = rows[0] as JValue;
  const cols = first.t === 'obj' ? first.v.map(([k]) => k) : [];
  const lit = (x: JValue | undefined): string => {
    if (!x || x.t === 'null') return 'NULL';
    if (x.t === 'str') return `${quote(x.v)}::text`;
    if (x.t === 'num') return x.v;
    if (x.t === 'bool') return x.v ? 'true' : 'false';
    return `${quote(stringify(x))}::text`;
  };
  const values = rows
    .map((r) => '(' + cols.map((c) => lit(field(r, c))).join(',') + ')')
    .join(', ');
  return `(VALUES ${values}) AS ${quoteIdent(name)}(${cols.map(quoteIdent).join(', ')})`;
}

/** A result's JSON, parsed once per substitution however often it is named. */
interface Parsed {
  readonly v: JValue | undefined;
  readonly error?: string;
}

export function dollarPass(
  text: string,
  ctx: SubstitutionContext,
  mode: Mode,
  limit = substitutionLimit(text, ctx),
): string {
  if (ctx.results.size === 0 || !text.includes('$')) return text;
  const names = [...ctx.results.keys()].sort((a, b) => b.length - a.length);
  const parsedResults = new Map<string, Parsed>();
  const parsed = (name: string): Parsed => {
    let p = parsedResults.get(name);
    if (!p) {
      try {
        p = { v: parseJson(ctx.results.get(name) as string) };
      } catch (err) {
        p = { v: undefined, error: (err as Error).message };
      }
      parsedResults.set(name, p);
    }
    return p;
  };
  let out = '';
  let i = 0;
  while (i < text.length) {
    checkLength(out, limit);
    const d = text.indexOf('$', i);
    if (d < 0) {
      out += text.slice(i);
      break;
    }
    out += text.slice(i, d);
    let replaced = false;
    for (const name of names) {
      if (!text.startsWith(name, d + 1)) continue;
      const after = d + 1 + name.length;
      const value = ctx.results.get(name) as string;
      if (text.startsWith('.*', after)) {
        out += expansion(name, parsed(name), mode);
        i = after + 2;
        replaced = true;
        break;
      }
      const m = text[after] === '.' ? /^[A-Za-z_][A-Za-z0-9_]*/.exec(text.slice(after + 1)) : null;
      if (m) {
        const col = m[0];
        let end = after + 1 + col.length;
        const nullSafe = text[end] === '?';
        if (nullSafe) end++;
        const v = fieldRef(name, col, parsed(name).v, nullSafe, mode);
        out += v ?? text.slice(d, end);
        i = end;
        replaced = true;
        break;
      }
      if (text[after] === '?') {
        out += scalar(name, value, parsed(name).v, true, mode);
        i = after + 1;
        replaced = true;
        break;
      }
      if (after >= text.length || !IDENT_CHAR.test(text[after] as string)) {
        out += scalar(name, value, parsed(name).v, false, mode);
        i = after;
        replaced = true;
        break;
      }
    }
    if (!replaced) {
      out += '$';
      i = d + 1;
    }
  }
  checkLength(out, limit);
  return out;
}

export function substitute(text: string, ctx: SubstitutionContext, mode: Mode): string {
  const limit = substitutionLimit(text, ctx);
  return dollarPass(bracePass(text, ctx, limit), ctx, mode, limit);
}
