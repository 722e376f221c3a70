/**
 * Every control statement the executor sends (issue 12 item 5): claims,
 * lease renewals, the per-tick load, events, node stamps, finishing and
 * parking, signal delivery, attempt marks, the HTTP policy, retention and the
 * lease hand-back. All of them run on the control pool as the executor's
 * control login (a member of df_executor); the lease-checked ones name the
 * lease owner and epoch so a stale executor changes nothing.
 */
import pg from 'pg';
import {
  FirstMarkTokens,
  firstMarks,
  instanceColumns,
  INLINE_MAX,
  loadBytes,
  statementName,
} from './claim-sql.js';
import type { EventKind } from './core.js';
import { AttemptMarks } from './marks.js';
import type { ControlPools } from './options.js';

export type {
  ActivationRef,
  Claimed,
  InstanceRow,
  LoadedInstance,
  StampRows,
} from './store-types.js';
import type { ActivationRef, Claimed, LoadedInstance, StampRows } from './store-types.js';

const INSTANCE_COLUMNS = instanceColumns('$2', '$3', '$4', '$5');
const CLAIMED_COLUMNS = instanceColumns('0', 'true', 'true', String(INLINE_MAX), INLINE_MAX);

const RECORD_EVENT = 'SELECT df._record_event($1, $2, $3, $4, $5, $6::jsonb)';

export class ControlStore {
  readonly pool: pg.Pool;
  /** Where claims run (options.ts: generic plans, one at a time). */
  private readonly claimer: pg.Pool;

  constructor(
    pools: Pick<ControlPools, 'control' | 'claimer' | 'marker'>,
    readonly owner: string,
    private readonly leaseMs: number,
  ) {
    this.pool = pools.control;
    this.claimer = pools.claimer;
    this.marks = new AttemptMarks(pools.marker, owner);
  }

  private readonly marks: AttemptMarks;

  /**
   * Every statement goes out as a named prepared statement (one per text):
   * planned once per control connection instead of at every call. The claim
   * alone took 3–4 ms to plan, more than it takes to run.
   */
  private run<R extends pg.QueryResultRow = pg.QueryResultRow>(
    text: string,
    values?: unknown[],
    db: pg.Pool | pg.ClientBase = this.pool,
  ): Promise<pg.QueryResult<R>> {
    return db.query<R>({ name: statementName(text), text, ...(values ? { values } : {}) });
  }

  async isStandby(): Promise<boolean | undefined> {
    return (await this.run<{ ro: boolean }>('SELECT pg_is_in_recovery() AS ro')).rows[0]?.ro;
  }

