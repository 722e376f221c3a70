/**
 * What a client keeps across transactions in transaction mode, when each
 * transaction may run on a different server connection:
 *
 * - its named prepared statements (protocol level: Parse/Bind/Describe/Close).
 *   Each is prepared on the server under a name dfgate derives from its text
 *   and parameter types (`dfgate_<hash>`), so clients never clash and the same
 *   statement prepared by many clients exists once per server connection; a
 *   Bind or Describe on a connection that lacks it is preceded by its Parse,
 *   whose ParseComplete dfgate swallows. The unnamed statement follows the
 *   client the same way.
 * - its session settings: SET/RESET statements that committed, re-applied on
 *   the connection it gets; the reported parameters (application_name,
 *   client_encoding, DateStyle, IntervalStyle, TimeZone, ...) are compared
 *   with what the connection reported and set when they differ.
 * - what cannot follow it (LISTEN, session advisory locks, WITH HOLD cursors,
 *   temporary tables, SQL-level PREPARE): refused with 0A000.
 */
import { createHash } from 'node:crypto';
import { decodeErrorFields, encodeErrorFieldMap } from './protocol/backend.js';
import { Backend, CLIENT_INSPECT_MAX, Frontend } from './protocol/codes.js';
import type { Cut, Deferred, Piece } from './protocol/frame.js';
import { encodeFrontend } from './protocol/frontend.js';
import type { ServerConn } from './server-conn.js';
import {
  lit,
  lookAt,
  MAYBE,
  refuse,
  refusalOf,
  REPORTED_SYNC,
  setOp,
  unquote,
  type SetOp,
} from './pooled-scan.js';
import { WordWatch, type ScanOptions } from './sql-scan.js';

/** A piece whose bytes depend on the server connection it is written to; evaluated at write time. */
export type Late = Deferred & { readonly late: (conn: ServerConn) => Buffer[] };

export function isLate(p: Piece): p is Late {
  return typeof p === 'function' && 'late' in p;
}

export function late(f: (conn: ServerConn) => Buffer[]): Late {
  const d = (): Promise<Buffer[]> => Promise.reject(new Error('a Late piece is written, not run'));
  return Object.assign(d, { late: f });
}

const SERVER_PREFIX = Buffer.from('dfgate_');
const SERVER_NAME = /dfgate_[0-9a-f]{20}/g;
const ParseComplete = 0x31; // '1'
const CloseComplete = 0x33; // '3'
const CommandComplete = 0x43; // 'C'

/** Server responses to one client Query/Sync/FunctionCall batch, and what dfgate added to it. */
interface Batch {
  /** ParseComplete and CloseComplete answers to dfgate's own Parse and Close, to swallow. */
  parse: number;
  close: number;
  /** Statements dfgate parsed in this batch (uncertain if the batch fails). */
  inserted: string[];
}

/** What a simple Query changes in transaction mode. */
export interface QueryPlan {
  /** Statement text to send instead. */
  readonly rewrite?: string | undefined;
  /** Bookkeeping on the connection it runs on. */
  readonly effect?: ((conn: ServerConn) => void) | undefined;
}

interface Prepared {
  readonly server: string;
  /** The Parse to send, under the server name. */
  readonly parse: Buffer;
}

export class PooledClient {
  private readonly prepared = new Map<string, Prepared>();
  private unnamed: Buffer | undefined;
  /** The unnamed statement is one too long to keep a copy of (a long Parse): it stays on its connection. */
  private unnamedLong = false;
  /** Committed session settings: key (lowercase) → [name as written, value as written]. */
  readonly settings = new Map<string, string>();
  private pendingSets: SetOp[] = [];
  private failedSinceIdle = false;
  private lastTag = '';
  private batches: Batch[] = [{ parse: 0, close: 0, inserted: [] }];
  /** Identifies this client as the owner of a connection's unnamed statement. */
  private readonly token = {};
  /** Looks for MAYBE in a long Query or Parse as its chunks arrive (Framer's `part`). */
  readonly arriving = new WordWatch(MAYBE);

