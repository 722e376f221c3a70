/**
 * Evaluating constant DSL expressions from PostgreSQL's parse tree
 * (libpg-query): string literals of every quoting form, the df.* node
 * functions with named arguments, the seven operators and casts. Returns
 * undefined for anything that is not constant (a column, a parameter, another
 * function), which is then left for PostgreSQL to evaluate. Pure.
 */
import { SqlState } from '../db/sqlstate.js';
import { cronError } from './cron.js';
import { compose, DslError, jstr, node, withName } from './nodes.js';

export type Value =
  | { readonly t: 'text'; readonly v: string }
  | { readonly t: 'num'; readonly v: string }
  | { readonly t: 'bool'; readonly v: boolean }
  | { readonly t: 'json'; readonly v: string }
  | { readonly t: 'null' };

type Ast = { [k: string]: unknown };
const NULL: Value = { t: 'null' };
const text = (v: string): Value => ({ t: 'text', v });

/** A value as text (as PostgreSQL would coerce it to a text parameter). */
function asText(v: Value): string | null {
  switch (v.t) {
    case 'null':
      return null;
    case 'bool':
      return v.v ? 'true' : 'false';
    default:
      return v.v;
  }
}

/**
 * A number argument as text. Only the plain forms whose meaning here is
 * certainly PostgreSQL's are taken (digits with an optional fraction for
 * numeric, digits for integer); anything else, including exponents and a
 * fraction for an integer parameter, is a DslError, so the call is left to
 * the database, which converts it or raises its own error.
 */
function asNumber(v: Value, what: 'numeric' | 'integer'): string | null {
  if (v.t === 'null') return null;
  const s = asText(v) as string;
  const plain = what === 'integer' ? /^\s*[+-]?\d+\s*$/ : /^\s*[+-]?(\d+\.?\d*|\.\d+)\s*$/;
  if (!plain.test(s) || (what === 'integer' && Math.abs(Number(s)) > 2147483647))
    throw new DslError(
      `invalid input syntax for type ${what}: "${s}"`,
      SqlState.InvalidTextRepresentation,
    );
  return s.trim();
}

// ---- jsonb: keys ordered by length then bytes, last duplicate wins, compact output ----
function jsonbCompact(textValue: string): string {
  const write = (x: unknown, isObj: boolean): string => {
    if (isObj)
      return (
        '{' +
        (x as Array<[string, unknown]>)
          .map(([k, v]) => jstr(k) + ':' + write(v, isEntries(v)))
          .join(',') +
        '}'
      );
    if (Array.isArray(x)) return '[' + x.map((v) => write(v, isEntries(v))).join(',') + ']';
    if (typeof x === 'string') return jstr(x);
    return JSON.stringify(x);
  };
  const marked = new WeakSet<object>();
  const isEntries = (v: unknown): boolean => typeof v === 'object' && v !== null && marked.has(v);
  const mark = (x: unknown): unknown => {
    if (Array.isArray(x)) return x.map(mark);
    if (x && typeof x === 'object') {
      const entries = Object.entries(x as Record<string, unknown>)
        .sort(([a], [b]) => {
          const ba = Buffer.from(a);
          const bb = Buffer.from(b);
          return ba.length - bb.length || Buffer.compare(ba, bb);
        })
        .map(([k, v]) => [k, mark(v)]);
      marked.add(entries);
      return entries;
    }
    return x;
  };
  let parsed: unknown;
  try {
    parsed = JSON.parse(textValue);
  } catch {
    throw new DslError(`invalid input syntax for type json`, SqlState.InvalidTextRepresentation);
  }
  const m = mark(parsed);
  return write(m, isEntries(m));
}

interface Args {
  readonly positional: Value[];
  readonly named: Map<string, Value>;
}

function arg(a: Args, i: number, name: string, dflt?: Value): Value {
  return a.named.get(name) ?? a.positional[i] ?? dflt ?? NULL;
}

