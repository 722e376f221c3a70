/**
 * The executor's LISTEN connection on the wake channel: starts committed
 * elsewhere, signals and cancels arrive here as notifications (hints only:
 * the claim re-reads everything). A lost connection is reconnected, and each
 * (re)connection wakes the general claim, for what was missed meanwhile.
 *
 * One connection at a time: while the server restarts, every attempt fails
 * until it accepts connections again, and each failure schedules exactly one
 * next attempt. (A failed attempt used to schedule two, one for its error
 * and one for its end, so a restart of a few seconds left dozens of LISTEN
 * sessions open once the server was back, and only the last was closed at
 * shutdown: the others kept the process from exiting.)
 */
import pg from 'pg';
import type { Logger } from 'pino';
import { WAKE_CHANNEL } from '../contract/channels.js';

export class WakeListener {
  private client: pg.Client | undefined;
  /** The connection being opened, until it listens or fails. */
  private opening: pg.Client | undefined;
  private retry: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    private readonly url: string,
    private readonly log: Logger,
    private readonly notified: (payload: string | undefined) => void,
    private readonly connected: () => void,
  ) {}

  /** Connected and listening. */
  get listening(): boolean {
    return !this.stopped && this.client !== undefined;
  }

  async start(): Promise<void> {
    if (this.stopped || this.opening || this.client) return;
    const c = new pg.Client({ connectionString: this.url, application_name: 'dfgate:listen' });
    this.opening = c;
    c.on('notification', (n) => this.notified(n.payload));
    c.on('error', () => undefined);
    c.on('end', () => {
      // only the listening connection's end calls for a new one
      if (this.client !== c) return;
      this.client = undefined;
      if (this.stopped) return;
      this.log.warn('LISTEN connection lost; reconnecting');
      this.later(500);
    });
    try {
      await c.connect();
      await c.query(`LISTEN ${WAKE_CHANNEL}`);
    } catch (err) {
      this.opening = undefined;
      await c.end().catch(() => undefined);
      if (this.stopped) return;
      this.log.warn({ err: (err as Error).message }, 'cannot LISTEN; retrying');
      this.later(1000);
      return;
    }
    this.opening = undefined;
    if (this.stopped) {
      await c.end().catch(() => undefined);
      return;
    }
    this.client = c;
    this.connected();
  }

  /** One next attempt, unless one is scheduled already. */
  private later(ms: number): void {
    if (this.retry || this.stopped) return;
    this.retry = setTimeout(() => {
      this.retry = undefined;
      void this.start().catch(() => undefined);
    }, ms);
    this.retry.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.retry) clearTimeout(this.retry);
    this.retry = undefined;
    await Promise.all([this.client, this.opening].map((c) => c?.end().catch(() => undefined)));
  }
}
