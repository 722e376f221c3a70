/** What the step runners, signals, retention and start-new share with the executor. */
import type { Logger } from 'pino';
import type { FairSlots } from './slots.js';
import type { StepPool } from './steps.js';
import type { ControlStore } from './store.js';

export interface RunnerContext {
  readonly store: ControlStore;
  readonly steps: StepPool;
  readonly slots: FairSlots;
  readonly log: Logger;
  readonly maxConcurrentSteps: number;
  readonly slotTimeoutMs: number;
  readonly stepTimeoutMs: number;
  readonly maxResultBytes: number | undefined;
  /** The executor is shutting down: start nothing new. */
  stopping(): boolean;
  /** The step backends running for an instance (cancelled when it is cancelled). */
  stepPids(instance: string): Set<number> | undefined;
}
