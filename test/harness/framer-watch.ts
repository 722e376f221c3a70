/**
 * Watches every Framer of this process (src/proxy/protocol/frame.ts): the
 * most bytes one held (a message partly assembled) after any push, and the
 * peak heap seen then. Tests reset the figures before what they measure.
 */
import { vi } from 'vitest';
import { Framer, type Piece } from '../../src/proxy/protocol/frame.js';

export interface FramerWatch {
  maxHeld: number;
  heapPeak: number;
}

/** Starts watching (call in beforeAll; vi.restoreAllMocks ends it). */
export function watchFramers(): FramerWatch {
  const watch: FramerWatch = { maxHeld: 0, heapPeak: 0 };
  const push = Framer.prototype.push;
  vi.spyOn(Framer.prototype, 'push').mockImplementation(function (
    this: Framer,
    chunk: Buffer,
  ): Piece[] {
    const out = push.call(this, chunk);
    watch.maxHeld = Math.max(watch.maxHeld, this.held);
    watch.heapPeak = Math.max(watch.heapPeak, process.memoryUsage().heapUsed);
    return out;
  });
  return watch;
}
