import { describe, expect, it } from 'vitest';
import { scanStatements } from '../../src/proxy/sql-scan.js';

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
});
