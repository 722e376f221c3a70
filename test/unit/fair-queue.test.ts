/**
 * The compile workers take jobs in turns by role (edge-pool.ts, FairQueue):
 * one role's many costly statements hold back another role's by at most the
 * job running. The pool test runs the real worker threads (dist/ build).
 */
import { describe, expect, it } from 'vitest';
import { analyzeSoon } from '../../src/dsl/edge-pool.js';
import { FairQueue } from '../../src/dsl/fair-queue.js';

describe('FairQueue', () => {
  it('takes owners in turn, each owner in order', () => {
    const q = new FairQueue<string>();
    for (const x of ['a1', 'a2', 'a3', 'a4']) q.push('a', x);
    q.push('b', 'b1');
    q.push('c', 'c1');
    q.push('b', 'b2');
    expect(q.size).toBe(7);
    const out: string[] = [];
    for (let x = q.shift(); x !== undefined; x = q.shift()) out.push(x);
    expect(out).toEqual(['a1', 'b1', 'c1', 'a2', 'b2', 'a3', 'a4']);
    expect(q.size).toBe(0);
  });

  it('an owner that comes back later waits for its turn behind the others', () => {
    const q = new FairQueue<number>();
    q.push('a', 1);
    q.push('a', 2);
    expect(q.shift()).toBe(1);
    q.push('b', 10);
    // a had its turn: b goes next, then a again
    expect(q.shift()).toBe(10);
    expect(q.shift()).toBe(2);
    expect(q.shift()).toBeUndefined();
    q.push('a', 3);
    expect(q.shift()).toBe(3);
  });
});

describe('compile workers', () => {
  it("one role's costly messages do not hold back another role's start", async () => {
    // five messages of 600 starts each (tens of ms of compiling each), then one start of another role
    const big = (n: number): string =>
      Array.from(
        { length: 600 },
        (_, i) => `SELECT df.start('SELECT ${n * 1000 + i}', 'l${n}')`,
      ).join('; ');
    const done: string[] = [];
    const jobs = [0, 1, 2, 3, 4].map((n) =>
      Promise.resolve(analyzeSoon(big(n), false, 'heavy')).then(() => done.push(`heavy${n}`)),
    );
    const light = Promise.resolve(
      analyzeSoon(`SELECT df.start('SELECT 42', 'light')`, false, 'light'),
    ).then((e) => {
      done.push('light');
      return e;
    });
    expect((await light).kind).not.toBe('pass');
    await Promise.all(jobs);
    // first in, first out would have answered it last, after all five
    expect(done.indexOf('light')).toBeLessThanOrEqual(2);
  }, 60_000);
});
