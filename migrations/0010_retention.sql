-- dfgate migration 0010: retention (spec §12.2). A terminal instance (completed,
-- failed, cancelled) is kept only while it is among the newest
-- retention_max_instances terminal instances and younger than retention_days
-- (age from completed_at, else created_at; never updated_at). Pending and
-- running instances are never removed. The executor runs df._reconcile every
-- reconcile_interval_seconds (0: never); nodes, events and signals go with
-- their instance (ON DELETE CASCADE).

ALTER TABLE df.config DROP CONSTRAINT config_known_key;
ALTER TABLE df.config ADD CONSTRAINT config_known_key CHECK (key IN (
  'enable_superuser_instances', 'http_enabled', 'http_allow_private', 'http_allow_hosts',
  'list_instances_max_limit', 'executor_group',
  'retention_days', 'retention_max_instances', 'reconcile_interval_seconds'));
INSERT INTO df.config (key, value, description) VALUES
  ('retention_days', '30', 'terminal instances older than this many days are deleted with their nodes (0: at the next pass)'),
  ('retention_max_instances', '10000', 'at most this many terminal instances are kept (the newest)'),
  ('reconcile_interval_seconds', '3600', 'seconds between the executor''s retention passes (0: never)');

-- Deletes at most p_batch expired terminal instances; returns how many. One
-- pass at a time across executors (a transaction-level advisory lock).
CREATE FUNCTION df._reconcile(p_batch integer DEFAULT 5000) RETURNS integer
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog
  AS $$
DECLARE
  v_days numeric := COALESCE((df._setting('retention_days') #>> '{}')::numeric, 30);
  v_keep bigint := COALESCE((df._setting('retention_max_instances') #>> '{}')::bigint, 10000);
  v_n integer;
BEGIN
  IF NOT pg_try_advisory_xact_lock(hashtext('dfgate reconcile')) THEN
    RETURN 0;
  END IF;
  WITH terminal AS (
         SELECT i.id, COALESCE(i.completed_at, i.created_at) AS aged_from,
                row_number() OVER (ORDER BY COALESCE(i.completed_at, i.created_at) DESC, i.id) AS newest
           FROM df.instances i
          WHERE i.status IN ('completed', 'failed', 'cancelled')),
       doomed AS (
         SELECT t.id FROM terminal t
          WHERE t.newest > v_keep OR t.aged_from <= clock_timestamp() - make_interval(secs => v_days * 86400)
          LIMIT p_batch)
  DELETE FROM df.instances i USING doomed d
   WHERE i.id = d.id AND i.status IN ('completed', 'failed', 'cancelled');
  GET DIAGNOSTICS v_n = ROW_COUNT;
  RETURN v_n;
END $$;
REVOKE EXECUTE ON FUNCTION df._reconcile(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION df._reconcile(integer) TO df_executor;
COMMENT ON FUNCTION df._reconcile(integer) IS
  'internal: deletes terminal instances past retention_days or beyond the newest retention_max_instances (spec §12.2)';
