/** The rows the control store (store.ts) reads and writes, as the executor holds them. */
import type { FirstMark } from './claim-sql.js';
import type { EventKind } from './core.js';
import type { NodeRow } from './graph.js';

export interface InstanceRow {
  readonly id: string;
  readonly label: string | null;
  readonly root_node: string;
  readonly status: string;
  readonly role_name: string | null;
  readonly role_oid: number;
  readonly rolsuper: boolean | null;
  readonly vars: Record<string, string>;
  /** Sizes: over VARS_MAX the variables read as {}, over LABEL_MAX / OPTIONS_MAX null (claim-sql.ts). */
  readonly vars_bytes?: number | string | null;
  readonly label_bytes?: number | string | null;
  readonly options_bytes?: number | string | null;
  readonly lease_epoch: string;
  /** The number of the instance's latest event (df.instances.event_seq). */
  readonly event_seq: string;
  /** df.start's options (max_attempts, max_backoff_seconds, on_failure). */
  readonly options: Record<string, unknown> | null;
}

export interface LoadedInstance extends InstanceRow {
  /** Null when they and the graph take more than the read allowed (claim-sql.ts, instanceColumns). */
  readonly events: Array<{ a: string; k: EventKind; d: Record<string, unknown>; s: number }> | null;
  readonly nodes: Array<{ id: string; st: string; sd: string | null }> | null;
  readonly graph: NodeRow[] | null;
  /** Its first step, marked by the claim that returned it (claim-sql.ts). */
  readonly premark?: FirstMark;
}

/** A claimed instance, with what its first load would read (events, node statuses, graph). */
export type Claimed = LoadedInstance;

/** An activation: its key and its node. */
export interface ActivationRef {
  readonly key: string;
  readonly node: string;
}

/** The stamps to write for one instance, as parallel arrays. */
export interface StampRows {
  readonly ids: string[];
  readonly statuses: string[];
  readonly results: Array<string | null>;
  readonly stamps: string[];
  /** status_details retry keys (JSON) of a leaf under a retry policy, or null. */
  readonly extra: Array<string | null>;
}
