/**
 * Step connections and running one SQL step exactly once (DESIGN.md §4):
 * BEGIN and the statement (extended protocol, no parameters) in one message;
 * SET CONSTRAINTS ALL IMMEDIATE, df._complete_step (lease epoch + attempt
 * token) and COMMIT in a second one.
 * After every step the session is reset (DISCARD ALL, then the role and its
 * settings again), so nothing a step leaves behind reaches the next one.
 */
import pg from 'pg';
import type { Logger } from 'pino';
import { readBounded, ResultTooLargeError, DEFAULT_MAX_RESULT_BYTES } from './bounded.js';
import { EncodeError, RESULT_HEAD, resultTail } from './encode.js';
import {
  ensureStepLogin,
  quoteIdent,
  quoteLiteral,
  stepLoginName,
  stepPassword,
} from './identity.js';
import { runTrip } from './one-trip.js';
import { planKey, planStepSoon, stepTextMax } from './sqlcheck.js';
import { isRetryable } from './step-errors.js';

export interface StepIdentity {
  readonly roleName: string;
  readonly roleOid: number;
}

export type StepAuth = 'login' | 'set-role';

export interface StepPoolOptions {
  readonly controlUrl: string;
  readonly auth: StepAuth;
  readonly secret: string;
  /**
   * Idle connections kept per role (and twice that in all): as many as steps
   * may run at once, so a busy role never pays a new login per step.
   */
  readonly maxIdle?: number;
  readonly log?: Logger;
}

/**
 * DISCARD ALL minus DISCARD PLANS: everything a step can leave in the session
 * (role, settings, prepared statements, cursors, LISTENs, advisory locks, temp
 * tables, sequence state) is reset, but cached plans (which PostgreSQL
 * revalidates itself) survive, so the checkpoint function is not re-planned
 * after every step.
 */
const RESET_STATEMENTS = [
  'CLOSE ALL',
  'SET SESSION AUTHORIZATION DEFAULT',
  'RESET ALL',
  'DEALLOCATE ALL',
  'UNLISTEN *',
  'SELECT pg_advisory_unlock_all()',
  'DISCARD TEMP',
  'DISCARD SEQUENCES',
];

/** The session reset and the role's own statements after it, as one message's text. */
function sessionReset(conn: StepConn): string {
  return [...RESET_STATEMENTS, ...conn.resets].join('; ');
}

const rawText = { getTypeParser: () => (v: string) => v } as unknown as pg.CustomTypesConfig;

interface StepConn {
  readonly client: pg.Client;
  /** The role and its settings again after the session reset: its statements, one by one. */
  readonly resets: readonly string[];
  broken: boolean;
  /** The session was already reset after the step's commit, in the commit's own message. */
  clean: boolean;
  /** The session reset after the previous step: the connection is used only once it succeeded. */
  ready: Promise<boolean>;
  /** client_encoding as the server last reported it (ParameterStatus). */
  encoding: string;
}

export class StepPool {
  private readonly idle = new Map<number, StepConn[]>();
  private readonly provisioning = new Map<number, Promise<string>>();

  constructor(
    private readonly opts: StepPoolOptions,
    private readonly control: pg.Pool,
  ) {}

