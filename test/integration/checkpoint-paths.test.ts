/**
 * df._complete_step writes a checkpoint without stamps by primary key, one
 * with stamps through one statement that joins them (migration 0030). Both
 * must leave the same rows: the same instance, event and nodes, and the same
 * refusals. Each case runs twice on two instances of the same workflow, once
 * as the executor sends it and once with a stamp of a node no instance has
 * (which forces the joined statement and writes nothing), and the rows are
 * compared column by column. Real PostgreSQL, the submitting role's session.
 */
import type pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { useTestDatabase, type TestRole } from '../harness/db.js';

const db = useTestDatabase();
let role: TestRole;
let c: pg.Client;

beforeAll(async () => {
  role = await db.role('ckpt');
  c = await db.connect(role.url);
});

const TOKEN_HASH = `encode(sha256('tok'::bytea), 'hex')`;
/** A stamp of a node id no instance has: it sends the checkpoint down the joined path. */
const NOWHERE = {
  id: 'ffffffff',
  status: 'completed',
  result: null,
  stamp: 'x::1',
  extra: null,
};

interface Chain {
  id: string;
  /** The SQL nodes in order. */
  steps: string[];
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
  return { id, steps };
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
            replace(status_details::text, $1, 'I') AS details
       FROM df.nodes WHERE instance_id = $1 ORDER BY node_type, query`,
    [ch.id],
  );
  const events = await db.admin.query(
    `SELECT kind, detail, seq, activation FROM df.events WHERE instance_id = $1 ORDER BY seq`,
    [ch.id],
  );
  return { inst: inst.rows, nodes: nodes.rows, events: events.rows };
}

/** Runs one checkpoint of step 1 of `ch`: `after` as given, or with the stamp of nowhere added. */
async function checkpoint(
  ch: Chain,
  after: (ch: Chain) => Record<string, unknown> | null,
  joined: boolean,
  token = 'tok',
  kind = 'done',
): Promise<string | undefined> {
  const a = after(ch);
  const sent =
    joined && a !== null ? { ...a, stamps: [...((a['stamps'] as []) ?? []), NOWHERE] } : a;
  try {
    await c.query(`SELECT df._complete_step($1, $2, 'k1', 3, $3, $4, $5::jsonb, $6, $7::jsonb)`, [
      ch.id,
      ch.steps[0],
      token,
      kind,
      JSON.stringify(kind === 'done' ? { result: '{"rows":[{"a":1}]}' } : { error: 'boom' }),
      `${ch.id}::1`,
      sent === null ? null : JSON.stringify(sent),
    ]);
    return undefined;
  } catch (err) {
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

describe('a checkpoint writes the same rows by primary key as through the joined statement', () => {
  const cases: Array<{
    name: string;
    after: (ch: Chain) => Record<string, unknown> | null;
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
      name: 'two marks, one of them the step itself (skipped)',
      after: (ch) => ({
        marks: [mark(ch, ch.steps[0] as string, 'k1b'), mark(ch, ch.steps[2] as string, 'k3')],
      }),
    },
    {
      name: 'a mark whose activation has an outcome already (skipped)',
      after: (ch) => ({ marks: [mark(ch, ch.steps[1] as string, 'k2')] }),
      setup: async (ch) => {
        await db.admin.query(
          `INSERT INTO df.events (instance_id, submitted_by, node_id, kind, detail, seq, activation)
           SELECT $1::text, submitted_by, $2::text, 'done', '{"result":"x"}', 1, 'k2'
             FROM df.instances WHERE id = $1::text`,
          [ch.id, ch.steps[1]],
        );
        await db.admin.query(`UPDATE df.instances SET event_seq = 1 WHERE id = $1`, [ch.id]);
      },
    },
    {
      name: 'one mark, naming the step itself (skipped)',
      after: (ch) => ({ marks: [mark(ch, ch.steps[0] as string, 'k1b')] }),
    },
    {
      name: 'one mark of a node the instance does not have',
      after: (ch) => ({ marks: [mark(ch, 'eeeeeeee', 'k8')] }),
    },
    { name: 'a mark that is not an object (refused)', after: () => ({ marks: [5] }) },
    { name: 'a mark without a node (skipped)', after: () => ({ marks: [{ activation: 'k9' }] }) },
    { name: 'marks that are not an array', after: () => ({ marks: { node: 'x' } }) },
    { name: 'the completion', after: () => ({ finish: { output: '{"rows":[]}' } }) },
    { name: 'a stale token (DF002)', after: () => null, token: 'other' },
  ];

  for (const k of cases)
    it(k.name, async () => {
      const fast = await chain();
      const joined = await chain();
      await k.setup?.(fast);
      await k.setup?.(joined);
      const a = await checkpoint(fast, k.after, false, k.token, k.kind);
      const b = await checkpoint(joined, k.after, true, k.token, k.kind);
      expect(a).toBe(b);
      if (k.token) expect(a).toBe('DF002');
      const refused = k.token !== undefined || a !== undefined;
      const [sa, sb] = [await state(fast), await state(joined)];
      expect(sa).toEqual(sb);
      // and the checkpoint did write (or, refused, wrote nothing)
      const own = (sa as { nodes: Array<{ query: string; status: string }> }).nodes.find(
        (n) => n.query === 'SELECT 1 AS a',
      );
      expect(own?.status).toBe(refused ? 'running' : k.kind === 'failed' ? 'failed' : 'completed');
    });
});
