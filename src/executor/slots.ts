/**
 * Execution slots shared fairly between submitting roles (docs/executor.md,
 * "Fairness"). One executor process runs at most `slots` SQL and HTTP steps
 * at once; this class decides which waiting step gets a slot that comes free.
 *
 * - Fair share: with D roles that hold or wait for a slot, a role's share is
 *   max(1, floor(slots / D)). A free slot goes first to a waiting role below
 *   its share, round-robin (the role served longest ago first); a role at or
 *   above its share gets one only when no role below its share can take it,
 *   so a role alone may use the slots the reserve leaves.
 * - Reserve: the last `reserve` free slots go only to a role that holds none,
 *   so a role that turns up while another fills the executor with long steps
 *   starts its first step at once instead of waiting for one of them to end.
 * - Per-role cap (`perRoleCap`, 0: none): an explicit further limit.
 * - Timeout: a waiting step fails only when, at or after its deadline, its
 *   role holds no slot and no role holds more than its share, which can only
 *   happen when more roles want slots than there are slots. A step of a role
 *   that has a step running queues behind its own role's steps, and a step
 *   whose role is owed a slot that another role holds beyond its share waits
 *   for that slot; neither fails.
 *
 * Pure bookkeeping with timers: no I/O, unit tested without a database.
 */

export type TakeResult = 'taken' | 'timeout' | 'closed';

export interface FairSlotsOptions {
  /** Steps running at once (--max-concurrent-steps). */
  readonly slots: number;
  /** Free slots kept for roles that hold none (--step-slot-reserve); clamped to slots - 1. */
  readonly reserve: number;
  /** At most this many slots per role (--max-steps-per-role; 0: no cap). */
  readonly perRoleCap: number;
  /** How long a step waits before the timeout rule above is applied (--step-slot-timeout). */
  readonly timeoutMs: number;
}

interface Waiter {
  readonly role: number;
  readonly resolve: (r: TakeResult) => void;
  timer: NodeJS.Timeout | undefined;
  /** Past its deadline: fails as soon as the timeout rule holds. */
  overdue: boolean;
}

interface RoleState {
  held: number;
  readonly queue: Waiter[];
  /** Grant counter value of this role's last grant (0: never): the round-robin order. */
  lastServed: number;
  /** Order of first appearance, to break ties between roles never served. */
  readonly arrival: number;
}

export class FairSlots {
  private free: number;
  private readonly reserve: number;
  private readonly roles = new Map<number, RoleState>();
  private grants = 0;
  private arrivals = 0;
  private closed = false;

  constructor(private readonly opts: FairSlotsOptions) {
    if (!(opts.slots >= 1)) throw new RangeError('slots must be at least 1');
    this.free = opts.slots;
    this.reserve = Math.max(0, Math.min(opts.reserve, opts.slots - 1));
  }

  /** Roles holding or waiting for a slot. */
  get rolesWithDemand(): number {
    return this.roles.size;
  }

  /** A role's fair share now: max(1, floor(slots / roles with demand)). */
  share(): number {
    return Math.max(1, Math.floor(this.opts.slots / Math.max(1, this.roles.size)));
  }

  /** Slots held by `role` now. */
  held(role: number): number {
    return this.roles.get(role)?.held ?? 0;
  }

  /** Steps of `role` waiting for a slot now. */
  waiting(role: number): number {
    return this.roles.get(role)?.queue.length ?? 0;
  }

  /** Slots held now, by every role. */
  inUse(): number {
    return this.opts.slots - this.free;
  }

  /** Free slots now. */
  available(): number {
    return this.free;
  }

  /**
   * Free slots beyond the reserve: ones a role already holding a slot could
   * take. The reserve's last free slots wait for a role that holds none, so
   * they are idle by design, not for want of work.
   */
  spare(): number {
    return Math.max(0, this.free - this.reserve);
  }

