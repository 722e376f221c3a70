-- dfgate migration 0017: no NOTIFY from the instance triggers.
--
-- 0011 notified the web console from statement triggers on df.instances
-- (insert, and updates that change the status or the waiting signals). Every
-- df.start, every claim and every finish therefore built transition tables,
-- ran a PL/pgSQL trigger and sent a notification, and PostgreSQL serialises
-- the commits of notifying transactions; the trigger also ran (and found
-- nothing) for the checkpoint's event_seq update, lease renewals and parking.
-- Measured with bench/cost.ts: about a sixth of the database's CPU per
-- one-step workflow. The console now learns of instance changes from what is
-- sent anyway: df.start, df.signal and df.cancel already notify dfgate_wake
-- on commit (the console listens there too and looks up the owners), and the
-- executor announces what it claims, finishes and parks on dfgate_ui,
-- batched (src/executor/notices.ts). The df.signals triggers stay.

DROP TRIGGER instances_ui_insert ON df.instances;
DROP TRIGGER instances_ui_update ON df.instances;
DROP FUNCTION df._ui_notify_instances();