  /** The batch the next client message belongs to. */
  private get open(): Batch {
    return this.batches[this.batches.length - 1] as Batch;
  }

  /** A client message header: Query, Sync and FunctionCall end a batch. */
  header(t: number): void {
    if (t === Frontend.Query || t === Frontend.Sync || t === Frontend.FunctionCall)
      this.batches.push({ parse: 0, close: 0, inserted: [] });
  }

  /** Server message types this client must see (beyond errors and ReadyForQuery). */
  inspects(t: number): boolean {
    if (t === CommandComplete) return this.pendingSets.length > 0;
    if (t === ParseComplete || t === CloseComplete) {
      for (const b of this.batches) if (b.parse > 0 || b.close > 0) return true;
    }
    return false;
  }

  /**
   * A server message on the lent connection: null if it answers dfgate's own
   * message (swallowed), a replacement, or undefined to relay it. `cut`: only
   * its first bytes were seen (one too long to inspect whole): never replaced,
   * so statement names in an error that long are not renamed.
   */
  serverMessage(
    conn: ServerConn,
    type: number,
    body: Buffer,
    cut = false,
  ): Buffer | null | undefined {
    if (this.watch(conn, type, body)) return null;
    if (type === Backend.ErrorResponse && !cut && body.includes(SERVER_PREFIX)) {
      // the client knows its statements by its own names
      const fields = decodeErrorFields(body);
      const m = fields.get('M') ?? '';
      const renamed = m.replace(SERVER_NAME, (n) => this.clientName(n) ?? n);
      if (renamed !== m) {
        fields.set('M', renamed);
        return encodeErrorFieldMap(fields);
      }
    }
    return undefined;
  }

  /** The client's name of a statement dfgate prepared as `server`. */
  private clientName(server: string): string | undefined {
    for (const [name, p] of this.prepared) if (p.server === server) return name;
    return undefined;
  }

  private watch(conn: ServerConn, type: number, body: Buffer): boolean {
    const head = this.batches[0] as Batch;
    switch (type) {
      case ParseComplete:
        if (head.parse > 0) {
          head.parse--;
          return true;
        }
        return false;
      case CloseComplete:
        if (head.close > 0) {
          head.close--;
          return true;
        }
        return false;
      case CommandComplete:
        this.lastTag = body.toString('latin1', 0, Math.max(0, body.indexOf(0))).split(' ')[0] ?? '';
        return false;
      case Backend.ErrorResponse: {
        // the server skips the rest of the batch: dfgate's Parse there may or may not have run
        head.parse = 0;
        head.close = 0;
        for (const n of head.inserted) {
          conn.prepared.delete(n);
          conn.uncertain.add(n);
        }
        head.inserted = [];
        this.failedSinceIdle = true;
        return false;
      }
      case Backend.ReadyForQuery: {
        if (this.batches.length > 1) this.batches.shift();
        else this.batches = [{ parse: 0, close: 0, inserted: [] }];
        if (body[0] === 0x49 /* I */) {
          if (!this.failedSinceIdle && this.lastTag !== 'ROLLBACK')
            for (const op of this.pendingSets) this.apply(op, conn);
          // some of them may have committed all the same (after ROLLBACK TO SAVEPOINT, before a
          // COMMIT earlier in the message): DISCARD ALL before the connection is lent again
          else if (this.pendingSets.length > 0) conn.stateUnknown = true;
          this.pendingSets = [];
          this.failedSinceIdle = false;
          this.lastTag = '';
        }
        return false;
      }
      default:
        return false;
    }
  }

  private apply(op: SetOp, conn: ServerConn): void {
    if (op.kind === 'resetAll') {
      this.settings.clear();
      conn.settings.clear();
    } else if (op.kind === 'reset') {
      this.settings.delete(op.key);
      conn.settings.delete(op.key);
    } else {
      this.settings.set(op.key, op.sql);
      conn.settings.set(op.key, op.sql);
    }
  }

