/**
 * What the claims (store.ts, timer-store.ts) share: statement names, the
 * columns an instance is read with, and the first attempt mark a claim
 * writes with its lease (docs/executor.md, "First marks with the claim").
 */
import { createHash } from 'node:crypto';
import type { Premark } from './carry.js';
import { stepTextMax } from './sqlcheck.js';
import { newToken, tokenHash } from './token.js';

const names = new Map<string, string>();

/** A short stable name for a statement text. */
export function statementName(text: string): string {
  let n = names.get(text);
  if (n === undefined) {
    n = `dfgate_${createHash('sha1').update(text).digest('hex').slice(0, 16)}`;
    names.set(text, n);
  }
  return n;
}

/**
 * The most an instance's variables (df.vars copied at its start, as JSON
 * text) may take: a claim reads them for every instance it takes, so a
 * role's 100 MB variable would otherwise be held once per claimed instance.
 * Larger ones are not read; the driver fails the instance (unrunnable).
 */
export const VARS_MAX = 4 * 1024 * 1024;

/** The most of an instance's label that dfgate loads (labels name workflows; {sys_label} substitutes it). */
export const LABEL_MAX = 64 * 1024;

/** The most of an instance's options (df.start's retry policy and on_failure workflow) that dfgate loads, as JSON text. */
export const OPTIONS_MAX = 4 * 1024 * 1024;

/** What the instance row's own label, options and variables may take together in any read. */
const ROW_MAX = LABEL_MAX + OPTIONS_MAX + VARS_MAX;

/** Why an instance cannot run at all (its role is gone, its label, options or variables too large), or undefined. */
export function unrunnable(
  id: string,
  inst: {
    readonly role_name: string | null;
    readonly vars_bytes?: number | string | null;
    readonly label_bytes?: number | string | null;
    readonly options_bytes?: number | string | null;
  },
): string | undefined {
  if (inst.role_name === null)
    return `Instance ${id}: submitted_by role no longer exists in pg_roles`;
  const too = (
    what: string,
    bytes: number | string | null | undefined,
    max: number,
  ): string | undefined =>
    Number(bytes ?? 0) > max
      ? `Instance ${id}: ${what} take${what.startsWith('its label') ? 's' : ''} ${Number(bytes)} bytes, more than the ${max} dfgate loads; keep large data in tables`
      : undefined;
  return (
    too('its variables (df.setvar, copied at its start)', inst.vars_bytes, VARS_MAX) ??
    too('its label', inst.label_bytes, LABEL_MAX) ??
    too(
      "its options (df.start's on_failure workflow and retry policy)",
      inst.options_bytes,
      OPTIONS_MAX,
    )
  );
}

/**
 * The most of an instance's step texts, as much of its recorded outcomes
 * (the events' JSON text), and as much of its label, options and variables
 * together, that a claim or a due timer batch reads with it, in bytes. A claim takes dozens of instances and a timer batch
 * hundreds, so each row is kept small; an instance over it comes back
 * without them (null), and its driver reads it on its own, up to the
 * instance limit (instanceBytesMax). Ordinary workflows take a few kB.
 */
export const INLINE_MAX = 256 * 1024;

/**
 * The most of one instance's graph and recorded outcomes (results, errors,
 * signal data, loop summaries) the executor holds: four times
 * --max-result-bytes, at least 16 MiB, as for a step's text (the same four
 * full-size results). With at most --max-concurrent-steps × 4 instances
 * leased, that bounds what one process holds for all of them; an instance
 * past it fails (instanceTooLarge) instead of taking the process with it.
 */
export function instanceBytesMax(maxResultBytes: number): number {
  return stepTextMax(maxResultBytes);
}

/** Why an instance fails when its graph and outcomes pass instanceBytesMax. */
export function instanceTooLarge(id: string, bytes: number, max: number): string {
  return `Instance ${id}: its graph and recorded results take ${bytes} bytes, more than the ${max} dfgate holds for one instance (four times --max-result-bytes, at least 16 MiB); keep large data in tables and return keys or counts`;
}

