/**
 * df.* at the edge (DESIGN.md §2 path 2): statements that mention df. are
 * validated and compiled before they reach the database (rewritten, or
 * refused in statement order), Binds of df.start statements are checked, and
 * df.start(..., transaction_mode => 'new') runs on dfgate's own connection.
 * It sees the client's traffic only through `EdgeHost`, the same in session
 * and transaction mode: the client's identity and parameters, its
 * ReadyForQuery ledger, and the conversation on the server connection it
 * uses at that moment.
 */
import { isUtf8 } from 'node:buffer';
import { randomBytes } from 'node:crypto';
import { SqlState } from '../../db/sqlstate.js';
import {
  edgeSkips,
  textBytesMax,
  type BoundProblem,
  literal,
  type Edge,
  type NewCall,
  type StartBatch,
  type StartParam,
} from '../../dsl/edge.js';
import { analyzeSoon, checkBoundSoon } from '../../dsl/edge-pool.js';
import { metrics } from '../../metrics.js';
import type { Conversation, Ledger } from '../conversation.js';
import { decodeErrorFields, encodeErrorFieldMap } from '../protocol/backend.js';
import { Frontend } from '../protocol/codes.js';
import type { Cut, Deferred, Piece } from '../protocol/frame.js';
import { decodeFrontend, encodeFrontend, type FrontendMessage } from '../protocol/frontend.js';
import { BindRefusal, boundArgs, textParam, type BindMessage } from './bind.js';
import { errorFields, mixed, nonceName, quoteIdentifier, raiseNonce, refusal } from './errors.js';
import type { StartNewRequest } from '../../contract/start-new.js';
import type { Lease, Started } from '../../contract/started.js';
import { withLease } from './lease.js';
import { BornClaims } from './born.js';
import { answerIds, runBatch } from './batch.js';
import { shieldCancels } from '../cancel.js';
import { runNew } from './start-new.js';
import { mentionsDf, WordWatch } from '../sql-scan.js';
import { statementBytes, statementCheck } from './statements.js';
import type { PendingCheck, StatementCheck } from './statements.js';
export type { StartNewRequest };

export interface EdgeOptions {
  /**
   * Called when a transaction that mentioned df.* ends (ReadyForQuery back to
   * idle): wakes the executor in-process. `started`: what its statements
   * started, when every df.* statement in it was a plain
   * `SELECT df.start(...)` whose id the edge read; otherwise undefined.
   */
  readonly onDfCommit?: ((started?: Started) => void) | undefined;
  /** A lease from this process's executor for a plain `SELECT df.start(...)` rewritten here: born claimed. */
  readonly prelease?: (() => Lease | undefined) | undefined;
  /** Validate and compile df.start calls before they reach the database (DESIGN.md §2 path 2). */
  readonly edgeValidation?: boolean | undefined;
  /**
   * Runs df.start(..., transaction_mode => 'new') on a connection of dfgate's
   * own as `login`, committed on its own; resolves to the instance id. Errors
   * carry PostgreSQL's fields (code, message, hint).
   */
  readonly startNew?: ((req: StartNewRequest) => Promise<string>) | undefined;
}

/** What the edge sees of a client session. */
export interface EdgeHost {
  readonly user: string;
  readonly database: string;
  /** Parameters the server reported to this client (client_encoding, standard_conforming_strings). */
  readonly serverParams: ReadonlyMap<string, string>;
  readonly ledger: Ledger;
  readonly conversation: Conversation;
  readonly isClosed: boolean;
  /** The transaction status of the last ReadyForQuery ('I': outside a transaction block). */
  readonly txStatus: string;
  /** The pid of the cancel key the client holds (the backend's, or dfgate's own in transaction mode). */
  readonly cancelPid: number;
}

/** A server ErrorResponse dfgate provoked (it names the nonce) and what the client sees instead. */
interface ErrorSwap {
  readonly fields: ReadonlyMap<string, string> | null;
  readonly untilRfq: number;
}

/** The session's counters as of a client message, for deciding about it later. */
interface EdgeMoment {
  readonly rfqExpected: number;
  readonly prevLen: number;
  readonly prevRisky: boolean;
}

