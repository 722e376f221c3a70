/** What the executor's next claim looks for (src/executor/wake-requests.ts). */
import { describe, expect, it } from 'vitest';
import { WakeRequests } from '../../src/executor/wake-requests.js';

describe('WakeRequests', () => {
  it('a wake with ids asks for those; one without asks for the general claim', () => {
    const w = new WakeRequests();
    expect(w.pending).toBe(false);
    w.add(['0000000a', '0000000b']);
    expect(w.take()).toEqual({ general: false, started: ['0000000a', '0000000b'] });
    expect(w.pending).toBe(false);
    w.add(['0000000c']);
    w.add();
    expect(w.take()).toEqual({ general: true, started: ['0000000c'] });
    w.add([]);
    expect(w.pending).toBe(false);
  });

  it('notifications: start:<id> names its instance, any other payload is general', () => {
    const w = new WakeRequests();
    w.notified('start:0000000a');
    expect(w.take()).toEqual({ general: false, started: ['0000000a'] });
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
    expect(w.take()).toEqual({ general: false, started: ['0000000b'] });
    // the notification of an instance the proxy's wake already had claimed
    w.notified('start:0000000a');
    expect(w.pending).toBe(false);
  });
});
