/**
 * Node changes for the web console (channel dfgate_ui, docs/ui.md), sent by
 * the executor from its control connection, batched: at most one statement
 * per interval for every instance it drove meanwhile. Never from a step's own
 * transaction: PostgreSQL serialises the commits of transactions that NOTIFY,
 * which would undo group commit for every step.
 */
import type { ControlStore } from './store.js';

export class ChangeNotices {
  /** instance id → its submitting role's oid */
  private readonly pending = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly store: ControlStore,
    private readonly everyMs = 100,
  ) {}

  touch(instance: string, roleOid: number): void {
    this.pending.set(instance, roleOid);
    if (this.timer) return;
    this.timer = setTimeout(() => void this.flush(), this.everyMs);
    this.timer.unref();
  }

  async flush(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.pending.size === 0) return;
    const ids = [...this.pending.keys()];
    const roles = [...this.pending.values()];
    this.pending.clear();
    // a hint only: a lost one costs the console a refresh, nothing else
    await this.store.notifyChanged(ids, roles).catch(() => undefined);
  }
}
