/**
 * df._complete_step writes a checkpoint without stamps (migration 0030) or
 * with one stamp on a third node (migration 0032) by primary key, any other
 * through one statement that joins stamps and marks. It must leave the same
 * rows as the function that always joined (migration 0028) and raise the
 * same errors, for every p_after, well formed or not. The test loads 0028's
 * function under another name, runs each case on instances of the same
 * workflow (one through each function, and once more with two stamps of
 * nodes no instance has, which send the new function down its joined
 * statement and write nothing), and compares the instance, its events and
 * its nodes column by column. Both plan-cache modes: a generic
 * plan does not fold what a custom plan folds. Real PostgreSQL, the
 * submitting role's session.
 */
import { readFileSync } from 'node:fs';
import type pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { useTestDatabase, type TestRole } from '../harness/db.js';

const db = useTestDatabase();
let role: TestRole;
let c: pg.Client;

beforeAll(async () => {
  role = await db.role('ckpt');
  c = await db.connect(role.url);
  // the checkpoint as migration 0028 wrote it, under another name
  const old = readFileSync(
    new URL('../../migrations/0028_checkpoint_one_instance_update.sql', import.meta.url),
    'utf8',
  );
  const fn = old.slice(old.indexOf('CREATE OR REPLACE FUNCTION df._complete_step('));
  await db.admin.query(fn.replace('df._complete_step(', 'df._complete_step_0028('));
});

const TOKEN_HASH = `encode(sha256('tok'::bytea), 'hex')`;
/** Step 2's activation k2 has its outcome recorded already: a mark of it is skipped. */
async function recordStep2(ch: Chain): Promise<void> {
  await db.admin.query(
    `INSERT INTO df.events (instance_id, submitted_by, node_id, kind, detail, seq, activation)
     SELECT $1::text, submitted_by, $2::text, 'done', '{"result":"x"}', 1, 'k2'
       FROM df.instances WHERE id = $1::text`,
    [ch.id, ch.steps[1]],
  );
  await db.admin.query(`UPDATE df.instances SET event_seq = 1 WHERE id = $1`, [ch.id]);
}

/** Stamps of node ids no instance has: two of them send the checkpoint down the joined path. */
const NOWHERE = [
  { id: 'ffffffff', status: 'completed', result: null, stamp: 'x::1', extra: null },
  { id: 'fffffffe', status: 'failed', result: '"x"', stamp: 'x::2', extra: '{"attempt":2}' },
];

interface Chain {
  id: string;
  /** The SQL nodes in order. */
  steps: string[];
  /** The THEN nodes: the inner one (steps 1 and 2), then the root. */
  thens: string[];
}

/** A chain of three SQL steps, its first attempt of step 1 in flight (epoch 3, activation k1, token 'tok'). */
async function chain(): Promise<Chain> {
  const id = (
    await c.query<{ id: string }>(
      `SELECT df.start('SELECT 1 AS a' ~> 'SELECT 2 AS b' ~> 'SELECT 3 AS c') AS id`,
    )
  ).rows[0]?.id as string;
  const steps = (
    await db.admin.query<{ id: string }>(
      `SELECT id FROM df.nodes WHERE instance_id = $1 AND node_type = 'SQL' ORDER BY query`,
      [id],
    )
  ).rows.map((r) => r.id);
  const thens = (
    await db.admin.query<{ id: string }>(
      `SELECT id FROM df.nodes WHERE instance_id = $1 AND node_type = 'THEN'
        ORDER BY left_node = $2 DESC`,
      [id, steps[0]],
    )
  ).rows.map((r) => r.id);
  await db.admin.query(
    `UPDATE df.instances SET lease_epoch = 3, status = 'running', lease_owner = 'test',
            lease_expires_at = now() + interval '1 minute' WHERE id = $1`,
    [id],
  );
  await db.admin.query(
    `UPDATE df.nodes SET activation = 'k1', attempt_token = ${TOKEN_HASH}, status = 'running'
      WHERE instance_id = $1 AND id = $2`,
    [id, steps[0]],
  );
  return { id, steps, thens };
}

