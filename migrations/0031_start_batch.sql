-- dfgate migration 0031: many starts in one statement.
--
-- An application that sends many `SELECT df.start(...)` statements in one
-- message (a bulk enqueue) paid for each start on its own: every start is a
-- PL/pgSQL call that inserts its nodes, then df._activate_graph re-reads
-- them with five statements of its own and inserts the instance row, and
-- PostgreSQL starts up the executor, the check constraints and the triggers
-- of every one of those statements again (docs/benchmarks.md, "Starts in
-- batches"). The proxy now compiles such a message as a whole and sends its
-- starts as one df._start_batch call (docs/proxy.md, "Starts in one
-- message"): the nodes of every start in one INSERT, as the caller, and
-- df._activate_graphs, which applies every check of df._activate_graph to
-- all of them at once with set-based statements and inserts the instance
-- rows in one INSERT.
--
-- Nothing is trusted that df._activate_graph does not trust: the nodes of
-- every id must have been written by this transaction (one statement), by
-- one role, and form one tree under the given root; LOGIN, the superuser
-- guard, the node count, the depth and the HTTP grant are checked as
-- before. A call with any bad start fails as a whole.

CREATE FUNCTION df._free_instance_ids(p_n integer) RETURNS text[]
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
     WHERE NOT EXISTS (SELECT 1 FROM df.instances i WHERE i.id = d.x);
    IF cardinality(v_ids) = p_n THEN
      RETURN v_ids;
    END IF;
  END LOOP;
  RAISE EXCEPTION 'Failed to create instance: exhausted 10 attempts to generate a collision-free ID' USING ERRCODE = '23505';
END $$;
COMMENT ON FUNCTION df._free_instance_ids(integer) IS
  'internal: p_n distinct random instance ids no instance has (df._start_batch draws its ids here, as the caller sees only its own rows)';

CREATE FUNCTION df._activate_graphs(p_instances text[], p_roots text[], p_labels text[]) RETURNS text[]
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  v_n int := cardinality(p_instances);
  v_found int;
  v_mixed int;
  v_roles int;
  v_sub regrole;
  v_xmins int;
  v_xmin xid;
  v_http boolean;
  v_total int;
  v_largest int;
  v_role record;
  v_bad int;
  v_reached int;
  v_max_depth int;
BEGIN
  IF v_n IS NULL OR v_n NOT BETWEEN 1 AND 1000
     OR cardinality(p_roots) IS DISTINCT FROM v_n OR cardinality(p_labels) IS DISTINCT FROM v_n
     OR (SELECT count(DISTINCT x) FROM unnest(p_instances) x) <> v_n THEN
    RAISE EXCEPTION 'df._activate_graphs: 1 to 1,000 distinct instance ids, each with a root and a label'
      USING ERRCODE = '22023';
  END IF;
  -- Whose nodes, written when (as df._activate_graph): every id's nodes written by this
  -- transaction in one statement, by one role; one answer for any other id, before any lock.
  SELECT count(*), count(*) FILTER (WHERE g.sub_lo <> g.sub_hi OR g.x_lo <> g.x_hi),
         count(DISTINCT g.sub_lo), min(g.sub_lo)::regrole, count(DISTINCT g.x_lo), min(g.x_lo)::xid,
         coalesce(bool_or(g.http), false), sum(g.total), max(g.total)
    INTO v_found, v_mixed, v_roles, v_sub, v_xmins, v_xmin, v_http, v_total, v_largest
    FROM (SELECT n.instance_id, count(*) AS total,
                 min(n.submitted_by::oid) AS sub_lo, max(n.submitted_by::oid) AS sub_hi,
                 min(n.xmin::text) AS x_lo, max(n.xmin::text) AS x_hi,
                 bool_or(n.node_type IN ('HTTP', 'HTTP_MULTIPART')) AS http
            FROM unnest(p_instances) AS b(iid) JOIN df.nodes n ON n.instance_id = b.iid
           GROUP BY n.instance_id) g;
  IF v_found <> v_n OR v_mixed > 0 OR v_roles <> 1 OR v_xmins <> 1 OR NOT df._inserted_here(v_xmin) THEN
    RAISE EXCEPTION 'Instance not found or access denied: %',
      (SELECT string_agg(x, ', ') FROM unnest(p_instances) x) USING ERRCODE = 'P0002',
      HINT = 'df._activate_graphs accepts only nodes inserted by the current transaction; only df.start makes an instance runnable.';
  END IF;
  SELECT rolname, rolcanlogin, rolsuper INTO v_role FROM pg_roles WHERE oid = v_sub;
  IF NOT v_role.rolcanlogin THEN
    RAISE EXCEPTION 'current_user "%" does not have LOGIN privilege. The background worker must connect as this role to execute SQL. Grant LOGIN to this role or call df.start() as a role with LOGIN.', v_role.rolname
      USING ERRCODE = '42501';
  END IF;
  IF v_role.rolsuper AND NOT COALESCE(df._setting('enable_superuser_instances')::text::boolean, false) THEN
    RAISE EXCEPTION 'pg_durable: superuser instances are disabled. current_user "%" is a superuser, but pg_durable.enable_superuser_instances is off. Set pg_durable.enable_superuser_instances = on to allow this.', v_role.rolname
      USING ERRCODE = '42501',
            HINT = 'In dfgate the switch is df.config key enable_superuser_instances.';
  END IF;
  IF v_largest > 10000 THEN
    RAISE EXCEPTION 'Invalid durable function graph: root: Workflow exceeds maximum node count of 10000. Simplify the workflow or break it into multiple instances.'
      USING ERRCODE = '22023';
  END IF;
  -- One tree under each root: every reference resolves within its instance, every node but
  -- the root has one parent, and all are reachable within the depth limit. The nodes are read
  -- once, by primary key (a join the planner could turn into a scan of every node).
  WITH RECURSIVE mine AS MATERIALIZED (
    SELECT b.iid, b.root, n.id::text AS id, r.child
      FROM unnest(p_instances, p_roots) AS b(iid, root)
      JOIN df.nodes n ON n.instance_id = b.iid
      CROSS JOIN LATERAL (SELECT n.left_node::text UNION ALL SELECT n.right_node::text
               UNION ALL SELECT CASE WHEN n.node_type IN ('IF', 'LOOP') THEN (n.query::jsonb) ->> 'condition_node' END
               UNION ALL SELECT jsonb_array_elements_text(CASE WHEN n.node_type = 'JOIN' AND n.query IS NOT NULL
                                                          THEN COALESCE((n.query::jsonb) -> 'extra_nodes', '[]') ELSE '[]' END)
              ) AS r(child)
  ), refs AS (
    SELECT r.iid, r.root, r.child, k.id IS NOT NULL AS present
      FROM mine r LEFT JOIN (SELECT DISTINCT m.iid, m.id FROM mine m) k ON k.iid = r.iid AND k.id = r.child
     WHERE r.child IS NOT NULL
  ), t(iid, id, depth) AS (
    SELECT DISTINCT m.iid, m.id, 0 FROM mine m WHERE m.id = m.root
    UNION ALL
    SELECT t.iid, m.child, t.depth + 1 FROM t JOIN mine m ON m.iid = t.iid AND m.id = t.id
     WHERE m.child IS NOT NULL AND t.depth < 257
  )
  SELECT (SELECT count(*) FROM (SELECT 1 FROM refs GROUP BY refs.iid, refs.root, refs.child
                                HAVING count(*) > 1 OR refs.child = refs.root OR NOT bool_and(refs.present)) x),
         (SELECT count(*) FROM t), (SELECT max(depth) FROM t)
    INTO v_bad, v_reached, v_max_depth;
  IF v_bad > 0 THEN
    RAISE EXCEPTION 'Invalid durable function graph: the nodes of instances % do not form a tree',
      array_to_string(p_instances, ', ') USING ERRCODE = '22023';
  END IF;
  IF v_max_depth > 256 THEN
    RAISE EXCEPTION 'Invalid durable function graph: Graph exceeds maximum nesting depth of 256. Simplify the workflow or break it into multiple instances.'
      USING ERRCODE = '22023';
  END IF;
  IF v_reached <> v_total THEN
    RAISE EXCEPTION 'Invalid durable function graph: the nodes of instances % do not form a tree under their roots',
      array_to_string(p_instances, ', ') USING ERRCODE = '22023';
  END IF;
  IF v_http AND NOT has_function_privilege(v_sub, 'df.http(text,text,text,jsonb,integer)', 'EXECUTE') THEN
    RAISE EXCEPTION 'permission denied for HTTP steps: role "%" may not run df.http', v_role.rolname
      USING ERRCODE = '42501',
            HINT = format('An administrator runs: SELECT df.grant_usage(%L, include_http => true);', v_role.rolname);
  END IF;
  -- The instances, runnable, with the role's variables; no options (the proxy batches
  -- only starts without them). An id some instance already has fails the primary key.
  INSERT INTO df.instances (id, label, root_node, submitted_by, database, runnable, options, vars)
  SELECT b.iid, b.label, b.root, v_sub, NULL, true, '{}',
         COALESCE((SELECT jsonb_object_agg(name, value) FROM df.vars WHERE owner = v_sub AND value IS NOT NULL), '{}')
    FROM unnest(p_instances, p_roots, p_labels) AS b(iid, root, label);
  PERFORM pg_notify('dfgate_wake', 'start:' || x) FROM unnest(p_instances) x;
  RETURN p_instances;
END $$;
COMMENT ON FUNCTION df._activate_graphs(text[], text[], text[]) IS
  'internal: df._activate_graph for many instances at once (the end of df._start_batch): checks the nodes the current transaction inserted under each new id, then inserts those instances, runnable, and returns their ids';

CREATE FUNCTION df._start_batch(p_starts json) RETURNS text[]
  LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  v_n int := json_array_length(p_starts);
  v_ids text[];
BEGIN
  -- [{"r": <rows as df._start_rows takes them>, "l": <label or null>}, ...]
  v_ids := df._free_instance_ids(v_n);
  INSERT INTO df.nodes (id, instance_id, node_type, query, result_name, left_node, right_node, database)
  SELECT r.i, v_ids[s.ord], r.t, r.q, r.n, r.l, r.r, NULL
    FROM json_array_elements(p_starts) WITH ORDINALITY AS s(v, ord),
         json_to_recordset(s.v -> 'r') AS r(i text, t text, q text, n text, l text, r text);
  RETURN df._activate_graphs(
    v_ids,
    ARRAY(SELECT s.v -> 'r' -> 0 ->> 'i' FROM json_array_elements(p_starts) WITH ORDINALITY AS s(v, ord) ORDER BY s.ord),
    ARRAY(SELECT s.v ->> 'l' FROM json_array_elements(p_starts) WITH ORDINALITY AS s(v, ord) ORDER BY s.ord));
END $$;
COMMENT ON FUNCTION df._start_batch(json) IS
  'internal: the proxy''s form of many compiled starts in one message: inserts every start''s node rows as the caller (row-level security, the submitted_by trigger), then df._activate_graphs; returns the instance ids in order';

