/** The fair slot scheduler (src/executor/slots.ts), without a database. */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ConfigError, parseConfig } from '../../src/config.js';
import { FairSlots, type FairSlotsOptions, type TakeResult } from '../../src/executor/slots.js';
import { executorLimits } from '../../src/executor/start.js';

const ALICE = 1;
const BOB = 2;
const CAROL = 3;

function slots(o: Partial<FairSlotsOptions> = {}): FairSlots {
  return new FairSlots({ slots: 4, reserve: 0, perRoleCap: 0, timeoutMs: 1000, ...o });
}

/** A take whose outcome can be read synchronously once the microtasks ran. */
function track(s: FairSlots, role: number, timeoutMs?: number): { result: TakeResult | undefined } {
  const t: { result: TakeResult | undefined } = { result: undefined };
  void s.take(role, timeoutMs).then((r) => (t.result = r));
  return t;
}

const flush = async (): Promise<void> => {
  await vi.advanceTimersByTimeAsync(0);
};

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe('fair share', () => {
  it('is max(1, floor(slots / roles with demand)); a role alone may use every slot', async () => {
    const s = slots({ slots: 10 });
    expect(s.share()).toBe(10);
    const a = Array.from({ length: 12 }, () => track(s, ALICE));
    await flush();
    expect(a.filter((t) => t.result === 'taken')).toHaveLength(10);
    expect(s.held(ALICE)).toBe(10);
    expect(s.waiting(ALICE)).toBe(2);
    track(s, BOB);
    expect(s.rolesWithDemand).toBe(2);
    expect(s.share()).toBe(5);
    track(s, CAROL);
    expect(s.share()).toBe(3);
    const big = slots({ slots: 2 });
    track(big, ALICE);
    track(big, BOB);
    track(big, CAROL);
    expect(big.share()).toBe(1);
  });

  it('freed slots go to the roles below their share until each has its share', async () => {
    const s = slots({ slots: 5 });
    const a = Array.from({ length: 7 }, () => track(s, ALICE));
    await flush();
    expect(s.held(ALICE)).toBe(5);
    const b = Array.from({ length: 4 }, () => track(s, BOB));
    await flush();
    expect(b.filter((t) => t.result === 'taken')).toHaveLength(0);
    // alice holds 5 of a share of 2: her slots go to bob until he holds 2
    s.give(ALICE);
    s.give(ALICE);
    await flush();
    expect(s.held(BOB)).toBe(2);
    expect(s.held(ALICE)).toBe(3);
    expect(a.filter((t) => t.result === 'taken')).toHaveLength(5);
    // a slot bob gives back returns to bob while he is below his share
    s.give(BOB);
    await flush();
    expect(s.held(BOB)).toBe(2);
    // both at their share, the fifth slot goes round-robin: alice (served longest ago), then bob
    s.give(ALICE);
    await flush();
    expect(s.held(ALICE)).toBe(3);
    expect(s.held(BOB)).toBe(2);
    s.give(ALICE);
    await flush();
    expect(s.held(ALICE)).toBe(2);
    expect(s.held(BOB)).toBe(3);
  });

  it('round-robin between roles below their share, and FIFO within a role', async () => {
    const s = slots({ slots: 6 });
    const order: string[] = [];
    for (let i = 0; i < 6; i++) void s.take(ALICE).then(() => order.push(`held-${i}`));
    await flush();
    order.length = 0;
    for (let i = 1; i <= 3; i++) {
      void s.take(BOB).then(() => order.push(`b${i}`));
      void s.take(CAROL).then(() => order.push(`c${i}`));
    }
    for (let i = 0; i < 4; i++) s.give(ALICE);
    await flush();
    // share 2 each: bob and carol alternate, each in its own submission order
    expect(order).toEqual(['b1', 'c1', 'b2', 'c2']);
    expect(s.held(ALICE)).toBe(2);
  });

  it('a role at its share still gets free slots nobody below their share wants (work-conserving)', async () => {
    const s = slots({ slots: 4 });
    track(s, BOB);
    const a = Array.from({ length: 4 }, () => track(s, ALICE));
    await flush();
    expect(s.held(BOB)).toBe(1);
    expect(a.filter((t) => t.result === 'taken')).toHaveLength(3);
  });

  it('--max-steps-per-role caps a role on top of the share', async () => {
    const s = slots({ slots: 4, perRoleCap: 2 });
    const a = Array.from({ length: 3 }, () => track(s, ALICE));
    await flush();
    expect(a.map((t) => t.result)).toEqual(['taken', 'taken', undefined]);
    expect(s.available()).toBe(2);
    s.give(ALICE);
    await flush();
    expect(a[2]?.result).toBe('taken');
  });

  it('rejects giving back a slot the role does not hold', () => {
    const s = slots();
    expect(() => s.give(ALICE)).toThrow(/holds none/);
  });
});