  /**
   * Claims up to `capacity` runnable instances (docs/executor.md, "Fairness"):
   * `held` are the instances leased here per role; the last `reserve` of
   * capacity go only to roles that hold none here. `ready`: how many were
   * ready to claim, so more than it took means work was left behind.
   * `driving`: the instances this executor drives now. Their leases are
   * never taken back from itself when they lapse (a step that holds its own
   * instance's row locks out the renewal): a new epoch would only refuse the
   * live driver's next checkpoint and run its step again. Another executor
   * still takes them over.
   */
  async claim(
    capacity: number,
    held: ReadonlyMap<number, number>,
    reserve: number,
    driving: readonly string[] = [],
  ): Promise<{ readonly rows: Claimed[]; readonly ready: number }> {
    const tokens = new FirstMarkTokens(capacity);
    const rows = (
      await this.run<Claimed & { ready: number }>(
        // Every ready instance gets a level: the instances its role holds here plus its turn
        // within the role. Claiming the lowest levels first fills roles up evenly (a role
        // alone takes all but the reserve); the last $6 of capacity go only to a role that
        // holds none here, one instance each.
        `WITH RECURSIVE
         roles(r) AS (
           (SELECT i.submitted_by FROM df.instances i
             WHERE i.runnable AND i.status IN ('pending', 'running') AND i.lease_owner IS NULL
               AND i.wake_at IS NULL AND (i.waiting_signals IS NULL OR i.waiting_signals = '{}')
             ORDER BY i.submitted_by LIMIT 1)
           UNION ALL
           SELECT (SELECT i.submitted_by FROM df.instances i
                    WHERE i.runnable AND i.status IN ('pending', 'running') AND i.lease_owner IS NULL
                      AND i.wake_at IS NULL AND (i.waiting_signals IS NULL OR i.waiting_signals = '{}')
                      AND i.submitted_by > roles.r
                    ORDER BY i.submitted_by LIMIT 1)
             FROM roles WHERE roles.r IS NOT NULL),
         fresh AS (
           SELECT f.id, f.submitted_by, f.created_at FROM roles,
             LATERAL (SELECT i.id, i.submitted_by, i.created_at FROM df.instances i
                       WHERE i.submitted_by = roles.r
                         AND i.runnable AND i.status IN ('pending', 'running') AND i.lease_owner IS NULL
                         AND i.wake_at IS NULL AND (i.waiting_signals IS NULL OR i.waiting_signals = '{}')
                       ORDER BY i.created_at, i.id LIMIT $2 + 1) f
            WHERE roles.r IS NOT NULL),
         -- due timers per role (instances_due_idx, migration 0021): the roles with timers by a
         -- skip scan, then at most $2 + 1 of each role's earliest due ones, so one role's thousands
         -- of due timers never push another role's back, and a claim never reads them all.
         -- statement_timestamp(), not clock_timestamp(): stable, so the index bounds the scan.
         timer_roles(r) AS (
           (SELECT i.submitted_by FROM df.instances i
             WHERE i.runnable AND i.wake_at IS NOT NULL AND i.status IN ('pending', 'running')
             ORDER BY i.submitted_by LIMIT 1)
           UNION ALL
           SELECT (SELECT i.submitted_by FROM df.instances i
                    WHERE i.runnable AND i.wake_at IS NOT NULL AND i.status IN ('pending', 'running')
                      AND i.submitted_by > timer_roles.r
                    ORDER BY i.submitted_by LIMIT 1)
             FROM timer_roles WHERE timer_roles.r IS NOT NULL),
         due AS (
           SELECT d.id, d.submitted_by, d.created_at FROM timer_roles,
             LATERAL (SELECT i.id, i.submitted_by, i.created_at FROM df.instances i
                       WHERE i.submitted_by = timer_roles.r
                         AND i.runnable AND i.wake_at IS NOT NULL AND i.status IN ('pending', 'running')
                         AND i.wake_at <= statement_timestamp()
                         AND (i.lease_expires_at IS NULL OR i.lease_expires_at < clock_timestamp())
                       ORDER BY i.wake_at LIMIT $2 + 1) d
            WHERE timer_roles.r IS NOT NULL),
         -- No overall LIMIT on signalled and expired: every ready one is ranked per role below.
         -- From the unconsumed signals to their instances by primary key. The status tests here
         -- and in locked are written NOT IN on purpose: no index serves them, so a generic plan
         -- made while statistics say few instances are unfinished can never walk every
         -- unfinished instance (instances_status_created_idx) to find the few it needs.
         signalled AS (
           SELECT i.id, i.submitted_by, i.created_at
             FROM (SELECT DISTINCT s.instance_id FROM df.signals s WHERE s.consumed_at IS NULL) s,
                  LATERAL (SELECT i.id, i.submitted_by, i.created_at FROM df.instances i
                            WHERE i.id = s.instance_id
                              AND i.runnable AND i.status NOT IN ('completed', 'failed', 'cancelled')
                              AND (i.lease_expires_at IS NULL OR i.lease_expires_at < clock_timestamp())
                              AND EXISTS (SELECT 1 FROM df.signals m WHERE m.instance_id = i.id AND m.consumed_at IS NULL
                                             AND m.signal_name = ANY (i.waiting_signals))) i),
         expired AS (
           SELECT i.id, i.submitted_by, i.created_at FROM df.instances i
            WHERE i.lease_owner IS NOT NULL AND i.lease_expires_at < statement_timestamp()
              AND NOT (i.lease_owner = $1 AND i.id = ANY ($8::text[]))
              AND i.runnable AND i.status IN ('pending', 'running')
              AND (i.wake_at IS NULL OR i.wake_at <= statement_timestamp()
                   OR EXISTS (SELECT 1 FROM df.signals s WHERE s.instance_id = i.id AND s.consumed_at IS NULL
                                 AND s.signal_name = ANY (i.waiting_signals)))
              AND (i.waiting_signals IS NULL OR i.wake_at IS NOT NULL OR cardinality(i.waiting_signals) = 0
                   OR EXISTS (SELECT 1 FROM df.signals s WHERE s.instance_id = i.id AND s.consumed_at IS NULL
                                 AND s.signal_name = ANY (i.waiting_signals)))),
         ready AS (
           SELECT c.id, c.submitted_by::oid::int AS role, c.created_at,
                  row_number() OVER (PARTITION BY c.submitted_by ORDER BY c.created_at, c.id) AS turn
             FROM (SELECT * FROM fresh UNION SELECT * FROM due
                   UNION SELECT * FROM signalled UNION SELECT * FROM expired) c),
         ranked AS (
           SELECT r.id, r.turn, coalesce(h.n, 0) AS held,
                  row_number() OVER (ORDER BY coalesce(h.n, 0) + r.turn, r.created_at, r.id) AS pos
             FROM ready r LEFT JOIN unnest($4::int[], $5::int[]) AS h(role, n) ON h.role = r.role
            WHERE r.turn <= $2),
         picked AS (
           (SELECT id FROM ranked WHERE pos <= $2 - $6)
           UNION ALL
           (SELECT id FROM ranked WHERE pos > $2 - $6 AND held = 0 AND turn = 1
             ORDER BY pos LIMIT least($6, $2))),
         locked AS (
           SELECT i.id FROM df.instances i
            -- = ANY (ARRAY(...)): the primary key, never a scan of every instance to hash-join a few
            WHERE i.id = ANY (ARRAY(SELECT id FROM picked))
              AND (i.lease_expires_at IS NULL OR i.lease_expires_at < clock_timestamp())
              AND i.runnable AND i.status NOT IN ('completed', 'failed', 'cancelled')
              AND NOT (i.lease_owner IS NOT DISTINCT FROM $1 AND i.id = ANY ($8::text[]))
            FOR UPDATE OF i SKIP LOCKED),
         upd AS (
           UPDATE df.instances i
              SET lease_owner = $1, lease_epoch = i.lease_epoch + 1,
                  lease_expires_at = clock_timestamp() + make_interval(secs => $3::float8 / 1000),
                  status = CASE WHEN i.status = 'pending' THEN 'running' ELSE i.status END,
                  updated_at = CASE WHEN i.status = 'pending' THEN now() ELSE i.updated_at END,
                  wake_at = NULL, waiting_signals = NULL
            WHERE i.id = ANY (ARRAY(SELECT id FROM locked))
           RETURNING ${CLAIMED_COLUMNS}),
         ${firstMarks('$7')}
         -- and how many were ready, also when it took none (fresh and due read one more per
         -- role than they may take, so more than it took means work was left behind)
         SELECT u.*, m.k AS first_mark, r.ready FROM (SELECT count(*)::int AS ready FROM ready) r
           LEFT JOIN upd u ON true LEFT JOIN marked m ON m.id = u.id`,
        [
          this.owner,
          capacity,
          this.leaseMs,
          [...held.keys()],
          [...held.values()],
          reserve,
          tokens.hashes(),
          driving,
        ],
        this.claimer,
      )
    ).rows;
    return {
      rows: rows.filter((r) => r.id !== null).map((r) => tokens.attach(r)),
      ready: rows[0]?.ready ?? 0,
    };
  }

