/**
 * The transaction-mode lexer (src/proxy/sql-scan.ts) against PostgreSQL's own
 * scanner (libpg-query's scanSync, scan.l of PostgreSQL 17): on random texts
 * made of the tokens that matter (quotes of every kind, dollar tags, comments,
 * backslashes, non-ASCII letters, digits and parameters next to $ and E),
 * the top-level semicolons it finds are exactly PostgreSQL's, whether it
 * reads the text decoded or as bytes (latin1).
 */
import { loadModule, scanSync } from 'libpg-query';
import { beforeAll, describe, expect, it } from 'vitest';
import { headOf, scanStatements, splitStatements } from '../../src/proxy/sql-scan.js';

beforeAll(async () => {
  await loadModule();
});

/** Byte offsets of the top-level semicolons the lexer finds in `bytes` (latin1 view). */
function semicolonsOf(bytes: string, backslashQuotes = false): number[] {
  const spans = splitStatements(bytes, { backslashQuotes });
  const out: number[] = [];
  for (let i = 0; i < bytes.length; i++)
    if (bytes[i] === ';' && !spans.some((s) => s.start <= i && i < s.end)) out.push(i);
  return out;
}

describe('scanStatements (transaction mode checks)', () => {
  it('splits at top-level semicolons only and blanks literals and comments', () => {
    const s = scanStatements(
      `SELECT 'a;LISTEN x' AS "LISTEN;"; -- LISTEN y;\n LISTEN z; SELECT $q$;LISTEN$q$; /* LISTEN /* nested */ ; */ SELECT E'\\';LISTEN'`,
    );
    expect(s.map((x) => x.text)).toEqual([
      `SELECT 'a;LISTEN x' AS "LISTEN;"`,
      `-- LISTEN y;\n LISTEN z`,
      `SELECT $q$;LISTEN$q$`,
      `/* LISTEN /* nested */ ; */ SELECT E'\\';LISTEN'`,
    ]);
    expect(s.map((x) => /\blisten\b/.test(x.code))).toEqual([false, true, false, false]);
    // offsets are kept: the code lines up with the text
    for (const x of s) expect(x.code.length).toBe(x.text.length);
  });

  it('finds the semicolons PostgreSQL finds where an earlier version did not', () => {
    const cases: Array<[string, number]> = [
      // a name ending in a non-ASCII letter takes the $ (one identifier, no dollar quote)
      [`SELECT 1 AS é$a$; LISTEN x; --$a$`, 3],
      // ... and the E: éE'\' is the name éE, then a standard string
      [`SELECT 1 AS éE'\\'; LISTEN x; --'`, 3],
      // a number or a parameter before $ leaves it free to open a dollar quote
      [`SELECT 1$q$; LISTEN x; $q$`, 1],
      [`SELECT $1$q$; LISTEN x; $q$`, 1],
      // ... unless a letter follows its digits: trailing junk takes the name and its $ (found
      // by the differential test below, seed 919825)
      [`SELECT $11E$$q$; LISTEN x; $(x`, 3],
      // a tag longer than 64 characters is still a tag
      [`SELECT $${'t'.repeat(80)}$'$${'t'.repeat(80)}$; LISTEN x; --'`, 3],
      // after a comment or a literal, a new token starts
      [`SELECT x/**/$q$;$q$; LISTEN x`, 2],
      [`SELECT 'a'E'\\'; LISTEN x; --'`, 1],
    ];
    for (const [sql, n] of cases) {
      const bytes = Buffer.from(sql).toString('latin1');
      const pg = scanSync(sql).tokens.filter((t) => t.tokenName === 'ASCII_59').length;
      expect(semicolonsOf(bytes).length, sql).toBe(pg);
      expect(pg + 1, sql).toBe(n);
      expect(scanStatements(sql).length, sql).toBe(n);
    }
  });

  it('with standard_conforming_strings off, a backslash escapes a quote in every string', () => {
    const sql = `SELECT 'a\\' ; '; LISTEN x; --'`;
    // on: 'a\' is a string, and so is '; LISTEN x; --'
    expect(scanStatements(sql).map((s) => s.code.includes('listen'))).toEqual([false, false]);
    // off: 'a\' ; ' is a string, then LISTEN x, then a comment
    const off = scanStatements(sql, { backslashQuotes: true });
    expect(off.map((s) => s.code.trim())).toEqual([`select '      '`, `listen x`, '']);
  });

  it('the first word of a statement comes after whitespace and comments', () => {
    const sql = `  /* a /* b */ */ -- c\n\t LISTEN x`;
    const [span] = splitStatements(sql);
    expect(sql.slice(headOf(sql, span as never))).toBe('LISTEN x');
  });

  it('splits random texts at the semicolons PostgreSQL does, decoded and as bytes', () => {
    const seed0 = Number(process.env.SQL_SCAN_SEED ?? Date.now() % 1_000_000);
    console.log(`sql-scan differential seed ${seed0} (SQL_SCAN_SEED=${seed0} to repeat)`);
    let seed = seed0;
    const rnd = (): number => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    const F = [
      "'",
      '"',
      '$',
      '$q$',
      '$$',
      'E',
      'e',
      'x',
      'é',
      'ŝ',
      '1',
      '1.5',
      ';',
      ';',
      '--',
      '/*',
      '*/',
      '\n',
      ' ',
      '\\',
      'LISTEN',
      '$1',
      'U&',
      "''",
      '(',
    ];
    let compared = 0;
    for (let n = 0; n < 20_000; n++) {
      const len = 1 + Math.floor(rnd() * 25);
      let sql = '';
      for (let i = 0; i < len; i++) sql += F[Math.floor(rnd() * F.length)];
      let pg: number[];
      try {
        pg = scanSync(sql)
          .tokens.filter((t) => t.tokenName === 'ASCII_59')
          .map((t) => t.start);
      } catch {
        continue; // PostgreSQL refuses the text (an unterminated literal): nothing runs
      }
      compared++;
      const bytes = Buffer.from(sql).toString('latin1');
      expect(semicolonsOf(bytes), JSON.stringify(sql)).toEqual(pg);
      // decoded, the same statements (offsets in characters)
      const decoded = splitStatements(sql).map((s) => [
        Buffer.byteLength(sql.slice(0, s.start)),
        Buffer.byteLength(sql.slice(0, s.end)),
      ]);
      expect(decoded, JSON.stringify(sql)).toEqual(
        splitStatements(bytes).map((s) => [s.start, s.end]),
      );
      expect(
        scanStatements(sql).map((s) => s.text),
        JSON.stringify(sql),
      ).toEqual(splitStatements(sql).map((s) => sql.slice(s.start, s.end)));
    }
    expect(compared).toBeGreaterThan(5_000);
  });
});
