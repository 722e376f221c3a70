/** What the executor's next claim looks for (src/executor/wake-requests.ts). */
import { describe, expect, it } from 'vitest';
import { claimKind, refillDue, WakeRequests } from '../../src/executor/wake-requests.js';

describe('WakeRequests', () => {
  it('a wake with ids asks for those; one without asks for the general claim', () => {
    const w = new WakeRequests();
    expect(w.pending).toBe(false);
    w.add(['0000000a', '0000000b']);
    expect(w.take()).toEqual({ general: false, refill: false, started: ['0000000a', '0000000b'] });
    expect(w.pending).toBe(false);
    w.add(['0000000c']);
    w.add();
    expect(w.take()).toEqual({ general: true, refill: false, started: ['0000000c'] });
    w.add([]);
    expect(w.pending).toBe(false);
  });

  it('notifications: start:<id> names its instance, any other payload is general', () => {
    const w = new WakeRequests();
    w.notified('start:0000000a');
    expect(w.take()).toEqual({ general: false, refill: false, started: ['0000000a'] });
    for (const payload of ['signal:0000000a', 'cancel:0000000a', '', undefined, 'start:']) {
      w.notified(payload);
      expect(w.take().general, String(payload)).toBe(true);
    }
  });

  it('ids that are not instance ids are dropped; ids claimed here are moot', () => {
    const w = new WakeRequests();
    w.add(['nope', "0000000a'; --", '0000000A']);
    expect(w.pending).toBe(false);
    w.add(['0000000a', '0000000b']);
    w.claimed(['0000000a']);
    expect(w.take()).toEqual({ general: false, refill: false, started: ['0000000b'] });
    // the notification of an instance the proxy's wake already had claimed
    w.notified('start:0000000a');
    expect(w.pending).toBe(false);
  });

  it('a backlog is refilled once half of the leases are free, at least one', () => {
    // the default lease count of --max-concurrent-steps 10 is 40: claim at 20 free
    expect(refillDue(40, 21)).toBe(false);
    expect(refillDue(40, 20)).toBe(true);
    expect(refillDue(40, 0)).toBe(true);
    // tiny lease counts still claim as soon as one is free
    for (const max of [1, 2, 3]) {
      expect(refillDue(max, max)).toBe(false);
      expect(refillDue(max, max - 1)).toBe(true);
    }
    expect(refillDue(16, 9)).toBe(false);
    expect(refillDue(16, 8)).toBe(true);
  });

  it('which claim serves a wake: by id, newcomers only under a backlog, general, or none', () => {
    const named = { general: false, refill: false, started: ['0000000a', '0000000b'] };
    const general = { general: true, refill: false, started: ['0000000a'] };
    const refill = { general: false, refill: true, started: [] };
    // no backlog: the named starts fit below the reserve, so exactly those
    expect(claimKind(named, false, 40, 1, 40)).toBe('id');
    expect(claimKind(named, false, 2, 1, 40)).toBe('general');
    expect(claimKind(general, false, 40, 1, 40)).toBe('general');
    // a finished instance with nothing left behind claims nothing
    expect(claimKind(refill, false, 40, 1, 40)).toBe('none');
    // a backlog with fewer than half of the leases free: only other roles' starts
    expect(claimKind(named, true, 19, 1, 40)).toBe('newcomers');
    expect(claimKind(named, true, 1, 1, 40)).toBe('newcomers');
    expect(claimKind(refill, true, 19, 1, 40)).toBe('none');
    // half free: the general claim refills in one batch
    expect(claimKind(named, true, 20, 1, 40)).toBe('general');
    expect(claimKind(refill, true, 20, 1, 40)).toBe('general');
    // anything that names nothing (a signal, a timer, the poll) is general at once
    expect(claimKind(general, true, 1, 1, 40)).toBe('general');
  });

  it('a refill is a request of its own, taken like the others', () => {
    const w = new WakeRequests();
    w.refill();
    expect(w.pending).toBe(true);
    expect(w.take()).toEqual({ general: false, refill: true, started: [] });
    expect(w.pending).toBe(false);
  });

  it('a step slot idle under a backlog claims at once', () => {
    const named = { general: false, refill: false, started: ['0000000a'] };
    expect(claimKind(named, true, 5, 1, 40)).toBe('newcomers');
    expect(claimKind(named, true, 5, 1, 40, true)).toBe('general');
  });
});
