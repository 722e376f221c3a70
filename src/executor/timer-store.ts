/**
 * The statements of the due-timer batch (src/executor/timers.ts,
 * docs/executor.md "Due timers in batches"). One batch is one transaction on
 * a control connection: lock a fair share of the parked instances whose
 * wake_at has passed (FOR NO KEY UPDATE SKIP LOCKED), read them, and in one
 * statement record the `done` events of their due timers and make them ready
 * for the ordinary claim. No lease is taken: the row locks, held only for the
 * batch, keep every other executor out, and PostgreSQL ends the transaction
 * (and so the locks) if the process stalls in it.
 */
import type pg from 'pg';
import type { LoadedInstance } from './store.js';
import { INLINE_MAX, instanceColumns, statementName } from './claim-sql.js';

/** A locked due instance as the batch reads it: what the driver's first load reads, and its event count. */
export interface DueInstance extends LoadedInstance {
  /** The database's clock when it was read. */
  readonly read_at: Date;
}

/** A timer of an instance to fire: its activation, its node and the result its `done` event carries. */
export interface TimerFire {
  readonly key: string;
  readonly node: string;
  readonly result: string;
}

/** What a batch writes for one locked instance: its timers to fire (maybe none), checked against what was read. */
export interface ReadyInstance {
  readonly id: string;
  /** lease_epoch and event_seq as read; the write changes nothing if either moved since. */
  readonly epoch: string;
  readonly seq: string;
  readonly timers: readonly TimerFire[];
}

/** An instance the batch made ready: its role, and how many timers it fired. */
export interface MadeReady {
  readonly id: string;
  readonly role_oid: number;
  readonly fired: number;
}

const DUE = `i.runnable AND i.wake_at IS NOT NULL AND i.status IN ('pending', 'running')`;

/**
 * Up to $1 parked instances whose wake_at has passed, fairly across
 * submitting roles: the roles with timers by a skip scan of
 * instances_due_idx (migration 0021), at most $1 of each role's earliest due,
 * then the first of every role before the second of any. Locked FOR NO KEY
 * UPDATE (a signal's foreign key check, FOR KEY SHARE, does not wait for it),
 * SKIP LOCKED (what a claim or another batch holds is left to it).
 */
const LOCK_DUE = `WITH RECURSIVE
 timer_roles(r) AS (
   (SELECT i.submitted_by FROM df.instances i WHERE ${DUE} ORDER BY i.submitted_by LIMIT 1)
   UNION ALL
   SELECT (SELECT i.submitted_by FROM df.instances i
            WHERE ${DUE} AND i.submitted_by > timer_roles.r
            ORDER BY i.submitted_by LIMIT 1)
     FROM timer_roles WHERE timer_roles.r IS NOT NULL),
 due AS (
   SELECT d.id, d.r, d.wake_at FROM timer_roles,
     LATERAL (SELECT i.id, i.submitted_by AS r, i.wake_at FROM df.instances i
               WHERE i.submitted_by = timer_roles.r AND ${DUE}
                 AND i.wake_at <= statement_timestamp() AND i.lease_owner IS NULL
               ORDER BY i.wake_at LIMIT $1) d
    WHERE timer_roles.r IS NOT NULL),
 picked AS (
   SELECT t.id FROM (SELECT due.id, due.wake_at,
                            row_number() OVER (PARTITION BY due.r ORDER BY due.wake_at, due.id) AS turn
                       FROM due) t
    ORDER BY t.turn, t.wake_at, t.id LIMIT $1)
SELECT i.id FROM df.instances i
 WHERE i.id = ANY (ARRAY(SELECT id FROM picked))
   AND ${DUE} AND i.wake_at <= statement_timestamp() AND i.lease_owner IS NULL
 FOR NO KEY UPDATE OF i SKIP LOCKED`;

/**
 * The locked instances, read by a statement that began after the locks were
 * taken: every event writer (df._record_event, df._complete_step) locks the
 * instance row first, so what is read here stays true until the commit.
 */
const READ_DUE = `SELECT ${instanceColumns('0', 'false', 'true', String(INLINE_MAX), INLINE_MAX)}, clock_timestamp() AS read_at
  FROM df.instances i WHERE i.id = ANY ($1::text[])`;

/**
 * Fires the timers and makes the instances ready, in one statement. An
 * instance whose lease epoch or event count moved since it was read, that is
 * leased, no longer parked or finished, is left as it is, and so are its
 * timers. The others: a new lease epoch (whoever held an older one is fenced
 * out, as by a claim), no wake_at or waiting signals (the claim's `fresh`
 * source takes it), and each timer's `done` event numbered after the events
 * it had, in the order given, as df._record_event numbers them.
 */
