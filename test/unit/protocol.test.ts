/** The frontend codec and the framer, byte by byte: every frame split at every offset. */
import { describe, expect, it } from 'vitest';
import {
  decodeAuth,
  decodeBackendKey,
  decodeErrorFields,
  encodeAuthSASL,
  encodeError,
} from '../../src/proxy/protocol/backend.js';
import { Frontend } from '../../src/proxy/protocol/codes.js';
import {
  Framer,
  MessageTooLarge,
  StartupFramer,
  type Cut,
  type Piece,
} from '../../src/proxy/protocol/frame.js';
import {
  decodeAuthMessage,
  decodeFrontend,
  decodeStartup,
  encodeAuthMessage,
  encodeFrontend,
  encodeStartup,
  type AuthMessage,
  type FrontendMessage,
  type StartupPacket,
} from '../../src/proxy/protocol/frontend.js';
import { ProtocolError, SilentClose } from '../../src/proxy/protocol/reader.js';

const MESSAGES: FrontendMessage[] = [
  { type: 'Query', sql: `SELECT df.start('SELECT ''ünïcødé'' 🚀') -- tail` },
  { type: 'Query', sql: '' },
  { type: 'Parse', name: 'stmt_1', sql: 'SELECT $1::int + $2', paramTypes: [23, 0xffffffff] },
  { type: 'Parse', name: '', sql: 'SELECT 1', paramTypes: [] },
  {
    type: 'Bind',
    portal: 'p',
    statement: 'stmt_1',
    paramFormats: [0, 1, 0, 1],
    params: [Buffer.from('42'), null, Buffer.alloc(0), Buffer.from([0, 1, 2, 255])],
    resultFormats: [1],
  },
  { type: 'Bind', portal: '', statement: '', paramFormats: [], params: [], resultFormats: [] },
  { type: 'Describe', kind: 'S', name: 'stmt_1' },
  { type: 'Describe', kind: 'P', name: '' },
  { type: 'Execute', portal: '', maxRows: 0 },
  { type: 'Execute', portal: 'p', maxRows: 100 },
  { type: 'Close', kind: 'S', name: 'stmt_1' },
  { type: 'Close', kind: 'P', name: 'p' },
  { type: 'Sync' },
  { type: 'Flush' },
  { type: 'CopyData', data: Buffer.from('1\tone\n2\ttwo\n') },
  { type: 'CopyData', data: Buffer.alloc(0) },
  { type: 'CopyDone' },
  { type: 'CopyFail', message: 'aborted by user' },
  {
    type: 'FunctionCall',
    oid: 1598,
    argFormats: [0],
    args: [Buffer.from('x'), null],
    resultFormat: 1,
  },
  { type: 'AuthData', data: Buffer.from('n,,n=,r=abc') },
  { type: 'Terminate' },
];

const STARTUP: StartupPacket[] = [
  {
    type: 'StartupMessage',
    version: 196608,
    params: [
      ['user', 'alice'],
      ['database', 'db ü'],
      ['application_name', 'psql'],
      ['options', '-c search_path=df'],
    ],
  },
  { type: 'StartupMessage', version: 196610, params: [['user', 'u']] },
  { type: 'SSLRequest' },
  { type: 'GSSENCRequest' },
  { type: 'CancelRequest', pid: 4242, key: Buffer.from([1, 2, 3, 4]) },
  { type: 'CancelRequest', pid: 7, key: Buffer.alloc(32, 0xab) },
];

const AUTH: Array<[AuthMessage['type'], AuthMessage]> = [
  ['PasswordMessage', { type: 'PasswordMessage', password: 'md5abcdef' }],
  [
    'SASLInitialResponse',
    { type: 'SASLInitialResponse', mechanism: 'SCRAM-SHA-256', data: Buffer.from('n,,n=,r=nonce') },
  ],
  ['SASLInitialResponse', { type: 'SASLInitialResponse', mechanism: 'SCRAM-SHA-256', data: null }],
  ['SASLResponse', { type: 'SASLResponse', data: Buffer.from('c=biws,r=nonce,p=proof') }],
];

