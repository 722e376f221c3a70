/**
 * Live updates for the console: ONE LISTEN connection per dfgate process on
 * the channels dfgate_ui (the executor's batched announcements and the
 * df.signals triggers; payload: instance ids) and dfgate_wake (df.start,
 * df.signal and df.cancel on commit; payload: what happened and one id, whose
 * owner is looked up here, batched, only while a browser listens), fanned
 * out to the browsers' server-sent-event streams. A stream only receives the
 * changes of its session's role (all of them for roles that see every row),
 * coalesced to at most one event per `flushMs`. Browsers then re-read, as
 * their own role, whatever they show.
 */
import type { ServerResponse } from 'node:http';
import pg from 'pg';
import type { Logger } from 'pino';
import { UI_CHANNEL, WAKE_CHANNEL } from '../contract/channels.js';
import type { Session } from './sessions.js';

export { UI_CHANNEL } from '../contract/channels.js';

interface Stream {
  readonly session: Session;
  readonly res: ServerResponse;
  /** Changed ids waiting to be sent; null: "everything of the role". */
  pending: Set<string> | null | undefined;
  timer: NodeJS.Timeout | undefined;
}

export class LiveHub {
  private readonly streams = new Set<Stream>();
  private listener: pg.Client | undefined;
  private stopped = false;
  private readonly heartbeat: NodeJS.Timeout;
  /** Notifications received since start (for the Overview page and tests). */
  received = 0;
  /** Instance ids heard on the wake channel whose owners are not looked up yet. */
  private woken = new Set<string>();
  private wokenTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly url: string,
    private readonly log: Logger,
    private readonly flushMs = 200,
  ) {
    this.heartbeat = setInterval(() => {
      for (const s of this.streams) s.res.write(': keep-alive\n\n');
    }, 15_000);
    this.heartbeat.unref();
  }

  get listening(): boolean {
    return this.listener !== undefined;
  }

  get streamCount(): number {
    return this.streams.size;
  }

  async start(): Promise<void> {
    if (this.stopped) return;
    const c = new pg.Client({ connectionString: this.url, application_name: 'dfgate:ui-listen' });
    c.on('error', () => undefined);
    c.on('end', () => {
      if (this.listener === c) this.listener = undefined;
      if (this.stopped) return;
      this.log.warn('console LISTEN connection lost; reconnecting');
      // browsers may have missed changes meanwhile: tell every stream to refresh
      for (const s of this.streams) this.queue(s, null);
      setTimeout(() => void this.start().catch(() => undefined), 1000).unref();
    });
    c.on('notification', (n) => {
      if (n.channel === UI_CHANNEL) this.dispatch(n.payload ?? '');
      else if (n.channel === WAKE_CHANNEL) this.heard(n.payload ?? '');
    });
    try {
      await c.connect();
      await c.query(`LISTEN ${UI_CHANNEL}; LISTEN ${WAKE_CHANNEL}`);
      this.listener = c;
    } catch (err) {
      await c.end().catch(() => undefined);
      if (this.stopped) return;
      this.log.warn({ err: (err as Error).message }, 'console cannot LISTEN; retrying');
      setTimeout(() => void this.start().catch(() => undefined), 2000).unref();
    }
  }

  /** A change notification: its instances' owners are looked up with the others heard within 50 ms. */
  private dispatch(payload: string): void {
    this.received++;
    if (this.streams.size === 0) return;
    let msg: { i?: unknown };
    try {
      msg = JSON.parse(payload) as { i?: unknown };
    } catch {
      return;
    }
    if (!Array.isArray(msg.i)) return;
    for (const x of msg.i)
      if (typeof x === 'string' && /^[0-9a-f]{8}$/.test(x) && !this.owe(x)) return;
  }

  /** A wake message: its instance's owner is looked up with the others heard within 50 ms. */
  private heard(payload: string): void {
    const m = /^(?:start|signal|cancel):([0-9a-f]{8})$/.exec(payload);
    if (!m || this.streams.size === 0) return;
    this.received++;
    this.owe(m[1] as string);
  }

  /**
   * Instance `id` changed: its owner is looked up within 50 ms. Past 10,000
   * ids waiting for their owners every browser refreshes instead (bounded
   * memory), and false says so.
   */
  private owe(id: string): boolean {
    if (this.woken.size >= 10_000) {
      for (const s of this.streams) this.queue(s, null);
      return false;
    }
    this.woken.add(id);
    this.wokenTimer ??= setTimeout(() => void this.resolve(), 50);
    return true;
  }

  private async resolve(): Promise<void> {
    this.wokenTimer = undefined;
    const ids = [...this.woken];
    this.woken = new Set();
    const c = this.listener;
    if (ids.length === 0 || !c || this.streams.size === 0) return;
    try {
      const r = await c.query<{ r: string; i: string[] }>(
        `SELECT submitted_by::text AS r, array_agg(id ORDER BY id) AS i
           FROM df.instances WHERE id = ANY ($1::text[]) GROUP BY submitted_by`,
        [ids],
      );
      for (const row of r.rows) this.route(row.r, row.i);
    } catch {
      // cannot tell whose they are: every browser refreshes what it shows (no ids leave)
      for (const s of this.streams) this.queue(s, null);
    }
  }

  private route(role: string, ids: readonly string[] | null): void {
    for (const s of this.streams) {
      if (s.session.role !== role && !s.session.seesAll) continue;
      this.queue(s, ids);
    }
  }

  private queue(s: Stream, ids: readonly string[] | null): void {
    if (ids === null || s.pending === null) s.pending = null;
    else {
      s.pending ??= new Set();
      for (const id of ids) s.pending.add(id);
    }
    s.timer ??= setTimeout(() => this.flush(s), this.flushMs);
  }

  private flush(s: Stream): void {
    s.timer = undefined;
    const ids = s.pending === null ? null : [...(s.pending ?? [])];
    s.pending = undefined;
    s.res.write(`event: change\ndata: ${JSON.stringify({ ids })}\n\n`);
  }

  /** Serves one event stream until the browser goes away or the session ends. */
  subscribe(session: Session, res: ServerResponse): void {
    res.writeHead(200, {
      'Content-Type': 'text/event-stream; charset=utf-8',
      'Cache-Control': 'no-store',
      Connection: 'keep-alive',
      'X-Accel-Buffering': 'no',
    });
    res.write('retry: 2000\n\n');
    const s: Stream = { session, res, pending: undefined, timer: undefined };
    this.streams.add(s);
    res.on('close', () => {
      if (s.timer) clearTimeout(s.timer);
      this.streams.delete(s);
    });
  }

  /** Ends the streams of a session (logout, idle timeout). */
  endSession(session: Session): void {
    for (const s of this.streams) if (s.session === session) s.res.end();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.heartbeat);
    if (this.wokenTimer) clearTimeout(this.wokenTimer);
    for (const s of this.streams) s.res.end();
    this.streams.clear();
    const c = this.listener;
    this.listener = undefined;
    await c?.end().catch(() => undefined);
  }
}
