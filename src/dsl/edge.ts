/**
 * The proxy's view of a client statement that mentions df. (DESIGN.md §2
 * path 2): every call of df.start is found in PostgreSQL's own parse tree
 * (libpg-query), its constant workflow is evaluated and validated here, and
 * the call, and only it, is replaced by df._start_rows(<its nodes>, label) or
 * df._start_graph(<graph>, ...) with the other arguments pasted unchanged, so
 * that PostgreSQL converts and checks them exactly as df.start would. Byte
 * offsets are UTF-8, as the parser's. Results are cached per statement text.
 * Pure apart from the cache and the node ids drawn for df._start_rows.
 */
import { SqlState } from '../db/sqlstate.js';
import { scanSync, type ScanToken } from 'libpg-query';
import { parse as parseSync } from './parser.js';
import { evaluate, valueText } from './evaluate.js';
import { asNode, DslError, node } from './nodes.js';
import { validateGraph } from './validate.js';
import { tokensWithinLimits, withinLimits } from './edge-limits.js';
import { graphRows, graphSteps } from './edge-rows.js';
import { cachedEdge, rememberEdge } from './edge-cache.js';

export { cachedEdge, rememberEdge } from './edge-cache.js';
import { aliasPoint, callShape, type Ast, type Call, type StartParam } from './edge-shape.js';
import { batchLabel, startBatch, type BatchPart, type StartBatch } from './edge-batch.js';

export { START_PARAMS, type StartParam } from './edge-shape.js';
export type { StartBatch } from './edge-batch.js';

export {
  ANALYZE_BYTES_MAX,
  ANALYZE_MAX,
  BATCH_MAX,
  DEPTH_MAX,
  edgeSkips,
  textBytesMax,
  NODES_MAX,
  withinLimits,
} from './edge-limits.js';

export interface EdgeError {
  readonly code: string;
  readonly message: string;
  readonly hint?: string | undefined;
  /** 1-based character position in the statement, as PostgreSQL reports positions. */
  readonly position: number;
}

/** An argument of a transaction_mode => 'new' call: a constant (text or NULL) or a bind parameter. */
export type NewArg = { readonly value: string | null } | { readonly param: number };

export interface NewCall {
  readonly args: ReadonlyMap<StartParam, NewArg>;
  /** The result column's name ("start" unless the statement gives an alias). */
  readonly column: string;
}

export type Edge =
  /** Nothing to change: forward the statement as it is. */
  | {
      readonly kind: 'pass';
      /** Bind parameters that are a df.start workflow (checked by the start rule at Bind). */
      readonly bound?: readonly number[];
    }
  /** Refuse: statement `statement` (0-based) of the text fails with `error`; the ones before it run. */
  | {
      readonly kind: 'error';
      readonly error: EdgeError;
      readonly statement: { readonly start: number; readonly end: number };
      readonly only: boolean;
    }
  /** Forward `text` instead; `position` maps a server error position back into the original. */
  | {
      readonly kind: 'rewrite';
      readonly text: string;
      position(p: number): number;
      readonly bound?: readonly number[];
      /** The text is one `SELECT df.start(...)` alone: its one row's one column is the instance id. */
      readonly sole?: SoleStart;
      /** Every statement of the text is a start that can go in one df._start_batch call (edge-batch.ts). */
      readonly batch?: StartBatch;
    }
  /** A top-level SELECT df.start(..., transaction_mode => 'new'): dfgate runs the start itself. */
  | { readonly kind: 'new'; readonly call: NewCall };

/**
 * An Edge as plain data (what the compile worker sends back): a rewrite
 * carries the moved spans instead of its position function.
 */
export type Analysis =
  | Exclude<Edge, { kind: 'rewrite' }>
  | {
      readonly kind: 'rewrite';
      readonly text: string;
      readonly moved: readonly Move[];
      readonly bound?: readonly number[];
      readonly sole?: SoleStart;
      readonly batch?: StartBatch;
    };

/** A statement that is one `SELECT df.start(...)` alone, rewritten. */
export interface SoleStart {
  /** The SQL of the workflow's steps (some of them), for the executor to check while it claims. */
  readonly steps: readonly string[];
  /**
   * The call is df._start_rows(<rows>, <label>): the byte offset of its closing
   * parenthesis in the rewritten text, where a lease's two arguments may go.
   */
  readonly leaseAt?: number;
}