/** Feeds the stream to a framer in the given pieces; returns the output and the messages seen whole. */
function frame(
  pieces: Buffer[],
  inspect: (t: number) => boolean,
  replace?: (t: number, body: Buffer) => Buffer | null | undefined,
) {
  const seen: Array<[number, Buffer]> = [];
  const f = new Framer({
    inspect,
    message: (t, body, raw) => {
      seen.push([t, Buffer.from(raw)]);
      return replace?.(t, body);
    },
  });
  const out: Buffer[] = [];
  for (const p of pieces) out.push(...f.push(p).map((b) => Buffer.from(bytes(b))));
  return { out: Buffer.concat(out), seen, boundary: f.atBoundary };
}

/** The bytes of a forwarded piece; these tests never defer. */
function bytes(p: Piece): Buffer {
  if (typeof p === 'function') throw new Error('unexpected deferred piece');
  return p;
}

function splits(buf: Buffer): Buffer[][] {
  const all: Buffer[][] = [];
  for (let i = 0; i <= buf.length; i++) all.push([buf.subarray(0, i), buf.subarray(i)]);
  return all;
}

describe('frontend codec', () => {
  it.each(MESSAGES.map((m) => [m.type, m] as const))('%s round-trips byte for byte', (_t, m) => {
    const bytes = encodeFrontend(m);
    expect(bytes.readInt32BE(1)).toBe(bytes.length - 1);
    const back = decodeFrontend(bytes[0] as number, bytes.subarray(5));
    expect(back).toEqual(m);
    expect(encodeFrontend(back).equals(bytes)).toBe(true);
  });

  it.each(STARTUP.map((p) => [p.type, p] as const))('%s round-trips', (_t, p) => {
    const bytes = encodeStartup(p);
    expect(bytes.readInt32BE(0)).toBe(bytes.length);
    const back = decodeStartup(bytes.subarray(4));
    expect(back).toEqual(p);
    expect(encodeStartup(back).equals(bytes)).toBe(true);
  });

  it.each(AUTH)('%s round-trips', (kind, m) => {
    const bytes = encodeAuthMessage(m);
    expect(bytes[0]).toBe(Frontend.Password);
    const back = decodeAuthMessage(bytes.subarray(5), kind);
    expect(back).toEqual(m);
    expect(encodeAuthMessage(back).equals(bytes)).toBe(true);
  });

  it('every truncation of every message is a ProtocolError, never a crash or an over-read', () => {
    for (const m of MESSAGES) {
      const bytes = encodeFrontend(m);
      const body = bytes.subarray(5);
      for (let cut = 0; cut < body.length; cut++) {
        let res: unknown;
        try {
          res = decodeFrontend(bytes[0] as number, body.subarray(0, cut));
        } catch (e) {
          expect(e).toBeInstanceOf(ProtocolError);
          continue;
        }
        // a shorter body may still be a valid (different) message, e.g. CopyData
        expect(['CopyData', 'AuthData']).toContain((res as FrontendMessage).type);
      }
      if (!['CopyData', 'AuthData', 'Sync', 'Flush', 'Terminate', 'CopyDone'].includes(m.type)) {
        expect(() =>
          decodeFrontend(bytes[0] as number, Buffer.concat([body, Buffer.from([0])])),
        ).toThrow(ProtocolError);
      }
    }
  });

  it("rejects unknown types, bad kinds, short counts and bad lengths in PostgreSQL's words", () => {
    expect(() => decodeFrontend(0x7a, Buffer.alloc(0))).toThrow(
      /^invalid frontend message type 122$/,
    );
    expect(() => decodeFrontend(Frontend.Describe, Buffer.from('X\0'))).toThrow(
      /^invalid DESCRIBE message subtype 88$/,
    );
    expect(() => decodeFrontend(Frontend.Close, Buffer.from('X\0'))).toThrow(
      /^invalid CLOSE message subtype 88$/,
    );
    expect(() => decodeFrontend(Frontend.Describe, Buffer.alloc(0))).toThrow(
      /^no data left in message$/,
    );
    expect(() => decodeFrontend(Frontend.Query, Buffer.from('SELECT 1'))).toThrow(
      /^invalid string in message$/,
    );
    expect(() => decodeFrontend(Frontend.Query, Buffer.from('SELECT 1\0x'))).toThrow(
      /^invalid message format$/,
    );
    // counts are unsigned as in PostgreSQL: 0xffff declares 65535 parameters, which are missing
    const neg = Buffer.alloc(4);
    neg.writeInt16BE(-1, 2);
    expect(() => decodeFrontend(Frontend.Bind, Buffer.concat([Buffer.from('\0\0'), neg]))).toThrow(
      /^insufficient data left in message$/,
    );
    // a Bind that declares two parameters and sends one
    const short = Buffer.from('\0\0\0\0\0\x02\0\0\0\x01x', 'latin1');
    expect(() => decodeFrontend(Frontend.Bind, short)).toThrow(
      /^insufficient data left in message$/,
    );
    const formats = encodeFrontend({
      type: 'Bind',
      portal: '',
      statement: '',
      paramFormats: [0, 0],
      params: [Buffer.from('x')],
      resultFormats: [],
    });
    expect(() => decodeFrontend(Frontend.Bind, formats.subarray(5))).toThrow(
      /^bind message has 2 parameter formats but 1 parameters$/,
    );
    const badLen = encodeFrontend({
      type: 'Bind',
      portal: '',
      statement: '',
      paramFormats: [],
      params: [Buffer.from('x')],
      resultFormats: [],
    });
    badLen.writeInt32BE(-5, 5 + 2 + 2 + 2);
    expect(() => decodeFrontend(Frontend.Bind, badLen.subarray(5))).toThrow(
      /^insufficient data left in message$/,
    );
    expect(() => decodeStartup(Buffer.from([0, 2, 0, 0]))).toThrow(
      /^unsupported frontend protocol 2\.0: server supports 3\.0 to 3\.0$/,
    );
    try {
      decodeStartup(Buffer.from([0, 9, 0, 0]));
    } catch (e) {
      expect((e as ProtocolError).code).toBe('0A000');
    }
    const layout = /^invalid startup packet layout: expected terminator as last byte$/;
    for (const tail of ['user', 'user\0', 'user\0x', 'user\0x\0', 'user\0x\0\0\0', '\0\0']) {
      expect(() =>
        decodeStartup(Buffer.concat([Buffer.from([0, 3, 0, 0]), Buffer.from(tail)])),
      ).toThrow(layout);
    }
    expect(decodeStartup(Buffer.from([0, 3, 0, 0, 0]))).toEqual({
      type: 'StartupMessage',
      version: 196608,
      params: [],
    });
    // PostgreSQL closes without answering a malformed CancelRequest
    expect(() => decodeStartup(Buffer.from([4, 0xd2, 0x16, 0x2e, 0, 0, 0, 1]))).toThrow(
      SilentClose,
    );
  });
});

