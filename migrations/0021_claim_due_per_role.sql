-- dfgate migration 0021: the claim reads due timers per submitting role, at
-- most its capacity of each (issue 12 item 7, "many waiting instances").
--
-- The claim's `due` source (migration 0018) read every timer and retry
-- backoff that had come due, through instances_wake_idx, and ranked all of
-- them, so that one role's many due timers could not push another role's
-- back. When 10,000 timers come due at one instant, every claim read, sorted
-- and ranked all 10,000 while taking a few: the claim connection spent a
-- whole core and the timers fired a few hundred a second.
--
-- This index serves the same fairness at the cost of what is claimed: a
-- skip scan finds the roles that have timers (one index descent each), and
-- per role at most the claim's capacity of its earliest due timers is read,
-- oldest wake_at first (src/executor/store.ts, docs/executor.md "Fairness").
-- A parked timer that is not due yet is never read by a claim.
-- instances_wake_idx stays: the executor's next wake-up time is its first
-- future entry.
CREATE INDEX instances_due_idx ON df.instances (submitted_by, wake_at)
  WHERE runnable AND wake_at IS NOT NULL AND status IN ('pending', 'running');