const TEXT_OID = 25;
/** The steps' SQL a commit's wake carries, in characters (Started.steps). */
const STEPS_CHARS_MAX = 16_384;
/**
 * The instance ids a commit's wake carries at most: a transaction that starts more (one
 * Query each) wakes the general claim instead, so what a session holds stays bounded.
 */
const STARTED_IDS_MAX = 1_000;
const NONCE = /dfgate_edge_([0-9a-f]{12})/;

export class EdgeInterceptor {
  /** Statements whose Binds dfgate checks: df.start(..., transaction_mode => 'new') or a bound workflow. */
  private readonly statements = new Map<string, StatementCheck | PendingCheck>();
  /** Errors dfgate provoked, by nonce. */
  private readonly swaps = new Map<string, ErrorSwap>();
  /** Server error positions in a rewritten statement → positions in the client's text. */
  private positionMaps: Array<{
    readonly after: number;
    readonly until: number;
    readonly map: (p: number) => number;
  }> = [];
  /** The current transaction sent a statement that mentions df.* */
  private sawDf = false;
  /** Statements of the current transaction that mention df.*, and of those the sole df.start calls. */
  private dfStatements = 0;
  private soleStarts = 0;
  /** Instance ids the current transaction's sole df.start calls returned, and their steps' SQL. */
  private startedIds: string[] = [];
  private startedSteps: string[] = [];
  private stepChars = 0;
  /** The sole df.start whose result row is next (its ReadyForQuery window), born leased or not. */
  private idRow: { after: number; until: number; leased: boolean } | undefined;
  /** Of startedIds, those born leased to this process's executor. */
  private leasedIds: string[] = [];
  /** Claims of born-leased starts, taken from their answers (born.ts). */
  readonly born = new BornClaims();

  constructor(
    private readonly host: EdgeHost,
    private readonly opts: EdgeOptions,
  ) {}

  /** Must a client message of this type (and length, header included) be seen whole? */
  watches(t: number, len = 0): boolean {
    return (
      ((t === Frontend.Query || t === Frontend.Parse) &&
        (this.opts.onDfCommit !== undefined || this.opts.edgeValidation === true) &&
        this.inspectStatement(t, len)) ||
      ((t === Frontend.Bind || t === Frontend.Close) && this.statements.size > 0)
    );
  }

  /**
   * Whether a Query or Parse is assembled for onStatement. One too long for
   * the edge to compile streams through like any other message (assembling,
   * scanning and writing it in one piece would hold the event loop for
   * milliseconds), counted as mentioning df.; with statements to track (a
   * Parse's name, a DEALLOCATE) it is inspected anyway (cutStatement past 1 MiB).
   */
  private inspectStatement(type: number, len: number): boolean {
    if (!edgeSkips(type === Frontend.Parse, len - 4)) return true;
    if (type === Frontend.Query) this.statements.delete(''); // as onStatement would
    if (this.statements.size > 0) return true;
    this.sawDf = true;
    this.dfStatements++;
    return false;
  }

  /**
   * A Query or Parse too long to assemble (over CLIENT_INSPECT_MAX), seen through
   * its first bytes (`head`, of its body) as it streams to the server: never
   * compiled, counted as mentioning df. (the executor is woken at its commit), and
   * its effect on the checked statements kept as onStatement keeps it (a Parse
   * replaces its name; a Query drops the unnamed one, all if it says DEALLOCATE
   * or DISCARD anywhere: watched as it streams).
   */
  cutStatement(type: number, head: Buffer): Cut | undefined {
    if (type !== Frontend.Query && type !== Frontend.Parse) return undefined;
    this.sawDf = true;
    this.dfStatements++;
    if (type === Frontend.Parse) {
      const z = head.indexOf(0);
      if (z >= 0) this.statements.delete(head.toString('utf8', 0, z));
      return undefined;
    }
    this.statements.delete('');
    if (this.statements.size === 0) return undefined;
    const words = new WordWatch(['deallocate', 'discard']);
    words.feed(head, 0, head.length, true);
    return {
      rest: (src, from, to) => words.feed(src, from, to, false),
      end: () => {
        if (words.take()) this.statements.clear();
        return [];
      },
    };
  }

  /** A client Close: a checked statement is gone. */
  onClose(body: Buffer): void {
    if (this.statements.size === 0) return;
    const m = decodeFrontend(Frontend.Close, body);
    if (m.type === 'Close' && m.kind === 'S') this.statements.delete(m.name);
  }