describe('framer', () => {
  const stream = Buffer.concat(MESSAGES.map(encodeFrontend));
  const types = MESSAGES.map((m) => encodeFrontend(m)[0]);

  it('forwards a stream unchanged and untouched, split at every offset', () => {
    for (const pieces of splits(stream)) {
      const r = frame(pieces, () => false);
      expect(r.out.equals(stream)).toBe(true);
      expect(r.seen).toHaveLength(0);
      expect(r.boundary).toBe(true);
    }
  });

  it('hands every inspected message over whole, split at every offset', () => {
    for (const pieces of splits(stream)) {
      const r = frame(pieces, () => true);
      expect(r.out.equals(stream)).toBe(true);
      expect(r.seen.map(([t]) => t)).toEqual(types);
      expect(Buffer.concat(r.seen.map(([, raw]) => raw)).equals(stream)).toBe(true);
    }
  });

  it('hands a message that spans chunks over as its parts, split at every offset and a byte at a time', () => {
    // parts of 16 KiB or more are slices of the chunks they arrived in, shorter ones copied together
    const big = encodeFrontend({ type: 'Query', sql: 'x'.repeat(200_000) });
    const input = Buffer.concat([stream, big, stream]);
    const run = (pieces: Buffer[]) => {
      const wholes: Buffer[][] = [];
      const f = new Framer({
        inspect: (t) => t === Frontend.Query,
        message: () => undefined,
        assembled: (_t, parts) => {
          wholes.push(parts.map((p) => Buffer.from(p)));
          return [Buffer.concat(parts)];
        },
      });
      const out = Buffer.concat(pieces.flatMap((p) => f.push(p)).map(bytes));
      expect(out.equals(input)).toBe(true);
      expect(f.atBoundary).toBe(true);
      return wholes;
    };
    for (const at of [
      1,
      4,
      5,
      6,
      16 * 1024,
      64 * 1024,
      stream.length + 3,
      stream.length + 70_000,
    ]) {
      const pieces: Buffer[] = [];
      for (let i = 0; i < input.length; i += at) pieces.push(input.subarray(i, i + at));
      const wholes = run(pieces);
      const bigOne = wholes.find((w) => Buffer.concat(w).equals(big));
      expect(bigOne, `chunks of ${at}`).toBeDefined();
      // a byte at a time or 64 KiB at a time: never more parts than 64 KiB pieces plus slices
      expect((bigOne as Buffer[]).length).toBeLessThanOrEqual(Math.ceil(big.length / 16_384) + 1);
    }
  });

  it('splits into single bytes and into random pieces', () => {
    const bytes = [...stream].map((b) => Buffer.from([b]));
    expect(frame(bytes, (t) => t === Frontend.Query).out.equals(stream)).toBe(true);
    let seed = 12345;
    const rnd = (): number => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    for (let round = 0; round < 200; round++) {
      const pieces: Buffer[] = [];
      for (let i = 0; i < stream.length;) {
        const n = 1 + Math.floor(rnd() * 40);
        pieces.push(stream.subarray(i, i + n));
        i += n;
      }
      const r = frame(pieces, (t) => t === Frontend.Parse || t === Frontend.Bind);
      expect(r.out.equals(stream)).toBe(true);
      expect(r.seen).toHaveLength(4);
    }
  });

  it('replaces and drops inspected messages at every split', () => {
    const replacement = encodeFrontend({ type: 'Query', sql: 'SELECT 2' });
    const expected = Buffer.concat(
      MESSAGES.filter((m) => m.type !== 'Flush').map((m) =>
        m.type === 'Query' ? replacement : encodeFrontend(m),
      ),
    );
    for (const pieces of splits(stream)) {
      const r = frame(
        pieces,
        (t) => t === Frontend.Query || t === Frontend.Flush,
        (t) => (t === Frontend.Flush ? null : replacement),
      );
      expect(r.out.equals(expected)).toBe(true);
    }
  });

  it('refuses an oversized message on its header, before its body arrives', () => {
    const f = new Framer({ inspect: () => true, message: () => undefined }, 1024);
    const sync = encodeFrontend({ type: 'Sync' });
    const head = Buffer.from([Frontend.Query, 0, 0, 0x10, 0]);
    // what precedes the offending header is still forwarded; nothing after it
    expect(Buffer.concat(f.push(Buffer.concat([sync, head, sync])).map(bytes)).equals(sync)).toBe(
      true,
    );
    expect(f.failed).toBeInstanceOf(MessageTooLarge);
    expect(f.push(sync)).toEqual([]);
    const g = new Framer({ inspect: () => false, message: () => undefined }, 1024);
    expect(g.push(Buffer.concat([sync, head.subarray(0, 3)])).length).toBe(1);
    expect(g.failed).toBeUndefined();
    expect(g.push(head.subarray(3))).toEqual([]);
    expect(g.failed?.message).toMatch(/over the 1024-byte limit/);
  });

  it('refuses lengths below 4 (closed without a message, as PostgreSQL does)', () => {
    const f = new Framer({ inspect: () => false, message: () => undefined });
    expect(f.push(Buffer.from([Frontend.Sync, 0, 0, 0, 3]))).toEqual([]);
    expect(f.failed).toBeInstanceOf(SilentClose);
    expect(f.failed?.message).toBe('invalid message length');
  });

  it('checks the header hook (the type) before the length, like PostgreSQL', () => {
    const f = new Framer({
      inspect: () => false,
      message: () => undefined,
      header: (t) => {
        if (t === 0x7a) throw new ProtocolError('invalid frontend message type 122');
      },
    });
    f.push(Buffer.from([0x7a, 0, 0, 0, 1]));
    expect(f.failed?.message).toBe('invalid frontend message type 122');
  });

  it('the startup framer reassembles packets at every split and bounds their length', () => {
    const all = Buffer.concat(STARTUP.map(encodeStartup));
    for (const pieces of splits(all)) {
      const sf = new StartupFramer(10_000);
      const got: StartupPacket[] = [];
      let rest: Buffer = Buffer.alloc(0);
      for (const p of pieces) {
        let r = sf.push(p);
        while (r) {
          got.push(decodeStartup(r.body));
          rest = r.rest;
          r = rest.length ? sf.push(rest) : undefined;
        }
      }
      expect(got).toEqual(STARTUP);
    }
    const big = Buffer.alloc(8);
    big.writeInt32BE(10_001, 0);
    expect(() => new StartupFramer(10_000).push(big)).toThrow(SilentClose);
    const tiny = Buffer.from([0, 0, 0, 4]);
    expect(() => new StartupFramer(10_000).push(tiny)).toThrow(
      /^invalid length of startup packet$/,
    );
  });

  describe('inspected messages over inspectMax', () => {
    const MAX = 64;
    /** An ErrorResponse (or, with type N, a NoticeResponse) whose message is `n` characters long. */
    const error = (n: number, type = 0x45): Buffer => {
      const e = encodeError({ severity: 'ERROR', code: 'P0001', message: 'x'.repeat(n) });
      e[0] = type;
      return e;
    };
    const big = error(300);
    const notice = error(500, 0x4e);
    const edge = error(MAX - 24); // a body of exactly MAX bytes: assembled whole
    expect(edge.length - 5).toBe(MAX);
    const small = encodeFrontend({ type: 'Sync' });
    const input = Buffer.concat([small, big, small, edge, notice, big, small]);
    const longOnes = [big, notice, big];

    /** Frames `pieces` with a `truncated` hook answering `answer`; checks what is held after every push. */
    const run = (pieces: Buffer[], answer: null | undefined, withHook = true) => {
      const whole: Buffer[] = [];
      const cut: Array<[number, Buffer, number]> = [];
      const f = new Framer(
        {
          inspect: (t) => t === 0x45 || t === 0x4e,
          message: (_t, _body, raw) => {
            whole.push(Buffer.from(raw));
            return undefined;
          },
          ...(withHook
            ? {
                truncated: (t: number, head: Buffer, length: number) => {
                  cut.push([t, Buffer.from(head), length]);
                  return answer;
                },
              }
            : {}),
        },
        Number.POSITIVE_INFINITY,
        MAX,
      );
      const out: Buffer[] = [];
      for (const p of pieces) {
        out.push(...f.push(p).map((b) => Buffer.from(bytes(b))));
        expect(f.held).toBeLessThanOrEqual(5 + MAX);
      }
      expect(f.failed).toBeUndefined();
      expect(f.atBoundary).toBe(true);
      return { out: Buffer.concat(out), whole, cut };
    };

    it('hands over a bounded prefix and forwards the message unchanged, split at every offset', () => {
      for (const pieces of [...splits(input), [...input].map((b) => Buffer.from([b]))]) {
        const r = run(pieces, undefined);
        expect(r.out.equals(input)).toBe(true);
        // only the message of exactly MAX bytes is handed over whole
        expect(r.whole).toEqual([edge]);
        expect(r.cut.map(([t]) => t)).toEqual(longOnes.map((m) => m[0]));
        r.cut.forEach(([, head, length], i) => {
          const m = longOnes[i] as Buffer;
          expect(head.equals(m.subarray(5, 5 + MAX))).toBe(true);
          expect(length).toBe(m.length - 5);
        });
      }
    });

    it('drops a long message as it streams when the hook says so, split at every offset', () => {
      const expected = Buffer.concat([small, small, edge, small]);
      for (const pieces of splits(input)) {
        const r = run(pieces, null);
        expect(r.out.equals(expected)).toBe(true);
        expect(r.cut).toHaveLength(3);
      }
    });

    it('forwards a long message unchanged without a truncated hook, split at every offset', () => {
      for (const pieces of splits(input)) {
        const r = run(pieces, undefined, false);
        expect(r.out.equals(input)).toBe(true);
        expect(r.whole).toEqual([edge]);
      }
    });

    /** Frames `pieces` with a `truncated` hook answering with the Cut `make` builds; checks what is held after every push. */
    const runCut = (pieces: Buffer[], make: (rest: (b: Buffer) => void) => Cut) => {
      const rests: Buffer[] = [];
      const f = new Framer(
        {
          inspect: (t) => t === 0x45 || t === 0x4e,
          message: () => undefined,
          truncated: (t, head, length, framed) => {
            // the kept bytes, header included
            expect(framed[0]).toBe(t);
            expect(framed.readInt32BE(1)).toBe(length + 4);
            expect(framed.subarray(5).equals(head)).toBe(true);
            const mine: Buffer[] = [];
            rests.push(Buffer.alloc(0));
            const at = rests.length - 1;
            return make((b) => {
              mine.push(b);
              rests[at] = Buffer.concat(mine);
            });
          },
        },
        Number.POSITIVE_INFINITY,
        MAX,
      );
      const out: Buffer[] = [];
      for (const p of pieces) {
        out.push(...f.push(p).map((b) => Buffer.from(bytes(b))));
        expect(f.held).toBeLessThanOrEqual(5 + MAX);
      }
      expect(f.failed).toBeUndefined();
      expect(f.atBoundary).toBe(true);
      return { out: Buffer.concat(out), rests };
    };
    const tails = longOnes.map((m) => m.subarray(5 + MAX));

    it('a Cut replaces the kept bytes, sees the rest as it streams and adds after its end, split at every offset', () => {
      const renamed = Buffer.from('<renamed head>');
      const after = Buffer.from('<after>');
      const expected = Buffer.concat([
        small,
        ...[big, notice, big].flatMap((m, i) => [
          renamed,
          m.subarray(5 + MAX),
          after,
          ...(i === 0 ? [small, edge] : []),
        ]),
        small,
      ]);
      for (const pieces of [...splits(input), [...input].map((b) => Buffer.from([b]))]) {
        let ends = 0;
        const r = runCut(pieces, (rest) => ({
          head: renamed,
          rest: (src, from, to) => rest(Buffer.from(src.subarray(from, to))),
          end: () => {
            ends++;
            return [after];
          },
        }));
        expect(r.out.equals(expected)).toBe(true);
        expect(r.rests).toEqual(tails);
        expect(ends).toBe(3);
      }
    });

    it('a Cut that watches without replacing forwards the message unchanged, split at every offset', () => {
      for (const pieces of splits(input)) {
        const r = runCut(pieces, (rest) => ({
          rest: (src, from, to) => rest(Buffer.from(src.subarray(from, to))),
        }));
        expect(r.out.equals(input)).toBe(true);
        expect(r.rests).toEqual(tails);
      }
    });

    it('a Cut that drops the message sends its head instead of all of it, split at every offset', () => {
      const instead = Buffer.from('<instead>');
      const expected = Buffer.concat([small, instead, small, edge, instead, instead, small]);
      for (const pieces of splits(input)) {
        const r = runCut(pieces, () => ({ head: instead, drop: true }));
        expect(r.out.equals(expected)).toBe(true);
      }
    });

    it('is not atBoundary while the prefix is held or the rest streams', () => {
      const f = new Framer(
        { inspect: () => true, message: () => undefined, truncated: () => undefined },
        Number.POSITIVE_INFINITY,
        MAX,
      );
      expect(f.push(big.subarray(0, 20))).toEqual([]);
      expect(f.held).toBe(20);
      expect(f.atBoundary).toBe(false);
      const out = f.push(big.subarray(20, 100)).map(bytes);
      expect(Buffer.concat(out).equals(big.subarray(0, 100))).toBe(true);
      expect(f.held).toBe(0);
      expect(f.atBoundary).toBe(false);
      expect(Buffer.concat(f.push(big.subarray(100)).map(bytes)).equals(big.subarray(100))).toBe(
        true,
      );
      expect(f.atBoundary).toBe(true);
    });
  });
});