const strict = (vals: Value[]): boolean => vals.some((v) => v.t === 'null');

function checkName(name: string): void {
  if (name === '') throw new DslError('df.as: result name cannot be empty');
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) {
    throw new DslError(
      `df.as: result name '${name}' is not a valid identifier — must match [a-zA-Z_][a-zA-Z0-9_]*`,
    );
  }
}

function dfAs(fut: string, name: string): string {
  checkName(name);
  return withName(compose(fut), name);
}

function sleepText(n: string): string {
  const neg = n.startsWith('-') && !/^-0*\.?0*$/.test(n);
  if (neg) throw new DslError('Sleep duration must be non-negative');
  const [int, frac = ''] = n.replace(/^\+/, '').split('.');
  const f = frac.replace(/0+$/, '');
  const i = (int ?? '0').replace(/^0+(?=\d)/, '') || '0';
  return f ? `${i}.${f}` : i;
}

type Fn = (a: Args) => Value;

function httpChecks(
  fn: string,
  url: string | null,
  method: string | null,
  allowed: readonly string[],
  timeout: string | null,
): string {
  if (url === null) throw new DslError(`${fn}: url cannot be NULL`, SqlState.NullValueNotAllowed);
  if (!url.includes('{')) {
    const scheme = (url.includes('://') ? url.slice(0, url.indexOf('://')) : url).toLowerCase();
    if (scheme !== 'http' && scheme !== 'https')
      throw new DslError(
        `Blocked: unsupported URL scheme '${scheme}'. Only http and https are allowed.`,
      );
  }
  const m = method === null ? null : method.toUpperCase();
  if (m === null || !allowed.includes(m)) {
    throw new DslError(
      fn === 'df.http()'
        ? `Invalid HTTP method: ${method ?? ''}. Must be GET, POST, PUT, DELETE, or PATCH`
        : `Invalid HTTP method for multipart: ${method ?? ''}. Must be POST, PUT, or PATCH`,
    );
  }
  if (timeout === null || Number(timeout) <= 0) throw new DslError('Timeout must be positive');
  return m;
}