/** The rows a checkpoint leaves, without what differs between two instances by construction. */
async function state(ch: Chain): Promise<unknown> {
  const inst = await db.admin.query(
    `SELECT status, output, error, event_seq, lease_owner, completed_at IS NOT NULL AS done
       FROM df.instances WHERE id = $1`,
    [ch.id],
  );
  const nodes = await db.admin.query(
    `SELECT node_type, query, status, result, attempts, attempt_token,
            replace(activation, $1, 'I') AS activation,
            replace(status_details::text, $1, 'I') AS details,
            (SELECT l.node_type FROM df.nodes l WHERE l.instance_id = n.instance_id AND l.id = n.left_node) AS left_type
       FROM df.nodes n WHERE instance_id = $1 ORDER BY node_type, query, 9`,
    [ch.id],
  );
  const events = await db.admin.query(
    `SELECT kind, detail, seq, activation FROM df.events WHERE instance_id = $1 ORDER BY seq`,
    [ch.id],
  );
  return { inst: inst.rows, nodes: nodes.rows, events: events.rows };
}

type Way = 'old' | 'new' | 'joined';

/**
 * Runs one checkpoint of step 1 of `ch`: through 0028's function (old), the
 * new one (new), or the new one with the stamp of nowhere added (joined).
 * Returns the SQLSTATE it raised, if any.
 */
async function checkpoint(
  ch: Chain,
  after: unknown,
  way: Way,
  token = 'tok',
  kind = 'done',
): Promise<string | undefined> {
  const a = after as Record<string, unknown> | null;
  const sent =
    way !== 'joined'
      ? a
      : a !== null && typeof a === 'object' && !Array.isArray(a)
        ? { ...a, stamps: [...(Array.isArray(a['stamps']) ? (a['stamps'] as []) : []), ...NOWHERE] }
        : a === null
          ? { stamps: NOWHERE }
          : a;
  const fn = way === 'old' ? 'df._complete_step_0028' : 'df._complete_step';
  try {
    await c.query('BEGIN');
    await c.query(`SELECT ${fn}($1, $2, 'k1', 3, $3, $4, $5::jsonb, $6, $7::jsonb)`, [
      ch.id,
      ch.steps[0],
      token,
      kind,
      JSON.stringify(kind === 'done' ? { result: '{"rows":[{"a":1}]}' } : { error: 'boom' }),
      `${ch.id}::1`,
      sent === null ? null : JSON.stringify(sent),
    ]);
    await c.query('COMMIT');
    return undefined;
  } catch (err) {
    await c.query('ROLLBACK');
    return (err as { code?: string }).code;
  }
}

const mark = (ch: Chain, node: string, activation: string) => ({
  node,
  activation,
  token_hash: 'a'.repeat(64),
  stamp: `${ch.id}::1`,
  attempt: 1,
});

/** The inner THEN node completes with step 1's result (as in a chain of SQL steps), plus `fields`. */
const stamp = (ch: Chain, fields: Record<string, unknown> = {}) => ({
  id: ch.thens[0],
  status: 'completed',
  result: '{"rows":[{"a":1}]}',
  stamp: `${ch.id}::1`,
  extra: null,
  ...fields,
});

const bad = (ch: Chain, node: string | null, attempt: unknown) => ({
  marks: [{ ...mark(ch, node as string, 'k7'), node, attempt }],
});

