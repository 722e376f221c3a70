/**
 * Transaction mode's look at a simple Query (PooledClient.query): it reads the
 * message's bytes without decoding them, and still finds a session-state
 * statement anywhere in a multi-statement query: behind almost 1 MiB (the
 * longest it assembles, CLIENT_INSPECT_MAX; pooled-long.test.ts: longer
 * ones), behind a leading comment, and with the message split at every offset
 * on its way through the framer.
 */
import { describe, expect, it } from 'vitest';
import { PooledClient } from '../../src/proxy/pooled.js';
import { Backend, Frontend } from '../../src/proxy/protocol/codes.js';
import { Framer } from '../../src/proxy/protocol/frame.js';
import { encodeFrontend } from '../../src/proxy/protocol/frontend.js';
import type { ServerConn } from '../../src/proxy/server-conn.js';
import { WordWatch } from '../../src/proxy/sql-scan.js';

const MIB = 1024 * 1024;
/** Room for the statements around the long literals, within CLIENT_INSPECT_MAX. */
const NEAR_MIB = MIB - 64 * 1024;

type Verdict = 'refused' | 'pass';

/** What transaction mode makes of one Query message (its framed bytes). */
function verdict(client: PooledClient, raw: Buffer, backslashQuotes = false): Verdict {
  const body = raw.subarray(5);
  const r = client.query(body, 0, body.indexOf(0), { backslashQuotes });
  if (r instanceof Map) {
    expect(r.get('C')).toBe('0A000');
    return 'refused';
  }
  return 'pass';
}

const query = (sql: string): Buffer => encodeFrontend({ type: 'Query', sql });

/** A connection as far as PooledClient looks at it. */
function fakeConn(): ServerConn {
  return {
    prepared: new Set<string>(),
    uncertain: new Set<string>(),
    settings: new Map<string, string>(),
  } as unknown as ServerConn;
}

/** The server's answer to a one-statement query that succeeded. */
function answer(client: PooledClient, conn: ServerConn, tag: string): void {
  client.serverMessage(conn, 0x43 /* C: CommandComplete */, Buffer.from(`${tag}\0`));
  client.serverMessage(conn, Backend.ReadyForQuery, Buffer.from('I'));
}