/**
 * An instance as the driver reads it: the row, its role, its events after
 * `after` (a sequence number), and when `nodes` / `graph` its node statuses /
 * its graph. A claim returns the same for what it claimed (events from 0,
 * statuses and graph), so an instance's first step needs no load of its own.
 * `max` (bytes, an SQL expression) bounds what is read: events whose JSON
 * text takes more are not read (`events` null), nor step texts that take
 * more (`graph` null when asked for). The row's own label, options and
 * variables are read up to their caps (LABEL_MAX, OPTIONS_MAX, VARS_MAX) and
 * `rowMax`; when together they take more than `rowMax`, `events` is null as
 * well, so that the driver reads the instance on its own. Sizes are summed
 * before anything is built, so an instance of any size costs the read no
 * memory.
 */
export const instanceColumns = (
  after: string,
  nodes: string,
  graph: string,
  max: string,
  rowMax = ROW_MAX,
): string =>
  `i.id, i.root_node, i.status, i.lease_epoch, i.event_seq,
   CASE WHEN octet_length(i.label) <= ${Math.min(LABEL_MAX, rowMax)} THEN i.label END AS label,
   octet_length(i.label) AS label_bytes,
   CASE WHEN octet_length(i.options::text) <= ${Math.min(OPTIONS_MAX, rowMax)} THEN i.options END AS options,
   octet_length(i.options::text) AS options_bytes,
   CASE WHEN octet_length(i.vars::text) <= ${Math.min(VARS_MAX, rowMax)} THEN i.vars ELSE '{}' END AS vars,
   octet_length(i.vars::text) AS vars_bytes,
   i.submitted_by::oid::int AS role_oid,
   (SELECT r.rolname FROM pg_roles r WHERE r.oid = i.submitted_by) AS role_name,
   (SELECT r.rolsuper FROM pg_roles r WHERE r.oid = i.submitted_by) AS rolsuper,
   CASE WHEN ${eventBytes(after)} <= ${max} AND ${ROW_BYTES} <= ${rowMax} THEN
     (SELECT coalesce(json_agg(json_build_object('a', e.activation, 'k', e.kind, 'd', e.detail, 's', e.seq)), '[]')
        FROM df.events e WHERE e.instance_id = i.id AND e.activation IS NOT NULL AND e.seq > ${after}) END AS events,
   CASE WHEN ${nodes} THEN (SELECT json_agg(json_build_object('id', n.id, 'st', n.status, 'sd', n.status_details ->> 'execution_id'))
                        FROM df.nodes n WHERE n.instance_id = i.id) END AS nodes,
   CASE WHEN ${graph} AND ${GRAPH_BYTES} <= ${max} THEN (SELECT coalesce(json_agg(json_build_object('id', n.id, 'node_type', n.node_type, 'query', n.query,
                        'result_name', n.result_name, 'left_node', n.left_node, 'right_node', n.right_node)), '[]')
                        FROM df.nodes n WHERE n.instance_id = i.id) END AS graph`;

/** What instance `i`'s label, options and variables take, in bytes. */
const ROW_BYTES = `(coalesce(octet_length(i.label), 0) + coalesce(octet_length(i.options::text), 0) + coalesce(octet_length(i.vars::text), 0))`;

/** What instance `i`'s step texts take, in bytes (octet_length of a text does not detoast it). */
const GRAPH_BYTES = `(SELECT coalesce(sum(octet_length(n.query)), 0) FROM df.nodes n WHERE n.instance_id = i.id)`;

/** What instance `i`'s events after `after` take as JSON text: each serialised on its own, never all at once. */
const eventBytes = (after: string): string =>
  `(SELECT coalesce(sum(octet_length(e.detail::text)), 0) FROM df.events e
     WHERE e.instance_id = i.id AND e.activation IS NOT NULL AND e.seq > ${after})`;

/** What instance `i`'s step texts (when `graph`) and events after `after` take, in bytes. */
export function loadBytes(after: string, graph: string): string {
  return `(CASE WHEN ${graph} THEN ${GRAPH_BYTES} ELSE 0 END + ${eventBytes(after)})`;
}