/** A replaced span: bytes [o0, o1) of the original became bytes [n0, n1) of the rewrite. */
export interface Move {
  readonly o0: number;
  readonly o1: number;
  readonly n0: number;
  readonly n1: number;
}

interface Found {
  readonly fc: Ast;
  /** Location of the unnamed select-list/RETURNING entry whose column this call names. */
  readonly names: number | undefined;
  readonly inFrom: boolean;
}

const RUNS = new Set([
  'SelectStmt',
  'InsertStmt',
  'UpdateStmt',
  'DeleteStmt',
  'MergeStmt',
  'CreateTableAsStmt',
  'DeclareCursorStmt',
  'CopyStmt',
]);

function isStart(fc: Ast): boolean {
  const n = (fc['funcname'] as Array<{ String?: { sval?: string } }> | undefined) ?? [];
  return n.length === 2 && n[0]?.String?.sval === 'df' && n[1]?.String?.sval === 'start';
}

function walk(v: unknown, names: number | undefined, inFrom: boolean, out: Found[]): void {
  if (Array.isArray(v)) {
    for (const x of v) walk(x, undefined, inFrom, out);
    return;
  }
  if (v === null || typeof v !== 'object') return;
  for (const [k, x] of Object.entries(v as Ast)) {
    if (x === null || typeof x !== 'object') continue;
    const o = x as Ast;
    switch (k) {
      case 'ResTarget':
        walk(o['indirection'], undefined, inFrom, out);
        walk(
          o['val'],
          o['name'] === undefined ? (o['location'] as number | undefined) : undefined,
          inFrom,
          out,
        );
        break;
      case 'TypeCast':
      case 'CollateClause':
        // the column of `df.start(...)::text` is still named after the call
        walk(o['arg'], names, inFrom, out);
        walk(o['typeName'], undefined, inFrom, out);
        break;
      case 'RangeFunction':
        walk(o, undefined, true, out);
        break;
      case 'FuncCall':
        if (isStart(o)) out.push({ fc: o, names, inFrom });
        walk(o, undefined, inFrom, out);
        break;
      default:
        walk(x, undefined, inFrom, out);
    }
  }
}

/** Is an EXPLAIN one that runs its statement (ANALYZE)? */
function explainRuns(e: Ast): boolean {
  for (const d of (e['options'] as Ast[] | undefined) ?? []) {
    const de = d['DefElem'] as Ast | undefined;
    if (de?.['defname'] !== 'analyze') continue;
    const arg = de['arg'] as Ast | undefined;
    if (!arg) return true;
    const s = JSON.stringify(arg).toLowerCase();
    return !/false|"off"|"0"|ival":0|"no"/.test(s);
  }
  return false;
}

/** The statement node that is executed (unwrapping EXPLAIN ANALYZE), or undefined. */
function runnable(stmt: Ast): string | undefined {
  const [type, body] = Object.entries(stmt)[0] ?? [];
  if (!type) return undefined;
  if (type === 'ExplainStmt') {
    const e = body as Ast;
    return explainRuns(e) ? runnable(e['query'] as Ast) : undefined;
  }
  return RUNS.has(type) ? type : undefined;
}

/** An E'' literal: its meaning depends on no server setting. */
export function literal(s: string | null): string {
  if (s === null) return 'NULL';
  return `E'${s.replace(/\\/g, '\\\\').replace(/'/g, "''")}'`;
}

class Refusal extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly byte: number,
    readonly hint?: string,
  ) {
    super(message);
  }
}

const NEW_SHAPE =
  "df.start(..., transaction_mode => 'new') runs through dfgate only as a statement of its own: SELECT df.start(<constants or parameters>, ..., transaction_mode => 'new')";

/** The start rule (spec §2.3) and validation (spec §2.5): the root node's text, or a refusal. */
function compile(text: string, at: number): string {
  let root: string;
  let problem: string | undefined;
  try {
    root = asNode(text, true) ?? node('SQL', { query: text });
    problem = validateGraph(root, true);
  } catch (err) {
    if (err instanceof DslError) throw new Refusal(err.sqlstate, err.message, at);
    throw err;
  }
  if (problem)
    throw new Refusal(SqlState.InvalidParameterValue, `Invalid durable function: ${problem}`, at);
  return root;
}