  /**
   * Claims the instances `ids` whose df.start just committed, by primary key,
   * if each is still what the general claim's fresh source reads (runnable,
   * unleased, waiting for nothing): the same lease, epoch and row lock as
   * the general claim, so an instance another executor leased is skipped.
   * The caller decides when this may stand in for the general claim.
   */
  async claimStarted(ids: readonly string[]): Promise<Claimed[]> {
    const tokens = new FirstMarkTokens(ids.length);
    return (
      await this.run<Claimed>(
        `WITH locked AS (
           SELECT i.id FROM df.instances i
            WHERE i.id = ANY ($2::text[])
              AND i.runnable AND i.status IN ('pending', 'running') AND i.lease_owner IS NULL
              AND i.wake_at IS NULL AND (i.waiting_signals IS NULL OR i.waiting_signals = '{}')
            FOR UPDATE OF i SKIP LOCKED),
         upd AS (
           UPDATE df.instances i
              SET lease_owner = $1, lease_epoch = i.lease_epoch + 1,
                  lease_expires_at = clock_timestamp() + make_interval(secs => $3::float8 / 1000),
                  status = CASE WHEN i.status = 'pending' THEN 'running' ELSE i.status END,
                  updated_at = CASE WHEN i.status = 'pending' THEN now() ELSE i.updated_at END
            -- $2 as well: the generic plan reaches the rows by primary key, whatever the table's size
            WHERE i.id = ANY ($2::text[]) AND i.id = ANY (ARRAY(SELECT id FROM locked))
           RETURNING ${CLAIMED_COLUMNS}),
         ${firstMarks('$4')}
         SELECT u.*, m.k AS first_mark FROM upd u LEFT JOIN marked m ON m.id = u.id`,
        [this.owner, ids, this.leaseMs, tokens.hashes()],
        this.claimer,
      )
    ).rows.map((r) => tokens.attach(r));
  }