  private async settingsFor(id: StepIdentity): Promise<string[]> {
    // R's role-level settings (role-wide and for this database), applied as if R had logged in.
    // A superuser may have set one that R may not SET itself (log_statement, say): PostgreSQL
    // applies it at R's own login, but the step session sets it as R and would fail every step,
    // so it is left out, with a warning (docs/executor.md, "Identity").
    const r = await this.control.query<{ cfg: string; settable: boolean }>(
      `SELECT s.cfg, NOT EXISTS (SELECT 1 FROM pg_settings p
                                  WHERE p.name = lower(split_part(s.cfg, '=', 1)) AND p.context <> 'user'
                                    AND NOT (p.context = 'superuser' AND has_parameter_privilege($1::oid, p.name, 'SET'))
                                ) AS settable
         FROM pg_db_role_setting d, unnest(d.setconfig) WITH ORDINALITY AS s(cfg, n)
        WHERE d.setrole = $1 AND d.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
        ORDER BY d.setdatabase, s.n`,
      [id.roleOid],
    );
    const skipped = r.rows
      .filter((x) => !x.settable)
      .map((x) => x.cfg.slice(0, x.cfg.indexOf('=')));
    if (skipped.length > 0)
      this.opts.log?.warn(
        { role: id.roleName, settings: skipped },
        'role settings the role may not set itself are not applied to its steps',
      );
    return r.rows
      .filter((x) => x.settable)
      .map((x) => {
        const eq = x.cfg.indexOf('=');
        const name = x.cfg.slice(0, eq);
        const value = x.cfg.slice(eq + 1);
        // quoteLiteral writes an E'' literal when the text has a backslash: it reads the same
        // whether or not the role sets standard_conforming_strings off for its sessions
        return `SELECT set_config(${quoteLiteral(name)}, ${quoteLiteral(value)}, false)`;
      });
  }

  private async open(id: StepIdentity): Promise<StepConn> {
    const url = new URL(this.opts.controlUrl);
    url.searchParams.set('application_name', 'dfgate:step');
    if (this.opts.auth === 'login') {
      const login = stepLoginName(id.roleOid);
      url.username = encodeURIComponent(login);
      url.password = encodeURIComponent(stepPassword(this.opts.secret, login));
    }
    const connect = async (): Promise<pg.Client> => {
      const client = new pg.Client({
        connectionString: url.toString(),
        types: rawText,
        connectionTimeoutMillis: 30_000,
      });
      client.on('error', () => undefined);
      await client.connect();
      return client;
    };
    let client: pg.Client;
    try {
      client = await connect();
    } catch (err) {
      const code = (err as { code?: string }).code;
      // the step login is missing, or keyed with another secret: (re)provision it, once at a time
      if (this.opts.auth !== 'login' || (code !== '28P01' && code !== '28000')) throw err;
      let p = this.provisioning.get(id.roleOid);
      if (!p) {
        p = this.provision(id).finally(() => this.provisioning.delete(id.roleOid));
        this.provisioning.set(id.roleOid, p);
      }
      await p;
      client = await connect();
    }
    const settings = await this.settingsFor(id);
    const resets = [
      `SET ROLE ${quoteIdent(id.roleName)}`,
      ...settings,
      // the step check (sqlcheck.ts) reads texts as PostgreSQL does with it on: a role or server
      // setting it off would lex a backslash before a quote otherwise than the check did
      'SET standard_conforming_strings = on',
      // and dfgate's messages are UTF-8: read in another encoding, a result's literal in the
      // checkpoint could end early (a lead byte before its escaping backslash)
      `SET client_encoding = 'UTF8'`,
      `SET df.in_workflow = 'true'`,
    ];
    const conn: StepConn = {
      client,
      resets,
      broken: false,
      clean: false,
      ready: Promise.resolve(true),
      encoding: 'UTF8',
    };
    const con = (client as unknown as { connection: NodeJS.EventEmitter }).connection;
    con.on('parameterStatus', (m: { parameterName: string; parameterValue: string }) => {
      if (m.parameterName === 'client_encoding') conn.encoding = m.parameterValue;
    });
    await client.query(resets.join('; '));
    return conn;
  }

  private async provision(id: StepIdentity): Promise<string> {
    for (let attempt = 1; ; attempt++) {
      const c = await this.control.connect();
      try {
        return await ensureStepLogin(c, id.roleName, id.roleOid, this.opts.secret);
      } catch (err) {
        if (
          attempt >= 5 ||
          !/concurrently|deadlock|could not serialize/.test((err as Error).message)
        )
          throw err;
      } finally {
        c.release();
      }
      await new Promise((r) => setTimeout(r, 50 * attempt));
    }
  }

