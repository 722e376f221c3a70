/**
 * What the executor's next claim looks for (docs/executor.md, "The wake
 * path"): everything ready (the general claim), or only instances whose
 * df.start just committed, named by their ids (the claim by id). A wake that
 * names its instances comes from a commit: the proxy read the ids from the
 * rewritten df.start's result, or the `start:<id>` notification carried one.
 * Any other wake (a timer, a signal, the poll, a finished instance while
 * work was left behind) asks for the general claim. Ids are hints only: the
 * claim re-reads every condition under the row lock.
 */

import type { Started } from '../contract/started.js';

/** An instance id as df.instances stores it. */
const INSTANCE_ID = /^[0-9a-f]{8}$/;

/** Ids claimed here lately, so their start notification, arriving after the claim, is dropped. */
const RECENT_MAX = 4096;
/** Named instances waiting for one claim at most; more ask for the general claim instead. */
const STARTED_MAX = 1024;

/** What one claim is for. */
export interface Wanted {
  /** Everything ready: a timer, a signal, the poll, a commit that named nothing. */
  readonly general: boolean;
  /** An instance finished under a backlog (see claimKind). */
  readonly refill: boolean;
  /** Instances whose start committed. */
  readonly started: readonly string[];
}

export class WakeRequests {
  private general = false;
  private refillWanted = false;
  private readonly started = new Set<string>();
  private readonly recent = new Set<string>();

  /** A wake: `started` names instances whose start committed; without it, a general claim. */
  add(started?: readonly string[]): void {
    if (started === undefined) {
      this.general = true;
      return;
    }
    for (const id of started)
      if (INSTANCE_ID.test(id) && !this.recent.has(id)) this.started.add(id);
    if (this.started.size > STARTED_MAX) {
      // the general claim finds them all, by its fair ranking; the set stays bounded
      this.general = true;
      this.started.clear();
    }
  }

  /** An instance finished while ready work was left behind: claim again once leases are free. */
  refill(): void {
    this.refillWanted = true;
  }

  /** A notification on the wake channel: `start:<id>` names its instance, anything else is general. */
  notified(payload: string | undefined): void {
    const id = payload?.startsWith('start:') ? payload.slice(6) : undefined;
    this.add(id !== undefined && INSTANCE_ID.test(id) ? [id] : undefined);
  }

  /** Is a claim wanted? */
  get pending(): boolean {
    return this.general || this.refillWanted || this.started.size > 0;
  }

  /** What the next claim is for; the requests start over. */
  take(): Wanted {
    const out = { general: this.general, refill: this.refillWanted, started: [...this.started] };
    this.general = false;
    this.refillWanted = false;
    this.started.clear();
    return out;
  }

  /** Instances this executor claimed (by either claim): a later hint for them is moot. */
  claimed(ids: readonly string[]): void {
    for (const id of ids) {
      this.recent.delete(id);
      this.recent.add(id);
      this.started.delete(id);
    }
    for (const old of this.recent) {
      if (this.recent.size <= RECENT_MAX) break;
      this.recent.delete(old);
    }
  }
}

/**
 * Whether `active` of `max` leases leave enough free to refill a backlog:
 * half of them, at least one.
 */
export function refillDue(max: number, active: number): boolean {
  return max - active >= Math.max(1, Math.floor(max / 2));
}

/**
 * Which claim serves a wake (docs/executor.md, "The wake path"):
 *   - 'general': everything ready, ranked per role: any wake that names
 *     nothing but a finished instance, and under a backlog any wake once a
 *     half of the leases are free (one claim takes several instances,
 *     instead of one claim per finished instance or per commit);
 *   - 'id': with nothing left behind, only the instances whose start just
 *     committed, by primary key, when all of them fit below the reserve;
 *   - 'newcomers': under a backlog, until half of the leases are free (and
 *     while no step slot is idle), only the named starts of roles that hold
 *     none here, one each (the reserve's turn);
 *   - 'none': nothing to claim yet.
 */
export function claimKind(
  want: Wanted,
  backlog: boolean,
  capacity: number,
  reserve: number,
  max: number,
  slotsIdle = false,
): 'id' | 'newcomers' | 'general' | 'none' {
  if (want.general) return 'general';
  if (!backlog) {
    if (want.started.length === 0) return 'none';
    return want.started.length <= capacity - reserve ? 'id' : 'general';
  }
  // step slots free while the instances leased here cannot use them (a role's cap): claim now
  if (refillDue(max, max - capacity) || slotsIdle) return 'general';
  return want.started.length > 0 ? 'newcomers' : 'none';
}

/**
 * What a wake asks the claim for: undefined (the general claim) for a wake
 * that names nothing or a transaction that did more than plain starts, else
 * the started ids, less those born leased here (adopt.ts reads those).
 */
export function toClaim(started?: Started): readonly string[] | undefined {
  if (started === undefined || started.general) return undefined;
  const leased = started.leased ?? [];
  return leased.length === 0 ? started.ids : started.ids.filter((id) => !leased.includes(id));
}