  /**
   * Of the started instances `ids`, claims by primary key those of roles
   * not in `held` (roles holding no lease here), the oldest one of each
   * role and at most `limit`: what the general claim's reserve would give
   * them, without ranking everything ready. Same lease, epoch and row lock
   * as the other claims.
   */
  async claimNewcomers(
    ids: readonly string[],
    held: readonly number[],
    limit: number,
  ): Promise<Claimed[]> {
    const tokens = new FirstMarkTokens(limit);
    return (
      await this.run<Claimed>(
        `WITH locked AS (
           SELECT i.id, i.submitted_by, i.created_at FROM df.instances i
            WHERE i.id = ANY ($2::text[])
              AND i.runnable AND i.status IN ('pending', 'running') AND i.lease_owner IS NULL
              AND i.wake_at IS NULL AND (i.waiting_signals IS NULL OR i.waiting_signals = '{}')
              AND i.submitted_by::oid::int <> ALL ($4::int[])
            FOR UPDATE OF i SKIP LOCKED),
         picked AS (
           SELECT id FROM (SELECT DISTINCT ON (submitted_by) id, created_at FROM locked
                            ORDER BY submitted_by, created_at, id) f
            ORDER BY created_at, id LIMIT $5),
         upd AS (
           UPDATE df.instances i
              SET lease_owner = $1, lease_epoch = i.lease_epoch + 1,
                  lease_expires_at = clock_timestamp() + make_interval(secs => $3::float8 / 1000),
                  status = CASE WHEN i.status = 'pending' THEN 'running' ELSE i.status END,
                  updated_at = CASE WHEN i.status = 'pending' THEN now() ELSE i.updated_at END
            WHERE i.id = ANY ($2::text[]) AND i.id = ANY (ARRAY(SELECT id FROM picked))
           RETURNING ${CLAIMED_COLUMNS}),
         ${firstMarks('$6')}
         SELECT u.*, m.k AS first_mark FROM upd u LEFT JOIN marked m ON m.id = u.id`,
        [this.owner, ids, this.leaseMs, held, limit, tokens.hashes()],
        this.claimer,
      )
    ).rows.map((r) => tokens.attach(r));
  }

