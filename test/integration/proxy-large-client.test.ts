/**
 * Client messages too long for dfgate to look into whole: any login may send
 * a Query, Parse or Bind of up to 1 GB, and dfgate assembles those it
 * inspects (statements that may call df.*, Binds of checked statements, and in
 * transaction mode every Query, Parse and Bind). Past CLIENT_INSPECT_MAX it
 * keeps only their first bytes and streams the rest to the server as it
 * arrives: the client gets the answer a direct connection gets, byte for
 * byte, and three logins sending 150 MB each no longer take the process to
 * gigabytes (docs/proxy.md, "Very large client messages").
 */
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { CLIENT_INSPECT_MAX } from '../../src/proxy/protocol/codes.js';
import { encodeFrontend } from '../../src/proxy/protocol/frontend.js';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import {
  procKb,
  spawnDfgate,
  startTestProxy,
  viaPort,
  whileAliveOf,
  type DfgateProcess,
} from '../harness/dfgate.js';
import {
  errorOf,
  hashingClient,
  loggedIn,
  longMessage,
  unnamedBind,
  type Answer,
} from '../harness/wire.js';
import { watchFramers, type FramerWatch } from '../harness/framer-watch.js';

const db = useTestDatabase();
const MIB = 1024 * 1024;
/** The long messages of the in-process tests (their answers are compared with a direct connection's). */
const N = 20 * MIB;

/** A login without any dfgate grant that logs in with trust (for the raw clients). */
let trust: TestRole;
const ports = { session: 0, transaction: 0, direct: 0 };

/** The most bytes a framer held (a message partly assembled) after any push. */
let framers: FramerWatch;

beforeAll(async () => {
  trust = await db.role('trust', { grant: false });
  await db.admin.query(`GRANT dfgate_trust_logins TO ${trust.ident}`);
  await db.admin.query(`GRANT CREATE ON SCHEMA public TO ${trust.ident}`);
  // edge validation on: Query, Parse and the Binds of df.start statements are looked into
  for (const mode of ['session', 'transaction'] as const)
    ports[mode] = (
      await startTestProxy(db.url, {
        poolMode: mode,
        edgeValidation: true,
        maxMessageSize: 1 << 30,
      })
    ).port;
  ports.direct = Number(new URL(db.url).port);
  framers = watchFramers();
});

afterAll(() => {
  vi.restoreAllMocks();
});

const sync = encodeFrontend({ type: 'Sync' });
const q = (s: string): Buffer => Buffer.from(s);
/** The statement whose Binds the edge checks: from it on, a session's Query, Parse and Bind are inspected. */
const tracked = encodeFrontend({
  type: 'Parse',
  name: 'w',
  sql: 'SELECT df.start($1)',
  paramTypes: [],
});

/** A Query whose text is `before`, `size` bytes of x, then `after`. */
const longQuery = (before: string, after: string, size = N): Iterable<Buffer> =>
  longMessage('Q', q(before), size, q(`${after}\0`));

/** A Parse of `name` whose text is `before`, `size` bytes of x, then `after` (no parameter types). */
const longParse = (name: string, before: string, after: string, size = N): Iterable<Buffer> =>
  longMessage('P', q(`${name}\0${before}`), size, Buffer.from(`${after}\0\0\0`));

/** A Bind of `statement` (unnamed portal, text formats) with one parameter of `size` bytes of x. */
function* longBind(statement: string, size = N): Iterable<Buffer> {
  const head = Buffer.alloc(8);
  head.writeInt16BE(0, 0); // no parameter format codes: text
  head.writeInt16BE(1, 2); // one parameter
  head.writeInt32BE(size, 4);
  yield* longMessage('B', Buffer.concat([q(`\0${statement}\0`), head]), size, Buffer.alloc(2));
}

const execute = Buffer.concat([
  encodeFrontend({ type: 'Describe', kind: 'P', name: '' }),
  encodeFrontend({ type: 'Execute', portal: '', maxRows: 0 }),
  sync,
]);

type Client = Awaited<ReturnType<typeof hashingClient>>;

/** Runs the same exchanges directly and through dfgate; every answer must be identical. */
async function sameAsDirect(
  port: number,
  steps: ReadonlyArray<(c: Client) => Promise<Answer>>,
): Promise<Answer[]> {
  const direct = await hashingClient(ports.direct, trust.name, db.name);
  const via = await hashingClient(port, trust.name, db.name);
  const answers: Answer[] = [];
  try {
    for (const step of steps) {
      const want = await step(direct);
      framers.maxHeld = 0;
      const got = await step(via);
      expect(got).toEqual(want);
      expect(framers.maxHeld).toBeLessThanOrEqual(5 + CLIENT_INSPECT_MAX);
      answers.push(got);
    }
    expect((await via.query('SELECT 1')).types).toEqual(['T', 'D', 'C', 'Z']);
  } finally {
    direct.end();
    via.end();
  }
  return answers;
}