  /** A transaction ended (ReadyForQuery idle): wake the executor if it mentioned df.* */
  transactionEnded(): void {
    if (!this.sawDf) {
      // a start answered after the wake of its transaction had gone (a pipelined batch)
      if (this.startedIds.length > 0 || this.startedSteps.length > 0) {
        this.born.take([]);
        this.startedIds = [];
        this.leasedIds = [];
        this.startedSteps = [];
        this.stepChars = 0;
      }
      return;
    }
    const named =
      this.soleStarts === this.dfStatements && this.startedIds.length === this.soleStarts;
    const leased = this.leasedIds;
    const born = this.born.take(named ? leased : []);
    const started = named
      ? { ids: this.startedIds, steps: this.startedSteps, leased, born }
      : leased.length > 0
        ? { ids: leased, steps: this.startedSteps, leased, general: true }
        : undefined;
    this.sawDf = false;
    this.dfStatements = this.soleStarts = this.stepChars = 0;
    this.startedIds = [];
    this.leasedIds = [];
    this.startedSteps = [];
    this.opts.onDfCommit?.(started);
  }

  /** The steps' SQL for the wake (at most STEPS_CHARS_MAX characters per transaction), checked while it claims. */
  private addSteps(steps: readonly string[]): void {
    for (const s of steps) {
      if (this.stepChars + s.length > STEPS_CHARS_MAX) return;
      this.stepChars += s.length;
      this.startedSteps.push(s);
    }
  }

  /** Must DataRows be seen? Only while a sole df.start's result is due. */
  get wantsRow(): boolean {
    return this.idRow !== undefined;
  }

  /** A DataRow while a sole `SELECT df.start(...)` is answered: its one column is the instance id. */
  dataRow(body: Buffer): void {
    const w = this.idRow;
    const received = this.host.ledger.received;
    if (!w || received < w.after || received >= w.until) return;
    this.idRow = undefined;
    this.born.disarm(); // its claim came before its row, if at all
    // past the cap the count no longer matches the starts, and the wake names none
    if (this.startedIds.length >= STARTED_IDS_MAX) return;
    if (body.length === 14 && body.readInt16BE(0) === 1 && body.readInt32BE(2) === 8) {
      const id = body.toString('latin1', 6, 14);
      this.startedIds.push(id);
      if (w.leased) this.leasedIds.push(id);
    }
  }

  /** After the n-th ReadyForQuery: forget swaps and position maps of earlier statements. */
  settle(n: number): void {
    this.born.disarm(); // a start's claim comes before its ReadyForQuery
    if (this.idRow && this.idRow.until <= n) this.idRow = undefined;
    if (this.positionMaps.length) this.positionMaps = this.positionMaps.filter((m) => m.until > n);
    if (this.swaps.size) for (const [k, v] of this.swaps) if (v.untilRfq <= n) this.swaps.delete(k);
  }

  /**
   * A server ErrorResponse: dfgate's own error instead (or null: hide it), or its fields to
   * relay it. `cut`: only its first bytes were seen (too long to inspect), never replaced.
   */
  serverError(body: Buffer, cut = false): { replace: Buffer | null } | Map<string, string> {
    if (cut) return decodeErrorFields(body, true);
    const fields = decodeErrorFields(body);
    const nonce = NONCE.exec(fields.get('M') ?? '')?.[1];
    const swap = nonce === undefined ? undefined : this.swaps.get(nonce);
    if (swap) {
      this.swaps.delete(nonce as string);
      return { replace: swap.fields ? encodeErrorFieldMap(swap.fields) : null };
    }
    const pos = fields.get('P');
    const received = this.host.ledger.received;
    const pm = this.positionMaps.find((m) => m.after <= received && received < m.until);
    if (pos !== undefined && pm) {
      fields.set('P', String(pm.map(Number(pos))));
      return { replace: encodeErrorFieldMap(fields) };
    }
    return fields;
  }

  /** Registers an error the server is about to raise under a nonce (null fields: hide it). */
  provoke(
    fields: ReadonlyMap<string, string> | null,
    rfqExpected = this.host.ledger.expected,
  ): string {
    if (fields) metrics.edgeRefusals.inc({ code: fields.get('C') ?? '' });
    const nonce = randomBytes(6).toString('hex');
    this.swaps.set(nonce, { fields, untilRfq: rfqExpected + 1 });
    return nonce;
  }

