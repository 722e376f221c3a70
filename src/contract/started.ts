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
}