  async acquire(id: StepIdentity): Promise<StepConn> {
    const list = this.idle.get(id.roleOid);
    for (let c = list?.pop(); c; c = list?.pop()) {
      if (!c.broken && (await c.ready) && !c.broken) return c;
      await c.client.end().catch(() => undefined);
    }
    const conn = await this.open(id);
    conn.client.on('error', () => (conn.broken = true));
    conn.client.on('end', () => (conn.broken = true));
    return conn;
  }

  /**
   * Returns a connection to the pool. Its session reset runs in the
   * background (off the step's critical path); acquire() hands the connection
   * out again only once the reset succeeded, so no step ever runs on a
   * session another step left behind.
   */
  async release(id: StepIdentity, conn: StepConn): Promise<void> {
    if (conn.broken) {
      await conn.client.end().catch(() => undefined);
      return;
    }
    if (conn.clean) {
      // reset right after the step's COMMIT, in the same message (runSqlStep)
      conn.clean = false;
      conn.ready = Promise.resolve(true);
    } else
      conn.ready = conn.client.query(sessionReset(conn)).then(
        () => true,
        () => {
          conn.broken = true;
          return false;
        },
      );
    const list = this.idle.get(id.roleOid) ?? [];
    const max = this.opts.maxIdle ?? 8;
    let total = 0;
    for (const l of this.idle.values()) total += l.length;
    if (list.length < max && total < 2 * max) {
      list.push(conn);
      this.idle.set(id.roleOid, list);
    } else await conn.client.end().catch(() => undefined);
  }

  async close(): Promise<void> {
    for (const list of this.idle.values())
      for (const c of list) await c.client.end().catch(() => undefined);
    this.idle.clear();
  }
}

export interface StepRequest {
  readonly instance: string;
  readonly node: string;
  readonly key: string;
  readonly epoch: number;
  readonly token: string;
  readonly sql: string;
  /** Whose turn a long text's check waits for (the submitting role), by default the instance's. */
  readonly owner?: string;
  /** The node's stamp (spec §5.6), written with its final status by the checkpoint. */
  readonly stamp: string;
  /**
   * Sends the attempt mark on the control connection (once; later calls
   * return the same answer): called right after the statement's message is
   * written, so the mark travels while the statement runs, and awaited
   * before anything of the step is recorded or committed (and before a
   * statement that runs outside a transaction). False: the transaction is
   * rolled back and the step abandoned.
   */
  readonly mark?: () => Promise<boolean>;
  /**
   * May a statement that returns no rows wait for its attempt mark and go out
   * with its checkpoint in one round trip (docs/executor.md, "One round trip
   * per step")? Default yes. The caller says no when the mark is still on its
   * way and no other step is running: alone, the statement starts sooner
   * sent at once, while its mark travels; among others, one round trip
   * costs the database less.
   */
  readonly oneTrip?: boolean;
  /**
   * What the checkpoint of a completed step carries besides its outcome
   * (migration 0020): JSON text for df._complete_step's p_after, computed
   * from the result; undefined carries nothing.
   */
  readonly after?: (result: string) => Promise<string | undefined>;
}

/** The event a checkpoint committed: its seq and detail, as df.events holds them. */
export interface RecordedEvent {
  readonly seq: number;
  readonly detail: Readonly<Record<string, string>>;
}

export type StepOutcome =
  | { readonly k: 'done'; readonly event: RecordedEvent | undefined }
  | { readonly k: 'failed'; readonly error: string; readonly event: RecordedEvent | undefined }
  | { readonly k: 'retry'; readonly err: unknown }
  | { readonly k: 'abandoned'; readonly reason: string }
  /**
   * The step failed, but not on a connection that could checkpoint it: its
   * result passed the cap (the connection was destroyed, nothing of the step
   * committed), or the checkpoint itself raised an error that running the
   * step again would only repeat. The caller records the failure, once and
   * lease-checked, through the control connection.
   */
  | { readonly k: 'unrecorded'; readonly error: string };

