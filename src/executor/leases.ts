/**
 * Keeping the leases of the instances this executor drives: one statement
 * renews them all (every leaseMs / 3); an instance cancelled meanwhile has
 * its running steps cancelled, and one whose lease was not renewed
 * (finished, or taken over) is left to its driver, whose next checkpoint
 * the lease epoch refuses.
 */
import type { Logger } from 'pino';
import type { ControlStore } from './store.js';

interface Held {
  readonly stepPids: ReadonlySet<number>;
}

/** Cancels the step backends of one instance driven here. */
export async function cancelStepsOf(store: ControlStore, held: Held | undefined): Promise<void> {
  if (!held) return;
  for (const pid of held.stepPids) await store.cancelStepBackend(pid).catch(() => undefined);
}

/** Renews every lease in `active` in one statement. */
export async function renewHeld(
  store: ControlStore,
  active: ReadonlyMap<string, Held>,
  log: Logger,
): Promise<void> {
  if (active.size === 0) return;
  const ids = [...active.keys()];
  try {
    const held = await store.renewLeases(ids);
    for (const id of ids) {
      const st = held.get(id);
      if (st === 'cancelled') await cancelStepsOf(store, active.get(id));
      if (st === undefined)
        log.debug({ instance: id }, 'lease not renewed (finished, or taken over)');
    }
  } catch (err) {
    log.warn({ err: (err as Error).message }, 'lease renewal failed');
  }
}