describe.each(['session', 'transaction'] as const)('%s mode', (mode) => {
  it('20 MiB Queries get the answers a direct connection gets, byte for byte, holding at most CLIENT_INSPECT_MAX of them', async () => {
    const answers = await sameAsDirect(ports[mode], [
      (c) => c.send([tracked, sync]),
      (c) => c.send(longQuery(`SELECT length('`, `') AS n`)),
      (c) => c.send(longQuery(`SELECT 1/0 /*`, `*/`)),
      // a df call in a statement too long to look into reaches the database's df (no grant here)
      (c) => c.send(longQuery(`SELECT df.status('x') /*`, `*/`)),
      (c) => c.send(longQuery(`SELECT length('`, `'); DEALLOCATE ALL; SET work_mem = '7MB'`)),
    ]);
    expect(answers.map((a) => a.types.join(''))).toEqual(['EZ', 'TDCZ', 'EZ', 'EZ', 'TDCCCZ']);
  });

  it('a 20 MiB unnamed Parse, and a 20 MiB value bound to a statement prepared in an earlier transaction, answer as directly', async () => {
    const answers = await sameAsDirect(ports[mode], [
      (c) => c.send([tracked, sync]),
      (c) => c.send([...longParse('', `SELECT length('`, `') AS n`), unnamedBind(), execute]),
      (c) =>
        c.send([
          encodeFrontend({
            type: 'Parse',
            name: 'len',
            sql: 'SELECT length($1::text) AS n',
            paramTypes: [],
          }),
          sync,
        ]),
      (c) => c.send([...longBind('len'), execute]),
      (c) => c.send([...longBind('missing'), execute]),
      // a named one: session mode prepares it like a short one (transaction mode: below)
      ...(mode === 'session'
        ? [(c: Client) => c.send([...longParse('big', `SELECT length('`, `') AS n`), sync])]
        : []),
    ]);
    expect(answers.map((a) => a.types.join(''))).toEqual([
      'EZ',
      '12TDCZ',
      '1Z',
      '2TDCZ',
      'EZ',
      ...(mode === 'session' ? ['1Z'] : []),
    ]);
  });
});

