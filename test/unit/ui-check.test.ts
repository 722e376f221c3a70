/**
 * The console's check of an expression (src/ui/check.ts): a long one is
 * checked in the compile worker, with the answer the calling thread would
 * give, and the event loop keeps turning meanwhile (a hostile review: four
 * tenants looping 256 KiB expressions held other sessions' SELECT 1 for
 * 600 ms when they were checked on the event loop).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { checkNow } from '../../src/dsl/check-expression.js';
import { loadParser } from '../../src/dsl/parser.js';
import { CHECK_INLINE_MAX, checkExpression, MAX_SOURCE_BYTES } from '../../src/ui/check.js';

beforeAll(async () => {
  await loadParser();
});

const chain = (n: number): string =>
  Array.from({ length: n }, (_, i) => `'SELECT ${i}'`).join(' ~> ');

describe('checking an expression for the console', () => {
  it('gives the same answer in the worker as on the calling thread', async () => {
    const long = chain(Math.ceil(CHECK_INLINE_MAX / 10));
    expect(long.length).toBeGreaterThan(CHECK_INLINE_MAX);
    for (const source of [
      long,
      long + ' ~>',
      `${long} ~> df.sleep('soon')`,
      `${'('.repeat(3000)}'SELECT 1'${')'.repeat(3000)}`,
      `SELECT 1 FROM t /* ${'x'.repeat(CHECK_INLINE_MAX)} */`,
      chain(20),
    ]) {
      const got = await checkExpression(source, 'role:alice');
      expect(got).toEqual(checkNow(source));
    }
  });

  it('the event loop keeps turning while a 256 KiB expression is checked', async () => {
    const source = chain(30_000).slice(0, MAX_SOURCE_BYTES - 10);
    let turns = 0;
    let done = false;
    const spin = (): void => {
      turns++;
      if (!done) setImmediate(spin);
    };
    setImmediate(spin);
    const r = await checkExpression(source, 'role:alice');
    done = true;
    expect(r.ok).toBe(false); // cut in the middle of a literal
    // checked on this thread, parse and validation would have taken every turn
    expect(turns).toBeGreaterThan(10);
  });
});