const COMPLETE = 'SELECT df._complete_step($1, $2, $3, $4, $5, $6, $7::jsonb, $8)';

/**
 * df._complete_step's refusals (docs/sqlstates.md): DF001 lease taken over,
 * DF002 not the current attempt, DF003 instance finished, cancelled or gone.
 * The step's transaction is rolled back; the step is not run again.
 */
const CHECKPOINT_REFUSED = new Set(['DF001', 'DF002', 'DF003']);

/** Runs one SQL step on `conn`. The outcome is committed with the effect, or nothing is. */
export async function runSqlStep(
  conn: StepConn,
  req: StepRequest,
  onPid?: (pid: number) => void,
  stepTimeoutMs = 0,
  maxResultBytes = DEFAULT_MAX_RESULT_BYTES,
): Promise<StepOutcome> {
  const c = conn.client;
  const plan = await planStepSoon(req.sql, stepTextMax(maxResultBytes), req.owner ?? req.instance);
  const record = async (
    kind: 'done' | 'failed',
    detail: Record<string, string>,
  ): Promise<RecordedEvent | undefined> => {
    const r = await c.query<{ seq: string | null }>(COMPLETE, [
      req.instance,
      req.node,
      req.key,
      req.epoch,
      req.token,
      kind,
      JSON.stringify(detail),
      req.stamp,
    ]);
    return eventOf(r.rows[0]?.seq, detail);
  };
  /** The attempt mark committed (or there is none to wait for). */
  const markedOk = async (): Promise<boolean> => (req.mark ? await req.mark() : true);
  const NOT_MARKED: StepOutcome = {
    k: 'abandoned',
    reason: 'the attempt was not marked (lease lost, cancelled, or already recorded)',
  };
  const fail = async (error: string): Promise<StepOutcome> => {
    if (!(await markedOk())) return NOT_MARKED;
    await c.query('BEGIN');
    const event = await record('failed', { error });
    await c.query('COMMIT');
    return { k: 'failed', error, event };
  };
  /** The statement failed: a step error, or (retryable) run it again, or (over the cap) record it elsewhere. */
  const failed = async (err: unknown): Promise<StepOutcome> => {
    if (err instanceof ResultTooLargeError) {
      conn.broken = true;
      return { k: 'unrecorded', error: err.message };
    }
    if (isRetryable(err)) return { k: 'retry', err };
    if (err instanceof EncodeError) return await fail(err.message);
    return await fail(
      `SQL execution failed: error returned from database: ${(err as Error).message}`,
    );
  };
  try {
    onPid?.((c as unknown as { processID: number }).processID);
    if (plan.kind === 'refuse') return await fail(`SQL execution failed: ${plan.error}`);
    let result: string;
    if (plan.kind === 'autocommit') {
      // runs outside a transaction block: at least once, recorded right after; never speculatively
      if (!(await markedOk())) return NOT_MARKED;
      try {
        result = await readBounded(c, req.sql, maxResultBytes);
      } catch (err) {
        if (isRetryable(err)) throw err;
        return await failed(err);
      }
      const moved = encodingMoved(conn);
      if (moved) return moved;
      await c.query('BEGIN');
      const event = await record('done', { result });
      await c.query('COMMIT');
      return { k: 'done', event };
    }
    // BEGIN (and the step's timeout) go out in the statement's own message: no round trip of their own
    const before =
      stepTimeoutMs > 0
        ? ['BEGIN', `SET LOCAL statement_timeout = ${Math.floor(stepTimeoutMs)}`]
        : ['BEGIN'];
    if (plan.rowless && req.oneTrip !== false && !twoTrips.has(planKey(req.sql))) {
      // its result is known: the statement, its checkpoint and COMMIT go out together
      if (!(await markedOk())) return NOT_MARKED;
      const out = await oneTrip(conn, req, before, maxResultBytes);
      return out.k === 'failed-statement' ? await failed(out.err) : out;
    }
    try {
      const reading = readBounded(c, req.sql, maxResultBytes, before);
      void req.mark?.(); // written after the statement: the statement reaches the server first
      result = await reading;
    } catch (err) {
      // over the cap the connection is gone, and its transaction with it
      if (!(err instanceof ResultTooLargeError)) await c.query('ROLLBACK').catch(() => undefined);
      return await failed(err);
    }
    const moved = encodingMoved(conn);
    if (moved) {
      await c.query('ROLLBACK').catch(() => undefined);
      return moved;
    }
    // the statement ran while the attempt mark was on its way: without the mark nothing commits
    if (!(await markedOk())) {
      await c.query('ROLLBACK');
      return NOT_MARKED;
    }
    // deferred constraints fire now, as the submitter; then the checkpoint and COMMIT, in one round trip
    const complete = await checkpointStatement(req, result);
    let event: RecordedEvent | undefined;
    // the session reset follows the COMMIT in the same message: the next step finds a clean
    // session without a round trip of its own. An error after the COMMIT (from the reset) leaves
    // the step committed and the connection unusable.
    let committed = false;
    const con = (c as unknown as { connection: NodeJS.EventEmitter }).connection;
    const onComplete = (msg: { text?: string }): void => {
      if (msg.text === 'COMMIT') committed = true;
    };
    con.on('commandComplete', onComplete);
    try {
      const rs = (await c.query(
        `SET CONSTRAINTS ALL IMMEDIATE; ${complete}; COMMIT; ${sessionReset(conn)}`,
      )) as unknown as Array<pg.QueryResult<{ seq: string | null }>>;
      event = eventOf(rs[1]?.rows[0]?.seq, { result });
      conn.clean = true;
    } catch (err) {
      if (committed) {
        conn.broken = true;
        return { k: 'done', event: undefined };
      }
      if (/^dfgate: /.test((err as Error).message) || isRetryable(err)) throw err;
      await c.query('ROLLBACK').catch(() => undefined);
      return await fail(
        `SQL execution failed: error returned from database: ${(err as Error).message}`,
      );
    } finally {
      con.off('commandComplete', onComplete);
    }
    return { k: 'done', event };
  } catch (err) {
    await c.query('ROLLBACK').catch(() => undefined);
    const msg = String((err as Error).message);
    const code = (err as { code?: string }).code;
    if (code !== undefined && CHECKPOINT_REFUSED.has(code)) return { k: 'abandoned', reason: msg };
    // the same refusals from a df schema older than the DF codes
    if (code === '57014' && /instance .* is /.test(msg)) return { k: 'abandoned', reason: msg };
    if (code === '40001' && /lease|stale attempt/.test(msg)) return { k: 'abandoned', reason: msg };
    // drop the connection either way: its state after the error is unknown
    conn.broken = true;
    // a lost connection, a shutdown, a serialization failure: run again
    if (isRetryable(err) || /^dfgate: /.test(msg)) return { k: 'retry', err };
    // the outcome itself cannot be recorded (54000 string too long, 22P02, a JS RangeError…):
    // running the step again would only fail the same way, forever
    return {
      k: 'unrecorded',
      error: `SQL execution failed: the step's outcome could not be recorded: ${msg}`,
    };
  }
}