const FIRE = `WITH ready AS (
   UPDATE df.instances i
      SET wake_at = NULL, waiting_signals = NULL, lease_epoch = i.lease_epoch + 1,
          event_seq = i.event_seq + u.n
     FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::int[]) AS u(id, epoch, seq, n)
    -- $1 as well: the rows are reached by primary key, whatever the table's size
    WHERE i.id = ANY ($1::text[]) AND i.id = u.id
      AND i.lease_epoch = u.epoch AND i.event_seq = u.seq
      AND i.lease_owner IS NULL AND ${DUE}
   RETURNING i.id, i.submitted_by, u.seq),
 fired AS (
   INSERT INTO df.events (instance_id, submitted_by, node_id, kind, detail, seq, activation)
   SELECT e.id, r.submitted_by, e.node, 'done', jsonb_build_object('result', e.result), r.seq + e.k, e.activation
     FROM unnest($5::text[], $6::text[], $7::text[], $8::text[], $9::int[]) AS e(id, node, activation, result, k)
     JOIN ready r ON r.id = e.id
   RETURNING instance_id)
SELECT r.id, r.submitted_by::oid::int AS role_oid, coalesce(f.n, 0)::int AS fired
  FROM ready r LEFT JOIN (SELECT instance_id, count(*) AS n FROM fired GROUP BY 1) f ON f.instance_id = r.id`;

/**
 * Is any parked instance due? Read in wake_at order (an index scan of
 * instances_wake_idx), so the read stops at the first one. Written as
 * EXISTS (…), PostgreSQL planned a sequential scan that read the table up to
 * the first due row: 54 ms a call while 10,000 timers were due among
 * 100,000 parked (bench/parked.ts, pg_stat_statements).
 */
const ANY_DUE = `SELECT true AS due FROM df.instances i
   WHERE ${DUE} AND i.wake_at <= statement_timestamp() AND i.lease_owner IS NULL
   ORDER BY i.wake_at LIMIT 1`;

export class TimerStore {
  constructor(private readonly pool: pg.Pool) {}

  private run<R extends pg.QueryResultRow>(
    db: pg.Pool | pg.ClientBase,
    text: string,
    values: unknown[] = [],
  ): Promise<pg.QueryResult<R>> {
    return db.query<R>({ name: statementName(text), text, values });
  }

  /** Whether any parked instance is due (one cheap read, outside any transaction). */
  async anyDue(): Promise<boolean> {
    return (await this.run<{ due: boolean }>(this.pool, ANY_DUE)).rows[0]?.due === true;
  }

  /**
   * Runs `fn` in one transaction on a control connection. Idle in it for
   * longer than `stallMs` (the process frozen between two statements),
   * PostgreSQL ends the session: the transaction rolls back and its row locks
   * are free again, as a lease would expire.
   */
  async batch<T>(stallMs: number, fn: (c: pg.ClientBase) => Promise<T>): Promise<T> {
    const c = await this.pool.connect();
    let broken: Error | undefined;
    // while checked out, the pool does not listen: a session PostgreSQL ends (the timeout
    // below, a restart) would otherwise be an uncaught 'error' event
    const onError = (err: Error): void => void (broken = err);
    c.on('error', onError);
    try {
      const ms = Math.max(1000, Math.floor(stallMs));
      await c.query(`BEGIN; SET LOCAL idle_in_transaction_session_timeout = ${ms}`);
      const out = await fn(c);
      await c.query('COMMIT');
      return out;
    } catch (err) {
      await c.query('ROLLBACK').catch((e: Error) => (broken = e));
      throw err;
    } finally {
      c.off('error', onError);
      c.release(broken);
    }
  }

  /** Locks up to `n` due parked instances (inside batch()); their ids. */
  async lockDue(c: pg.ClientBase, n: number): Promise<string[]> {
    return (await this.run<{ id: string }>(c, LOCK_DUE, [n])).rows.map((r) => r.id);
  }

  /** The locked instances with their events and graphs (inside batch(), after lockDue). */
  async readDue(c: pg.ClientBase, ids: readonly string[]): Promise<DueInstance[]> {
    return (await this.run<DueInstance>(c, READ_DUE, [ids])).rows;
  }

  /** Fires the timers and makes the instances ready (see FIRE); what it changed. */
  async fire(c: pg.ClientBase, ready: readonly ReadyInstance[]): Promise<MadeReady[]> {
    const ev = { ids: [] as string[], nodes: [] as string[], keys: [] as string[] };
    const results: string[] = [];
    const ks: number[] = [];
    for (const r of ready)
      r.timers.forEach((t, k) => {
        ev.ids.push(r.id);
        ev.nodes.push(t.node);
        ev.keys.push(t.key);
        results.push(t.result);
        ks.push(k + 1);
      });
    return (
      await this.run<MadeReady>(c, FIRE, [
        ready.map((r) => r.id),
        ready.map((r) => r.epoch),
        ready.map((r) => r.seq),
        ready.map((r) => r.timers.length),
        ev.ids,
        ev.nodes,
        ev.keys,
        results,
        ks,
      ])
    ).rows;
  }
}