  /** The message that makes the server refuse a Query or Parse with `fields`, in statement order. */
  refuseStatement(type: number, body: Buffer, fields: ReadonlyMap<string, string>): Buffer {
    const nonce = this.provoke(fields);
    if (type === Frontend.Parse) {
      const m = decodeFrontend(type, body);
      if (m.type === 'Parse') return encodeFrontend({ ...m, sql: nonceName(nonce) });
    }
    return encodeFrontend({ type: 'Query', sql: raiseNonce(nonce) });
  }

  // ---- statements -------------------------------------------------------

  onStatement(type: number, body: Buffer, raw: Buffer): Piece | null | undefined {
    const isQuery = type === Frontend.Query;
    if (this.statements.size > 0) {
      if (isQuery) {
        this.statements.delete(''); // a simple query drops the unnamed statement
        if (/deallocate|discard/i.test(body.toString('latin1'))) this.statements.clear();
      } else {
        this.statements.delete(body.toString('utf8', 0, body.indexOf(0)));
      }
    }
    if (!mentionsDf(body)) return undefined;
    this.sawDf = true;
    this.dfStatements++;
    const params = this.host.serverParams;
    if (
      !this.opts.edgeValidation ||
      params.get('client_encoding') !== 'UTF8' ||
      params.get('standard_conforming_strings') !== 'on'
    )
      return undefined;
    // Invalid UTF-8 goes to the server unchanged, which refuses it (22021) exactly as
    // on a direct connection; decoding it here would turn it into U+FFFD.
    const text = statementBytes(type, body);
    if (!text || text.length > textBytesMax(!isQuery) || !isUtf8(text)) return undefined;
    const m = decodeFrontend(type, body);
    if (m.type !== 'Query' && m.type !== 'Parse') return undefined;
    // what the outcome depends on, as of this message (later messages move the counters)
    const at = this.moment();
    const e = analyzeSoon(m.sql, !isQuery, this.host.user);
    if (!(e instanceof Promise)) return this.applyEdge(m, e, raw, at);
    // Compiled in a worker: this message and everything after it wait in order
    // (the pump pauses the client); a Bind of this statement waits for the check.
    let pending: PendingCheck | undefined;
    if (m.type === 'Parse') {
      const name = m.name;
      const p: PendingCheck = {
        pending: e.then((done) => {
          const st = statementCheck(done, m.paramTypes);
          if (this.statements.get(name) === p) {
            if (st) this.statements.set(name, st);
            else this.statements.delete(name);
          }
          return st;
        }),
      };
      pending = p;
      this.statements.set(name, p);
    }
    return async () => {
      const done = await e;
      await pending?.pending;
      const piece = this.applyEdge(m, done, raw, at, true);
      if (piece === undefined) return [raw];
      if (piece === null) return [];
      return typeof piece === 'function' ? piece() : [piece];
    };
  }

  private moment(): EdgeMoment {
    const l = this.host.ledger;
    return { rfqExpected: l.expected, prevLen: l.prevLen, prevRisky: l.prevRisky };
  }