const FUNCTIONS: Readonly<Record<string, Fn>> = {
  sql: (a) => {
    const q = arg(a, 0, 'query');
    return q.t === 'null' ? NULL : text(node('SQL', { query: asText(q) as string }));
  },
  seq: (a) => {
    const [x, y] = [arg(a, 0, 'a'), arg(a, 1, 'b')];
    return strict([x, y])
      ? NULL
      : text(
          node('THEN', { left: compose(asText(x) as string), right: compose(asText(y) as string) }),
        );
  },
  as: (a) => {
    const [f, n] = [arg(a, 0, 'fut'), arg(a, 1, 'name')];
    return strict([f, n]) ? NULL : text(dfAs(asText(f) as string, asText(n) as string));
  },
  join: (a) => {
    const [x, y] = [arg(a, 0, 'a'), arg(a, 1, 'b')];
    return strict([x, y])
      ? NULL
      : text(
          node('JOIN', { left: compose(asText(x) as string), right: compose(asText(y) as string) }),
        );
  },
  join3: (a) => {
    const [x, y, z] = [arg(a, 0, 'a'), arg(a, 1, 'b'), arg(a, 2, 'c')];
    return strict([x, y, z])
      ? NULL
      : text(
          node('JOIN', {
            left: compose(asText(x) as string),
            right: compose(asText(y) as string),
            extras: [compose(asText(z) as string)],
          }),
        );
  },
  race: (a) => {
    const [x, y] = [arg(a, 0, 'a'), arg(a, 1, 'b')];
    return strict([x, y])
      ? NULL
      : text(
          node('RACE', { left: compose(asText(x) as string), right: compose(asText(y) as string) }),
        );
  },
  if: (a) => {
    const [c, t, e] = [arg(a, 0, 'condition'), arg(a, 1, 'then_branch'), arg(a, 2, 'else_branch')];
    if (strict([c, t, e])) return NULL;
    return text(
      node('IF', {
        left: compose(asText(t) as string),
        right: compose(asText(e) as string),
        cond: compose(asText(c) as string),
      }),
    );
  },
  if_rows: (a) => {
    const [n, t, e] = [
      arg(a, 0, 'result_name'),
      arg(a, 1, 'then_branch'),
      arg(a, 2, 'else_branch'),
    ];
    if (strict([n, t, e])) return NULL;
    return text(
      node('IF', {
        left: compose(asText(t) as string),
        right: compose(asText(e) as string),
        query: `{"condition_type":"result_has_rows","result_name":${jstr(asText(n) as string)}}`,
      }),
    );
  },
  loop: (a) => {
    const [b, c] = [arg(a, 0, 'body'), arg(a, 1, 'condition')];
    if (b.t === 'null')
      throw new DslError('df.loop: body cannot be NULL', SqlState.NullValueNotAllowed);
    return text(
      node('LOOP', {
        left: compose(asText(b) as string),
        ...(c.t !== 'null' ? { cond: compose(asText(c) as string) } : {}),
      }),
    );
  },
  break: (a) => {
    const v = arg(a, 0, 'value');
    return text(
      node('BREAK', {
        query: `{"break_value":${v.t === 'null' ? 'null' : jstr(asText(v) as string)}}`,
      }),
    );
  },
  sleep: (a) => {
    const s = asNumber(arg(a, 0, 'seconds'), 'numeric');
    return s === null ? NULL : text(node('SLEEP', { query: sleepText(s) }));
  },
  wait_for_schedule: (a) => {
    const e = arg(a, 0, 'cron_expr');
    if (e.t === 'null') return NULL;
    const expr = asText(e) as string;
    const err = cronError(expr);
    if (err) throw new DslError(`Invalid cron expression '${expr}': ${err}`);
    return text(node('WAIT_SCHEDULE', { query: `{"cron_expr":${jstr(expr)}}` }));
  },
  wait_for_signal: (a) => {
    const [n, t] = [arg(a, 0, 'name'), arg(a, 1, 'timeout_seconds')];
    if (n.t === 'null')
      throw new DslError('Signal name cannot be NULL', SqlState.NullValueNotAllowed);
    const name = asText(n) as string;
    if (name === '') throw new DslError('Signal name cannot be empty');
    const timeout = asNumber(t, 'integer');
    if (timeout !== null && Number(timeout) <= 0) throw new DslError('Timeout must be positive');
    return text(
      node('SIGNAL', {
        query: `{"signal_name":${jstr(name)},"timeout_seconds":${timeout === null ? 'null' : String(Number(timeout))}}`,
      }),
    );
  },
  http: (a) => {
    const url = asText(arg(a, 0, 'url'));
    const method = httpChecks(
      'df.http()',
      url,
      asText(arg(a, 1, 'method', text('POST'))),
      ['GET', 'POST', 'PUT', 'DELETE', 'PATCH'],
      asNumber(arg(a, 4, 'timeout_seconds', { t: 'num', v: '30' }), 'integer'),
    );
    const body = arg(a, 2, 'body');
    const headers = arg(a, 3, 'headers');
    const timeout = String(
      Number(asNumber(arg(a, 4, 'timeout_seconds', { t: 'num', v: '30' }), 'integer')),
    );
    return text(
      node('HTTP', {
        query: `{"url":${jstr(url as string)},"method":${jstr(method)},"body":${body.t === 'null' ? 'null' : jstr(asText(body) as string)},"headers":${headers.t === 'null' ? 'null' : jsonbCompact(asText(headers) as string)},"timeout_seconds":${timeout}}`,
      }),
    );
  },
  http_multipart: (a) => {
    const url = asText(arg(a, 0, 'url'));
    const t = asNumber(arg(a, 4, 'timeout_seconds', { t: 'num', v: '30' }), 'integer');
    const method = httpChecks(
      'df.http_multipart()',
      url,
      asText(arg(a, 1, 'method', text('POST'))),
      ['POST', 'PUT', 'PATCH'],
      t,
    );
    const parts = arg(a, 2, 'parts');
    if (parts.t === 'null') throw new DslError('parts is required and cannot be NULL');
    const p = jsonbCompact(asText(parts) as string);
    if (!p.startsWith('[')) throw new DslError('parts must be a JSON array of part objects');
    if (p === '[]') throw new DslError('parts must contain at least one part');
    const headers = arg(a, 3, 'headers');
    return text(
      node('HTTP_MULTIPART', {
        query: `{"url":${jstr(url as string)},"method":${jstr(method)},"parts":${p},"headers":${headers.t === 'null' ? 'null' : jsonbCompact(asText(headers) as string)},"timeout_seconds":${String(Number(t))}}`,
      }),
    );
  },
};

