/** Starting the executor from the resolved configuration. */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { DEFAULT_MAX_RESULT_BYTES } from './bounded.js';
import { Executor, type ExecutorOptions } from './executor.js';

export interface ExecutorConfig {
  readonly executorUrl: string;
  readonly maxConcurrentSteps: number;
  readonly leaseMs: number;
  readonly pollMs: number;
  readonly stepAuth: 'login' | 'set-role';
  readonly stepSecret: string | undefined;
  readonly slotTimeoutMs?: number;
  readonly maxStepsPerRole?: number;
  readonly slotReserve?: number;
  readonly stepTimeoutMs?: number;
  readonly maxResultBytes?: number;
}

/** The executor's limits from the configuration (defaults as in src/config.ts). */
export function executorLimits(
  cfg: Pick<
    ExecutorConfig,
    'maxConcurrentSteps' | 'slotTimeoutMs' | 'maxStepsPerRole' | 'slotReserve' | 'stepTimeoutMs'
  >,
): Pick<
  ExecutorOptions,
  | 'maxConcurrentSteps'
  | 'maxConcurrentInstances'
  | 'slotTimeoutMs'
  | 'maxStepsPerRole'
  | 'slotReserve'
  | 'stepTimeoutMs'
> {
  return {
    maxConcurrentSteps: cfg.maxConcurrentSteps,
    // leased instances mostly wait (for a slot, or their next step's turn): several per slot
    maxConcurrentInstances: Math.max(cfg.maxConcurrentSteps * 4, 16),
    slotTimeoutMs: cfg.slotTimeoutMs ?? 30_000,
    maxStepsPerRole: cfg.maxStepsPerRole ?? 0,
    slotReserve: cfg.slotReserve ?? 1,
    stepTimeoutMs: cfg.stepTimeoutMs ?? 0,
  };
}

export async function startExecutor(cfg: ExecutorConfig, log: Logger): Promise<Executor> {
  let secret = cfg.stepSecret;
  if (!secret && cfg.stepAuth === 'login') {
    secret = randomBytes(32).toString('base64url');
    log.warn(
      'DFGATE_STEP_SECRET is not set: step login passwords are re-keyed at every start; set the same secret on every dfgate process that shares a database',
    );
  }
  const ex = new Executor({
    controlUrl: cfg.executorUrl,
    log,
    stepAuth: cfg.stepAuth,
    stepSecret: secret ?? '',
    leaseMs: cfg.leaseMs,
    pollMs: cfg.pollMs,
    ...executorLimits(cfg),
    maxLoopIterations: 100_000,
    maxResultBytes: cfg.maxResultBytes ?? DEFAULT_MAX_RESULT_BYTES,
  });
  await ex.start();
  return ex;
}
