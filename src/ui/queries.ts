/**
 * What the console reads and does, as SQL run on the session's own
 * connection: row-level security decides what each role sees. No query here
 * names a role; none bypasses RLS.
 */
import type pg from 'pg';
import { substitute, SubstitutionError } from '../executor/substitute.js';
import { renderMetrics } from '../metrics.js';

export const STATUSES = ['pending', 'running', 'completed', 'failed', 'cancelled'] as const;
export const PAGE_SIZE = 50;

export interface ListFilter {
  readonly status: string | undefined;
  readonly label: string | undefined;
  /** An id or a prefix of one (lowercase hex). */
  readonly id: string | undefined;
  readonly after: string | undefined;
}

export class BadRequest extends Error {
  override readonly name = 'BadRequest';
}

/** An instance too large for the console to read (answered 413, never read into memory). */
export class TooLarge extends Error {
  override readonly name = 'TooLarge';
}

/**
 * What the console reads of one instance: a role may write its instances and
 * nodes by hand (docs/ui.md), so no text is read whole. Each text field is cut
 * to FIELD_MAX characters, a page shows at most NODES_MAX nodes, and an
 * instance whose (cut) texts come to more than DETAIL_MAX_CHARS is not read.
 */
export const FIELD_MAX = 64 * 1024;
export const LIST_FIELD_MAX = 1024;
export const NODES_MAX = 10_000;
export const DETAIL_MAX_CHARS = 16 * 1024 * 1024;

function decodeCursor(c: string): [string, string] {
  try {
    const v = JSON.parse(Buffer.from(c, 'base64url').toString('utf8')) as unknown;
    if (
      Array.isArray(v) &&
      v.length === 2 &&
      typeof v[0] === 'string' &&
      typeof v[1] === 'string' &&
      /^[0-9a-f]{8}$/.test(v[1])
    )
      return [v[0], v[1]];
  } catch {
    // fall through
  }
  throw new BadRequest('invalid cursor');
}

export function parseFilter(q: URLSearchParams): ListFilter {
  const status = q.get('status') || undefined;
  if (status !== undefined && !(STATUSES as readonly string[]).includes(status))
    throw new BadRequest(`status must be one of ${STATUSES.join(', ')}`);
  const id = (q.get('id') || '').trim().toLowerCase() || undefined;
  if (id !== undefined && !/^[0-9a-f]{1,8}$/.test(id))
    throw new BadRequest('an instance id is 1 to 8 hex digits');
  const label = q.get('label') ?? undefined;
  return {
    status,
    label: label === '' ? undefined : label,
    id,
    after: q.get('after') || undefined,
  };
}

export interface InstanceRow {
  readonly id: string;
  readonly label: string | null;
  readonly status: string;
  readonly created_at: string;
  readonly updated_at: string;
  readonly error: string | null;
}

/**
 * One page, newest first. Every filter is served by an index of df.instances
 * (created_at; status, created_at; label, created_at; the id range of a
 * prefix on the primary key), so a page costs about the same at any depth.
 */
export async function listInstances(
  db: pg.Client,
  f: ListFilter,
): Promise<{ rows: InstanceRow[]; next: string | null }> {
  const [t, after] = f.after ? decodeCursor(f.after) : [null, null];
  const page = await db.query<InstanceRow & { ts: string }>(
    `SELECT id, left(label, $7) AS label, status, created_at, updated_at, left(error, $7) AS error,
            created_at::text AS ts
       FROM df.instances
      WHERE ($1::text IS NULL OR status = $1)
        AND ($2::text IS NULL OR label = $2)
        AND ($3::text IS NULL OR (id BETWEEN rpad($3, 8, '0') AND rpad($3, 8, 'f')
                                  AND id LIKE $3 || '%'))
        AND ($4::timestamptz IS NULL OR created_at < $4 OR (created_at = $4 AND id > $5))
      ORDER BY created_at DESC, id
      LIMIT $6`,
    [f.status ?? null, f.label ?? null, f.id ?? null, t, after, PAGE_SIZE + 1, LIST_FIELD_MAX],
  );
  const rows = page.rows.slice(0, PAGE_SIZE);
  const last = rows[rows.length - 1];
  const next =
    page.rows.length > PAGE_SIZE && last
      ? Buffer.from(JSON.stringify([last.ts, last.id])).toString('base64url')
      : null;
  return { rows: rows.map(({ ts: _ts, ...r }) => r), next };
}