/**
 * The constant value of an argument, or undefined when the database must
 * evaluate it: not a constant, or a DSL error (the in-database functions
 * raise it with PostgreSQL's own fields: argument types, hint, context).
 */
function constant(ast: unknown): string | null | undefined {
  const v = constantOrFails(ast);
  return v === FAILS ? undefined : v;
}

/** Marks an argument whose evaluation raises a DSL error. */
const FAILS = Symbol('fails');

function constantOrFails(ast: unknown): string | null | undefined | typeof FAILS {
  try {
    const v = evaluate(ast);
    return v === undefined ? undefined : valueText(v);
  } catch (err) {
    if (err instanceof DslError) return FAILS;
    throw err;
  }
}

/** A 'new' call whose arguments the database must judge: it raises the error first. */
class LeaveToDatabase extends Error {}

/** The start rule's graph of a constant workflow, or undefined when it fails (the database says why). */
function compileOrLeave(text: string): string | undefined {
  try {
    return compile(text, 0);
  } catch (err) {
    if (err instanceof Refusal) return undefined;
    throw err;
  }
}

/** Why a bound workflow value is refused: PostgreSQL's SQLSTATE and message. */
export interface BoundProblem {
  readonly code: string;
  readonly message: string;
}

/**
 * A bound workflow value by the start rule (spec §2.3): graph text or SQL
 * text, never a DSL expression. Returns the error PostgreSQL would raise.
 */
export function checkBound(value: string): BoundProblem | undefined {
  try {
    compile(value, 0);
    return undefined;
  } catch (err) {
    if (err instanceof Refusal) return { code: err.code, message: err.message };
    throw err;
  }
}

/** The statement is `SELECT <the call> [AS name]` and nothing else: its result column, or undefined. */
function soleSelect(stmt: Ast, found: Found): { column: string } | undefined {
  const sel = stmt['SelectStmt'] as Ast | undefined;
  const targets = (sel?.['targetList'] as Ast[] | undefined) ?? [];
  const rt = targets[0]?.['ResTarget'] as Ast | undefined;
  const allowed = new Set(['targetList', 'limitOption', 'op']);
  if (
    !sel ||
    targets.length !== 1 ||
    (rt?.['val'] as Ast | undefined)?.['FuncCall'] !== found.fc ||
    Object.keys(sel).some((k) => !allowed.has(k)) ||
    sel['op'] !== 'SETOP_NONE'
  )
    return undefined;
  return { column: (rt?.['name'] as string | undefined) ?? 'start' };
}

/** The 'new' call of a top-level SELECT df.start(...), or a refusal. */
function newCall(stmts: Ast[], found: Found, call: Call, single: boolean): NewCall {
  const at = call.start;
  const shape = single && stmts.length === 1 ? soleSelect(stmts[0] as Ast, found) : undefined;
  if (!shape)
    throw new Refusal(
      SqlState.FeatureNotSupported,
      `${NEW_SHAPE}; here it is part of a larger statement`,
      at,
    );
  const args = new Map<StartParam, NewArg>();
  for (const [name, a] of call.args) {
    const pr = (a.ast as Ast)['ParamRef'] as Ast | undefined;
    if (pr) {
      args.set(name, { param: (pr['number'] as number | undefined) ?? 0 });
      continue;
    }
    const v = constantOrFails(a.ast);
    if (v === FAILS) throw new LeaveToDatabase();
    if (v === undefined)
      throw new Refusal(
        SqlState.FeatureNotSupported,
        `${NEW_SHAPE}; argument ${name} is neither`,
        a.start,
      );
    args.set(name, { value: v });
  }
  return { args, column: shape.column };
}

interface Replacement {
  readonly start: number;
  readonly end: number;
  readonly text: string;
}

function charPosition(buf: Buffer, byte: number): number {
  return [...buf.subarray(0, byte).toString('utf8')].length + 1;
}

