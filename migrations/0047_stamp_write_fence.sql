-- dfgate migration 0047: a node stamp from an older iteration never overwrites a newer one.
--
-- The executor writes node stamps in the background, in order, on its control
-- connection; a step's attempt mark goes out on another connection. In a loop,
-- the stamp that closes one iteration could land after the next iteration's
-- mark, and the node then read the old iteration until its outcome was
-- written (found by a review; temporary, but visible in df.instance_nodes and
-- the console). Spec §5.6 fences such writes: the incoming stamp is compared
-- with the stored one level by level (the root generation, then for each
-- nesting level the node id and that level's generation); at the first level
-- that differs, in its node id or its generation, a lower incoming generation
-- is stale and the write is dropped. A higher or equal generation there (a
-- sibling branch or loop of the same generation), stamps of different depths,
-- equal stamps and anything that does not parse as a stamp let the write
-- through.

CREATE FUNCTION df._stamp_stale(p_incoming text, p_stored text) RETURNS boolean
  LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  -- <scope>::<generation>, the scope the instance id or <parent scope>::<parent generation>::<node id>
  c_form constant text := '^[^:]+::[0-9]{1,18}(::[^:]+::[0-9]{1,18})*$';
  v_in text[];
  v_st text[];
  v_gi bigint;
  v_gs bigint;
BEGIN
  IF p_incoming IS NULL OR p_stored IS NULL OR p_incoming !~ c_form OR p_stored !~ c_form THEN
    RETURN false;
  END IF;
  v_in := string_to_array(p_incoming, '::');
  v_st := string_to_array(p_stored, '::');
  IF v_in[1] <> v_st[1] OR cardinality(v_in) <> cardinality(v_st) THEN
    RETURN false;
  END IF;
  -- generations sit at the even positions; a level below the root also has its node id before it
  FOR i IN 1 .. cardinality(v_in) / 2 LOOP
    v_gi := v_in[2 * i]::bigint;
    v_gs := v_st[2 * i]::bigint;
    IF v_gi <> v_gs OR (i > 1 AND v_in[2 * i - 1] <> v_st[2 * i - 1]) THEN
      RETURN v_gi < v_gs;
    END IF;
  END LOOP;
  RETURN false;
END $$;
COMMENT ON FUNCTION df._stamp_stale(text, text) IS
  'internal: whether a node stamp is older than the stored one (spec §5.6 write fence); pure computation';
