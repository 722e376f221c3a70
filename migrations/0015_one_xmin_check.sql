-- dfgate migration 0015: one test of "inserted by this transaction".
--
-- 0012 added df._inserted_here (subtransaction-aware) for df._activate's
-- checks, and 0013 a second function doing the same,
-- df._inserted_by_this_transaction, for the df._activate wrapper. The wrapper
-- now calls df._inserted_here and the copy is dropped. Behaviour is unchanged.

CREATE OR REPLACE FUNCTION df._activate(p_instance_id text, p_options jsonb DEFAULT '{}') RETURNS void
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog
  AS $$
DECLARE
  v_xmin xid;
BEGIN
  -- No lock and one answer until the row is known to be the caller's own:
  -- only this transaction's rows pass, and the submitted_by trigger and
  -- row-level security let a role insert (or update) only rows in its own name.
  SELECT xmin INTO v_xmin FROM df.instances WHERE id = p_instance_id;
  IF NOT FOUND OR NOT df._inserted_here(v_xmin) THEN
    RAISE EXCEPTION 'Instance not found or access denied: %', p_instance_id USING ERRCODE = 'P0002',
      HINT = 'df._activate accepts only an instance inserted by the current transaction; only df.start makes an instance runnable.';
  END IF;
  PERFORM df._activate_rows(p_instance_id, p_options);
END $$;

DROP FUNCTION df._inserted_by_this_transaction(xid);