/**
 * A step that changed client_encoding (SET, set_config, a function that
 * does) fails, recorded through the control connection: dfgate's own
 * messages on this connection, the checkpoint with the step's result in it,
 * would be read in that encoding. The connection is not used again.
 */
function encodingMoved(conn: StepConn): StepOutcome | undefined {
  if (conn.encoding === 'UTF8') return undefined;
  conn.broken = true;
  return {
    k: 'unrecorded',
    error: `SQL execution failed: the step set client_encoding to ${conn.encoding}; steps run with UTF8`,
  };
}

/**
 * Step texts whose one-trip message got a message over the result cap (a
 * notice, an error or one row of a rule's): they take two round trips, at
 * most 1,000 of them kept.
 */
const twoTrips = new Set<string>();

/**
 * A step whose statement returns no rows (sqlcheck.ts, rowless), in one
 * round trip (docs/executor.md, "One round trip per step"): BEGIN, the
 * statement, the checkpoint with the empty result, COMMIT and the session
 * reset in one Query message, stopped by PostgreSQL at the first error.
 * Outcomes as runSqlStep's; 'failed-statement': rolled back, the caller
 * fails or retries it as any statement error; a refused or interrupted
 * checkpoint is thrown.
 *
 * The one thing a Query message does otherwise than the prepared statement
 * of the other path: a rule's SELECT (`DO INSTEAD SELECT`, `DO ALSO SELECT`)
 * sends its rows, which a prepared statement never returns. They are read
 * and dropped; the recorded result is the prepared statement's, no rows.
 *
 * A message over the cap cuts the connection, as in the other path; but the
 * server has the whole message, and if what it wrote before fits in the
 * sockets' buffers it may still commit. So the cut is retried, not failed:
 * the next attempt's mark finds a committed outcome and the step stands
 * done, or finds none and the text runs the other way, where the same
 * message fails the step.
 */
