/**
 * Retention (spec §12.2, migration 0010): deletes expired finished instances
 * in batches, then waits reconcile_interval_seconds (re-read each pass; while
 * 0, the setting is looked at again every minute). Its timer is unref'd: it
 * never keeps the process alive.
 */
import type { Logger } from 'pino';
import { metrics } from '../metrics.js';
import type { ControlStore } from './store.js';

const BATCH = 5000;

export class Retention {
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    private readonly store: ControlStore,
    private readonly log: Logger,
  ) {}

  schedule(ms: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => void this.pass(), ms);
    this.timer.unref();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }

  private async pass(): Promise<void> {
    let interval = 3600;
    try {
      interval = Number((await this.store.reconcileInterval()) ?? 3600);
      if (!Number.isFinite(interval) || interval < 0) interval = 3600;
      for (let pass = 0; interval > 0 && pass < 1000 && !this.stopped; pass++) {
        const n = await this.store.reconcile(BATCH);
        if (!n) break;
        metrics.reconciled.inc({}, n);
        this.log.info({ deleted: n }, 'retention: deleted finished instances');
        if (n < BATCH) break;
      }
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'retention pass failed');
    }
    this.schedule(interval > 0 ? interval * 1000 : 60_000);
  }
}
