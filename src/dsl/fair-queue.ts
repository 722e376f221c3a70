/**
 * A queue that takes turns between owners (docs/proxy.md, "Limits and the
 * compile worker"): each owner's items in the order they came, and next always
 * the owner whose last turn is longest ago (one with no turn yet first), so
 * one owner's many items never hold back another's.
 */
export class FairQueue<T> {
  /** Owners with items waiting, each with the number of its last turn (0: none yet). */
  private readonly lanes = new Map<string, { items: T[]; turn: number }>();
  private turns = 0;
  private count = 0;

  get size(): number {
    return this.count;
  }

  push(owner: string, item: T): void {
    const lane = this.lanes.get(owner);
    if (lane) lane.items.push(item);
    else this.lanes.set(owner, { items: [item], turn: 0 });
    this.count++;
  }

  /** The oldest item of the owner whose turn it is. */
  shift(): T | undefined {
    let next: [string, { items: T[]; turn: number }] | undefined;
    for (const entry of this.lanes) if (!next || entry[1].turn < next[1].turn) next = entry;
    if (!next) return undefined;
    const [owner, lane] = next;
    const item = lane.items.shift() as T;
    lane.turn = ++this.turns;
    if (lane.items.length === 0) this.lanes.delete(owner);
    this.count--;
    return item;
  }
}