async function oneTrip(
  conn: StepConn,
  req: StepRequest,
  before: readonly string[],
  cap: number,
): Promise<StepOutcome | { readonly k: 'failed-statement'; readonly err: unknown }> {
  const c = conn.client;
  const result = RESULT_HEAD + resultTail(0);
  const statements = [
    ...before,
    req.sql,
    'SET CONSTRAINTS ALL IMMEDIATE',
    await checkpointStatement(req, result),
    'COMMIT',
    ...RESET_STATEMENTS,
    ...conn.resets,
  ];
  const step = before.length;
  const complete = step + 2;
  const commit = step + 3;
  const t = await runTrip(c, statements, cap);
  const event = (): RecordedEvent | undefined => eventOf(t.firstValue.get(complete), { result });
  if (t.failedAt === -1) {
    conn.clean = true;
    return { k: 'done', event: event() };
  }
  if (t.failedAt > commit) {
    // committed; the session reset failed: the connection is not used again
    conn.broken = true;
    return { k: 'done', event: event() };
  }
  const err = t.error;
  if (err instanceof ResultTooLargeError) {
    // the connection is gone; whether COMMIT ran is for the next attempt's mark to find out
    conn.broken = true;
    twoTrips.add(planKey(req.sql));
    if (twoTrips.size > 1000) twoTrips.delete(twoTrips.values().next().value as string);
    return { k: 'retry', err };
  }
  await c.query('ROLLBACK').catch(() => undefined);
  if (t.failedAt <= step) return { k: 'failed-statement', err };
  // the checkpoint: refused (DF001–DF003), interrupted, or an error of its own
  if (/^dfgate: /.test((err as Error).message) || isRetryable(err)) throw err;
  return { k: 'failed-statement', err };
}

/** The checkpoint of a completed step with what it carries (req.after), its values inlined (literals). */
async function checkpointStatement(req: StepRequest, result: string): Promise<string> {
  const carried = req.after ? await req.after(result).catch(() => undefined) : undefined;
  const lit = (v: string | number): string => (typeof v === 'number' ? String(v) : quoteLiteral(v));
  const args = [req.instance, req.node, req.key, req.epoch, req.token, 'done'].map(lit).join(', ');
  return `SELECT df._complete_step(${args}, ${lit(JSON.stringify({ result }))}::jsonb, ${lit(req.stamp)}${carried === undefined ? '' : `, ${lit(carried)}::jsonb`}) AS seq`;
}

function eventOf(
  seq: string | null | undefined,
  detail: Record<string, string>,
): RecordedEvent | undefined {
  const n = Number(seq);
  return seq === null || seq === undefined || !Number.isSafeInteger(n)
    ? undefined
    : { seq: n, detail };
}