describe('transaction mode', () => {
  it('a long Bind of a statement prepared on another server connection: prepared there first, its name rewritten as it streams', async () => {
    const prepare = encodeFrontend({
      type: 'Parse',
      name: 'len',
      sql: 'SELECT length($1::text) AS n',
      paramTypes: [],
    });
    const direct = await hashingClient(ports.direct, trust.name, db.name);
    await direct.send([prepare, sync]);
    const want = await direct.send([...longBind('len'), execute]);
    direct.end();
    const holder = await db.connect(viaPort(trust.url, ports.transaction));
    const a = await hashingClient(ports.transaction, trust.name, db.name);
    try {
      expect((await a.send([prepare, sync])).types).toEqual(['1', 'Z']);
      // the connection that served it (the last one back in the pool) is taken by another client
      await holder.query('BEGIN');
      const there = await holder.query('SELECT count(*)::int AS n FROM pg_prepared_statements');
      expect(there.rows).toEqual([{ n: 1 }]);
      framers.maxHeld = 0;
      expect(await a.send([...longBind('len'), execute])).toEqual(want);
      expect(framers.maxHeld).toBeLessThanOrEqual(5 + CLIENT_INSPECT_MAX);
      await holder.query('COMMIT');
    } finally {
      a.end();
    }
  });

  it('a named Parse over CLIENT_INSPECT_MAX is refused with 0A000 (a copy would be needed to prepare it elsewhere); the connection goes on', async () => {
    const c = await loggedIn(ports.transaction, trust.name, db.name);
    framers.maxHeld = 0;
    for (const p of [...longParse('big', `SELECT length('`, `') AS n`), execute])
      if (!c.sock.write(p)) await once(c.sock, 'drain');
    const msgs = await c.until((t) => t === 'Z');
    expect(msgs.map(([t]) => t)).toEqual(['E', 'Z']);
    expect(errorOf(msgs)).toMatchObject({
      S: 'ERROR',
      C: '0A000',
      M: `a named prepared statement over ${CLIENT_INSPECT_MAX} bytes is not supported in dfgate's transaction pooling mode (--pool-mode transaction): the next transaction may run on another server connection`,
    });
    expect(errorOf(msgs)?.['H']).toMatch(/unnamed statement/);
    expect(framers.maxHeld).toBeLessThanOrEqual(5 + CLIENT_INSPECT_MAX);
    c.sock.write(encodeFrontend({ type: 'Query', sql: 'SELECT 1' }));
    expect((await c.until((t) => t === 'Z')).map(([t]) => t)).toEqual(['T', 'D', 'C', 'Z']);
    c.sock.end();
  });

  it('a long Query that may leave session state behind (not looked at) leaves none for the next client: DISCARD ALL', async () => {
    // one server connection for both clients: the second login replaces the first's
    const small = await startTestProxy(db.url, { poolMode: 'transaction', poolSize: 1 });
    const a = await hashingClient(small.port, trust.name, db.name);
    const b = await db.connect(viaPort(trust.url, small.port));
    const kept = { name: 'kept', text: 'SELECT 1 AS one' };
    const prepared = async (): Promise<unknown> =>
      (await b.query('SELECT count(*)::int AS n FROM pg_prepared_statements')).rows;
    const workMem = (await db.admin.query(`SELECT current_setting('work_mem') AS w`)).rows;
    try {
      expect((await b.query(kept)).rows).toEqual([{ one: 1 }]);
      // not refused (as a short one would be) nor tracked: its statements are not looked at
      const ran = await a.send(
        longQuery(
          `LISTEN long_chan; CREATE TEMP TABLE long_t AS SELECT 1 AS n; SET work_mem = '7MB'; SELECT length('`,
          `')`,
          2 * MIB,
        ),
      );
      expect(ran.types.join('')).toBe('CCCTDCZ');
      expect((await b.query('SELECT pg_listening_channels() AS c')).rows).toEqual([]);
      expect((await b.query(`SELECT current_setting('work_mem') AS w`)).rows).toEqual(workMem);
      expect((await b.query(`SELECT to_regclass('pg_temp.long_t') AS t`)).rows).toEqual([
        { t: null },
      ]);
      expect(await prepared()).toEqual([{ n: 0 }]);
      // dfgate prepares it again where it is gone
      expect((await b.query(kept)).rows).toEqual([{ one: 1 }]);
      expect(await prepared()).toEqual([{ n: 1 }]);
      // a long Query without any of the words looked for leaves the connection as it is
      expect((await a.send(longQuery(`SELECT length('`, `')`, 2 * MIB))).types.join('')).toBe(
        'TDCZ',
      );
      expect(await prepared()).toEqual([{ n: 1 }]);
    } finally {
      a.end();
    }
  });
});

describe.each(['session', 'transaction'] as const)('a dfgate process, %s mode', (mode) => {
  let d: DfgateProcess;

  beforeAll(async () => {
    d = await spawnDfgate([
      '--upstream',
      `${db.url}?sslmode=disable`,
      '--no-migrate',
      '--no-executor',
      '--pool-mode',
      mode,
    ]);
  });

  afterAll(async () => {
    await d?.stop();
  });

  it('three logins sending 150 MB Queries at once: dfgate stays under 300 MB, alive, serving another session', async () => {
    const size = 150 * MIB;
    const clients = await Promise.all(
      [0, 1, 2].map(() => hashingClient(d.port, trust.name, db.name)),
    );
    // with a statement whose Binds are checked, session mode looks into every Query too
    for (const c of clients) expect((await c.send([tracked, sync])).types).toEqual(['E', 'Z']);
    const other = await db.connect(viaPort(trust.url, d.port));
    let done = false;
    let served = 0;
    const meanwhile = (async () => {
      while (!done) {
        expect((await other.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
        served++;
      }
    })();
    try {
      const answers = await whileAliveOf(
        d,
        Promise.all(
          clients.map((c, i) =>
            // a word transaction mode looks for, so that it would look at all of it
            c.send(longQuery(`SELECT df.status('x') /* set ${i} `, `*/`, size)),
          ),
        ),
      );
      expect(answers.map((a) => a.types.join(''))).toEqual(['EZ', 'EZ', 'EZ']);
    } finally {
      done = true;
      await meanwhile;
      for (const c of clients) c.end();
    }
    expect(served).toBeGreaterThan(0);
    // holding them whole took it to 0.5-1 GB (3 GB with 350 MB messages; docs/security.md)
    expect(procKb(d.proc.pid as number, 'VmHWM')).toBeLessThan(300 * 1024);
  }, 180_000);
});
