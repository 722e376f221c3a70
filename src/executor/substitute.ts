/**
 * Substitution (spec §7): the brace pass ({var}, {sys_instance_id},
 * {sys_label}), then the dollar pass ($name, $name?, $name.col, $name.col?,
 * $name.*) over its output, in SQL mode (values become SQL literals) or raw
 * mode (values inserted as text).
 */
import { field, parseJson, stringify, tryParseJson, type JValue } from './json.js';

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
}

const IDENT = /^[A-Za-z_][A-Za-z0-9_]*$/;
const IDENT_CHAR = /[A-Za-z0-9_]/;
const MAX_EXPANSION_ROWS = 10_000;

export function bracePass(text: string, ctx: SubstitutionContext): string {
  let out = '';
  let i = 0;
  for (;;) {
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

function scalar(name: string, text: string, nullSafe: boolean, mode: Mode): string {
  const v = tryParseJson(text);
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
  text: string,
  nullSafe: boolean,
  mode: Mode,
): string | undefined {
  const v = tryParseJson(text);
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

function expansion(name: string, text: string, mode: Mode): string {
  let v: JValue;
  try {
    v = parseJson(text);
  } catch (err) {
    throw new SubstitutionError(`$${name}.* — invalid result JSON: ${(err as Error).message}`);
  }
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

export function dollarPass(text: string, ctx: SubstitutionContext, mode: Mode): string {
  if (ctx.results.size === 0 || !text.includes('$')) return text;
  const names = [...ctx.results.keys()].sort((a, b) => b.length - a.length);
  let out = '';
  let i = 0;
  while (i < text.length) {
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
        out += expansion(name, value, mode);
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
        const v = fieldRef(name, col, value, nullSafe, mode);
        out += v ?? text.slice(d, end);
        i = end;
        replaced = true;
        break;
      }
      if (text[after] === '?') {
        out += scalar(name, value, true, mode);
        i = after + 1;
        replaced = true;
        break;
      }
      if (after >= text.length || !IDENT_CHAR.test(text[after] as string)) {
        out += scalar(name, value, false, mode);
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
  return out;
}

export function substitute(text: string, ctx: SubstitutionContext, mode: Mode): string {
  return dollarPass(bracePass(text, ctx), ctx, mode);
}
