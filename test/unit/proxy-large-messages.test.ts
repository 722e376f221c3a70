/**
 * Server messages too long to inspect whole (over SERVER_INSPECT_MAX), as the
 * server connection and its consumers see them: relayed unchanged, looked at
 * through their first bytes only, never replaced, never taken for whole.
 */
import net from 'node:net';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { Conversation } from '../../src/proxy/conversation.js';
import { runBatch } from '../../src/proxy/edge/batch.js';
import { BornClaims } from '../../src/proxy/edge/born.js';
import { encodeErrorFieldMap, encodeReadyForQuery } from '../../src/proxy/protocol/backend.js';
import { Backend } from '../../src/proxy/protocol/codes.js';
import { SERVER_INSPECT_MAX, ServerConn } from '../../src/proxy/server-conn.js';

/** An ErrorResponse (type E) or NoticeResponse (N) with these fields. */
function fields(type: number, f: ReadonlyArray<readonly [string, string]>): Buffer {
  const m = encodeErrorFieldMap(new Map(f));
  m[0] = type;
  return m;
}

function parameterStatus(name: string, value: string): Buffer {
  const body = Buffer.from(`${name}\0${value}\0`);
  const head = Buffer.alloc(5);
  head[0] = Backend.ParameterStatus;
  head.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([head, body]);
}

const LONG = 'x'.repeat(SERVER_INSPECT_MAX + 1000);
const bigNotice = fields(Backend.NoticeResponse, [
  ['S', 'NOTICE'],
  ['V', 'NOTICE'],
  ['C', '00000'],
  ['M', LONG],
]);
const bigError = fields(Backend.ErrorResponse, [
  ['S', 'ERROR'],
  ['V', 'ERROR'],
  ['C', 'P0001'],
  ['M', LONG],
]);

/** A server connection over a socket that is never connected: its traffic is emitted by the test. */
function serverConn(): ServerConn {
  return new ServerConn({ socket: new net.Socket(), tls: false }, pino({ level: 'silent' }));
}

/** `input` in chunks of `size` bytes. */
function chunks(input: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < input.length; i += size) out.push(input.subarray(i, i + size));
  return out;
}

describe('a server connection', () => {
  it('relays long inspected messages unchanged and hands its sink only their first bytes', () => {
    const input = Buffer.concat([
      bigNotice,
      encodeReadyForQuery('I'),
      bigError,
      parameterStatus('search_path', LONG),
      encodeReadyForQuery('T'),
    ]);
    for (const size of [5, 7, 997, 4096, 65_536, SERVER_INSPECT_MAX + 3, input.length]) {
      const conn = serverConn();
      conn.params.set('search_path', 'public');
      const relayed: Buffer[] = [];
      const whole: number[] = [];
      const cut: Array<[number, number, number]> = [];
      conn.sink = {
        inspect: () => true,
        message: (t, body) => {
          whole.push(t);
          expect(body.length).toBeLessThanOrEqual(SERVER_INSPECT_MAX);
          return undefined;
        },
        truncated: (t, head, length) => {
          cut.push([t, head.length, length]);
          return undefined;
        },
        relay: (pieces) => relayed.push(...pieces.map((p) => Buffer.from(p))),
        closed: () => undefined,
      };
      for (const c of chunks(input, size)) conn.socket.emit('data', c);
      expect(Buffer.concat(relayed).equals(input), `chunks of ${size}`).toBe(true);
      expect(whole).toEqual([Backend.ReadyForQuery, Backend.ReadyForQuery]);
      expect(cut).toEqual([
        [Backend.NoticeResponse, SERVER_INSPECT_MAX, bigNotice.length - 5],
        [Backend.ErrorResponse, SERVER_INSPECT_MAX, bigError.length - 5],
        [Backend.ParameterStatus, SERVER_INSPECT_MAX, LONG.length + 'search_path'.length + 2],
      ]);
      expect(conn.suspect).toBe(true); // an error passed, however long
      expect(conn.params.has('search_path')).toBe(false); // its value is not known
      expect(conn.txStatus).toBe('T');
      expect(conn.atBoundary).toBe(true);
      conn.destroy();
    }
  });

  it('drops a long message its sink swallows, and relays it to a sink without the hook', () => {
    const input = Buffer.concat([bigError, encodeReadyForQuery('I')]);
    for (const swallow of [true, false]) {
      const conn = serverConn();
      const relayed: Buffer[] = [];
      conn.sink = {
        inspect: () => true,
        message: () => undefined,
        ...(swallow ? { truncated: () => null } : {}),
        relay: (pieces) => relayed.push(...pieces.map((p) => Buffer.from(p))),
        closed: () => undefined,
      };
      for (const c of chunks(input, 8192)) conn.socket.emit('data', c);
      expect(Buffer.concat(relayed).equals(swallow ? encodeReadyForQuery('I') : input)).toBe(true);
      conn.destroy();
    }
  });

  it('closes on a ReadyForQuery, BackendKeyData or Authentication too long to read whole', () => {
    for (const type of [Backend.ReadyForQuery, Backend.BackendKeyData, Backend.Authentication]) {
      const conn = serverConn();
      const relayed: Buffer[] = [];
      conn.sink = {
        inspect: () => true,
        message: () => undefined,
        truncated: () => undefined,
        relay: (pieces) => relayed.push(...pieces),
        closed: () => undefined,
      };
      const msg = Buffer.alloc(5 + SERVER_INSPECT_MAX + 1);
      msg[0] = type;
      msg.writeInt32BE(msg.length - 1, 1);
      conn.socket.emit('data', msg);
      expect(conn.closed).toBe(true);
      expect(relayed).toEqual([]);
    }
  });
});