function partialIf(c: Value, t: Value): Value {
  // jsonb_build_object('_partial_if', true, 'condition', c, 'then_branch', t)::text
  const j = (v: Value): string => (v.t === 'null' ? 'null' : jstr(asText(v) as string));
  return text(`{"condition": ${j(c)}, "_partial_if": true, "then_branch": ${j(t)}}`);
}

function ifElse(p: Value, e: Value): Value {
  if (strict([p, e])) return NULL;
  let o: unknown;
  try {
    o = JSON.parse(asText(p) as string);
  } catch {
    throw new DslError(`invalid input syntax for type json`, SqlState.InvalidTextRepresentation);
  }
  const rec = o as { _partial_if?: unknown; condition?: unknown; then_branch?: unknown } | null;
  if (
    typeof rec !== 'object' ||
    rec === null ||
    Array.isArray(rec) ||
    rec._partial_if === undefined ||
    rec._partial_if === null
  ) {
    throw new DslError('Invalid if-then-else: left side of !> must be a ?> expression');
  }
  const toVal = (x: unknown): Value =>
    x === null || x === undefined ? NULL : text(typeof x === 'string' ? x : JSON.stringify(x));
  return FUNCTIONS['if']?.({
    positional: [toVal(rec.condition), toVal(rec.then_branch), e],
    named: new Map(),
  }) as Value;
}

const OPERATORS: Readonly<Record<string, (l: Value, r: Value) => Value>> = {
  '~>': (l, r) => (FUNCTIONS['seq'] as Fn)({ positional: [l, r], named: new Map() }),
  '|=>': (l, r) => (FUNCTIONS['as'] as Fn)({ positional: [l, r], named: new Map() }),
  '&': (l, r) => (FUNCTIONS['join'] as Fn)({ positional: [l, r], named: new Map() }),
  '|': (l, r) => (FUNCTIONS['race'] as Fn)({ positional: [l, r], named: new Map() }),
  '?>': partialIf,
  '!>': ifElse,
};

/** df.* functions that exist but are not constant node builders. */
const KNOWN_OTHER = new Set([
  'start',
  'signal',
  'cancel',
  'status',
  'result',
  'await_instance',
  'wait_for_completion',
  'run',
  'version',
  'target_database',
  'setvar',
  'getvar',
  'unsetvar',
  'clearvars',
  'grant_usage',
  'revoke_usage',
  'list_instances',
  'instance_info',
  'instance_executions',
  'instance_nodes',
  'explain',
  'metrics',
]);

function names(list: unknown): string[] {
  return ((list as Array<{ String?: { sval?: string } }>) ?? []).map((n) => n.String?.sval ?? '');
}

