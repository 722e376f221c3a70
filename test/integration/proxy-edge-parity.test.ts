/**
 * The edge and the database agree (issue 11): every golden DSL vector and
 * every error case gives the same answer through dfgate as on a direct
 * connection — the same stored graph, or the same SQLSTATE, message, detail,
 * hint and position — by the simple and the extended protocol. And a
 * statement with invalid UTF-8 gets PostgreSQL's own 22021, byte for byte.
 */
import type pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { Frontend } from '../../src/proxy/protocol/codes.js';
import { encodeFrontend } from '../../src/proxy/protocol/frontend.js';
import type { ProxyServer } from '../../src/proxy/server.js';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { startTestProxy, viaPort } from '../harness/dfgate.js';
import { dslCases } from '../harness/golden.js';
import { loggedIn, type Raw } from '../harness/wire.js';

const db = useTestDatabase();
let role: TestRole;
let direct: pg.Client;
let p: pg.Client;
let proxy: ProxyServer;

beforeAll(async () => {
  role = await db.role('parity', { http: true });
  direct = await db.connect(role.url);
  proxy = await startTestProxy(db.url, { edgeValidation: true });
  p = await db.connect(viaPort(role.url, proxy.port));
});

/** The instance's graph as stored, ids replaced by its shape (comparable across instances). */
async function graphOf(id: string): Promise<unknown> {
  const rows = (
    await direct.query(
      `SELECT n.id, n.node_type, n.query, n.result_name, n.left_node, n.right_node, i.root_node, i.label
         FROM df.nodes n JOIN df.instances i ON i.id = n.instance_id WHERE n.instance_id = $1`,
      [id],
    )
  ).rows;
  const byId = new Map(rows.map((r) => [r.id, r]));
  const visit = (nid: string | null): unknown => {
    const r = nid ? byId.get(nid) : undefined;
    if (!r) return null;
    let query = r.query as string | null;
    try {
      const cfg = JSON.parse(query ?? '');
      if (cfg && typeof cfg === 'object' && !Array.isArray(cfg)) {
        if (cfg.condition_node) cfg.condition_node = visit(cfg.condition_node);
        if (Array.isArray(cfg.extra_nodes)) cfg.extra_nodes = cfg.extra_nodes.map(visit);
        query = JSON.stringify(cfg);
      }
    } catch {
      // plain SQL text
    }
    return [r.node_type, query, r.result_name, visit(r.left_node), visit(r.right_node)];
  };
  return { label: rows[0]?.label ?? null, root: visit(rows[0]?.root_node ?? null) };
}

type Outcome = { graph: unknown } | { error: Record<string, unknown> };

async function outcome(c: pg.Client, sql: string, extended: boolean): Promise<Outcome> {
  try {
    const r = await c.query<{ id: string }>(
      extended ? ({ text: sql, queryMode: 'extended' } as pg.QueryConfig) : sql,
    );
    return { graph: await graphOf(r.rows[0]?.id as string) };
  } catch (e) {
    const x = e as Record<string, unknown>;
    return {
      error: {
        code: x['code'],
        message: x['message'],
        detail: x['detail'],
        hint: x['hint'],
        position: x['position'],
      },
    };
  }
}

const golden = dslCases();
/** Error cases beyond the golden vectors: where the edge's own evaluation could differ. */
const MORE = [
  `df.slep(1)`,
  `'SELECT 1' ~> df.slep(1, 'x')`,
  `df.sleep('abc')`,
  `df.sleep(1e2)`,
  `df.sleep(1.55::numeric(3,1))`,
  `df.sleep('2'::int4)`,
  `df.sleep('1.5'::int4)`,
  `df.wait_for_signal('s', 1.5)`,
  `df.wait_for_signal('s', '1.5')`,
  `df.wait_for_signal('s', 30)`,
  `'SELECT 1'::varchar(3)`,
  `'SELECT 1'::char(20)`,
  `'SELECT 1'::varchar`,
  `'{"node_type": "NOPE"}'`,
  `'{"node_type": "SQL", "query": 5}'`,
  `df.as('SELECT 1', '1bad')`,
  `df.wait_for_schedule('0 0 * *')`,
  `df.http('ftp://x')`,
  `NULL`,
];

