/** Starting the executor from the resolved configuration. */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { DEFAULT_MAX_RESULT_BYTES } from './bounded.js';
import { Executor } from './executor.js';

export interface ExecutorConfig {
  readonly executorUrl: string;
  readonly maxConcurrentSteps: number;
  readonly leaseMs: number;
  readonly pollMs: number;
  readonly stepAuth: 'login' | 'set-role';
  readonly stepSecret: string | undefined;
  readonly slotTimeoutMs?: number;
  readonly maxStepsPerRole?: number;
  readonly stepTimeoutMs?: number;
  readonly maxResultBytes?: number;
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
    maxConcurrentSteps: cfg.maxConcurrentSteps,
    maxConcurrentInstances: Math.max(cfg.maxConcurrentSteps * 4, 16),
    maxLoopIterations: 100_000,
    slotTimeoutMs: cfg.slotTimeoutMs ?? 30_000,
    maxStepsPerRole: cfg.maxStepsPerRole ?? 0,
    stepTimeoutMs: cfg.stepTimeoutMs ?? 0,
    maxResultBytes: cfg.maxResultBytes ?? DEFAULT_MAX_RESULT_BYTES,
  });
  await ex.start();
  return ex;
}
