/**
 * `dfgate check FILE.sql…`: finds every df.start(...) call in workflow files
 * with the real PostgreSQL parser, evaluates its constant graph argument like
 * the database would, and validates it (spec §2.3 start rule, §2.5), reporting
 * file:line:column. Calls whose argument is not constant are reported as
 * skipped. Exit status: 0 clean, 1 errors, 2 unreadable or unparseable input.
 */
import { readFileSync } from 'node:fs';
import { loadParser, parse as parseSync } from './parser.js';
import { evaluate, valueText } from './evaluate.js';
import { asNode, DslError, node } from './nodes.js';
import { validateGraph } from './validate.js';

export interface Finding {
  readonly file: string;
  readonly line: number;
  readonly column: number;
  readonly level: 'error' | 'ok' | 'skipped';
  readonly message: string;
}

function lineCol(text: string, byteOffset: number): { line: number; column: number } {
  const before = Buffer.from(text, 'utf8').subarray(0, byteOffset).toString('utf8');
  const lines = before.split('\n');
  return { line: lines.length, column: (lines[lines.length - 1]?.length ?? 0) + 1 };
}

function findStarts(
  node: unknown,
  out: Array<{ call: { [k: string]: unknown }; location: number }>,
): void {
  if (Array.isArray(node)) {
    for (const x of node) findStarts(x, out);
    return;
  }
  if (node === null || typeof node !== 'object') return;
  const o = node as { [k: string]: unknown };
  const fc = o['FuncCall'] as { [k: string]: unknown } | undefined;
  if (fc) {
    const names = ((fc['funcname'] as Array<{ String?: { sval?: string } }>) ?? []).map(
      (n) => n.String?.sval ?? '',
    );
    if (names.length === 2 && names[0] === 'df' && names[1] === 'start')
      out.push({ call: fc, location: (fc['location'] as number) ?? 0 });
  }
  for (const v of Object.values(o)) findStarts(v, out);
}

export async function checkFile(file: string, text: string): Promise<Finding[]> {
  await loadParser();
  let ast: unknown;
  try {
    ast = parseSync(text);
  } catch (err) {
    const e = err as Error & { sqlDetails?: { cursorPosition?: number } };
    const pos = lineCol(text, Math.max(0, (e.sqlDetails?.cursorPosition ?? 1) - 1));
    return [{ file, ...pos, level: 'error', message: `syntax error: ${e.message}` }];
  }
  const calls: Array<{ call: { [k: string]: unknown }; location: number }> = [];
  findStarts(ast, calls);
  const findings: Finding[] = [];
  for (const { call, location } of calls) {
    const args = (call['args'] as unknown[]) ?? [];
    const futArg = args.find(
      (a) =>
        !(a as { NamedArgExpr?: unknown }).NamedArgExpr ||
        (a as { NamedArgExpr: { name: string } }).NamedArgExpr.name === 'fut',
    ) as { NamedArgExpr?: { arg: unknown } } | undefined;
    const pos = lineCol(text, location);
    try {
      const v = futArg
        ? evaluate(futArg.NamedArgExpr ? futArg.NamedArgExpr.arg : futArg)
        : undefined;
      if (!v) {
        findings.push({
          file,
          ...pos,
          level: 'skipped',
          message: 'df.start argument is not constant; PostgreSQL validates it at run time',
        });
        continue;
      }
      const s = valueText(v);
      if (s === null) {
        findings.push({
          file,
          ...pos,
          level: 'error',
          message: 'Invalid durable function: fut cannot be NULL',
        });
        continue;
      }
      const graph = asNode(s, true) ?? node('SQL', { query: s });
      const problem = validateGraph(graph);
      if (problem)
        findings.push({
          file,
          ...pos,
          level: 'error',
          message: `Invalid durable function: ${problem}`,
        });
      else findings.push({ file, ...pos, level: 'ok', message: 'valid workflow' });
    } catch (err) {
      if (!(err instanceof DslError)) throw err;
      const at = lineCol(text, err.position ?? location);
      findings.push({ file, ...at, level: 'error', message: err.message });
    }
  }
  return findings;
}

export async function runCheck(files: readonly string[]): Promise<number> {
  let errors = 0;
  let unreadable = false;
  for (const f of files) {
    let text: string;
    try {
      text = readFileSync(f, 'utf8');
    } catch (err) {
      process.stderr.write(`${f}: cannot read: ${(err as Error).message}\n`);
      unreadable = true;
      continue;
    }
    for (const x of await checkFile(f, text)) {
      if (x.level === 'ok') continue;
      if (x.level === 'error') errors++;
      process.stdout.write(`${x.file}:${x.line}:${x.column}: ${x.level}: ${x.message}\n`);
    }
  }
  if (unreadable) return 2;
  process.stdout.write(errors ? `${errors} error(s)\n` : 'all workflows valid\n');
  return errors ? 1 : 0;
}
