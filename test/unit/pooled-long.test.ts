/**
 * Transaction mode's bookkeeping of client messages too long to assemble
 * (PooledClient.long), through a framer that keeps only their first bytes,
 * with the stream split at every offset: a Bind renamed as it streams (its
 * declared length fixed up), an unnamed Parse that is not carried to another
 * connection, a named Parse refused, and a Query whose words leave the
 * connection's session state unknown.
 */
import { describe, expect, it } from 'vitest';
import { isLate, PooledClient } from '../../src/proxy/pooled.js';
import { Frontend } from '../../src/proxy/protocol/codes.js';
import { Framer, type Piece } from '../../src/proxy/protocol/frame.js';
import {
  decodeFrontend,
  encodeFrontend,
  type FrontendMessage,
} from '../../src/proxy/protocol/frontend.js';
import type { ServerConn } from '../../src/proxy/server-conn.js';

/** The framer's bound in these tests: every message below but Sync and Execute is longer. */
const MAX = 48;

/** A connection as far as PooledClient looks at it. */
function fakeConn(): ServerConn {
  return {
    prepared: new Set<string>(),
    uncertain: new Set<string>(),
    settings: new Map<string, string>(),
    unnamedOwner: undefined,
    stateUnknown: false,
  } as unknown as ServerConn;
}

/**
 * What reaches `conn` of `input` cut at `at`: short inspected messages mapped
 * as the lender maps them, long ones through PooledClient.long.
 */
function through(client: PooledClient, input: Buffer, at: number, conn: ServerConn): Buffer {
  const framer = new Framer(
    {
      inspect: (t) => t === Frontend.Query || t === Frontend.Parse || t === Frontend.Bind,
      message: (_t, _body, raw) => client.map(raw),
      truncated: (t, _head, _length, framed) => {
        const r = client.long(t, framed);
        if (r instanceof Map) throw new Error(`refused: ${r.get('M')}`);
        return r;
      },
    },
    Number.POSITIVE_INFINITY,
    MAX,
  );
  const pieces: Piece[] = [
    ...framer.push(input.subarray(0, at)),
    ...framer.push(input.subarray(at)),
  ];
  expect(framer.atBoundary).toBe(true);
  return Buffer.concat(
    pieces.map((p) => {
      if (Buffer.isBuffer(p)) return p;
      if (isLate(p)) return Buffer.concat(p.late(conn));
      throw new Error('unexpected deferred piece');
    }),
  );
}

/** The messages in `bytes`, decoded. */
function messages(bytes: Buffer): FrontendMessage[] {
  const out: FrontendMessage[] = [];
  for (let pos = 0; pos < bytes.length;) {
    const len = bytes.readInt32BE(pos + 1);
    out.push(decodeFrontend(bytes[pos] as number, bytes.subarray(pos + 5, pos + 1 + len)));
    pos += 1 + len;
  }
  return out;
}

const sync = encodeFrontend({ type: 'Sync' });
const execute = encodeFrontend({ type: 'Execute', portal: '', maxRows: 0 });
const value = Buffer.from('v'.repeat(300));
const bind = (statement: string): Buffer =>
  encodeFrontend({
    type: 'Bind',
    portal: 'a portal',
    statement,
    paramFormats: [1],
    params: [value, null],
    resultFormats: [0],
  });