  /**
   * Waits for a slot for a step of `role`: 'taken' once held (give it back
   * with give(role)), 'timeout' under the timeout rule, 'closed' after close().
   */
  take(role: number, timeoutMs = this.opts.timeoutMs): Promise<TakeResult> {
    if (this.closed) return Promise.resolve('closed');
    return new Promise<TakeResult>((resolve) => {
      const r = this.state(role);
      const w: Waiter = { role, resolve, timer: undefined, overdue: false };
      r.queue.push(w);
      this.dispatch();
      if (!r.queue.includes(w)) return; // granted at once
      if (Number.isFinite(timeoutMs)) {
        w.timer = setTimeout(() => {
          w.timer = undefined;
          w.overdue = true;
          this.expire();
        }, timeoutMs);
      }
    });
  }

  /** Returns a slot `role` held and hands free slots to waiters. */
  give(role: number): void {
    const r = this.roles.get(role);
    if (!r || r.held <= 0) throw new Error(`slot given back by role ${role}, which holds none`);
    r.held--;
    this.free++;
    this.forget(r, role);
    this.dispatch();
  }

  /** Ends every wait with 'closed' (executor stopping); held slots may still be given back. */
  close(): void {
    this.closed = true;
    for (const [role, r] of this.roles) {
      for (const w of r.queue.splice(0)) {
        if (w.timer) clearTimeout(w.timer);
        w.resolve('closed');
      }
      this.forget(r, role);
    }
  }

  private state(role: number): RoleState {
    let r = this.roles.get(role);
    if (!r) {
      r = { held: 0, queue: [], lastServed: 0, arrival: ++this.arrivals };
      this.roles.set(role, r);
    }
    return r;
  }

  /** A role with no slot and no waiter no longer counts towards the shares. */
  private forget(r: RoleState, role: number): void {
    if (r.held === 0 && r.queue.length === 0) this.roles.delete(role);
  }

  /** May `r` take a free slot now? */
  private eligible(r: RoleState): boolean {
    if (r.queue.length === 0 || this.free <= 0) return false;
    if (this.opts.perRoleCap > 0 && r.held >= this.opts.perRoleCap) return false;
    return r.held === 0 || this.free - 1 >= this.reserve;
  }

  /** Hands free slots out: below-share roles first, round-robin; then the rest, round-robin. */
  private dispatch(): void {
    for (;;) {
      const share = this.share();
      let best: RoleState | undefined;
      let bestBelow = false;
      for (const r of this.roles.values()) {
        if (!this.eligible(r)) continue;
        const below = r.held < share;
        if (
          !best ||
          (below && !bestBelow) ||
          (below === bestBelow &&
            (r.lastServed < best.lastServed ||
              (r.lastServed === best.lastServed && r.arrival < best.arrival)))
        ) {
          best = r;
          bestBelow = below;
        }
      }
      if (!best) break;
      const w = best.queue.shift() as Waiter;
      best.held++;
      this.free--;
      best.lastServed = ++this.grants;
      if (w.timer) clearTimeout(w.timer);
      w.resolve('taken');
    }
    this.expire();
  }

  /**
   * The timeout rule: an overdue waiter fails when its role holds no slot and
   * no role holds more than its share (more roles want slots than there are).
   */
  private expire(): void {
    let failed = false;
    for (;;) {
      const share = this.share();
      let over = false;
      for (const r of this.roles.values()) if (r.held > share) over = true;
      if (over) break;
      let victim: { role: number; r: RoleState; w: Waiter } | undefined;
      for (const [role, r] of this.roles) {
        if (r.held > 0) continue;
        const w = r.queue.find((x) => x.overdue);
        if (w) {
          victim = { role, r, w };
          break;
        }
      }
      if (!victim) break;
      victim.r.queue.splice(victim.r.queue.indexOf(victim.w), 1);
      this.forget(victim.r, victim.role);
      victim.w.resolve('timeout');
      failed = true;
    }
    // fewer roles with demand: larger shares, maybe a grant
    if (failed) this.dispatch();
  }
}