describe('reserve', () => {
  it('keeps the last slots for a role holding none, so a newcomer starts at once', async () => {
    const s = slots({ slots: 4, reserve: 1 });
    const a = Array.from({ length: 12 }, () => track(s, ALICE));
    await flush();
    expect(a.filter((t) => t.result === 'taken')).toHaveLength(3);
    expect(s.available()).toBe(1);
    // the reserve's free slot is no spare one: alice's waiting steps cannot take it
    expect(s.spare()).toBe(0);
    const b1 = track(s, BOB);
    const b2 = track(s, BOB);
    await flush();
    expect(b1.result).toBe('taken');
    expect(b2.result).toBeUndefined();
    // bob's next step gets bob's own slot back when it is free
    s.give(BOB);
    await flush();
    expect(b2.result).toBe('taken');
  });

  it('spare slots are the free ones beyond the reserve', async () => {
    const s = slots({ slots: 4, reserve: 1, perRoleCap: 2 });
    expect(s.spare()).toBe(3);
    const a = Array.from({ length: 5 }, () => track(s, ALICE));
    await flush();
    // alice at her cap: two slots free beyond the reserve, which only other work can use
    expect(a.filter((t) => t.result === 'taken')).toHaveLength(2);
    expect([s.available(), s.spare()]).toEqual([2, 1]);
  });

  it('is clamped so that one slot always remains usable', async () => {
    const s = slots({ slots: 1, reserve: 5 });
    const a = track(s, ALICE);
    await flush();
    expect(a.result).toBe('taken');
  });
});

describe('slot timeout', () => {
  it("a role's own excess queues past the timeout", async () => {
    const s = slots({ slots: 2, timeoutMs: 1000 });
    track(s, ALICE);
    track(s, ALICE);
    const third = track(s, ALICE);
    await vi.advanceTimersByTimeAsync(5000);
    expect(third.result).toBeUndefined();
    s.give(ALICE);
    await flush();
    expect(third.result).toBe('taken');
  });

  it('a role owed a slot that another holds beyond its share waits past the timeout', async () => {
    const s = slots({ slots: 2, timeoutMs: 1000 });
    track(s, ALICE);
    track(s, ALICE);
    const b = track(s, BOB);
    await vi.advanceTimersByTimeAsync(5000);
    expect(b.result).toBeUndefined();
    s.give(ALICE);
    await flush();
    expect(b.result).toBe('taken');
  });

  it('fails a role that got no slot while more roles want slots than there are', async () => {
    const s = slots({ slots: 2, timeoutMs: 1000 });
    track(s, ALICE);
    track(s, BOB);
    const c = track(s, CAROL);
    await vi.advanceTimersByTimeAsync(999);
    expect(c.result).toBeUndefined();
    await vi.advanceTimersByTimeAsync(1);
    expect(c.result).toBe('timeout');
    expect(s.rolesWithDemand).toBe(2);
  });

  it('an overdue wait fails as soon as the rule holds, not only at its deadline', async () => {
    const s = slots({ slots: 2, timeoutMs: 1000 });
    track(s, ALICE);
    track(s, ALICE);
    track(s, BOB);
    const c = track(s, CAROL);
    await vi.advanceTimersByTimeAsync(2000);
    // alice holds 2 of a share of 1: bob and carol are owed her slots
    expect(c.result).toBeUndefined();
    s.give(ALICE);
    await flush();
    // bob (arrived first) got it; now nobody is over the share and carol holds none
    expect(s.held(BOB)).toBe(1);
    expect(c.result).toBe('timeout');
  });

  it('close() ends every wait; held slots can still be given back', async () => {
    const s = slots({ slots: 1 });
    track(s, ALICE);
    const w = track(s, BOB);
    s.close();
    await flush();
    expect(w.result).toBe('closed');
    expect(await s.take(CAROL)).toBe('closed');
    s.give(ALICE);
    expect(s.rolesWithDemand).toBe(0);
  });
});

describe('configuration', () => {
  const UP = 'postgres://u:p@127.0.0.1:5432/db';
  it('--step-slot-reserve defaults to 1, reads DFGATE_STEP_SLOT_RESERVE, 0 turns it off', () => {
    expect(parseConfig(['--upstream', UP], {}).slotReserve).toBe(1);
    expect(parseConfig(['--upstream', UP], { DFGATE_STEP_SLOT_RESERVE: '3' }).slotReserve).toBe(3);
    expect(parseConfig(['--upstream', UP, '--step-slot-reserve', '0'], {}).slotReserve).toBe(0);
    expect(() => parseConfig(['--upstream', UP, '--step-slot-reserve', '-1'], {})).toThrow(
      ConfigError,
    );
  });
  it('the executor gets the reserve with the other limits', () => {
    const cfg = parseConfig(['worker', '--upstream', UP, '--max-concurrent-steps', '3'], {});
    expect(executorLimits(cfg)).toEqual({
      maxConcurrentSteps: 3,
      maxConcurrentInstances: 16,
      slotTimeoutMs: 30_000,
      maxStepsPerRole: 0,
      slotReserve: 1,
      stepTimeoutMs: 0,
    });
  });
});