  /** The message to forward for a statement, given the edge's answer. */
  private applyEdge(
    m: Extract<FrontendMessage, { type: 'Query' | 'Parse' }>,
    e: Edge,
    raw: Buffer,
    at: EdgeMoment,
    registered = false,
  ): Piece | null | undefined {
    if (m.type === 'Parse' && !registered) {
      const st = statementCheck(e, m.paramTypes);
      if (st) this.statements.set(m.name, st);
    }
    switch (e.kind) {
      case 'pass':
        return undefined;
      case 'rewrite': {
        metrics.edgeRewrites.inc();
        const after = m.type === 'Query' ? at.rfqExpected - 1 : at.rfqExpected;
        let { text, position } = e;
        if (e.batch && m.type === 'Query') {
          this.positionMaps.push({ after, until: after + 1, map: position });
          return this.batchPiece(e.batch, encodeFrontend({ type: 'Query', sql: text }), after);
        }
        // not after an unfinished batch, whose Execute's row could stand in for the id
        const next = at.prevLen === 0 && !this.host.ledger.unsure && m.type === 'Query';
        if (e.sole && next && this.opts.onDfCommit) {
          this.soleStarts++;
          // born claimed by this process's executor, when it would claim it by id now
          const lease =
            e.sole.leaseAt !== undefined && this.startedIds.length < STARTED_IDS_MAX
              ? this.opts.prelease?.()
              : undefined;
          // on its own outside a transaction block: its answer carries its claim (born.ts)
          const alone = this.host.txStatus === 'I' && this.host.ledger.received === after;
          const nonce = lease && alone ? this.born.arm(lease.ms) : undefined;
          const leased = lease && withLease(text, position, e.sole.leaseAt ?? -1, lease, nonce);
          if (leased) ({ text, position } = leased);
          this.idRow = { after, until: after + 1, leased: leased !== undefined };
          this.addSteps(e.sole.steps);
        }
        this.positionMaps.push({ after, until: after + 1, map: position });
        return encodeFrontend(
          m.type === 'Query' ? { type: 'Query', sql: text } : { ...m, sql: text },
        );
      }
      case 'error': {
        const fields = errorFields(e.error);
        const nonce = this.provoke(fields, at.rfqExpected);
        if (m.type === 'Parse') {
          // a nonce that is a syntax error: the server fails the Parse, dfgate swaps in its error
          return encodeFrontend({ ...m, sql: nonceName(nonce) });
        }
        const sql = Buffer.from(m.sql, 'utf8');
        const stmt = Buffer.from(raiseNonce(nonce), 'utf8');
        return encodeFrontend({
          type: 'Query',
          sql: e.only
            ? raiseNonce(nonce)
            : Buffer.concat([
                sql.subarray(0, e.statement.start),
                stmt,
                sql.subarray(e.statement.end),
              ]).toString('utf8'),
        });
      }
      case 'new':
        if (m.type === 'Parse') return undefined;
        return this.newQuery(e.call, raw, at);
    }
  }

  /** Many starts in one Query (batch.ts): one df._start_batch, outside a transaction block only. */
  private batchPiece(batch: StartBatch, oneByOne: Buffer, after: number): Deferred {
    const host = this.host;
    return async () => {
      await host.ledger.wait(after, host.isClosed);
      const alone = host.txStatus === 'I' && host.ledger.received === after;
      if (host.isClosed || host.ledger.unsure || !alone) return [oneByOne];
      const r = await runBatch(host.conversation, batch);
      metrics.edgeBatches.inc({
        outcome: r === 'replay' ? 'replayed' : 'error' in r ? 'error' : 'started',
      });
      if (r === 'replay') return [oneByOne];
      if ('error' in r)
        return [
          encodeFrontend({ type: 'Query', sql: raiseNonce(this.provoke(r.error, after + 1)) }),
        ];
      this.dfStatements += r.ids.length - 1; // the message counted once
      this.soleStarts += r.ids.length;
      for (const id of r.ids)
        if (this.startedIds.length < STARTED_IDS_MAX) this.startedIds.push(id);
      this.addSteps(batch.steps);
      // the message has finished: a cancel from now on until its answers are out cancels nothing
      const release = shieldCancels(host.cancelPid);
      void host.ledger.wait(after + 1, host.isClosed).finally(release);
      return [encodeFrontend({ type: 'Query', sql: answerIds(batch, r.ids) })];
    };
  }

  /** SELECT df.start(<constants>, transaction_mode => 'new') as a simple Query. */
  private newQuery(call: NewCall, raw: Buffer, at: EdgeMoment): Deferred {
    const before = at.rfqExpected - 1;
    const openBatch = at.prevLen > 0;
    const refuse = (f: ReadonlyMap<string, string>): Buffer[] => [
      encodeFrontend({ type: 'Query', sql: raiseNonce(this.provoke(f, at.rfqExpected)) }),
    ];
    return async () => {
      if (this.host.ledger.unsure) return refuse(mixed());
      await this.host.ledger.wait(before, this.host.isClosed);
      if (openBatch)
        return refuse(
          refusal(
            SqlState.FeatureNotSupported,
            "df.start(..., transaction_mode => 'new') cannot run inside an unfinished extended-protocol batch: send Sync first",
          ),
        );
      const args = new Map<StartParam, string | null>();
      for (const [k, a] of call.args)
        if (k !== 'transaction_mode' && 'value' in a) args.set(k, a.value);
      const r = await runNew(this.host, this.opts.startNew, args);
      if (r.error) return r.error === 'server' ? [raw] : refuse(r.error);
      return [
        encodeFrontend({
          type: 'Query',
          sql: `SELECT ${literal(r.id)}::pg_catalog.text AS ${quoteIdentifier(call.column)}`,
        }),
      ];
    };
  }

