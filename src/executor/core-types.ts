/**
 * What the deterministic core (core.ts) reads and returns: events, actions,
 * stamps and outcomes, and the retry schedule. No I/O.
 */
import type { Graph } from './graph.js';
import type { HttpRequest } from './http-request.js';

export type EventKind = 'done' | 'failed' | 'armed' | 'iter';

export interface StoredEvent {
  readonly seq: number;
  readonly kind: EventKind;
  readonly detail: Readonly<Record<string, unknown>>;
}

export interface CoreInput {
  readonly graph: Graph;
  readonly instanceId: string;
  readonly label: string | null;
  readonly vars: Readonly<Record<string, string>>;
  /** Events by activation key, then kind. */
  readonly events: ReadonlyMap<string, ReadonlyMap<EventKind, StoredEvent>>;
  readonly now: Date;
  readonly maxLoopIterations: number;
  /** Next time matching a cron expression strictly after `after`. */
  nextCron(expr: string, after: Date): Date;
  /** The retry policy from df.start (absent: one attempt, as in pg_durable). */
  readonly retry?: RetryPolicy;
  /** The longest step text substitution may build (sqlcheck.ts, stepTextMax); absent: no such cap. */
  readonly stepTextMax?: number;
}

export interface RetryPolicy {
  readonly maxAttempts: number;
  /** Cap of one backoff, in milliseconds (null: DEFAULT_MAX_BACKOFF_MS). */
  readonly maxBackoffMs: number | null;
}

/** The backoff cap when df.start got max_attempts but no max_backoff (1 hour). */
export const DEFAULT_MAX_BACKOFF_MS = 3_600_000;

/** The activation key of attempt `attempt` of a leaf whose first attempt has key `key`. */
export const attemptKey = (key: string, attempt: number): string =>
  attempt <= 1 ? key : `${key}@${attempt}`;

/**
 * The wait before attempt `attempt + 1` after attempt `attempt` failed: 1 s,
 * doubling per attempt, capped at `maxBackoffMs`, less a jitter of up to 10 %
 * that depends only on (instance, activation key, attempt), so every replay
 * computes the same time.
 */
export function backoffMs(
  instanceId: string,
  key: string,
  attempt: number,
  maxBackoffMs: number | null,
): number {
  const cap = maxBackoffMs ?? DEFAULT_MAX_BACKOFF_MS;
  const base = Math.min(cap, 1000 * 2 ** Math.min(Math.max(attempt - 1, 0), 40));
  // FNV-1a over the identifying text: a fraction in [0, 1)
  let h = 0x811c9dc5;
  for (const ch of `${instanceId}\0${key}\0${attempt}`) {
    h ^= ch.codePointAt(0) as number;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return Math.round(base * (1 - 0.1 * (h / 2 ** 32)));
}

/** What status_details shows about the attempts of a leaf run under a retry policy. */
export interface AttemptInfo {
  readonly attempt: number;
  readonly max_attempts: number;
  readonly last_error?: string;
  readonly retry_at?: string;
}

export type Action =
  | {
      readonly a: 'sql';
      readonly key: string;
      readonly node: string;
      readonly sql: string;
      /** 1 for the first attempt; infrastructure re-runs of one attempt keep its number. */
      readonly attempt: number;
    }
  | {
      readonly a: 'http';
      readonly key: string;
      readonly node: string;
      readonly request: HttpRequest;
      readonly attempt: number;
    }
  | {
      /** A backoff before attempt `attempt` (key: that attempt's key): arm it, or wait until `at`. */
      readonly a: 'backoff';
      readonly key: string;
      readonly node: string;
      readonly at: Date;
      readonly armed: boolean;
      readonly attempt: number;
    }
  | {
      readonly a: 'timer';
      readonly key: string;
      readonly node: string;
      readonly at: Date;
      readonly armed: boolean;
      readonly result: string;
    }
  | {
      readonly a: 'signal';
      readonly key: string;
      readonly node: string;
      readonly name: string;
      readonly timeoutAt: Date | null;
      readonly armed: boolean;
    }
  | {
      readonly a: 'iter';
      readonly key: string;
      readonly node: string;
      readonly detail: Readonly<Record<string, unknown>>;
    };

export interface Stamp {
  readonly status: 'running' | 'completed' | 'failed';
  /** Result text (in-memory form) for completed nodes, error text for failed ones. */
  readonly result: string | null;
  readonly stamp: string;
  /** Attempt count and last error of a SQL/HTTP leaf under a retry policy (into status_details). */
  readonly attempts?: AttemptInfo;
}

export type Outcome =
  | { readonly k: 'done'; readonly result: string; readonly seq: number }
  | { readonly k: 'failed'; readonly error: string; readonly seq: number }
  | {
      readonly k: 'break';
      readonly value: string;
      readonly seq: number;
      /** The nodes the break has passed through so far, the BREAK node first. */
      readonly via: readonly string[];
    }
  | { readonly k: 'blocked' };

export interface CoreResult {
  readonly outcome: Outcome;
  readonly actions: readonly Action[];
  readonly stamps: ReadonlyMap<string, Stamp>;
  /** Activation-key prefixes whose events a recorded `iter` summary makes obsolete. */
  readonly obsolete: readonly string[];
}
