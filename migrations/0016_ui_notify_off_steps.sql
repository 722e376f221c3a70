-- dfgate migration 0016: no NOTIFY from a step's own transaction.
--
-- 0011 notified the web console from a trigger on df.nodes, so every step's
-- checkpoint transaction (which updates its node) sent a notification.
-- PostgreSQL serialises the commits of transactions that NOTIFY (one lock
-- held through the commit's WAL flush), so steps could no longer commit
-- together. The executor now sends node changes itself, batched, from its
-- control connection (src/executor/notices.ts, through df._ui_notify); the
-- instance and signal triggers stay (their statements are not on the step's
-- path, and instance updates notify only when status or waiting signals change).

DROP TRIGGER nodes_ui_update ON df.nodes;
