/**
 * Instances born claimed (docs/executor.md, "The wake path"): a plain
 * `SELECT df.start(...)` through this process's proxy may ask for a lease of
 * this executor (`lease`), so df._start_rows inserts the instance already
 * leased here (epoch 1) and the start's commit is its claim. At the commit
 * the proxy's wake names those ids, with the claims their answers carried
 * (a start on its own outside a transaction block, edge/born.ts), and the
 * executor runs them: from those claims, or after reading them (`adopt`,
 * which writes nothing). The same rule as the claim by id
 * decides when a lease is offered: nothing ready is left behind, and the
 * instances leased here stay below the reserve, counting leases offered
 * (within a lease's length) that no commit has named yet. Adopted are at
 * most as many as that rule allows when the commit comes, the rest is handed
 * back to the claim, so the reserve stays for roles holding none; one this
 * executor never hears of (the client's connection broke after the commit)
 * is claimed by any executor when its lease expires, as after a crash.
 */
import type { Logger } from 'pino';
import type { Lease } from '../contract/started.js';
import type { ControlStore, LoadedInstance } from './store.js';

export interface AdoptionHost {
  readonly store: ControlStore;
  readonly log: Logger;
  readonly leaseMs: number;
  /**
   * Leases below the reserve this executor may still take now (0 under a
   * backlog or stopping), less those of a claim on its way.
   */
  leasesFree(): number;
  /** Whether this executor drives the instance already. */
  has(id: string): boolean;
  /** Drives claimed instances. */
  run(claimed: LoadedInstance[]): void;
  /** Wakes the general claim. */
  claim(): void;
}

export class Adoption {
  /** When each lease not yet named by a commit was offered. */
  private offered: number[] = [];

  constructor(private readonly host: AdoptionHost) {}

  /** A lease for one start, or undefined when this executor would not claim it by id now. */
  lease(): Lease | undefined {
    // an offer counts until a commit names a start or its lease has expired, whichever is first
    const now = Date.now();
    const since = now - this.host.leaseMs;
    if (this.offered.length > 0 && (this.offered[0] as number) < since)
      this.offered = this.offered.filter((t) => t >= since);
    if (this.offered.length >= this.host.leasesFree()) return undefined;
    this.offered.push(now);
    return { owner: this.host.store.owner, ms: this.host.leaseMs };
  }

  /**
   * The commit of starts born leased here: run them, from the claims their
   * answers carried (`born`, JSON text as the database wrote it) or, for the
   * rest, from a read.
   */
  adopt(ids: readonly string[], born: readonly string[] = []): void {
    this.offered.splice(0, ids.length);
    const fresh = ids.filter((id) => !this.host.has(id));
    if (fresh.length === 0) return;
    const carried = bornClaims(born, fresh);
    if (carried.length > 0)
      this.take(
        carried,
        carried.map((r) => r.id),
      );
    const unread = fresh.filter((id) => !carried.some((r) => r.id === id));
    if (unread.length === 0) return;
    this.host.store.adopt(unread).then(
      (rows) => this.take(rows, unread),
      (err: unknown) => {
        // their leases expire and any claim takes them then
        this.host.log.warn({ err: (err as Error).message }, 'reading started instances failed');
      },
    );
  }

  private take(rows: readonly LoadedInstance[], asked: readonly string[]): void {
    // as many as the claim by id could take now: the reserve stays for roles holding none
    const mine = rows.filter((r) => !this.host.has(r.id));
    const keep = mine.slice(0, Math.max(0, this.host.leasesFree()));
    const back = mine.slice(keep.length).map((r) => r.id);
    if (back.length > 0)
      this.host.store.handBack(back).then(
        () => this.host.claim(),
        (err: unknown) =>
          this.host.log.warn({ err: (err as Error).message }, 'lease hand-back failed'),
      );
    this.host.run(keep);
    // not born leased here after all, or its lease expired in a long transaction: the
    // general claim takes an expired lease at once
    const got = new Set(rows.map((r) => r.id));
    if (asked.some((id) => !got.has(id))) this.host.claim();
  }
}

/**
 * The claims of `ids` among `born`: each one an instance as the claim reads
 * it, born leased here (epoch 1, nothing recorded yet); anything else in
 * them is left to the read.
 */
export function bornClaims(born: readonly string[], ids: readonly string[]): LoadedInstance[] {
  // the database raised a claim only for a start it inserted leased to this executor
  const out: LoadedInstance[] = [];
  for (const text of born) {
    let c: Partial<LoadedInstance> & Record<string, unknown>;
    try {
      c = JSON.parse(text) as typeof c;
    } catch {
      continue;
    }
    if (
      typeof c.id !== 'string' ||
      !ids.includes(c.id) ||
      out.some((r) => r.id === c.id) ||
      c.lease_epoch !== '1' ||
      c.event_seq !== '0' ||
      c.status !== 'running' ||
      typeof c.root_node !== 'string' ||
      typeof c.role_oid !== 'number' ||
      !Array.isArray(c.graph) ||
      !Array.isArray(c.nodes) ||
      !Array.isArray(c.events) ||
      c.events.length !== 0
    )
      continue;
    out.push(c as LoadedInstance);
  }
  return out;
}