/** The constant value of an expression, or undefined when PostgreSQL must evaluate it. */
export function evaluate(e: unknown): Value | undefined {
  const n = e as Ast;
  if (n['A_Const']) {
    const c = n['A_Const'] as Ast;
    if (c['isnull']) return NULL;
    if (c['sval']) return text(((c['sval'] as Ast)['sval'] as string | undefined) ?? '');
    if (c['ival'])
      return { t: 'num', v: String(((c['ival'] as Ast)['ival'] as number | undefined) ?? 0) };
    if (c['fval']) {
      const f = String((c['fval'] as Ast)['fval']);
      // 1e2 is the numeric 100 in PostgreSQL; only plain decimals are taken as written
      return /^[+-]?(\d+\.?\d*|\.\d+)$/.test(f) ? { t: 'num', v: f } : undefined;
    }
    if (c['boolval']) return { t: 'bool', v: Boolean((c['boolval'] as Ast)['boolval']) };
    return undefined;
  }
  if (n['TypeCast']) {
    const tc = n['TypeCast'] as Ast;
    const v = evaluate(tc['arg']);
    if (!v) return undefined;
    const tn = tc['typeName'] as Ast;
    // a type modifier (varchar(3), numeric(4,1)) or an array type changes the value: the database applies it
    if (tn['typmods'] !== undefined || tn['arrayBounds'] !== undefined) return undefined;
    // a type of the caller's own schema (pg_temp.text, a domain) may run the caller's code
    const typeNames = names(tn['names']);
    if (typeNames.length > 2 || (typeNames.length === 2 && typeNames[0] !== 'pg_catalog'))
      return undefined;
    const type = typeNames.pop();
    if (v.t === 'null') return NULL;
    if (type === 'jsonb' || type === 'json') return { t: 'json', v: asText(v) as string };
    if (type === 'text' || type === 'varchar') return text(asText(v) as string);
    if (type === 'numeric' || type === 'int4' || type === 'int8')
      return { t: 'num', v: asNumber(v, type === 'numeric' ? 'numeric' : 'integer') as string };
    return undefined;
  }
  if (n['FuncCall']) {
    const fc = n['FuncCall'] as Ast;
    const fn = names(fc['funcname']);
    if (fn.length !== 2 || fn[0] !== 'df') return undefined;
    const impl = FUNCTIONS[fn[1] as string];
    if (!impl) {
      if (KNOWN_OTHER.has(fn[1] as string)) return undefined; // real df functions, not constant
      throw new DslError(
        `function df.${fn[1] as string}() does not exist`,
        SqlState.UndefinedFunction,
        fc['location'] as number,
      );
    }
    if (fc['agg_star'] || fc['over'] || fc['agg_filter']) return undefined;
    const positional: Value[] = [];
    const named = new Map<string, Value>();
    for (const a of (fc['args'] as unknown[]) ?? []) {
      const na = (a as Ast)['NamedArgExpr'] as Ast | undefined;
      const v = evaluate(na ? na['arg'] : a);
      if (!v) return undefined;
      if (na) named.set(na['name'] as string, v);
      else positional.push(v);
    }
    try {
      return impl({ positional, named });
    } catch (err) {
      if (err instanceof DslError && err.position === undefined)
        err.position = fc['location'] as number;
      throw err;
    }
  }
  if (n['A_Expr']) {
    const ae = n['A_Expr'] as Ast;
    if (ae['kind'] !== 'AEXPR_OP') return undefined;
    const op = names(ae['name']);
    if (op.length === 2 && op[0] !== 'df') return undefined;
    const sym = op[op.length - 1] as string;
    try {
      if (sym === '@>' && ae['lexpr'] === undefined) {
        const r = evaluate(ae['rexpr']);
        if (!r) return undefined;
        return (FUNCTIONS['loop'] as Fn)({ positional: [r], named: new Map() });
      }
      const impl = OPERATORS[sym];
      if (!impl || ae['lexpr'] === undefined) return undefined;
      const l = evaluate(ae['lexpr']);
      const r = evaluate(ae['rexpr']);
      if (!l || !r) return undefined;
      return impl(l, r);
    } catch (err) {
      if (err instanceof DslError && err.position === undefined)
        err.position = ae['location'] as number;
      throw err;
    }
  }
  return undefined;
}

export function valueText(v: Value): string | null {
  return asText(v);
}
