/** The executor's waits: each can be cut short, and all of them end when the executor stops. */
export class Naps {
  private readonly ends = new Set<() => void>();

  /**
   * A wait of `ms` that ends early on endAll(); cancel() clears its timer
   * (nothing is left to keep the event loop alive).
   */
  nap(ms: number): { done: Promise<void>; cancel: () => void } {
    let timer: NodeJS.Timeout | undefined;
    let end: () => void = () => undefined;
    const done = new Promise<void>((resolve) => {
      end = () => {
        if (timer) clearTimeout(timer);
        this.ends.delete(end);
        resolve();
      };
      timer = setTimeout(end, ms);
      this.ends.add(end);
    });
    return { done, cancel: end };
  }

  endAll(): void {
    for (const end of [...this.ends]) end();
  }
}