/**
 * The first marks of a claim, as a CTE named `marked` after the claim's own
 * `upd` (which returns the claimed rows): an instance that has never run
 * (no event) and whose root is a SQL step never marked gets that step's
 * first attempt mark in the claim's own transaction, exactly what the
 * driver's mark would write (marks.ts): activation `<id>::1/<root>`, the
 * hash of a token drawn here, attempt 1, running, stamp `<id>::1`. The
 * claim holds the lease it writes the mark under, and no outcome can exist
 * yet, so the mark's checks hold by construction. Not for a superuser's
 * instance, one whose role is gone or whose label, options or variables
 * pass their caps: the driver fails those without
 * running a step, and their node must not read as running; nor for one whose
 * graph did not come with the claim (too large: its driver reads it, and
 * may fail it for its size); nor for one with a retry policy (max_attempts
 * over 1), whose running attempt shows `attempt` and `max_attempts` in its
 * status_details, which the driver's mark writes. `hashes` is the
 * parameter with the token hashes; the k-th such instance (by id) takes the
 * k-th, and one past their number is left for the driver to mark.
 */
export function firstMarks(hashes: string): string {
  return `marked AS (
           UPDATE df.nodes n
              SET activation = u.id || '::1/' || n.id, attempt_token = (${hashes}::text[])[u.k], attempts = 1,
                  status = 'running', result = NULL, status_details = jsonb_build_object('execution_id', u.id || '::1'),
                  updated_at = now()
             FROM (SELECT c.id, c.root_node, row_number() OVER (ORDER BY c.id) AS k FROM upd c
                    WHERE c.event_seq = 0 AND c.rolsuper IS FALSE AND c.vars_bytes <= ${VARS_MAX}
                      AND coalesce(c.label_bytes, 0) <= ${LABEL_MAX} AND coalesce(c.options_bytes, 0) <= ${OPTIONS_MAX}
                      AND c.graph IS NOT NULL
                      -- under a retry policy the driver's mark writes the attempt's status_details keys
                      -- (options read in full, or none: too large to come with the claim, unknown)
                      AND (c.options IS NOT NULL OR c.options_bytes IS NULL)
                      AND (c.options -> 'max_attempts' IS NULL OR c.options -> 'max_attempts' = '1'::jsonb)) u
            WHERE n.instance_id = u.id AND n.id = u.root_node AND u.k <= cardinality(${hashes}::text[])
              AND n.node_type = 'SQL' AND n.status = 'pending' AND n.attempts = 0 AND n.attempt_token IS NULL
           RETURNING n.instance_id AS id, u.k)`;
}

/** A claimed row as the claim returns it: `first_mark`, the index of its mark's token, or null. */
export interface FirstMarkRow {
  readonly id: string;
  readonly root_node: string;
  readonly first_mark?: string | number | null;
}

/** The tokens of a claim's first marks: drawn before it, their hashes sent with it. */
export class FirstMarkTokens {
  private readonly tokens: string[];

  constructor(n: number) {
    this.tokens = Array.from({ length: Math.max(0, Math.min(n, 1000)) }, () => newToken());
  }

  hashes(): string[] {
    return this.tokens.map(tokenHash);
  }

  /** The claimed row with the premark of its first step when the claim marked it. */
  attach<R extends FirstMarkRow>(row: R): R & { readonly premark?: FirstMark } {
    const k = row.first_mark === null || row.first_mark === undefined ? 0 : Number(row.first_mark);
    const token = k >= 1 ? this.tokens[k - 1] : undefined;
    if (token === undefined) return row;
    return {
      ...row,
      premark: { key: `${row.id}::1/${row.root_node}`, token, stamp: `${row.id}::1`, attempt: 1 },
    };
  }
}

/** A first step marked by its instance's claim: its activation key and the premark (carry.ts). */
export interface FirstMark extends Premark {
  readonly key: string;
}
