/**
 * Instances born claimed (docs/executor.md, "The wake path"): a plain
 * `SELECT df.start(...)` through this process's proxy may ask for a lease of
 * this executor (`lease`), so df._start_rows inserts the instance already
 * leased here (epoch 1) and the start's commit is its claim. At the commit
 * the proxy's wake names those ids, and the executor reads them (`adopt`),
 * which writes nothing, and runs them. The same rule as the claim by id
 * decides when a lease is offered: nothing ready is left behind, and the
 * instances leased here stay below the reserve, counting leases offered in
 * the last few seconds that no commit has named yet. An instance adopted
 * while the leases are full after all is handed back to the claim; one this
 * executor never hears of (the client's connection broke after the commit)
 * is claimed by any executor when its lease expires, as after a crash.
 */
import type { Logger } from 'pino';
import type { Lease } from '../contract/started.js';
import type { ControlStore, LoadedInstance } from './store.js';

/** An offered lease no commit named within this long no longer counts against the leases. */
const OFFER_MS = 5_000;

export interface AdoptionHost {
  readonly store: ControlStore;
  readonly log: Logger;
  readonly leaseMs: number;
  /** Leases this executor may take now for named starts (0 under a backlog, stopping, full). */
  leasesFree(): number;
  /** Leases free at all, the reserve included. */
  room(): number;
  /** Whether this executor drives the instance already. */
  has(id: string): boolean;
  /** Drives claimed instances. */
  run(claimed: LoadedInstance[]): void;
  /** Wakes the claim: by id for `ids`, or the general claim. */
  claim(ids?: readonly string[]): void;
}

export class Adoption {
  /** When each lease not yet named by a commit was offered. */
  private offered: number[] = [];

  constructor(private readonly host: AdoptionHost) {}

  /** A lease for one start, or undefined when this executor would not claim it by id now. */
  lease(): Lease | undefined {
    const now = Date.now();
    if (this.offered.length > 0 && (this.offered[0] as number) < now - OFFER_MS)
      this.offered = this.offered.filter((t) => t >= now - OFFER_MS);
    if (this.offered.length >= this.host.leasesFree()) return undefined;
    this.offered.push(now);
    return { owner: this.host.store.owner, ms: this.host.leaseMs };
  }

  /** The commit of starts born leased here: read them and run them. */
  adopt(ids: readonly string[]): void {
    this.offered.splice(0, ids.length);
    const fresh = ids.filter((id) => !this.host.has(id));
    if (fresh.length === 0) return;
    this.host.store.adopt(fresh).then(
      (rows) => {
        const mine = rows.filter((r) => !this.host.has(r.id));
        const keep = mine.slice(0, Math.max(0, this.host.room()));
        const back = mine.slice(keep.length).map((r) => r.id);
        if (back.length > 0)
          this.host.store.handBack(back).then(
            () => this.host.claim(),
            (err: unknown) =>
              this.host.log.warn({ err: (err as Error).message }, 'lease hand-back failed'),
          );
        this.host.run(keep);
        // not born leased here after all (a lease that expired in a long transaction):
        // the claim by id takes what is free
        const got = new Set(rows.map((r) => r.id));
        const other = fresh.filter((id) => !got.has(id));
        if (other.length > 0) this.host.claim(other);
      },
      (err: unknown) => {
        // their leases expire and any claim takes them then
        this.host.log.warn({ err: (err as Error).message }, 'reading started instances failed');
      },
    );
  }
}