  /**
   * The instances of `ids` born leased here (df._start_rows with this
   * executor's lease, epoch 1) whose lease holds: read, not written, since
   * the start's commit was their claim.
   */
  async adopt(ids: readonly string[]): Promise<Claimed[]> {
    return (
      await this.run<Claimed>(
        `SELECT ${CLAIMED_COLUMNS} FROM df.instances i
          WHERE i.id = ANY ($1::text[]) AND i.lease_owner = $2 AND i.lease_epoch = 1
            -- born leased (epoch 1: any claim of a born instance makes it 2 or more) and
            -- untouched since (a claim at epoch 1 took a pending instance, and stamped
            -- updated_at in its own transaction): not one this executor claimed itself
            AND i.updated_at = i.created_at
            AND i.lease_expires_at > clock_timestamp()
            AND i.runnable AND i.status IN ('pending', 'running')`,
        [ids, this.owner],
        this.claimer,
      )
    ).rows;
  }

  /** Gives up leases born here that this executor cannot take now: the claim finds them again. */
  async handBack(ids: readonly string[]): Promise<void> {
    await this.run(
      `UPDATE df.instances SET lease_owner = NULL, lease_expires_at = NULL
        WHERE id = ANY ($1::text[]) AND lease_owner = $2 AND lease_epoch = 1 AND updated_at = created_at`,
      [ids, this.owner],
    );
  }

  /** Renews the leases of `ids` held here, in one statement; returns the status of each still held
   * (a row someone holds locked, as a role may its own, is skipped this round, never waited for). */
  async renewLeases(ids: readonly string[]): Promise<Map<string, string>> {
    const r = await this.run<{ id: string; status: string }>(
      `UPDATE df.instances i SET lease_expires_at = clock_timestamp() + make_interval(secs => $3::float8 / 1000)
        WHERE i.id = ANY ($1) AND i.lease_owner = $2 AND i.id = ANY (ARRAY(SELECT l.id FROM df.instances l
                WHERE l.id = ANY ($1) AND l.lease_owner = $2 FOR NO KEY UPDATE SKIP LOCKED)) RETURNING i.id, i.status`,
      [ids, this.owner, this.leaseMs],
    );
    return new Map(r.rows.map((x) => [x.id, x.status]));
  }

  /** Cancels `pid` only if it is still one of dfgate's step connections. */
  async cancelStepBackend(pid: number): Promise<void> {
    await this.run(
      `SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE pid = $1 AND application_name = 'dfgate:step'`,
      [pid],
    );
  }

  /**
   * One round trip per tick: the instance, events after `lastSeq`, and (when
   * asked) node statuses and the graph; those two not read (events null)
   * when they take more than `max` bytes.
   */
  async load(
    id: string,
    lastSeq: number,
    wantNodes: boolean,
    wantGraph: boolean,
    max: number,
  ): Promise<LoadedInstance | undefined> {
    return (
      await this.run<LoadedInstance>(
        `SELECT ${INSTANCE_COLUMNS} FROM df.instances i WHERE i.id = $1`,
        [id, lastSeq, wantNodes, wantGraph, max],
      )
    ).rows[0];
  }

  /** What an instance's step texts and events after `lastSeq` take, in bytes, without reading them. */
  async instanceBytes(id: string, lastSeq: number, withGraph: boolean): Promise<number> {
    const r = await this.run<{ bytes: string }>(
      `SELECT ${loadBytes('$2', '$3')}::text AS bytes FROM df.instances i WHERE i.id = $1`,
      [id, lastSeq, withGraph],
    );
    return Number(r.rows[0]?.bytes ?? 0);
  }

  /** Records an executor-side event (lease-checked by df._record_event), on the pool or on `db` inside a transaction. */
  async recordEvent(
    id: string,
    epoch: number,
    a: ActivationRef,
    kind: EventKind,
    detail: Record<string, unknown>,
    db: pg.Pool | pg.ClientBase = this.pool,
  ): Promise<void> {
    await this.run(RECORD_EVENT, [id, epoch, a.node, a.key, kind, JSON.stringify(detail)], db);
  }