describe('transaction mode and messages too long to assemble', () => {
  it('a long Bind goes out under the statement’s server name, preceded by its Parse where it is missing, at every split', () => {
    const parse = encodeFrontend({
      type: 'Parse',
      name: 'stmt',
      sql: 'SELECT $1::bytea',
      paramTypes: [17, 0],
    });
    const input = Buffer.concat([bind('stmt'), execute, sync]);
    for (let at = 0; at <= input.length; at++) {
      const client = new PooledClient();
      const first = fakeConn();
      const [prepared] = client.out(parse, first);
      const server = (messages(prepared as Buffer)[0] as { name: string }).name;
      expect(server).toMatch(/^dfgate_[0-9a-f]{20}$/);
      // a connection without it gets the Parse first, one with it only the Bind
      for (const [conn, before] of [
        [
          fakeConn(),
          [{ type: 'Parse', name: server, sql: 'SELECT $1::bytea', paramTypes: [17, 0] }],
        ],
        [first, []],
      ] as const) {
        const got = messages(through(client, input, at, conn));
        expect(got, `cut at ${at}`).toEqual([
          ...before,
          {
            type: 'Bind',
            portal: 'a portal',
            statement: server,
            paramFormats: [1],
            params: [value, null],
            resultFormats: [0],
          },
          { type: 'Execute', portal: '', maxRows: 0 },
          { type: 'Sync' },
        ]);
      }
    }
  });

  it('a long Bind of a statement the client did not prepare, or with names past the bytes kept, goes out unchanged', () => {
    const unknown = Buffer.concat([bind('never prepared'), sync]);
    const longNames = Buffer.concat([
      encodeFrontend({
        type: 'Bind',
        portal: 'p'.repeat(MAX + 10),
        statement: 'stmt',
        paramFormats: [],
        params: [],
        resultFormats: [],
      }),
      sync,
    ]);
    for (const input of [unknown, longNames])
      for (let at = 0; at <= input.length; at++)
        expect(through(new PooledClient(), input, at, fakeConn()).equals(input)).toBe(true);
  });

  it('a long unnamed Parse goes out unchanged and stays on its connection: elsewhere its Bind finds no unnamed statement', () => {
    const input = Buffer.concat([
      encodeFrontend({
        type: 'Parse',
        name: '',
        sql: `SELECT '${'u'.repeat(100)}'`,
        paramTypes: [],
      }),
      sync,
    ]);
    const unnamedBind = bind('');
    const closeUnnamed = encodeFrontend({ type: 'Close', kind: 'S', name: '' });
    for (let at = 0; at <= input.length; at++) {
      const client = new PooledClient();
      const conn = fakeConn();
      expect(through(client, input, at, conn).equals(input)).toBe(true);
      // where it was parsed the Bind goes as is; elsewhere after a Close of the unnamed statement
      expect(Buffer.concat(client.out(unnamedBind, conn)).equals(unnamedBind)).toBe(true);
      const other = fakeConn();
      expect(
        Buffer.concat(client.out(unnamedBind, other)).equals(
          Buffer.concat([closeUnnamed, unnamedBind]),
        ),
      ).toBe(true);
      // a short unnamed Parse is carried again
      const short = encodeFrontend({ type: 'Parse', name: '', sql: 'SELECT 1', paramTypes: [] });
      client.out(short, conn);
      expect(
        Buffer.concat(client.out(unnamedBind, fakeConn())).equals(
          Buffer.concat([short, unnamedBind]),
        ),
      ).toBe(true);
    }
  });

  it('a long named Parse is refused with 0A000', () => {
    const framed = encodeFrontend({
      type: 'Parse',
      name: 'named',
      sql: `SELECT '${'n'.repeat(100)}'`,
      paramTypes: [],
    }).subarray(0, 5 + MAX);
    const r = new PooledClient().long(Frontend.Parse, framed);
    expect(r).toBeInstanceOf(Map);
    expect((r as Map<string, string>).get('C')).toBe('0A000');
  });

  it('a long Query or unnamed Parse with a word transaction mode looks for leaves the connection’s state unknown, at every split', () => {
    const filler = 'q'.repeat(120);
    const cases: Array<[string, boolean]> = [
      [`SELECT '${filler}'`, false],
      [`SET work_mem = '8MB'; SELECT '${filler}'`, true], // in the bytes kept
      [`SELECT '${filler}'; LiStEn chan`, true], // past them
      [`SELECT '${filler}' /* pg_advisory_lock */`, true],
      // the word across the end of the bytes kept, wherever it falls
      ...Array.from({ length: 8 }, (_, k): [string, boolean] => [
        `SELECT '${'x'.repeat(MAX - 14 + k)}temp${filler}'`,
        true,
      ]),
    ];
    for (const [sql, unknown] of cases) {
      for (const message of [
        encodeFrontend({ type: 'Query', sql }),
        encodeFrontend({ type: 'Parse', name: '', sql, paramTypes: [] }),
      ]) {
        const input = Buffer.concat([message, sync]);
        for (let at = 0; at <= input.length; at++) {
          const conn = fakeConn();
          expect(through(new PooledClient(), input, at, conn).equals(input)).toBe(true);
          expect(conn.stateUnknown, `${sql} cut at ${at}`).toBe(unknown);
        }
      }
    }
  });
});