/**
 * Instances per status. This reads every row the role can see (the RLS
 * policy is evaluated per row), so the list asks for it separately from its
 * pages, and the server answers it from a short per-session cache.
 */
export async function statusCounts(
  db: pg.Client,
  label: string | undefined,
): Promise<Record<string, number>> {
  const r = await db.query<{ status: string; n: number }>(
    `SELECT status, count(*)::int AS n FROM df.instances
      WHERE ($1::text IS NULL OR label = $1) GROUP BY status`,
    [label ?? null],
  );
  const counts: Record<string, number> = Object.fromEntries(STATUSES.map((s) => [s, 0]));
  for (const row of r.rows) counts[row.status] = row.n;
  return counts;
}

/** True when the session's role can see the instance (RLS). */
export async function visible(db: pg.Client, id: string): Promise<boolean> {
  if (!/^[0-9a-f]{8}$/.test(id)) return false;
  const r = await db.query(`SELECT 1 FROM df.instances WHERE id = $1`, [id]);
  return r.rowCount === 1;
}

export interface NodeView {
  readonly id: string;
  readonly type: string;
  readonly query: string | null;
  readonly resultName: string | null;
  readonly left: string | null;
  readonly right: string | null;
  readonly status: string;
  readonly inferred: string | null;
  readonly result: string | null;
  readonly error: string | null;
  readonly attempts: number;
  readonly updatedAt: string;
  readonly finishedAt: string | null;
  readonly iteration: number | null;
  readonly substituted: string | null;
}

export async function instanceDetail(db: pg.Client, id: string): Promise<object | undefined> {
  if (!/^[0-9a-f]{8}$/.test(id)) return undefined;
  const inst = await db.query<{
    id: string;
    label: string | null;
    status: string;
    root_node: string;
    created_at: string;
    updated_at: string;
    completed_at: string | null;
    error: string | null;
    output: string | null;
    waiting_signals: string[] | null;
    vars: Record<string, string>;
  }>(
    `SELECT id, left(label, $2) AS label, status, root_node, created_at, updated_at, completed_at,
            left(error, $2) AS error, left(output, $2) AS output, waiting_signals,
            CASE WHEN octet_length(vars::text) <= $3 THEN vars ELSE '{}'::jsonb END AS vars
       FROM df.instances WHERE id = $1`,
    [id, FIELD_MAX, 4 * 1024 * 1024],
  );
  const i = inst.rows[0];
  if (!i) return undefined;
  const size = await db.query<{ n: number; chars: string }>(
    `SELECT count(*)::int AS n,
            coalesce(sum(least(coalesce(char_length(query), 0), $2)
                         + least(coalesce(char_length(result::text), 0), $2)
                         + least(coalesce(char_length(error), 0), $2)), 0)::bigint::text AS chars
       FROM df.nodes WHERE instance_id = $1`,
    [id, FIELD_MAX],
  );
  const sz = size.rows[0] ?? { n: 0, chars: '0' };
  if (sz.n > NODES_MAX || Number(sz.chars) > DETAIL_MAX_CHARS)
    throw new TooLarge(
      `instance ${id} is too large to show here (${sz.n} nodes, ${sz.chars} characters of step text, results and errors); read it with df.instance_nodes`,
    );
  const nodes = await db.query<{
    node_id: string;
    node_type: string;
    query: string | null;
    result_name: string | null;
    left_node: string | null;
    right_node: string | null;
    status: string;
    inferred_status: string | null;
    result: string | null;
    error: string | null;
    attempts: number;
    updated_at: string;
    finished_at: string | null;
    iteration: number | null;
    cut: boolean | null;
  }>(
    `SELECT d.node_id, d.node_type, left(d.query, $2) AS query, d.result_name, d.left_node,
            d.right_node, d.status, d.inferred_status, left(d.result, $2) AS result,
            left(n.error, $2) AS error, n.attempts, d.updated_at,
            char_length(d.query) > $2 OR char_length(d.result) > $2 AS cut,
            (SELECT max(e.created_at) FROM df.events e
              WHERE e.instance_id = $1 AND e.node_id = d.node_id AND e.kind IN ('done', 'failed'))
              AS finished_at,
            (SELECT max((e.detail->>'i')::int) FROM df.events e
              WHERE e.instance_id = $1 AND e.node_id = d.node_id AND e.kind = 'iter') AS iteration
       FROM df.instance_nodes($1) d
       JOIN df.nodes n ON n.instance_id = $1 AND n.id = d.node_id
      LIMIT $3`,
    [id, FIELD_MAX, NODES_MAX],
  );
  // a cut text or result would substitute wrongly: such an instance shows no substituted texts
  const anyCut = nodes.rows.some((n) => n.cut);
  const results = new Map<string, string>();
  for (const n of nodes.rows)
    if (n.result_name && n.status === 'completed' && n.result !== null)
      results.set(n.result_name, n.result);
  const ctx = { vars: i.vars ?? {}, instanceId: i.id, label: i.label, results };
  const view: NodeView[] = nodes.rows.map((n) => {
    let substituted: string | null = null;
    if (!anyCut && n.node_type === 'SQL' && n.query !== null && n.status !== 'pending') {
      try {
        const s = substitute(n.query, ctx, 'sql');
        substituted = s === n.query ? null : s;
      } catch (err) {
        if (!(err instanceof SubstitutionError)) throw err;
      }
    }
    return {
      id: n.node_id,
      type: n.node_type,
      query: n.query,
      resultName: n.result_name,
      left: n.left_node,
      right: n.right_node,
      status: n.status,
      inferred: n.inferred_status,
      result: n.result,
      error: n.error,
      attempts: n.attempts,
      updatedAt: n.updated_at,
      finishedAt: n.finished_at,
      iteration: n.iteration,
      substituted,
    };
  });
  const explain = await db.query<{ t: string }>(`SELECT df.explain($1) AS t`, [id]);
  const signals = await db.query(
    `SELECT id::text, left(signal_name, $2) AS name, left(payload::text, $2) AS payload,
            sent_by::text AS sent_by,
            created_at, consumed_at
       FROM df.signals WHERE instance_id = $1 ORDER BY id DESC LIMIT 100`,
    [id, FIELD_MAX],
  );
  const { vars: _vars, ...instance } = i;
  return {
    instance,
    nodes: view,
    explain: explain.rows[0]?.t ?? '',
    signals: signals.rows,
  };
}

