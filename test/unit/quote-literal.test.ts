/** src/executor/identity.ts quoteLiteral: the literal pg.escapeLiteral writes, without its piecewise build. */
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { quoteLiteral } from '../../src/executor/identity.js';

describe('quoteLiteral', () => {
  it('writes what pg.escapeLiteral writes, for quotes, backslashes and every character near them', () => {
    const alphabet = ["'", '\\', '"', 'a', ' ', '\n', 'é', '😀', '\u0000'.slice(1), 'E', '$'];
    const texts: string[] = [''];
    for (const a of alphabet)
      for (const b of alphabet) for (const c of alphabet) texts.push(a + b + c);
    texts.push("it's", 'C:\\path\\', "'\\'", '{"rows":[{"v":"a\\"b"}]}', "''''", '\\\\');
    for (const t of texts) expect(quoteLiteral(t)).toBe(pg.escapeLiteral(t));
  });

  it('quotes a 3 MB text in one piece', () => {
    const big = `${'x'.repeat(3_000_000)}'\\`;
    expect(quoteLiteral(big)).toBe(pg.escapeLiteral(big));
  });
});