describe('transaction mode looks at every statement of a Query, as bytes', () => {
  const big = `'${'x'.repeat(NEAR_MIB)}'`;

  it('refuses a session-state statement behind almost 1 MiB in a multi-statement query', () => {
    const c = new PooledClient();
    for (const hidden of [
      'LISTEN chan',
      '/* a comment first */ LISTEN chan',
      '-- a comment first\nlisten chan',
      'SELECT pg_advisory_lock(1)',
      'SELECT 1 INTO TEMP t',
      'CREATE TEMPORARY TABLE t (n int)',
      'DECLARE c CURSOR WITH HOLD FOR SELECT 1',
      'PREPARE p AS SELECT 1',
      'SET SESSION AUTHORIZATION other',
    ]) {
      expect(verdict(c, query(`SELECT ${big}; SELECT 2; ${hidden}; SELECT 3`)), hidden).toBe(
        'refused',
      );
      // hidden in a literal, a comment or a dollar quote it is no statement
      expect(verdict(c, query(`SELECT ${big}, $q$; ${hidden}; $q$ /* ; ${hidden} */`))).toBe(
        'pass',
      );
    }
    // non-ASCII text before it changes nothing
    expect(
      verdict(c, query(`SELECT 'é${'ŝ'.repeat(NEAR_MIB / 2)}' AS é$q$; LISTEN x; --$q$`)),
    ).toBe('refused');
  });

  it('tracks a SET behind almost 1 MiB, decoded as text', () => {
    const c = new PooledClient();
    const conn = fakeConn();
    expect(verdict(c, query(`SELECT ${big}; SET my.opt = 'ŝé'`))).toBe('pass');
    answer(c, conn, 'SET');
    expect([...c.settings]).toEqual([['my.opt', `SET my.opt = 'ŝé'`]]);
  });

  it('with standard_conforming_strings off, a statement after a backslash-quoted quote is found', () => {
    const c = new PooledClient();
    const sql = query(`SELECT 'a\\' ; '; LISTEN x; --'`);
    expect(verdict(c, sql, false)).toBe('pass');
    expect(verdict(c, sql, true)).toBe('refused');
  });

  it('finds it whatever the framing: every split of a small query, 64 KiB chunks of a big one', () => {
    const c = new PooledClient();
    // with the chunks fed to the client as they arrive (as a session does), and without
    let feed = true;
    const through = (raw: Buffer, cuts: number[]): Verdict[] => {
      const seen: Verdict[] = [];
      const framer = new Framer({
        inspect: (t) => t === Frontend.Query,
        message: (_t, _body, whole) => {
          seen.push(verdict(c, whole));
          return undefined;
        },
        part: (_t, src, from, to, first) => {
          if (feed) c.arriving.feed(src, from, to, first);
        },
      });
      let from = 0;
      for (const cut of [...cuts, raw.length]) {
        framer.push(raw.subarray(from, cut));
        from = cut;
      }
      return seen;
    };
    const small = Buffer.concat([
      query(`SELECT 'a;b' AS "c;d"; /* ; */ SELECT $t$;$t$; LISTEN chan; SELECT 1`),
      query(`SELECT 'LISTEN chan' -- ; LISTEN chan`),
    ]);
    const bytes = Array.from({ length: small.length }, (_, k) => k);
    const large = Buffer.concat([query(`SELECT ${big}; LISTEN chan`), query(`SELECT ${big}`)]);
    for (feed of [true, false]) {
      for (let cut = 0; cut <= small.length; cut++)
        expect(through(small, [cut]), `cut at ${cut}`).toEqual(['refused', 'pass']);
      // a byte at a time: LISTEN arrives in six parts
      expect(through(small, bytes)).toEqual(['refused', 'pass']);
      for (const shift of [0, 1, 4, 5, 6, 4095]) {
        const cuts: number[] = [];
        for (let at = shift || 65536; at < large.length; at += 65536) cuts.push(at);
        expect(through(large, cuts), `shift ${shift}`).toEqual(['refused', 'pass']);
      }
    }
    // LISTEN split across two chunks at each of its letters, in a message fed as it arrives
    const text = `SELECT ${big}; lIsTeN chan`;
    const raw = query(text);
    const at = raw.indexOf('lIsTeN');
    feed = true;
    for (let k = 0; k <= 6; k++)
      expect(through(raw, [65536, at + k]), `LISTEN cut after ${k}`).toEqual(['refused']);
  });

  it('finds the statement of interest behind almost 1 MiB of literal or of code (its speed: docs/benchmarks.md, not a timed test)', () => {
    // 1 MiB inside one literal, and 1 MiB of code (a VALUES list whose words match the
    // cheap pre-test) with the statement of interest at the end
    const literal = query(`SELECT ${big}; LISTEN chan`);
    const values = query(
      `INSERT INTO t (settings) VALUES ${Array.from({ length: 70_000 }, (_, k) => `(${k})`).join(',')}; LISTEN chan`,
    );
    const c = new PooledClient();
    for (const raw of [literal, values]) expect(verdict(c, raw)).toBe('refused');
  });
});

describe('WordWatch: words in any case, in bytes that arrive in parts', () => {
  const words = ['listen', 'advisory_lock', 'set'];
  /** What the watch finds in `text` fed in parts cut at `cuts`. */
  const fed = (text: string, cuts: number[]): boolean | undefined => {
    const w = new WordWatch(words);
    const buf = Buffer.from(text, 'latin1');
    let from = 0;
    for (const cut of [...cuts, buf.length]) {
      w.feed(buf, from, cut, from === 0);
      from = cut;
    }
    return w.take();
  };

  it('finds a word cut anywhere, even a byte at a time, and nothing where there is none', () => {
    const text = `${'x'.repeat(100)} pg_ADVISORY_Lock(1) ${'y'.repeat(20)}`;
    for (let a = 0; a <= text.length; a++) expect(fed(text, [a]), `cut at ${a}`).toBe(true);
    expect(
      fed(
        text,
        Array.from({ length: text.length }, (_, k) => k),
      ),
    ).toBe(true);
    const clean = `${'x'.repeat(64 * 1024)} advisory-lock lis ten s e t ${'q'.repeat(64 * 1024)}`;
    for (let a = 0; a <= clean.length; a += 997) expect(fed(clean, [a, a + 3])).toBe(false);
    expect(
      fed(
        clean,
        Array.from({ length: 200 }, (_, k) => 64 * 1024 + k),
      ),
    ).toBe(false);
    // one message's find does not carry over to the next
    const w = new WordWatch(words);
    w.feed(Buffer.from('SET x'), 0, 5, true);
    expect(w.take()).toBe(true);
    expect(w.take()).toBeUndefined();
    w.feed(Buffer.from('sel'), 0, 3, true);
    w.feed(Buffer.from('ect'), 0, 3, false);
    expect(w.take()).toBe(false);
    expect(new WordWatch(words).test(Buffer.from('a LiStEn b'), 0, 10)).toBe(true);
  });
});