  /**
   * Writes node stamps (in the background, queueStamps). A stamp of an
   * earlier attempt of the same execution never overwrites a later one: the
   * next attempt's mark goes through its own connection and can land first
   * (a failed attempt's stamp held up past the backoff), and the node would
   * read failed, at the old attempt, while the next attempt runs.
   */
  async writeStamps(id: string, rows: StampRows): Promise<void> {
    await this.run(
      `UPDATE df.nodes n SET status = u.status, result = CASE WHEN u.result IS NULL THEN NULL
                                  ELSE u.result::jsonb END,
              status_details = jsonb_build_object('execution_id', u.stamp) || coalesce(u.extra::jsonb, '{}'),
              attempts = coalesce((u.extra::jsonb ->> 'attempt')::int, n.attempts), updated_at = now()
         FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) AS u(id, status, result, stamp, extra)
        WHERE n.instance_id = $1 AND n.id = u.id
          AND NOT (n.status_details ->> 'execution_id' IS NOT DISTINCT FROM u.stamp
                   AND n.attempts > coalesce((u.extra::jsonb ->> 'attempt')::int, n.attempts))
          AND NOT df._stamp_stale(u.stamp, n.status_details ->> 'execution_id')`,
      [id, rows.ids, rows.statuses, rows.results, rows.stamps, rows.extra],
    );
  }

  async finish(
    id: string,
    epoch: number,
    status: 'completed' | 'failed',
    error: string | null,
    output: string | null,
    onFailure: string | null = null,
  ): Promise<void> {
    await this.run(
      `UPDATE df.instances SET status = $3, error = $4, output = $6, updated_at = now(),
              completed_at = CASE WHEN $3 = 'completed' THEN now() END,
              lease_owner = NULL, lease_expires_at = NULL, wake_at = NULL, waiting_signals = NULL,
              on_failure_instance = coalesce($7, on_failure_instance)
        WHERE id = $1 AND lease_epoch = $2 AND lease_owner = $5 AND status IN ('pending', 'running')`,
      [id, epoch, status, error, this.owner, output, onFailure],
    );
  }

  /** Tells the web console these instances changed (df._ui_notify: their ids, never their owners). */
  async notifyChanged(ids: string[], roleOids: number[]): Promise<void> {
    await this.run(
      `SELECT df._ui_notify(jsonb_agg(jsonb_build_object('r', u.r::regrole::text, 'i', u.i)))
         FROM unnest($1::text[], $2::oid[]) AS u(i, r)`,
      [ids, roleOids],
    );
  }

  /** The earliest future wake_at of a parked instance (the wake_at index), or null. */
  async nextWakeAt(): Promise<Date | null> {
    const r = await this.run<{ at: Date | null }>(
      `SELECT min(wake_at) AS at FROM df.instances
        WHERE runnable AND wake_at IS NOT NULL AND status IN ('pending', 'running')
          AND wake_at > clock_timestamp()`,
    );
    return r.rows[0]?.at ?? null;
  }

  async park(id: string, epoch: number, wakeAt: Date | null, signals: string[]): Promise<void> {
    await this.run(
      `UPDATE df.instances SET lease_owner = NULL, lease_expires_at = NULL, wake_at = $3, waiting_signals = $4
        WHERE id = $1 AND lease_epoch = $2 AND lease_owner = $5`,
      [id, epoch, wakeAt, signals, this.owner],
    );
  }

  /** A signal for one of `names` committed and not consumed (e.g. while the instance was being parked). */
  async hasUnconsumedSignal(id: string, names: readonly string[]): Promise<boolean> {
    const r = await this.run(
      `SELECT 1 FROM df.signals WHERE instance_id = $1 AND consumed_at IS NULL AND signal_name = ANY ($2) LIMIT 1`,
      [id, names],
    );
    return (r.rowCount ?? 0) > 0;
  }

  async superuserInstancesAllowed(): Promise<boolean> {
    const r = await this.run<{ v: boolean }>(
      `SELECT (value)::text::boolean AS v FROM df.config WHERE key = 'enable_superuser_instances'`,
    );
    return r.rows[0]?.v === true;
  }

