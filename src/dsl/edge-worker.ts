/**
 * The compile worker (a worker_threads thread, see edge-pool.ts): loads
 * PostgreSQL's parser and answers { id, sql, extended } with the statement's
 * Analysis, so that parsing and compiling never run on the proxy's event loop;
 * and { id, step } with a long step text's plan (the executor's check of
 * what a step may do, src/executor/sqlcheck.ts), and { id, check } with the
 * console's check of an expression (check-expression.ts), for the same reason;
 * { id, warm } runs the start-up warm-up (edge-warm.ts).
 */
import { readlinkSync } from 'node:fs';
import { getPriority, setPriority } from 'node:os';
import { parentPort } from 'node:worker_threads';
import { planUncached, UNPARSED, type StepPlan } from '../executor/sqlcheck.js';
import { checkNow, type CheckResult } from './check-expression.js';
import { analyzeText, checkBound, type Analysis, type BoundProblem } from './edge.js';
import { warmUp } from './edge-warm.js';
import { loadParser, parserBroken } from './parser.js';

/** A statement to analyze, or (`bound`) workflow values bound to df.start($n) to check by the start rule. */
export type EdgeJob =
  | { readonly id: number; readonly sql: string; readonly extended: boolean }
  | { readonly id: number; readonly bound: readonly string[] }
  | { readonly id: number; readonly step: string }
  | { readonly id: number; readonly check: string }
  | { readonly id: number; readonly warm: number };

export type EdgeAnswer =
  | { readonly id: number; readonly analysis: Analysis }
  | { readonly id: number; readonly problem: BoundProblem | null }
  /** `unparsed`: the parser could not read the text (sqlcheck.ts, UNPARSED). */
  | { readonly id: number; readonly plan: StepPlan; readonly unparsed?: true }
  | { readonly id: number; readonly checked: CheckResult }
  | { readonly id: number; readonly warmed: true }
  /** The job threw (caught, so the worker lives on): treated as abandoned. */
  | { readonly id: number; readonly failed: string };

/** The worker thread's nice value: below the event loop's, which relays every session's traffic. */
export const WORKER_NICE = 10;

/**
 * Lowers this thread's scheduling priority (Linux: a thread id is a valid
 * setpriority target, and /proc/thread-self names it). On a machine whose
 * cores are busy, compiling then yields to the proxy's event loop and to the
 * database; a compile that runs past its budget is left to the database.
 * Elsewhere, or when not permitted, the thread keeps the process's priority.
 */
function lowerPriority(): void {
  try {
    const tid = Number(readlinkSync('/proc/thread-self').split('/').pop());
    if (Number.isInteger(tid) && tid > 0) setPriority(tid, Math.max(WORKER_NICE, getPriority(tid)));
  } catch {
    // not Linux, or not permitted: nothing to do
  }
}

function firstProblem(values: readonly string[]): BoundProblem | undefined {
  for (const v of values) {
    const p = checkBound(v);
    if (p) return p;
  }
  return undefined;
}

function planAnswer(id: number, plan: StepPlan): EdgeAnswer {
  return plan === UNPARSED ? { id, plan, unparsed: true } : { id, plan };
}

function warmed(id: number, rounds: number): EdgeAnswer {
  warmUp(rounds);
  return { id, warmed: true };
}

const port = parentPort;
if (port) {
  lowerPriority();
  await loadParser();
  port.on('message', (job: EdgeJob) => {
    let answer: EdgeAnswer;
    try {
      answer = answerOf(job);
    } catch (err) {
      answer = { id: job.id, failed: String((err as Error)?.message ?? err) };
    }
    port.postMessage(answer);
    // a parse that overflowed inside the parser leaves it untrustworthy: a fresh worker takes over
    if (parserBroken()) process.exit(0);
  });
  port.postMessage('ready');
}

function answerOf(job: EdgeJob): EdgeAnswer {
  return 'bound' in job
    ? { id: job.id, problem: firstProblem(job.bound) ?? null }
    : 'step' in job
      ? planAnswer(job.id, planUncached(job.step))
      : 'check' in job
        ? { id: job.id, checked: checkNow(job.check) }
        : 'warm' in job
          ? warmed(job.id, job.warm)
          : { id: job.id, analysis: analyzeText(job.sql, job.extended) };
}