describe('consumers of a message seen through its first bytes', () => {
  it('a born claim notice seen only in part is no claim', () => {
    const b = new BornClaims();
    const nonce = b.arm(30_000);
    const body = fields(Backend.NoticeResponse, [
      ['S', 'NOTICE'],
      ['V', 'NOTICE'],
      ['C', '00000'],
      ['M', `dfgate born claim ${nonce} {"id" : "0000000a", "status" : "running"}`],
    ]).subarray(5);
    // even when the part seen holds the whole text: its end is not known to be the message's
    expect(b.notice(body, true)).toBe(false);
    expect(b.armed).toBe(true);
    expect(b.notice(body)).toBe(true);
  });

  it("a start batch reads a long error's SQLSTATE from its first bytes, never a cut row", async () => {
    const run = async (
      offers: ReadonlyArray<readonly [number, Buffer, boolean]>,
    ): Promise<Awaited<ReturnType<typeof runBatch>>> => {
      const conn = { closed: false, write: () => undefined } as unknown as ServerConn;
      const conv = new Conversation(() => Promise.resolve(conn));
      const out = runBatch(conv, { sql: 'SELECT 1', columns: ['a', 'b'], steps: [] });
      await new Promise((r) => setImmediate(r));
      for (const [t, body, cut] of offers) expect(conv.offer(t, body, cut)).toBe(true);
      return out;
    };
    const rfq = (s: 'I' | 'T') => encodeReadyForQuery(s).subarray(5);
    const head = (m: Buffer): Buffer => m.subarray(5, 5 + SERVER_INSPECT_MAX);
    // a long error of a class that is not an interruption: the statements go one by one
    expect(
      await run([
        [Backend.ErrorResponse, head(bigError), true],
        [Backend.ReadyForQuery, rfq('I'), false],
      ]),
    ).toBe('replay');
    // an interruption is reported, with its SQLSTATE and a message even if the text was cut
    const cancel = fields(Backend.ErrorResponse, [
      ['S', 'ERROR'],
      ['V', 'ERROR'],
      ['C', '57P01'],
      ['M', LONG],
    ]);
    const r = await run([
      [Backend.ErrorResponse, head(cancel), true],
      [Backend.ReadyForQuery, rfq('I'), false],
    ]);
    expect(r !== 'replay' && 'error' in r ? r.error.get('C') : undefined).toBe('57P01');
    expect(r !== 'replay' && 'error' in r ? r.error.get('M') : undefined).toMatch(/too long/);
    // a row of ids seen in part is not read: the ids are unknown
    const row = Buffer.from('\0\x01\0\0\0\x13{0000000a,0000000b}');
    const cutRow = await run([
      [Backend.DataRow, row, true],
      [Backend.ReadyForQuery, rfq('I'), false],
    ]);
    expect(cutRow !== 'replay' && 'error' in cutRow ? cutRow.error.get('C') : undefined).toBe(
      'XX000',
    );
    const wholeRow = await run([
      [Backend.DataRow, row, false],
      [Backend.ReadyForQuery, rfq('I'), false],
    ]);
    expect(wholeRow).toEqual({ ids: ['0000000a', '0000000b'] });
  });
});
