-- dfgate migration 0045: retention never waits for a row some session holds locked.
--
-- A granted role may lock its own instance rows (it may update their status,
-- so SELECT ... FOR UPDATE is allowed), and holds a KEY SHARE lock on an
-- instance or node row while a foreign key of a row it inserts points there.
-- df._reconcile deleted every doomed instance of every role in one
-- statement, so one such lock on one doomed instance held the deletion, and
-- retention for every role, for as long as that role kept its transaction
-- open (and the executor's control statements now give up after a lock wait
-- of five seconds, so it would have failed at every round). Now the doomed
-- instances and their nodes are locked with SKIP LOCKED first, and only the
-- instances whose own row and every node row were locked here are deleted;
-- the others are left for a later round. What is doomed, and the batch, are
-- unchanged.

CREATE OR REPLACE FUNCTION df._reconcile(p_batch integer DEFAULT 5000) RETURNS integer
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  v_days numeric := COALESCE((df._setting('retention_days') #>> '{}')::numeric, 30);
  v_keep bigint := COALESCE((df._setting('retention_max_instances') #>> '{}')::bigint, 10000);
  v_cutoff timestamptz;
  v_n integer;
BEGIN
  IF NOT pg_try_advisory_xact_lock(hashtext('dfgate reconcile')) THEN
    RETURN 0;
  END IF;
  v_cutoff := clock_timestamp() - make_interval(secs => v_days * 86400);
  WITH RECURSIVE roles(r) AS (
         (SELECT i.submitted_by FROM df.instances i
           WHERE i.status IN ('completed', 'failed', 'cancelled')
           ORDER BY i.submitted_by LIMIT 1)
         UNION ALL
         SELECT (SELECT i.submitted_by FROM df.instances i
                  WHERE i.status IN ('completed', 'failed', 'cancelled') AND i.submitted_by > roles.r
                  ORDER BY i.submitted_by LIMIT 1)
           FROM roles WHERE roles.r IS NOT NULL),
       doomed AS (
         SELECT d.id FROM roles, LATERAL (
             (SELECT i.id FROM df.instances i
               WHERE i.submitted_by = roles.r AND i.status IN ('completed', 'failed', 'cancelled')
               ORDER BY COALESCE(i.completed_at, i.created_at) DESC, i.id
               OFFSET v_keep LIMIT p_batch)
             UNION
             (SELECT i.id FROM df.instances i
               WHERE i.submitted_by = roles.r AND i.status IN ('completed', 'failed', 'cancelled')
                 AND COALESCE(i.completed_at, i.created_at) <= v_cutoff
               LIMIT p_batch)) d
          WHERE roles.r IS NOT NULL
          LIMIT p_batch),
       -- the doomed rows nobody holds locked, locked here
       mine AS MATERIALIZED (
         SELECT i.id FROM df.instances i
          WHERE i.id IN (SELECT id FROM doomed) AND i.status IN ('completed', 'failed', 'cancelled')
            FOR UPDATE OF i SKIP LOCKED),
       -- their nodes: all of them, and those locked here (the delete's cascade must not wait either)
       nodes_all AS (
         SELECT n.instance_id, count(*) AS n FROM df.nodes n
          WHERE n.instance_id IN (SELECT id FROM mine) GROUP BY n.instance_id),
       nodes_mine AS (
         SELECT l.instance_id, count(*) AS n
           FROM (SELECT n.instance_id FROM df.nodes n WHERE n.instance_id IN (SELECT id FROM mine)
                    FOR UPDATE OF n SKIP LOCKED) l
          GROUP BY l.instance_id),
       free AS (
         SELECT m.id FROM mine m
           LEFT JOIN nodes_all a ON a.instance_id = m.id
           LEFT JOIN nodes_mine k ON k.instance_id = m.id
          WHERE COALESCE(a.n, 0) = COALESCE(k.n, 0))
  DELETE FROM df.instances i USING free f
   WHERE i.id = f.id AND i.status IN ('completed', 'failed', 'cancelled');
  GET DIAGNOSTICS v_n = ROW_COUNT;
  RETURN v_n;
END $$;
COMMENT ON FUNCTION df._reconcile(integer) IS
  'internal: deletes terminal instances past retention_days or beyond the newest retention_max_instances of their submitting role (spec §12.2), skipping rows another session holds locked';
