/**
 * Many starts in one message (docs/proxy.md, "Starts in one message"): a
 * simple Query whose every statement is `SELECT df.start(<workflow>,
 * <label>) [AS name]`, with a constant workflow the edge compiled to node
 * rows and a label that is a string constant or NULL, can go to the
 * database as one `df._start_batch` call: one INSERT of all the nodes and
 * one of all the instances instead of a PL/pgSQL call per start. The
 * proxy answers each statement from the ids the call returns.
 */
import type { Ast, Call } from './edge-shape.js';

/** More starts than this in one message go one by one. */
export const BATCH_STARTS_MAX = 1000;

/** One statement of a batch. */
export interface BatchPart {
  /** Node rows as JSON text (edge-rows.ts). */
  readonly rows: string;
  readonly label: string | null;
  /** The statement's result column. */
  readonly column: string;
  readonly steps: readonly string[];
}

/** The starts of a message, as the proxy sends them. */
export interface StartBatch {
  /** `SELECT df._start_batch(...)`: one row, the ids in statement order as a text[]. */
  readonly sql: string;
  /** Each statement's result column, in order. */
  readonly columns: readonly string[];
  /** The steps' SQL (some of them), for the executor's wake. */
  readonly steps: readonly string[];
}

/**
 * The label of a batched start: absent, NULL or a string constant (anything
 * else, even a constant PostgreSQL would convert, keeps the statement as it is).
 */
export function batchLabel(call: Call): { readonly label: string | null } | undefined {
  for (const k of call.args.keys()) if (k !== 'fut' && k !== 'label') return undefined;
  const a = call.args.get('label');
  if (!a) return { label: null };
  const c = (a.ast as Ast)['A_Const'] as Ast | undefined;
  if (!c) return undefined;
  if (c['isnull'] === true) return { label: null };
  const s = c['sval'] as Ast | undefined;
  if (!s) return undefined;
  return { label: typeof s['sval'] === 'string' ? s['sval'] : '' };
}

/** The batch of a message whose statements are all parts (at least two), or undefined. */
export function startBatch(
  parts: readonly BatchPart[],
  statements: number,
  literal: (s: string) => string,
): StartBatch | undefined {
  if (statements < 2 || parts.length !== statements || parts.length > BATCH_STARTS_MAX)
    return undefined;
  const json = `[${parts.map((p) => `{"r":${p.rows},"l":${JSON.stringify(p.label)}}`).join(',')}]`;
  const steps: string[] = [];
  for (const p of parts) for (const s of p.steps) if (steps.length < 64) steps.push(s);
  return {
    sql: `SELECT df._start_batch(${literal(json)})`,
    columns: parts.map((p) => p.column),
    steps,
  };
}