/** Parsed dfgate counters of this process (metrics.ts), name{labels} → value. */
export function processCounters(): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of renderMetrics([]).split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const sp = line.lastIndexOf(' ');
    out[line.slice(0, sp)] = Number(line.slice(sp + 1));
  }
  return out;
}

export async function overview(db: pg.Client): Promise<object> {
  const steps = await db.query<{ t: number; done: number; failed: number }>(
    `SELECT extract(epoch FROM date_trunc('minute', created_at))::bigint::int AS t,
            count(*) FILTER (WHERE kind = 'done')::int AS done,
            count(*) FILTER (WHERE kind = 'failed')::int AS failed
       FROM df.events
      WHERE created_at > now() - interval '1 hour' AND kind IN ('done', 'failed')
      GROUP BY 1 ORDER BY 1`,
  );
  const finished = await db.query<{ t: number; status: string; n: number }>(
    `SELECT extract(epoch FROM date_trunc('minute', updated_at))::bigint::int AS t, status,
            count(*)::int AS n
       FROM df.instances
      WHERE status IN ('completed', 'failed', 'cancelled') AND updated_at > now() - interval '1 hour'
      GROUP BY 1, 2 ORDER BY 1`,
  );
  const now = await db.query<{ t: number }>(
    `SELECT extract(epoch FROM date_trunc('minute', now()))::bigint::int AS t`,
  );
  let metrics: Record<string, string> | null = null;
  try {
    const m = await db.query<Record<string, string>>(`SELECT * FROM df.metrics()`);
    metrics = m.rows[0] ?? null;
  } catch (err) {
    if ((err as { code?: string }).code !== '42501') throw err;
  }
  return {
    now: now.rows[0]?.t ?? Math.floor(Date.now() / 60_000) * 60,
    steps: steps.rows,
    finished: finished.rows,
    counts: await statusCounts(db, undefined),
    metrics,
  };
}