/** What to do with a statement, as plain data (the part that runs in the compile worker). */
export function analyzeText(sql: string, extended: boolean): Analysis {
  if (!withinLimits(sql)) return { kind: 'pass' };
  try {
    return analyzeUncached(sql, extended);
  } catch {
    return { kind: 'pass' }; // anything unexpected: PostgreSQL judges the statement itself
  }
}

function analyzeUncached(sql: string, extended: boolean): Analysis {
  let ast: { stmts?: Ast[] };
  try {
    ast = parseSync(sql) as unknown as { stmts?: Ast[] };
  } catch {
    return { kind: 'pass' }; // a syntax error: PostgreSQL reports it itself
  }
  const buf = Buffer.from(sql, 'utf8');
  const raw = ast.stmts ?? [];
  const stmts = raw.map((s) => (s['stmt'] as Ast | undefined) ?? {});
  let tokens: ScanToken[] | undefined;
  const reps: Replacement[] = [];
  const bound: number[] = [];
  let sole: SoleStart | undefined;
  /** The sole start's replacement, when it is the df._start_rows form. */
  let soleRows: Replacement | undefined;
  /** Statements that could go in one df._start_batch call. */
  const starts: BatchPart[] = [];
  for (let si = 0; si < raw.length; si++) {
    const stmt = stmts[si] as Ast;
    if (!runnable(stmt)) continue;
    const found: Found[] = [];
    walk(stmt, undefined, false, found);
    if (found.length === 0) continue;
    tokens ??= scanSync(sql).tokens;
    const sStart = (raw[si]?.['stmt_location'] as number | undefined) ?? 0;
    const sLen = raw[si]?.['stmt_len'] as number | undefined;
    const sEnd = sLen ? sStart + sLen : buf.length;
    // the limits on PostgreSQL's own tokens, before anything is evaluated
    if (!tokensWithinLimits(tokens, sStart, sEnd)) return { kind: 'pass' };
    try {
      for (const f of found) {
        const call = callShape(f.fc, tokens);
        if (
          !call ||
          f.fc['agg_order'] ||
          f.fc['func_variadic'] ||
          f.fc['over'] ||
          f.fc['agg_filter']
        )
          continue; // PostgreSQL says what is wrong with it
        const mode = call.args.get('transaction_mode');
        let newMode = false;
        if (mode) {
          const m = constant(mode.ast);
          if (m === undefined) continue; // evaluated by the database, which refuses 'new'
          if (m !== null && m.toLowerCase() === 'new') newMode = true;
          else if (m !== null && m.toLowerCase() !== 'caller') continue; // the database's error
        }
        if (newMode) {
          const nc = newCall([stmt], f, call, raw.length === 1);
          const fut = nc.args.get('fut');
          // an invalid workflow: the database raises its error before df.start runs
          if (
            fut &&
            'value' in fut &&
            fut.value !== null &&
            compileOrLeave(fut.value) === undefined
          )
            return { kind: 'pass' };
          if (!extended && [...nc.args.values()].some((a) => 'param' in a)) continue;
          return { kind: 'new', call: nc };
        }
        const futArg = call.args.get('fut');
        if (!futArg) continue;
        const pr = (futArg.ast as Ast)['ParamRef'] as Ast | undefined;
        if (pr) {
          if (extended && typeof pr['number'] === 'number') bound.push(pr['number']);
          continue;
        }
        const fut = constant(futArg.ast);
        if (fut === undefined || fut === null) continue; // left to the in-database df.start
        const graph = compileOrLeave(fut);
        if (graph === undefined || f.inFrom) continue; // validated; the column naming of FROM df.start(...) stays PostgreSQL's
        const paste = (p: StartParam): string => {
          const a = call.args.get(p);
          return a ? buf.toString('utf8', a.start, a.end) : 'NULL';
        };
        const opts = (['idempotency_key', 'max_attempts', 'max_backoff', 'on_failure'] as const)
          .filter((p) => call.args.has(p))
          .map((p) => `${p} => ${paste(p)}`);
        // the nodes as rows when the call is the workflow and a label alone (edge-rows.ts)
        const rows = opts.length || call.args.has('database') ? undefined : graphRows(graph);
        const text = rows
          ? `df._start_rows(${literal(rows)}, ${paste('label')})`
          : `df._start_graph(${literal(graph)}, ${paste('label')}, ${paste('database')}` +
            (opts.length ? `, df._start_options(${opts.join(', ')}))` : ')');
        const rep: Replacement = { start: call.start, end: call.end, text };
        reps.push(rep);
        if (raw.length > 1 && found.length === 1 && rows) {
          const column = soleSelect(stmt, f)?.column;
          const label = batchLabel(call);
          if (column !== undefined && label)
            starts.push({ rows, label: label.label, column, steps: graphSteps(graph) });
        }
        if (raw.length === 1 && found.length === 1 && soleSelect(stmt, f)) {
          sole = { steps: graphSteps(graph) };
          // born leased only with no label or a plain literal one: no code of the caller's (a
          // cast to its own type, say) runs in the start, which names the lease and its nonce
          if (rows && batchLabel(call) !== undefined) soleRows = rep;
        }
        if (f.names !== undefined) {
          const at = aliasPoint(f.names, call, tokens);
          if (at !== undefined) reps.push({ start: at, end: at, text: ' AS "start"' });
        }
      }
    } catch (err) {
      if (err instanceof LeaveToDatabase) return { kind: 'pass' };
      if (!(err instanceof Refusal)) throw err;
      return {
        kind: 'error',
        error: {
          code: err.code,
          message: err.message,
          hint: err.hint,
          position: charPosition(buf, err.byte),
        },
        statement: { start: sStart, end: sEnd },
        only: raw.length === 1,
      };
    }
  }
  if (reps.length === 0) return bound.length ? { kind: 'pass', bound } : { kind: 'pass' };
  reps.sort((a, b) => a.start - b.start);
  // a df.start nested in another one's pasted arguments stays as written
  const kept = reps.filter(
    (r, i) =>
      !reps.some((o, j) => j !== i && o.start < r.start && r.start < o.end && r.end <= o.end),
  );
  const parts: Buffer[] = [];
  const moved: Move[] = [];
  let at = 0;
  let len = 0;
  for (const r of kept) {
    parts.push(buf.subarray(at, r.start));
    len += r.start - at;
    const t = Buffer.from(r.text, 'utf8');
    moved.push({ o0: r.start, o1: r.end, n0: len, n1: len + t.length });
    if (r === soleRows && sole) sole = { ...sole, leaseAt: len + t.length - 1 };
    parts.push(t);
    len += t.length;
    at = r.end;
  }
  parts.push(buf.subarray(at));
  const text = Buffer.concat(parts).toString('utf8');
  const batch = startBatch(starts, raw.length, literal);
  return {
    kind: 'rewrite',
    bound,
    text,
    moved,
    ...(sole ? { sole } : {}),
    ...(batch ? { batch } : {}),
  };
}

