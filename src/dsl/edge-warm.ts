/**
 * Warming the compiler up before dfgate accepts connections (docs/proxy.md,
 * "Compiler warm-up"). In a fresh process the first statements the edge
 * compiles cost several times what they cost later: V8 compiles the
 * compiler's JavaScript and the parser's WebAssembly as they run. A started
 * process runs synthetic work through the same functions first (starts one
 * at a time and a hundred to a message, operators and constructors, bound
 * workflow values, signals, plain statements, step checks), so that its first
 * clients are compiled at the warm rate. Nothing here reaches a database, and
 * its texts share nothing with any client's (the edge's cache is untouched:
 * the worker does not cache).
 */
import { planUncached } from '../executor/sqlcheck.js';
import { analyzeText, checkBound } from './edge.js';

const lit = (s: string): string => `'${s.replace(/'/g, "''")}'`;

/** One round's statements: `r` varies every constant, so no two rounds repeat a text. */
function round(r: number): Array<{ sql: string; extended: boolean }> {
  const out: Array<{ sql: string; extended: boolean }> = [];
  const step = (n: number): string =>
    `WITH s AS (INSERT INTO warm_log (k, at) VALUES (${n}, clock_timestamp())) UPDATE warm_counts SET n = n + 1 WHERE id = ${n}`;
  const batch: string[] = [];
  for (let i = 0; i < 100; i++) {
    const n = r * 1000 + i;
    batch.push(`SELECT df.start(${lit(step(n))}, ${lit(`warm-${n}`)})`);
  }
  out.push({ sql: batch.join(';\n'), extended: false });
  for (let i = 0; i < 10; i++) {
    const n = r * 1000 + i;
    out.push(
      {
        sql: `SELECT df.start(${lit(`SELECT ${n} AS a`)} |=> 'x' ~> ${lit('SELECT $x.a + 1')} ~> ${lit(step(n))}, 'warm-chain-${n}')`,
        extended: false,
      },
      {
        sql: `SELECT df.start(df.if(${lit(`SELECT ${n} > 0`)}, df.sleep(${n % 60}), df.wait_for_signal('s${n}', 30)) & ${lit(`SELECT ${n}`)}, 'warm-if-${n}')`,
        extended: false,
      },
      { sql: `SELECT df.start($1, 'warm-bound-${n}')`, extended: true },
      { sql: `SELECT df.signal($1, 'go', '{"n": ${n}}')`, extended: true },
      { sql: `SELECT id, n FROM warm_counts WHERE id = ${n}`, extended: false },
    );
  }
  return out;
}

/** Runs `rounds` rounds of synthetic compiling. */
export function warmUp(rounds: number): void {
  for (let r = 0; r < rounds; r++) {
    for (const s of round(r)) analyzeText(s.sql, s.extended);
    checkBound(`SELECT ${r} AS v`);
    planUncached(`UPDATE warm_counts SET n = n + 1 WHERE id = ${r}`);
  }
}
