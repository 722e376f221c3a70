-- dfgate migration 0037: migration 0036's trigger conditions undone.
--
-- Migration 0036 gave the submitted_by triggers and the status guard WHEN
-- conditions so that the common case would not call their functions. It
-- was measured only by counting the calls it saved. PostgreSQL, though,
-- reads a trigger's WHEN condition back from its stored form and plans it
-- again in every statement that writes the table, whether the trigger then
-- fires or not (as it does for CHECK constraints, migration 0034). Measured
-- afterwards on a PostgreSQL 15 cluster (backend CPU from /proc, three
-- alternating rounds; docs/benchmarks.md, "Trigger conditions cost every
-- statement"):
--   - 5,000 single-row UPDATEs of df.instances that leave the status alone
--     (every checkpoint of a chain) took 150-170 ms with 0036's guard
--     condition and 110-130 ms with the one before it;
--   - 2,000 starts of a one-node workflow took 510-530 ms against 490-510
--     ms: the instance row is inserted by the schema owner in the starting
--     role's name, so its trigger fires anyway, after its condition;
--   - 300 starts of a ten-step chain (19 node rows each) took 560-580 ms
--     against 580 ms, within the noise: a node row's trigger call is cheap.
-- The triggers and defaults are as before 0036. What each allows and
-- refuses never changed.

ALTER TABLE df.instances ALTER COLUMN submitted_by DROP DEFAULT;
ALTER TABLE df.nodes ALTER COLUMN submitted_by DROP DEFAULT;
ALTER TABLE df.signals ALTER COLUMN submitted_by DROP DEFAULT;

DROP TRIGGER instances_submitter ON df.instances;
DROP TRIGGER instances_submitter_update ON df.instances;
DROP TRIGGER nodes_submitter ON df.nodes;
DROP TRIGGER nodes_submitter_update ON df.nodes;
DROP TRIGGER signals_submitter ON df.signals;
DROP TRIGGER signals_submitter_update ON df.signals;
CREATE TRIGGER instances_submitter BEFORE INSERT OR UPDATE OF submitted_by ON df.instances
  FOR EACH ROW EXECUTE FUNCTION df._force_submitter();
CREATE TRIGGER nodes_submitter BEFORE INSERT OR UPDATE OF submitted_by ON df.nodes
  FOR EACH ROW EXECUTE FUNCTION df._force_submitter();
CREATE TRIGGER signals_submitter BEFORE INSERT OR UPDATE OF submitted_by ON df.signals
  FOR EACH ROW EXECUTE FUNCTION df._force_submitter();

DROP TRIGGER instances_guard ON df.instances;
CREATE TRIGGER instances_guard BEFORE UPDATE ON df.instances
  FOR EACH ROW WHEN (NEW.status IS DISTINCT FROM OLD.status OR (NEW.runnable AND NOT OLD.runnable))
  EXECUTE FUNCTION df._guard_instance_update();
