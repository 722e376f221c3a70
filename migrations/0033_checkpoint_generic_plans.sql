-- dfgate migration 0033: the checkpoint keeps the plans it made.
--
-- The statements inside df._complete_step are planned once per session and
-- kept, as long as PostgreSQL judges the kept (generic) plan no dearer than
-- one made for the values at hand. For the UPDATE of df.nodes by primary key
-- (migrations 0030 and 0032) it never did: a plan for the values folds the
-- CASE arms that do not apply, and its estimate came out lower every time,
-- so PostgreSQL planned that statement again at 71% of the checkpoints of the
-- peers' W2 (pg_stat_statements with track_planning: 3,538 plans for 5,001
-- calls, 0.07 ms each, as much as running it; docs/benchmarks.md, "Plans
-- kept"). Every statement of the checkpoint reads by primary key, so the
-- plan does not depend on the values: the function now keeps its generic
-- plans whatever the session's plan_cache_mode. The setting holds only
-- while the function runs; the step's own statements, run before it in the
-- same transaction, plan as the session says.

ALTER FUNCTION df._complete_step(text, text, text, bigint, text, text, jsonb, text, jsonb)
  SET plan_cache_mode = force_generic_plan;