/** The Edge of an analysis of `sql` (a rewrite gets its position map). */
export function toEdge(sql: string, a: Analysis): Edge {
  if (a.kind !== 'rewrite') return a;
  const { text, moved } = a;
  let buf: Buffer | undefined;
  return {
    kind: 'rewrite',
    text,
    ...(a.bound ? { bound: a.bound } : {}),
    ...(a.sole ? { sole: a.sole } : {}),
    ...(a.batch ? { batch: a.batch } : {}),
    position(p: number): number {
      // character position in the rewritten text → byte → original byte → character
      buf ??= Buffer.from(sql, 'utf8');
      const nb = Buffer.byteLength([...text].slice(0, p - 1).join(''), 'utf8');
      let shift = 0;
      for (const m of moved) {
        if (nb < m.n0) break;
        if (nb < m.n1) return charPosition(buf, m.o0);
        shift = m.o1 - m.n1;
      }
      return charPosition(buf, Math.min(buf.length, nb + shift));
    },
  };
}

/**
 * What the proxy does with a statement text that mentions df. (cached per
 * text), computed on the calling thread. The proxy runs analyzeText in its
 * compile worker instead (src/dsl/edge-pool.ts).
 */
export function analyze(sql: string, extended = false): Edge {
  const hit = cachedEdge(sql, extended);
  if (hit) return hit;
  const result = toEdge(sql, analyzeText(sql, extended));
  rememberEdge(sql, extended, result);
  return result;
}
