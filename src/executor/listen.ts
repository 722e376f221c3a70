/**
 * The executor's LISTEN connection on the wake channel: starts committed
 * elsewhere, signals and cancels arrive here as notifications (hints only:
 * the claim re-reads everything). A lost connection is reconnected, and each
 * (re)connection wakes the general claim, for what was missed meanwhile.
 */
import pg from 'pg';
import type { Logger } from 'pino';
import { WAKE_CHANNEL } from '../contract/channels.js';

export class WakeListener {
  private client: pg.Client | undefined;
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
    if (this.stopped) return;
    const c = new pg.Client({ connectionString: this.url, application_name: 'dfgate:listen' });
    c.on('notification', (n) => this.notified(n.payload));
    c.on('error', () => undefined);
    c.on('end', () => {
      if (this.stopped) return;
      this.log.warn('LISTEN connection lost; reconnecting');
      setTimeout(() => void this.start().catch(() => undefined), 500).unref();
    });
    try {
      await c.connect();
      await c.query(`LISTEN ${WAKE_CHANNEL}`);
      this.client = c;
      this.connected();
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'cannot LISTEN; retrying');
      setTimeout(() => void this.start().catch(() => undefined), 1000).unref();
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.client?.end().catch(() => undefined);
  }
}
