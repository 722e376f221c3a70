/**
 * The contract between the proxy and the executor for
 * df.start(..., transaction_mode => 'new') (DESIGN.md §2 path 2): the proxy
 * hands the call over as a StartNewRequest; the executor runs it on a
 * connection of its own and resolves to the instance id, or rejects with a
 * StartNewRefusal the proxy answers with as PostgreSQL would (its SQLSTATE,
 * message and hint). Neither side imports the other; both import this module.
 */
import type { StartParam } from '../dsl/edge.js';

export interface StartNewRequest {
  /** The client session's login role: df.start runs as this role. */
  readonly login: string;
  /** The client session's database. */
  readonly database: string;
  /** df.start's arguments by name (transaction_mode left out), as text or NULL. */
  readonly args: ReadonlyMap<StartParam, string | null>;
}

/** A refusal with PostgreSQL's error fields. */
export interface StartNewRefusalFields {
  readonly sqlstate: string;
  readonly message: string;
  readonly hint?: string | undefined;
}

/**
 * Thrown by a start-new handler when it refuses the call. `code` mirrors
 * `sqlstate` so that code reading PostgreSQL errors (err.code) reads it too.
 */
export class StartNewRefusal extends Error implements StartNewRefusalFields {
  readonly sqlstate: string;
  readonly code: string;
  readonly hint: string | undefined;
  constructor(f: StartNewRefusalFields) {
    super(f.message);
    this.name = 'StartNewRefusal';
    this.sqlstate = f.sqlstate;
    this.code = f.sqlstate;
    this.hint = f.hint;
  }
}

/** Runs df.start in a transaction of its own; resolves to the instance id. */
export type StartNewHandler = (req: StartNewRequest) => Promise<string>;