  /**
   * SQL that makes `conn` carry this client's settings (undefined: nothing to
   * do). `view` holds the parameters the server reported to the client.
   */
  syncSql(conn: ServerConn, view: ReadonlyMap<string, string>): string | undefined {
    const parts: string[] = [];
    const configs: string[] = [];
    for (const k of REPORTED_SYNC) {
      const v = view.get(k);
      if (v !== undefined && conn.params.get(k) !== v)
        configs.push(`pg_catalog.set_config(${lit(k)}, ${lit(v)}, false)`);
    }
    if (configs.length) parts.push(`SELECT ${configs.join(', ')}`);
    for (const k of conn.settings.keys()) if (!this.settings.has(k)) parts.push(`RESET ${k}`);
    for (const [k, sql] of this.settings) if (conn.settings.get(k) !== sql) parts.push(sql);
    return parts.length ? parts.join('; ') : undefined;
  }

  /** The connection now carries this client's settings. */
  synced(conn: ServerConn): void {
    conn.settings.clear();
    for (const [k, v] of this.settings) conn.settings.set(k, v);
  }

  // ---- client messages --------------------------------------------------

  /**
   * A simple Query (its statement text: `body` bytes [from, to)): what
   * transaction mode refuses (fields), or what it changes (a replacement
   * statement, an effect on the connection it runs on).
   */
  query(
    body: Buffer,
    from: number,
    to: number,
    opts: ScanOptions,
  ): Map<string, string> | QueryPlan {
    const looked = lookAt(body, from, to, opts, this.arriving.take());
    if (!looked) return {};
    const ops: SetOp[] = [];
    let effect: ((conn: ServerConn) => void) | undefined;
    let rewrite: string | undefined;
    for (const s of looked.statements) {
      const problem = refusalOf(s.code);
      if (problem) return problem;
      const c = s.code;
      if (/^(set|reset)\b/.test(c)) {
        const op = setOp(s.text, c);
        if (op === 'refuse') return refuse(s.text.split(/\s+/).slice(0, 3).join(' '));
        if (op) ops.push(op);
      } else if (/^deallocate\b/.test(c)) {
        if (looked.count > 1)
          return refuse('DEALLOCATE together with other statements in one query');
        const m = /^deallocate\s+(?:prepare\s+)?("(?:[^"]|"")*"|[^\s;]+)\s*$/i.exec(s.text);
        const name = m ? unquote(m[1] as string) : undefined;
        if (name === 'all' && !(m?.[1] ?? '').startsWith('"')) {
          this.prepared.clear();
          effect = (conn) => conn.prepared.clear();
        } else if (name !== undefined && !this.prepared.has(name) && name.startsWith('dfgate_')) {
          // dfgate's name of a statement on this connection, maybe another client's: never
          // dropped behind dfgate's back (its Binds would fail with 26000 on this connection)
          return refuse('DEALLOCATE of a statement dfgate prepared');
        } else if (name !== undefined && this.prepared.has(name)) {
          this.prepared.delete(name);
          // the server knows it under dfgate's name: drop all there, they are re-prepared on demand
          rewrite = 'DEALLOCATE ALL';
          effect = (conn) => conn.prepared.clear();
        }
      } else if (/^discard\s+all\b/.test(c)) {
        this.prepared.clear();
        this.unnamed = undefined;
        ops.push({ kind: 'resetAll' });
        effect = (conn) => {
          conn.prepared.clear();
          conn.unnamedOwner = undefined;
        };
      }
    }
    this.pendingSets.push(...ops);
    return { rewrite, effect };
  }

  /** A Parse (its statement text: `body` bytes [from, to), after the edge): a refusal, or undefined. */
  parse(
    body: Buffer,
    from: number,
    to: number,
    opts: ScanOptions,
  ): Map<string, string> | undefined {
    const looked = lookAt(body, from, to, opts, this.arriving.take());
    if (!looked) return undefined;
    for (const s of looked.statements) {
      const problem = refusalOf(s.code);
      if (problem) return problem;
      if (/^(set|reset)\b/.test(s.code)) {
        const op = setOp(s.text, s.code);
        if (op === 'refuse') return refuse(s.text.split(/\s+/).slice(0, 3).join(' '));
        if (op) this.pendingSets.push(op);
      }
    }
    return undefined;
  }

  /**
   * Maps a piece of client messages (Query, Parse, Bind, Describe, Close) onto
   * the connection it is written to; `effect` runs on that connection first.
   */
  map(piece: Piece, effect?: (conn: ServerConn) => void): Piece {
    const batch = this.open;
    if (Buffer.isBuffer(piece))
      return late((conn) => {
        effect?.(conn);
        return this.out(piece, conn, batch);
      });
    if (isLate(piece) || isMapped(piece)) return piece;
    const d = piece;
    const run = (): Promise<Buffer[]> => d();
    return Object.assign(run, {
      mapped: (conn: ServerConn, bufs: Buffer[]) => {
        effect?.(conn);
        return bufs.flatMap((b) => this.out(b, conn, batch));
      },
    });
  }

  /** One client message as it must reach `conn`. */
  out(raw: Buffer, conn: ServerConn, batch: Batch = this.open): Buffer[] {
    switch (raw[0]) {
      case Frontend.Query:
        // a simple query drops the unnamed statement
        this.unnamed = undefined;
        this.unnamedLong = false;
        conn.unnamedOwner = undefined;
        return [raw];
      case Frontend.Parse: {
        const name = cstringAt(raw, 5);
        if (name.value === '') {
          this.unnamed = raw;
          this.unnamedLong = false;
          conn.unnamedOwner = this.token;
          return [raw];
        }
        const rest = raw.subarray(name.end);
        const server = `dfgate_${createHash('sha1').update(rest).digest('hex').slice(0, 20)}`;
        const parse = withName(raw, 5, name.end, server);
        this.prepared.set(name.value, { server, parse });
        if (conn.prepared.has(server)) {
          // the same statement is already there: the client still needs its ParseComplete
          conn.unnamedOwner = undefined;
          return [withName(raw, 5, name.end, '')];
        }
        return this.ensure(conn, batch, server, parse, true);
      }
      case Frontend.Bind: {
        const portal = cstringAt(raw, 5);
        const stmt = cstringAt(raw, portal.end);
        if (stmt.value === '') return this.unnamedFor(raw, conn, batch);
        const p = this.prepared.get(stmt.value);
        if (!p) return [raw];
        return [
          ...this.ensure(conn, batch, p.server, p.parse, false),
          withName(raw, portal.end, stmt.end, p.server),
        ];
      }
      case Frontend.Describe:
      case Frontend.Close: {
        if (raw[5] !== 0x53 /* S */) return [raw];
        const stmt = cstringAt(raw, 6);
        if (stmt.value === '' && raw[0] === Frontend.Close) {
          this.unnamed = undefined;
          this.unnamedLong = false;
          return [raw];
        }
        if (stmt.value === '') return this.unnamedFor(raw, conn, batch);
        const p = this.prepared.get(stmt.value);
        if (!p) return [raw];
        const renamed = withName(raw, 6, stmt.end, p.server);
        if (raw[0] === Frontend.Close) {
          this.prepared.delete(stmt.value);
          conn.prepared.delete(p.server);
          return [renamed];
        }
        return [...this.ensure(conn, batch, p.server, p.parse, false), renamed];
      }
      default:
        return [raw];
    }
  }

  /**
   * A Bind or Describe of the unnamed statement (`raw`) as it must reach `conn`:
   * after the client's Parse if another connection got it. One too long to keep
   * was not carried: the Close before it makes the server answer as it does for
   * an unnamed statement that does not exist (26000), not bind another client's.
   */
  private unnamedFor(raw: Buffer, conn: ServerConn, batch: Batch): Buffer[] {
    if (conn.unnamedOwner === this.token) return [raw];
    if (this.unnamed) {
      batch.parse++;
      conn.unnamedOwner = this.token;
      return [this.unnamed, raw];
    }
    if (!this.unnamedLong) return [raw];
    batch.close++;
    conn.unnamedOwner = undefined;
    return [CLOSE_UNNAMED, raw];
  }

  /**
   * A Query, Parse or Bind too long to assemble (over CLIENT_INSPECT_MAX), seen
   * through its first bytes (`framed`, the type byte and length included) while
   * the rest streams to the server: a Bind goes out renamed like a short one
   * (its names come first). The statements of a Query or an unnamed Parse are
   * not looked at: a word of MAYBE anywhere in them leaves the session state of
   * the connection unknown, so it gets DISCARD ALL before it is lent again, and
   * such an unnamed statement is not carried to another connection. A named
   * Parse is refused (the fields): carrying it would need a copy of all of it.
   */
  long(type: number, framed: Buffer): Cut | Map<string, string> | undefined {
    const batch = this.open;
    if (type === Frontend.Bind) {
      const portal = cstringAt(framed, 5);
      // names cut off by the end of the bytes kept: no statement of the client's
      if (framed.indexOf(0, portal.end) < 0) return undefined;
      return { head: late((conn) => this.out(framed, conn, batch)) };
    }
    if (type !== Frontend.Query && type !== Frontend.Parse) return undefined;
    const parse = type === Frontend.Parse;
    if (parse && framed[5] !== 0)
      return refuse(
        `a named prepared statement over ${CLIENT_INSPECT_MAX} bytes`,
        'dfgate would have to keep a copy of it to prepare it there. Use the unnamed statement inside one transaction, pass long values as parameters, or use --pool-mode session.',
      );
    const words = new WordWatch(MAYBE);
    words.feed(framed, 5, framed.length, true);
    return {
      head: late((conn) => {
        this.unnamed = undefined;
        this.unnamedLong = parse;
        conn.unnamedOwner = parse ? this.token : undefined;
        return [framed];
      }),
      rest: (src, from, to) => words.feed(src, from, to, false),
      end: () => [
        late((conn) => {
          if (words.take()) conn.stateUnknown = true;
          return [];
        }),
      ],
    };
  }

  /** The statement `server` exists on `conn` after these messages (`own`: the client's Parse answers itself). */
  private ensure(
    conn: ServerConn,
    batch: Batch,
    server: string,
    parse: Buffer,
    own: boolean,
  ): Buffer[] {
    if (!own && conn.prepared.has(server)) return [];
    const out: Buffer[] = [];
    if (conn.uncertain.delete(server)) {
      out.push(encodeFrontend({ type: 'Close', kind: 'S', name: server }));
      batch.close++;
    }
    out.push(parse);
    if (!own) batch.parse++;
    conn.prepared.add(server);
    batch.inserted.push(server);
    return out;
  }
}

/** A Deferred whose resolved messages are mapped onto the connection at write time. */
export type Mapped = Deferred & { readonly mapped: (conn: ServerConn, bufs: Buffer[]) => Buffer[] };

export function isMapped(p: Piece): p is Mapped {
  return typeof p === 'function' && 'mapped' in p;
}

/** The NUL-terminated string at `at` (utf8) and the offset after its NUL. */
function cstringAt(raw: Buffer, at: number): { readonly value: string; readonly end: number } {
  const z = raw.indexOf(0, at);
  const end = z < 0 ? raw.length : z + 1;
  return { value: raw.toString('utf8', at, z < 0 ? raw.length : z), end };
}

/**
 * `raw` with the NUL-terminated string in [from, end) replaced by `name`, its
 * length fixed up (`raw` may be the first bytes of a longer message).
 */
function withName(raw: Buffer, from: number, end: number, name: string): Buffer {
  const n = Buffer.from(name + '\0', 'utf8');
  const out = Buffer.concat([raw.subarray(0, from), n, raw.subarray(end)]);
  out.writeInt32BE(raw.readInt32BE(1) + n.length - (end - from), 1);
  return out;
}

const CLOSE_UNNAMED = encodeFrontend({ type: 'Close', kind: 'S', name: '' });