describe('golden vectors and error cases: dfgate answers as PostgreSQL does', () => {
  const exprs = [...golden.map((c) => c.expr), ...MORE];
  it('has the cases', () => {
    expect(golden.filter((c) => c.error).length).toBeGreaterThan(10);
    expect(exprs.length).toBeGreaterThan(100);
  });

  for (const extended of [false, true])
    for (const expr of exprs)
      it(`${extended ? 'extended' : 'simple'}: ${expr}`, async () => {
        const sql = `SELECT 'ü→' AS pad, df.start(${expr}, 'parity') AS id`;
        const viaDirect = await outcome(direct, sql, extended);
        const viaProxy = await outcome(p, sql, extended);
        expect(viaProxy).toEqual(viaDirect);
      });

  it('the issue 11 examples', async () => {
    const slep = await outcome(p, `SELECT df.start(df.slep(1)) AS id`, false);
    expect(slep).toEqual({
      error: {
        code: '42883',
        message: 'function df.slep(integer) does not exist',
        detail: undefined,
        hint: 'No function matches the given name and argument types. You might need to add explicit type casts.',
        position: '17',
      },
    });
    const sel = await outcome(p, `SELECT df.start('SELECT 1'::varchar(3), 'v') AS id`, false);
    expect(sel).toEqual({ graph: { label: 'v', root: ['SQL', 'SEL', null, null, null] } });
  });
});

describe('invalid UTF-8 in a statement that calls df.start', () => {
  let viaProxy: Raw;
  let viaDirect: Raw;

  beforeAll(async () => {
    const trust = await db.role('parity_wire');
    await db.admin.query(`GRANT dfgate_trust_logins TO ${trust.ident}`);
    viaProxy = await loggedIn(proxy.port, trust.name, db.name);
    viaDirect = await loggedIn(Number(new URL(db.url).port), trust.name, db.name);
  });

  /** A message of `type` with these body bytes. */
  const msg = (type: number, ...parts: Buffer[]): Buffer => {
    const body = Buffer.concat(parts);
    const head = Buffer.alloc(5);
    head[0] = type;
    head.writeInt32BE(body.length + 4, 1);
    return Buffer.concat([head, body]);
  };
  const z = Buffer.from([0]);
  const bad = (prefix: string, bytes: number[], suffix: string): Buffer =>
    Buffer.concat([Buffer.from(prefix), Buffer.from(bytes), Buffer.from(suffix)]);

  /** The ErrorResponse body the server sends for these messages, on both connections. */
  async function both(bytes: Buffer): Promise<[Buffer, Buffer]> {
    const out: Buffer[] = [];
    for (const r of [viaDirect, viaProxy]) {
      r.sock.write(bytes);
      const msgs = await r.until((t) => t === 'Z');
      const e = msgs.find(([t]) => t === 'E');
      out.push(e ? e[1] : Buffer.alloc(0));
    }
    return out as [Buffer, Buffer];
  }

  const cases: Array<[string, number[]]> = [
    ['a lone continuation byte', [0x80]],
    ['a truncated sequence', [0xc3, 0x28]],
    ['a surrogate', [0xed, 0xa0, 0x80]],
    ['an invalid lead byte', [0xff]],
  ];
  for (const [what, bytes] of cases) {
    it(`${what}: simple Query`, async () => {
      const sql = bad(`SELECT df.start('SELECT ''`, bytes, `''') AS id`);
      const [d, x] = await both(msg(Frontend.Query, sql, z));
      expect(d.toString('latin1')).toContain('C22021');
      expect(d.toString('latin1')).toContain('invalid byte sequence for encoding "UTF8"');
      expect(x.equals(d), `${x.toString('latin1')} vs ${d.toString('latin1')}`).toBe(true);
    });

    it(`${what}: Parse`, async () => {
      const sql = bad(`SELECT df.start('SELECT 1' ~> 'SELECT ''`, bytes, `''') AS id`);
      const parse = msg(Frontend.Parse, z, sql, z, Buffer.from([0, 0]));
      const [d, x] = await both(Buffer.concat([parse, encodeFrontend({ type: 'Sync' })]));
      expect(d.toString('latin1')).toContain('C22021');
      expect(x.equals(d), `${x.toString('latin1')} vs ${d.toString('latin1')}`).toBe(true);
    });

    it(`${what}: a bound workflow value`, async () => {
      const parse = encodeFrontend({
        type: 'Parse',
        name: '',
        sql: `SELECT df.start($1) AS id`,
        paramTypes: [],
      });
      const value = bad(`SELECT '`, bytes, `'`);
      const len = Buffer.alloc(4);
      len.writeInt32BE(value.length);
      const bind = msg(
        Frontend.Bind,
        z,
        z,
        Buffer.from([0, 0, 0, 1]),
        len,
        value,
        Buffer.from([0, 0]),
      );
      const rest = [
        encodeFrontend({ type: 'Execute', portal: '', maxRows: 0 }),
        encodeFrontend({ type: 'Sync' }),
      ];
      const [d, x] = await both(Buffer.concat([parse, bind, ...rest]));
      expect(d.toString('latin1')).toContain('C22021');
      expect(x.equals(d), `${x.toString('latin1')} vs ${d.toString('latin1')}`).toBe(true);
    });
  }
});
