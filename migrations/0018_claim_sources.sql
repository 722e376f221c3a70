-- dfgate migration 0018: the claim reads only what is ready; the status guard
-- runs only when there is something to judge.
--
-- The claim ranked every runnable, unfinished instance (instances_claim_idx):
-- those leased and running here, those parked on a timer or a signal, and the
-- ready ones, each time it ran, so its cost grew with everything in flight and
-- everything waiting (100,000 parked instances: 100,000 rows per claim). It
-- now gathers its candidates from four sources, each read through an index
-- that holds only what it needs:
--   fresh     unleased and waiting for nothing: this index, per submitting
--             role (a skip scan over the roles), oldest first, at most the
--             claim's capacity per role;
--   due       timers and retry backoffs whose wake_at has passed
--             (instances_wake_idx);
--   signalled waiting for a signal that has arrived (the unconsumed signals,
--             signals_unconsumed_idx);
--   expired   leases past their expiry (instances_lease_idx).
-- Fairness between roles (src/executor/store.ts, docs/executor.md) ranks the
-- candidates exactly as before.

-- It replaces instances_claim_idx (every runnable unfinished instance), which
-- nothing reads any more and every non-HOT update of an instance paid for.
DROP INDEX df.instances_claim_idx;
CREATE INDEX instances_fresh_idx ON df.instances (submitted_by, created_at, id)
  WHERE runnable AND status IN ('pending', 'running') AND lease_owner IS NULL
    AND wake_at IS NULL AND (waiting_signals IS NULL OR waiting_signals = '{}');

-- The status guard runs only for the updates it judges (a status change, or
-- an instance made runnable), no longer for every checkpoint's event_seq,
-- every lease renewal and every parking; what it allows is unchanged.
DROP TRIGGER instances_guard ON df.instances;
CREATE TRIGGER instances_guard BEFORE UPDATE ON df.instances
  FOR EACH ROW
  WHEN (NEW.status IS DISTINCT FROM OLD.status OR (NEW.runnable AND NOT OLD.runnable))
  EXECUTE FUNCTION df._guard_instance_update();