describe('backend messages dfgate builds or reads', () => {
  it('ErrorResponse fields', () => {
    const e = encodeError({
      severity: 'FATAL',
      code: '08P01',
      message: 'bad',
      hint: 'h',
      position: 7,
    });
    expect(e[0]).toBe(0x45);
    expect(e.readInt32BE(1)).toBe(e.length - 1);
    const f = decodeErrorFields(e.subarray(5));
    expect(Object.fromEntries(f)).toEqual({
      S: 'FATAL',
      V: 'FATAL',
      C: '08P01',
      M: 'bad',
      H: 'h',
      P: '7',
    });
  });

  it('ErrorResponse fields from a prefix: those complete in it, none truncated', () => {
    const e = encodeError({
      severity: 'ERROR',
      code: 'P0001',
      message: 'a long message ünïcødé',
      detail: 'd'.repeat(40),
      hint: 'h',
    });
    const body = e.subarray(5);
    const all = decodeErrorFields(body);
    for (let n = 0; n <= body.length; n++) {
      const got = decodeErrorFields(body.subarray(0, n), true);
      // every field whose NUL is inside the prefix, exactly as in the whole message
      let complete = 0;
      for (let pos = 0; body[pos] !== 0; pos = body.indexOf(0, pos + 1) + 1)
        if (body.indexOf(0, pos + 1) < n) complete++;
      expect([...got]).toEqual([...all].slice(0, complete));
    }
    expect(Object.fromEntries(decodeErrorFields(body.subarray(0, 30), true))).toEqual({
      S: 'ERROR',
      V: 'ERROR',
      C: 'P0001',
    });
  });

  it('SASL mechanism lists and backend keys of any length', () => {
    const m = encodeAuthSASL(['SCRAM-SHA-256', 'SCRAM-SHA-256-PLUS']);
    expect(decodeAuth(m.subarray(5))).toEqual({
      code: 10,
      mechanisms: ['SCRAM-SHA-256', 'SCRAM-SHA-256-PLUS'],
    });
    const k = Buffer.concat([Buffer.from([0, 0, 1, 0]), Buffer.alloc(32, 7)]);
    expect(decodeBackendKey(k)).toEqual({ pid: 256, key: Buffer.alloc(32, 7) });
  });
});