describe('a checkpoint writes the same rows and raises the same errors as before migration 0030', () => {
  const cases: Array<{
    name: string;
    after: (ch: Chain) => unknown;
    token?: string;
    kind?: string;
    setup?: (ch: Chain) => Promise<void>;
  }> = [
    { name: 'nothing carried', after: () => null },
    { name: 'an empty object', after: () => ({}) },
    { name: 'a failure', after: () => null, kind: 'failed' },
    {
      name: "the next step's mark",
      after: (ch) => ({ marks: [mark(ch, ch.steps[1] as string, 'k2')] }),
    },
    {
      name: "the next step's mark with a failure",
      after: (ch) => ({ marks: [mark(ch, ch.steps[1] as string, 'k2')] }),
      kind: 'failed',
    },
    {
      name: 'a mark and the completion',
      after: (ch) => ({
        marks: [mark(ch, ch.steps[1] as string, 'k2')],
        finish: { output: '{"rows":[]}' },
      }),
    },
    {
      name: 'two marks, one of them the step itself (skipped)',
      after: (ch) => ({
        marks: [mark(ch, ch.steps[0] as string, 'k1b'), mark(ch, ch.steps[2] as string, 'k3')],
      }),
    },
    {
      name: 'one mark, naming the step itself (skipped)',
      after: (ch) => ({ marks: [mark(ch, ch.steps[0] as string, 'k1b')] }),
    },
    {
      name: "one mark with the step's own activation (skipped)",
      after: (ch) => ({ marks: [mark(ch, ch.steps[1] as string, 'k1')] }),
    },
    {
      name: 'one mark of a node the instance does not have',
      after: (ch) => ({ marks: [mark(ch, 'eeeeeeee', 'k8')] }),
    },
    {
      name: 'one mark of a node id with a trailing space',
      after: (ch) => ({ marks: [mark(ch, `${ch.steps[1] as string} `, 'k2')] }),
    },
    {
      name: 'a mark whose activation has an outcome already (skipped)',
      after: (ch) => ({ marks: [mark(ch, ch.steps[1] as string, 'k2')] }),
      setup: recordStep2,
    },
    { name: 'a mark that is not an object (refused)', after: () => ({ marks: [5] }) },
    { name: 'a mark that is null', after: () => ({ marks: [null] }) },
    { name: 'a mark without a node (skipped)', after: () => ({ marks: [{ activation: 'k9' }] }) },
    { name: 'marks that are not an array', after: () => ({ marks: { node: 'x' } }) },
    { name: 'p_after a number', after: () => 5 },
    { name: 'p_after a string', after: () => 'finish' },
    { name: 'p_after an array', after: () => ['finish'] },
    { name: 'stamps that are not an array', after: () => ({ stamps: 5 }) },
    {
      name: 'an empty stamps array and a mark',
      after: (ch) => ({ stamps: [], marks: [mark(ch, ch.steps[1] as string, 'k2')] }),
    },
    {
      name: 'a mark with null and odd fields on a live node',
      after: (ch) => ({
        marks: [
          {
            node: ch.steps[1],
            activation: null,
            token_hash: 5,
            stamp: { x: [1, 2.5] },
            attempt: '7',
          },
        ],
      }),
    },
    {
      name: 'a mark without an attempt on a live node (refused)',
      after: (ch) => ({ marks: [{ node: ch.steps[1], activation: 'k2', stamp: 's' }] }),
    },
    { name: 'the completion', after: () => ({ finish: { output: '{"rows":[]}' } }) },
    { name: 'a stale token (DF002)', after: () => null, token: 'other' },
    // a stale attempt is reported before the instance's state (migration 0037 checks the attempt
    // inside the instance's UPDATE and looks at the node first when that finds nothing)
    {
      name: 'a stale token on a finished instance (DF002)',
      after: () => ({ finish: { output: '{"rows":[]}' } }),
      token: 'other',
      setup: async (ch) => {
        await db.admin.query(`UPDATE df.instances SET status = 'completed' WHERE id = $1`, [ch.id]);
      },
    },
    {
      name: 'a stale token after a takeover (DF002)',
      after: () => null,
      token: 'other',
      setup: async (ch) => {
        await db.admin.query(`UPDATE df.instances SET lease_epoch = 4 WHERE id = $1`, [ch.id]);
      },
    },
    {
      name: 'a current token after a takeover (DF001)',
      after: () => null,
      setup: async (ch) => {
        await db.admin.query(`UPDATE df.instances SET lease_epoch = 4 WHERE id = $1`, [ch.id]);
      },
    },
    {
      name: 'a current token on a cancelled instance (DF003)',
      after: () => null,
      setup: async (ch) => {
        await db.admin.query(`UPDATE df.instances SET status = 'cancelled' WHERE id = $1`, [ch.id]);
      },
    },
    {
      name: 'a stale token with malformed marks (DF002)',
      after: () => ({ marks: [5] }),
      token: 'x',
    },
    // one stamp (migration 0032's primary-key path, unless it names the step or the marked node)
    {
      name: "a stamp and the next step's mark (a chain of SQL steps)",
      after: (ch) => ({ stamps: [stamp(ch)], marks: [mark(ch, ch.steps[1] as string, 'k2')] }),
    },
    { name: 'a stamp alone', after: (ch) => ({ stamps: [stamp(ch)] }) },
    {
      name: 'a stamp of the root and the completion',
      after: (ch) => ({
        stamps: [stamp(ch, { id: ch.thens[1] })],
        finish: { output: '{"rows":[{"a":1}]}' },
      }),
    },
    {
      name: 'a stamp and a mark with a failure',
      after: (ch) => ({ stamps: [stamp(ch)], marks: [mark(ch, ch.steps[1] as string, 'k2')] }),
      kind: 'failed',
    },
    {
      name: 'a running stamp without a result',
      after: (ch) => ({
        stamps: [stamp(ch, { id: ch.thens[1], status: 'running', result: null })],
        marks: [mark(ch, ch.steps[2] as string, 'k3')],
      }),
    },
    {
      name: 'a failed stamp with a retry policy extra',
      after: (ch) => ({
        stamps: [
          stamp(ch, {
            status: 'failed',
            result: '"boom"',
            extra: '{"attempt":3,"last_error":"boom","next_attempt_at":"2026-12-05"}',
          }),
        ],
        marks: [mark(ch, ch.steps[1] as string, 'k2')],
      }),
    },
    ...(['null', '[1,2]', '"s"', '{"attempt":null}', '{}', '{"attempt":"4"}'] as const).map(
      (extra) => ({
        name: `a stamp whose extra is ${extra}`,
        after: (ch: Chain) => ({ stamps: [stamp(ch, { extra })] }),
      }),
    ),
    {
      name: 'a stamp whose result is not JSON text (refused)',
      after: (ch) => ({ stamps: [stamp(ch, { result: 'not json' })] }),
    },
    {
      name: 'a stamp whose extra is not JSON text (refused)',
      after: (ch) => ({ stamps: [stamp(ch, { extra: '{' })] }),
    },
    ...(['"x"', '1.5', '99999999999', 'true', '{"a":1}'] as const).map((attempt) => ({
      name: `a stamp whose extra's attempt is ${attempt} (refused)`,
      after: (ch: Chain) => ({ stamps: [stamp(ch, { extra: `{"attempt":${attempt}}` })] }),
    })),
    {
      name: "a stamp with a bad result, extra and attempt (refused: the first one's error)",
      after: (ch) => ({ stamps: [stamp(ch, { result: '{', extra: '{"attempt":99999999999}' })] }),
    },
    {
      name: "a stamp with a bad extra's attempt and result (refused: the first one's error)",
      after: (ch) => ({ stamps: [stamp(ch, { result: 'x', extra: '{"attempt":99999999999}' })] }),
    },
    {
      name: 'a stamp with a status the table refuses (refused)',
      after: (ch) => ({ stamps: [stamp(ch, { status: 'sideways' })] }),
    },
    {
      name: 'a stamp whose status is not text (refused)',
      after: (ch) => ({ stamps: [stamp(ch, { status: 5 })] }),
    },
    {
      name: 'a stamp whose fields are JSON values other than text',
      after: (ch) => ({
        stamps: [stamp(ch, { result: { rows: [1, 2.5] }, stamp: 7, extra: { attempt: 2 } })],
      }),
    },
    {
      name: 'a stamp of a node the instance does not have, with bad fields (nothing converted)',
      after: (ch) => ({
        stamps: [stamp(ch, { id: 'eeeeeeee', result: 'x', extra: '{"attempt":"y"}' })],
        marks: [mark(ch, ch.steps[1] as string, 'k2')],
      }),
    },
    {
      name: 'a stamp of a node id with a trailing space',
      after: (ch) => ({ stamps: [stamp(ch, { id: `${ch.thens[0] as string} ` })] }),
    },
    {
      name: 'a stamp of the step itself (joined)',
      after: (ch) => ({
        stamps: [stamp(ch, { id: ch.steps[0], extra: '{"attempt":2}' })],
        marks: [mark(ch, ch.steps[1] as string, 'k2')],
      }),
    },
    {
      name: 'a stamp of the marked node (joined)',
      after: (ch) => ({
        stamps: [stamp(ch, { id: ch.steps[1] })],
        marks: [mark(ch, ch.steps[1] as string, 'k2')],
      }),
    },
    {
      name: 'a stamp of the node of a mark that names the step itself',
      after: (ch) => ({
        stamps: [stamp(ch)],
        marks: [mark(ch, ch.steps[0] as string, 'k1b')],
      }),
    },
    {
      name: 'a stamp and a mark whose activation has an outcome already (skipped)',
      after: (ch) => ({ stamps: [stamp(ch)], marks: [mark(ch, ch.steps[1] as string, 'k2')] }),
      setup: recordStep2,
    },
    {
      name: 'a stamp and two marks (joined)',
      after: (ch) => ({
        stamps: [stamp(ch)],
        marks: [mark(ch, ch.steps[1] as string, 'k2'), mark(ch, ch.steps[2] as string, 'k3')],
      }),
    },
    {
      name: 'a stamp and a mark that is not an object (refused)',
      after: (ch) => ({ stamps: [stamp(ch)], marks: [5] }),
    },
    {
      name: 'a stamp and a mark without an attempt (refused)',
      after: (ch) => ({
        stamps: [stamp(ch)],
        marks: [{ node: ch.steps[1], activation: 'k2', stamp: 's' }],
      }),
    },
    ...([5, null, 'x', [1]] as unknown[]).map((s) => ({
      name: `a stamp that is ${JSON.stringify(s)}`,
      after: () => ({ stamps: [s] }),
    })),
    ...([5, null, { a: 1 }] as unknown[]).map((id) => ({
      name: `a stamp whose id is ${JSON.stringify(id)}`,
      after: (ch: Chain) => ({ stamps: [stamp(ch, { id })] }),
    })),
    {
      name: 'a stamp with a stale token (DF002)',
      after: (ch) => ({ stamps: [stamp(ch, { result: 'x' })] }),
      token: 'other',
    },
    ...(['x', 1.5, 99999999999, true, { a: 1 }] as unknown[]).flatMap((attempt) => [
      {
        name: `an attempt of ${JSON.stringify(attempt)} in a mark of the step itself (refused)`,
        after: (ch: Chain) => bad(ch, ch.steps[0] as string, attempt),
      },
      {
        name: `an attempt of ${JSON.stringify(attempt)} in a mark of a missing node (refused)`,
        after: (ch: Chain) => bad(ch, 'eeeeeeee', attempt),
      },
      {
        name: `an attempt of ${JSON.stringify(attempt)} in a mark without a node (refused)`,
        after: (ch: Chain) => bad(ch, null, attempt),
      },
    ]),
  ];

  for (const mode of ['force_custom_plan', 'force_generic_plan'])
    describe(mode, () => {
      for (const k of cases)
        it(k.name, async () => {
          await c.query(`SET plan_cache_mode = ${mode}`);
          const chains = [await chain(), await chain(), await chain()];
          for (const ch of chains) await k.setup?.(ch);
          const ways: Way[] = ['old', 'new', 'joined'];
          const codes: Array<string | undefined> = [];
          for (const [i, way] of ways.entries())
            codes.push(
              await checkpoint(
                chains[i] as Chain,
                k.after(chains[i] as Chain),
                way,
                k.token,
                k.kind,
              ),
            );
          expect(codes[1], 'new vs 0028').toBe(codes[0]);
          if (k.token) expect(codes[0]).toBe('DF002');
          const named = /\((DF00\d)\)/.exec(k.name)?.[1];
          if (named) expect(codes[0]).toBe(named);
          if (/\(refused\)/.test(k.name)) expect(codes[0]).toBeDefined();
          const [so, sn, sj] = [
            await state(chains[0] as Chain),
            await state(chains[1] as Chain),
            await state(chains[2] as Chain),
          ];
          expect(sn, 'new vs 0028').toEqual(so);
          // the joined statement writes what the primary-key path writes (a malformed p_after
          // with a stamp added may be refused differently: compare only what both accepted)
          if (codes[2] === codes[1]) expect(sj, 'joined vs new').toEqual(sn);
          const own = (so as { nodes: Array<{ query: string; status: string }> }).nodes.find(
            (n) => n.query === 'SELECT 1 AS a',
          );
          expect(own?.status).toBe(
            codes[0] !== undefined ? 'running' : k.kind === 'failed' ? 'failed' : 'completed',
          );
          await c.query('RESET plan_cache_mode');
        });
    });
});
