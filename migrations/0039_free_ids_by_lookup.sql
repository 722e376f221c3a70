-- dfgate migration 0039: a batch's new instance ids are checked by lookups.
--
-- df._free_instance_ids (the first step of df._start_batch) draws up to 1,000
-- random ids and keeps those no instance has. PostgreSQL planned that test as
-- an anti-join, and before df.instances has been analyzed (a new install, a
-- table that grew fast since) it hashed a scan of every instance: with 20,000
-- unanalyzed instances, every batch of starts read all 20,000
-- (pg_stat_xact_all_tables), as migration 0038 found for df.nodes. The test
-- is now a lookup per drawn id (OFFSET 0 keeps PostgreSQL from turning it
-- into a join), whatever the statistics say. The ids drawn and the errors are
-- as before.

CREATE OR REPLACE FUNCTION df._free_instance_ids(p_n integer) RETURNS text[]
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  v_ids text[];
BEGIN
  IF p_n IS NULL OR p_n NOT BETWEEN 1 AND 1000 THEN
    RAISE EXCEPTION 'df._free_instance_ids: 1 to 1,000 ids' USING ERRCODE = '22023';
  END IF;
  FOR v_try IN 1 .. 10 LOOP
    SELECT array_agg(x) INTO v_ids FROM (
      SELECT DISTINCT right(gen_random_uuid()::text, 8) AS x FROM generate_series(1, p_n)) d
     WHERE NOT EXISTS (SELECT 1 FROM df.instances i WHERE i.id = d.x OFFSET 0);
    IF cardinality(v_ids) = p_n THEN
      RETURN v_ids;
    END IF;
  END LOOP;
  RAISE EXCEPTION 'Failed to create instance: exhausted 10 attempts to generate a collision-free ID' USING ERRCODE = '23505';
END $$;
