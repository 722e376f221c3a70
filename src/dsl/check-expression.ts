/**
 * The console's check of a DSL expression (what goes inside `df.start(...)`,
 * src/ui/check.ts): parsed by PostgreSQL's parser, evaluated and validated
 * exactly as `dfgate check` does, and answered with the graph or with the
 * first error and its line and column in the expression. Synchronous once
 * the parser is loaded: it runs in the compile worker (edge-worker.ts) or,
 * for a short expression, on the calling thread.
 */
import { parse as parseSync } from './parser.js';
import { evaluate, valueText } from './evaluate.js';
import { asNode, DslError, node } from './nodes.js';
import { validateGraph } from './validate.js';

export interface CheckError {
  readonly line: number;
  readonly column: number;
  readonly message: string;
}

export type CheckResult =
  | { readonly ok: true; readonly graph: string }
  | { readonly ok: false; readonly error: CheckError };

const PREFIX = 'SELECT ';
/** Largest expression accepted (bytes); graphs are capped at 10,000 nodes anyway. */
export const MAX_SOURCE_BYTES = 256 * 1024;

function lineCol(text: string, byteOffset: number): { line: number; column: number } {
  const before = Buffer.from(text, 'utf8').subarray(0, Math.max(0, byteOffset)).toString('utf8');
  const lines = before.split('\n');
  return { line: lines.length, column: (lines[lines.length - 1]?.length ?? 0) + 1 };
}

type Ast = { [k: string]: unknown };

/** The check itself; the parser must be loaded (loadParser). */
export function checkNow(source: string): CheckResult {
  const expr = source.replace(/[\s;]+$/, '');
  const fail = (byteOffset: number, message: string): CheckResult => ({
    ok: false,
    error: { ...lineCol(expr, byteOffset), message },
  });
  if (expr.trim() === '') return fail(0, "write a workflow, e.g. 'SELECT 1' ~> 'SELECT 2'");
  if (Buffer.byteLength(expr) > MAX_SOURCE_BYTES)
    return fail(0, `the expression is longer than ${MAX_SOURCE_BYTES} bytes`);
  const text = PREFIX + expr;
  let ast: { stmts?: Ast[] };
  try {
    ast = parseSync(text) as unknown as { stmts?: Ast[] };
  } catch (err) {
    const e = err as Error & { sqlDetails?: { cursorPosition?: number } };
    const pos = (e.sqlDetails?.cursorPosition ?? PREFIX.length + 1) - 1 - PREFIX.length;
    return fail(pos, `syntax error: ${e.message}`);
  }
  const stmts = ast.stmts ?? [];
  const sel = (stmts[0]?.['stmt'] as Ast | undefined)?.['SelectStmt'] as Ast | undefined;
  const targets = (sel?.['targetList'] as Ast[] | undefined) ?? [];
  const keys = sel
    ? Object.keys(sel).filter((k) => !['targetList', 'limitOption', 'op'].includes(k))
    : [];
  if (stmts.length !== 1 || !sel || targets.length !== 1 || keys.length > 0)
    return fail(0, 'write one DSL expression (the argument of df.start), not a statement');
  const val = (targets[0]?.['ResTarget'] as Ast | undefined)?.['val'];
  try {
    const v = evaluate(val);
    if (!v)
      return fail(
        0,
        'the expression is not constant (it calls functions other than df.*); start it from SQL instead',
      );
    const s = valueText(v);
    if (s === null) return fail(0, 'Invalid durable function: fut cannot be NULL');
    const graph = asNode(s, true) ?? node('SQL', { query: s });
    const problem = validateGraph(graph);
    if (problem) return fail(0, `Invalid durable function: ${problem}`);
    return { ok: true, graph };
  } catch (err) {
    if (err instanceof RangeError)
      return fail(0, 'the expression is nested too deeply; start it from SQL instead');
    if (!(err instanceof DslError)) throw err;
    return fail((err.position ?? PREFIX.length) - PREFIX.length, err.message);
  }
}
