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

/** An instance id as df.instances stores it. */
const INSTANCE_ID = /^[0-9a-f]{8}$/;

/** Ids claimed here lately, so their start notification, arriving after the claim, is dropped. */
const RECENT_MAX = 4096;
/** Named instances waiting for one claim at most; more ask for the general claim instead. */
const STARTED_MAX = 1024;

export class WakeRequests {
  private general = false;
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

  /** A notification on the wake channel: `start:<id>` names its instance, anything else is general. */
  notified(payload: string | undefined): void {
    const id = payload?.startsWith('start:') ? payload.slice(6) : undefined;
    this.add(id !== undefined && INSTANCE_ID.test(id) ? [id] : undefined);
  }

  /** Is a claim wanted? */
  get pending(): boolean {
    return this.general || this.started.size > 0;
  }

  /** What the next claim is for; the requests start over. */
  take(): { readonly general: boolean; readonly started: readonly string[] } {
    const out = { general: this.general, started: [...this.started] };
    this.general = false;
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