  // ---- binds ------------------------------------------------------------

  /** A Bind of a checked statement (a df.start workflow parameter, or transaction_mode => 'new'). */
  onBind(body: Buffer, raw: Buffer): Piece | undefined {
    if (this.statements.size === 0) return undefined;
    const m = decodeFrontend(Frontend.Bind, body);
    if (m.type !== 'Bind') return undefined;
    const found = this.statements.get(m.statement);
    if (!found) return undefined;
    const at = this.moment();
    if ('pending' in found) {
      // its Parse is still being compiled: decide once it is (the pump keeps the order)
      return async () => {
        const st = await found.pending;
        const piece = st ? this.bindPiece(st, m, raw, at) : undefined;
        if (piece === undefined) return [raw];
        return typeof piece === 'function' ? piece() : [piece];
      };
    }
    return this.bindPiece(found, m, raw, at);
  }

  private bindPiece(
    st: StatementCheck,
    m: BindMessage,
    raw: Buffer,
    at: EdgeMoment,
  ): Piece | undefined {
    const refuseNow = (f: ReadonlyMap<string, string> | null): Buffer =>
      // a statement name that does not exist: the server fails the Bind, dfgate swaps in its error
      encodeFrontend({
        type: 'Bind',
        portal: m.portal,
        statement: nonceName(this.provoke(f, at.rfqExpected)),
        paramFormats: [],
        params: [],
        resultFormats: [],
      });
    if (!st.call) {
      // df.start($n): the bound value is a workflow by the start rule, checked by the
      // compile worker unless short (very long ones by the in-database df.start)
      const values = (st.bound ?? []).map((n) => textParam(m, n - 1, st.paramTypes));
      const verdict = checkBoundSoon(values, this.host.user);
      const piece = (p: BoundProblem | undefined): Buffer | undefined =>
        p && refuseNow(refusal(p.code, p.message));
      if (!(verdict instanceof Promise)) return piece(verdict);
      return async () => [piece(await verdict) ?? raw];
    }
    const call = st.call;
    const before = at.rfqExpected;
    const prefix = { len: at.prevLen, risky: at.prevRisky };
    const refuse = (f: ReadonlyMap<string, string> | null): Buffer[] => [refuseNow(f)];
    const host = this.host;
    return async () => {
      if (host.ledger.unsure) return refuse(mixed());
      await host.ledger.wait(before, host.isClosed);
      if (prefix.risky)
        return refuse(
          refusal(
            SqlState.FeatureNotSupported,
            "df.start(..., transaction_mode => 'new') must be the first statement executed in its batch (after a Sync)",
          ),
        );
      // answers to the batch so far (a Parse, a Describe) reach the client first; if one
      // failed, the server must skip the rest of the batch as it would have
      if (prefix.len > 0 && (await host.conversation.endBatch())) return refuse(null);
      let args: Map<StartParam, string | null>;
      try {
        args = boundArgs(call, m, st.paramTypes);
      } catch (err) {
        if (err instanceof BindRefusal) return err.server ? [raw] : refuse(err.fields);
        throw err;
      }
      const r = await runNew(this.host, this.opts.startNew, args);
      if (r.error) return r.error === 'server' ? [raw] : refuse(r.error);
      const helper = '__dfgate_new';
      await host.conversation.prepareHelper(
        helper,
        `SELECT $1::text AS ${quoteIdentifier(call.column)}`,
        [TEXT_OID],
      );
      return [
        encodeFrontend({
          type: 'Bind',
          portal: m.portal,
          statement: helper,
          paramFormats: [0],
          params: [Buffer.from(r.id, 'utf8')],
          resultFormats:
            m.resultFormats.length > 1 ? [m.resultFormats[0] as number] : m.resultFormats,
        }),
      ];
    };
  }
}
