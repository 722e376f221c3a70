-- dfgate migration 0022: room for HOT updates, one index less per node row.
--
-- A running instance's rows are updated in place over and over: every
-- checkpoint advances df.instances.event_seq and stamps two or three
-- df.nodes rows (the step's own, the sequence above it, the next step's
-- attempt mark). None of those columns is indexed, so PostgreSQL can write
-- the new row version into the same page without touching any index (a HOT
-- update), but only when the page has room. With the default fillfactor of
-- 100 a page filled by inserts has none, and the update is written like an
-- insert into every index of the table: eleven on df.instances. Measured in
-- the peers' W1 workload (200 workflows x 10 steps): 27% of the instance
-- updates and 29% of the node updates were not HOT.
--
-- Leaving a fifth of each new page free gives those updates room. It
-- applies to pages filled from now on; existing pages keep what they have.
--
-- nodes_instance_idx (instance_id) duplicates the leading column of the
-- primary key (instance_id, id), which serves every lookup by instance as
-- well; every node insert and every non-HOT node update paid for both.
ALTER TABLE df.instances SET (fillfactor = 80);
ALTER TABLE df.nodes SET (fillfactor = 80);
DROP INDEX df.nodes_instance_idx;
