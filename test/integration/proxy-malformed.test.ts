/**
 * Malformed client messages answered exactly as PostgreSQL answers them on a
 * direct connection: an ErrorResponse and a skip to Sync (connection kept)
 * for a message whose body does not match its declared contents; FATAL for an
 * unknown type; a silent close for a bad length. Every case also with the
 * frame split at every offset.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { encodeStartup } from '../../src/proxy/protocol/frontend.js';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { startTestProxy } from '../harness/dfgate.js';
import { exchange, render } from '../harness/wire.js';

const db = useTestDatabase();
let role: TestRole;
let via: number;
let direct: number;
let startup: Buffer;

beforeAll(async () => {
  role = await db.role('malformed');
  await db.admin.query(`GRANT dfgate_trust_logins TO ${role.ident}`);
  // edge validation on: dfgate decodes Query and Parse that mention df., and Binds of df.start($n)
  via = (await startTestProxy(db.url, { edgeValidation: true })).port;
  direct = Number(new URL(db.url).port);
  startup = encodeStartup({
    type: 'StartupMessage',
    version: 196608,
    params: [
      ['user', role.name],
      ['database', db.name],
    ],
  });
});

function msg(t: string, ...parts: Array<Buffer | string>): Buffer {
  const body = Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p) : p)));
  const h = Buffer.alloc(5);
  h[0] = t.charCodeAt(0);
  h.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([h, body]);
}
const i16 = (n: number): Buffer => {
  const b = Buffer.alloc(2);
  b.writeInt16BE(n);
  return b;
};
const i32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
};
const sync = msg('S');
const after = msg('Q', 'SELECT 42\0');
/** A statement dfgate tracks (its Binds are decoded), and one it does not. */
const dfParse = msg('P', 'd1\0', 'SELECT df.start($1)\0', i16(0));
const plainParse = msg('P', 's1\0', 'SELECT $1::text\0', i16(0));

/** [name, what comes before (not split), the malformed frame (split at every offset), what follows] */
const CASES: Array<readonly [string, Buffer, Buffer, Buffer, 'kept' | 'fatal' | 'silent']> = [
  [
    'a Bind of a tracked statement declaring 2 parameters, sending 1',
    Buffer.concat([dfParse, sync]),
    msg('B', '\0d1\0', i16(0), i16(2), i32(1), 'x'),
    Buffer.concat([msg('E', '\0', i32(0)), sync, after]),
    'kept',
  ],
  [
    'a Bind of a tracked statement with a parameter shorter than its length',
    Buffer.concat([dfParse, sync]),
    msg('B', '\0d1\0', i16(0), i16(1), i32(10), 'x', i16(0)),
    Buffer.concat([sync, after]),
    'kept',
  ],
  [
    'a Bind of a tracked statement with parameter count 0xffff',
    Buffer.concat([dfParse, sync]),
    msg('B', '\0d1\0', i16(0), i16(-1)),
    Buffer.concat([sync, after]),
    'kept',
  ],
  [
    'a Bind of a tracked statement with 2 formats for 1 parameter',
    Buffer.concat([dfParse, sync]),
    msg('B', '\0d1\0', i16(2), i16(0), i16(0), i16(1), i32(1), 'x', i16(0)),
    Buffer.concat([sync, after]),
    'kept',
  ],
  [
    'a Bind of a tracked statement with trailing bytes',
    Buffer.concat([dfParse, sync]),
    msg('B', '\0d1\0', i16(0), i16(1), i32(1), 'x', i16(0), 'zz'),
    Buffer.concat([sync, after]),
    'kept',
  ],
  [
    'a Close with an invalid subtype while a statement is tracked',
    Buffer.concat([dfParse, sync]),
    msg('C', 'X', '\0'),
    Buffer.concat([sync, after]),
    'kept',
  ],
  [
    'a df. Query without its terminating NUL, inside a transaction',
    msg('Q', 'BEGIN\0'),
    msg('Q', 'SELECT df.x'),
    Buffer.concat([after, msg('Q', 'ROLLBACK\0'), after]),
    'kept',
  ],
  ['a df. Query with trailing bytes', Buffer.alloc(0), msg('Q', 'SELECT df.x\0zz'), after, 'kept'],
  [
    'a df. Parse declaring 3 parameter types, sending 1',
    Buffer.alloc(0),
    msg('P', 's2\0', 'SELECT df.x\0', i16(3), i32(23)),
    Buffer.concat([msg('D', 'S', 's2\0'), sync, after]),
    'kept',
  ],
  [
    'a Bind of an untracked statement declaring 2 parameters, sending 1',
    Buffer.concat([plainParse, sync]),
    msg('B', '\0s1\0', i16(0), i16(2), i32(1), 'x'),
    Buffer.concat([sync, after]),
    'kept',
  ],
  ['an unknown message type', sync, msg('z'), after, 'fatal'],
  ['a length below 4', sync, Buffer.from([0x51, 0, 0, 0, 2]), after, 'silent'],
  ['a Sync over 10,000 bytes', sync, msg('S', Buffer.alloc(10_000)), after, 'silent'],
];

describe('malformed messages, compared with a direct connection', () => {
  it.each(CASES)('%s', async (_name, before, frame, rest, outcome) => {
    const whole = [Buffer.concat([before, frame, rest])];
    const d = await exchange(direct, startup, whole);
    const v = await exchange(via, startup, whole);
    expect(render(v)).toBe(render(d));
    if (outcome !== 'fatal') expect(v.equals(d)).toBe(true); // the server's own bytes
    const text = render(d);
    if (outcome === 'kept') {
      expect(text).toMatch(/^E S=ERROR \| V=ERROR \| C=08P01/m);
      expect(text).toMatch(/^D 0001000000023432$/m); // SELECT 42 answered: connection kept
    } else if (outcome === 'fatal') expect(text).toMatch(/^E S=FATAL \| V=FATAL \| C=08P01/m);
    else expect(text).not.toMatch(/^E /m);
    if (outcome !== 'kept') expect(text).not.toMatch(/^D 0001000000023432$/m);
    // the malformed frame split at every offset gets the same answers
    for (let cut = 1; cut < Math.min(frame.length, 40); cut++) {
      const pieces = [
        Buffer.concat([before, frame.subarray(0, cut)]),
        Buffer.concat([frame.subarray(cut), rest]),
      ];
      expect(render(await exchange(via, startup, pieces)), `split at ${cut}`).toBe(text);
    }
  });
});
