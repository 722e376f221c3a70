/**
 * Validation at the edge (DESIGN.md §2 path 2): before a client's statement
 * that calls df.start reaches the database, its constant DSL is evaluated and
 * validated here, so an error can point at the offending call in the user's
 * own statement. Results are cached per statement text. Pure apart from the
 * cache.
 */
import { parseSync } from 'libpg-query';
import { evaluate, valueText } from './evaluate.js';
import { asNode, DslError, node } from './nodes.js';
import { validateGraph } from './validate.js';

export interface EdgeError {
  readonly code: string;
  readonly message: string;
  /** 1-based character position in the statement, as PostgreSQL reports positions. */
  readonly position: number;
}

const cache = new Map<string, EdgeError | null>();
const CACHE_MAX = 1000;

function charPosition(sql: string, byteOffset: number): number {
  return [...Buffer.from(sql, 'utf8').subarray(0, byteOffset).toString('utf8')].length + 1;
}

function starts(n: unknown, out: Array<{ [k: string]: unknown }>): void {
  if (Array.isArray(n)) {
    for (const x of n) starts(x, out);
    return;
  }
  if (n === null || typeof n !== 'object') return;
  const o = n as { [k: string]: unknown };
  const fc = o['FuncCall'] as { [k: string]: unknown } | undefined;
  if (fc) {
    const names = ((fc['funcname'] as Array<{ String?: { sval?: string } }>) ?? []).map(
      (x) => x.String?.sval ?? '',
    );
    if (names.length === 2 && names[0] === 'df' && names[1] === 'start') out.push(fc);
  }
  for (const v of Object.values(o)) starts(v, out);
}

/** The first DSL error in a single-statement text, or undefined (also for anything PostgreSQL should judge itself). */
export function edgeCheck(sql: string): EdgeError | undefined {
  const hit = cache.get(sql);
  if (hit !== undefined) return hit ?? undefined;
  let result: EdgeError | null = null;
  try {
    const ast = parseSync(sql) as unknown as { stmts?: unknown[] };
    if ((ast.stmts?.length ?? 0) === 1) {
      const calls: Array<{ [k: string]: unknown }> = [];
      starts(ast, calls);
      for (const fc of calls) {
        const args = (fc['args'] as Array<{ NamedArgExpr?: { name: string; arg: unknown } }>) ?? [];
        const fut = args.find((a) => !a.NamedArgExpr || a.NamedArgExpr.name === 'fut');
        try {
          const v = fut ? evaluate(fut.NamedArgExpr ? fut.NamedArgExpr.arg : fut) : undefined;
          const s = v ? valueText(v) : null;
          if (s === null) continue;
          const problem = validateGraph(asNode(s, true) ?? node('SQL', { query: s }));
          if (problem) {
            result = {
              code: '22023',
              message: `Invalid durable function: ${problem}`,
              position: charPosition(sql, fc['location'] as number),
            };
            break;
          }
        } catch (err) {
          if (!(err instanceof DslError)) throw err;
          result = {
            code: err.sqlstate,
            message: err.message,
            position: charPosition(sql, err.position ?? (fc['location'] as number)),
          };
          break;
        }
      }
    }
  } catch {
    result = null; // a syntax error or anything unexpected: PostgreSQL reports it itself
  }
  if (cache.size >= CACHE_MAX) cache.delete(cache.keys().next().value as string);
  cache.set(sql, result);
  return result ?? undefined;
}

/** A statement that makes the server raise the same error, so its transaction state matches. */
export function raiseStatement(e: EdgeError): string {
  const lit = (s: string): string => `E'${s.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
  return `DO $dfgate_edge$ BEGIN RAISE EXCEPTION USING ERRCODE = ${lit(e.code)}, MESSAGE = ${lit(e.message)}; END $dfgate_edge$`;
}
