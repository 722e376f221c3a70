/**
 * What a committed client transaction started, as the proxy saw it (the
 * wake it hands the executor in-process at the commit; docs/executor.md,
 * "The wake path"). Neither side imports the other; both import this module.
 */
export interface Started {
  /** The ids of the instances the transaction's df.start calls returned. */
  readonly ids: readonly string[];
  /**
   * The SQL of their workflows' steps (some of them): the executor checks
   * them (sqlcheck.ts, cached by text) while its claim is on the way.
   */
  readonly steps: readonly string[];
  /**
   * Of those, the ones whose start asked for a lease (Lease): they are born
   * claimed by this process's executor, which reads and runs them.
   */
  readonly leased?: readonly string[];
  /**
   * Of the leased ones, the claims their starts' answers carried (the
   * instance as the executor's claim reads it, JSON text, as the database
   * wrote it): the executor runs these without reading them again.
   */
  readonly born?: readonly string[];
  /**
   * The transaction did more than such starts: the executor also runs its
   * general claim (ids then lists only leased ones).
   */
  readonly general?: boolean;
}

/**
 * A lease the executor of this process offers a start through its proxy:
 * the instance is inserted leased to `owner` for `ms` (df._start_rows), so
 * the start's commit is its claim.
 */
export interface Lease {
  readonly owner: string;
  readonly ms: number;
}