  /** Deletes the events of activations under the given key prefixes (loop iterations summarised). */
  async deleteEvents(id: string, prefixes: readonly string[]): Promise<void> {
    await this.run(`DELETE FROM df.events WHERE instance_id = $1 AND activation LIKE ANY ($2)`, [
      id,
      prefixes.map((p) => p.replace(/[\\%_]/g, (c) => '\\' + c) + '%'),
    ]);
  }

  /** Runs `fn` in one transaction on a control connection. */
  async transaction<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    const c = await this.pool.connect();
    try {
      await c.query('BEGIN');
      const out = await fn(c);
      await c.query('COMMIT');
      return out;
    } catch (err) {
      await c.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      c.release();
    }
  }

  /**
   * Marks a SQL node's attempt before its step runs (marks.ts, batched with
   * the marks of the steps starting with it). False: lease lost, cancelled,
   * or already recorded.
   */
  markAttempt(
    id: string,
    epoch: number,
    a: ActivationRef,
    tokenHash: string,
    stamp: string,
    attempt: number,
    retry?: string,
  ): Promise<boolean> {
    return this.marks.mark({ id, epoch, a, tokenHash, stamp, attempt, retry });
  }

  /** Records a step failure through the control connection, lease-checked and only if the activation has no outcome yet. */
  async recordStepFailure(
    id: string,
    epoch: number,
    a: ActivationRef,
    error: string,
  ): Promise<void> {
    await this.run(
      `SELECT df._record_event($1, $2, $3, $4, 'failed', $5::jsonb)
        WHERE NOT EXISTS (SELECT 1 FROM df.events e WHERE e.instance_id = $1 AND e.activation = $4
                             AND e.kind IN ('done', 'failed'))`,
      [id, epoch, a.node, a.key, JSON.stringify({ error })],
    );
  }

  /** The submitter's EXECUTE privilege on the HTTP function `fn`, and the endpoint policy settings. */
  async httpPolicy(
    roleOid: number,
    fn: string,
  ): Promise<{ ok: boolean; enabled: unknown; private: unknown; hosts: unknown } | undefined> {
    return (
      await this.run<{ ok: boolean; enabled: unknown; private: unknown; hosts: unknown }>(
        `SELECT has_function_privilege($1::oid, $2, 'EXECUTE') AS ok,
                (SELECT value FROM df.config WHERE key = 'http_enabled') AS enabled,
                (SELECT value FROM df.config WHERE key = 'http_allow_private') AS private,
                (SELECT value FROM df.config WHERE key = 'http_allow_hosts') AS hosts`,
        [roleOid, fn],
      )
    ).rows[0];
  }

  async currentDatabase(): Promise<string | undefined> {
    return (await this.run<{ db: string }>('SELECT current_database() AS db')).rows[0]?.db;
  }

  async roleOid(name: string): Promise<number | undefined> {
    const r = await this.run<{ oid: number }>(
      'SELECT oid::int AS oid FROM pg_roles WHERE rolname = $1',
      [name],
    );
    return r.rows[0]?.oid;
  }

  /** df.config reconcile_interval_seconds as text (undefined: not set). */
  async reconcileInterval(): Promise<string | undefined> {
    const r = await this.run<{ v: string | null }>(
      `SELECT value #>> '{}' AS v FROM df.config WHERE key = 'reconcile_interval_seconds'`,
    );
    return r.rows[0]?.v ?? undefined;
  }

  /** One retention batch (migration 0010): how many finished instances were deleted. */
  async reconcile(batch: number): Promise<number> {
    return (
      (await this.run<{ n: number }>('SELECT df._reconcile($1) AS n', [batch])).rows[0]?.n ?? 0
    );
  }

  /** Hands every lease held here back (but on rows someone holds locked), so another executor can continue at once. */
  async releaseLeases(): Promise<void> {
    await this.run(
      `UPDATE df.instances i SET lease_owner = NULL, lease_expires_at = NULL WHERE i.lease_owner = $1
          AND i.id = ANY (ARRAY(SELECT l.id FROM df.instances l WHERE l.lease_owner = $1 FOR NO KEY UPDATE SKIP LOCKED))`,
      [this.owner],
    );
  }
}
