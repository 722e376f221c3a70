-- dfgate migration 0012: df.start inside subtransactions (savepoints,
-- PL/pgSQL exception blocks, triggers fired inside either); df.explain of a
-- failed instance shows its error (at the end of this file).
--
-- df._activate accepts only rows inserted by the current transaction. It
-- widened the row's 32-bit xmin to a full xid by borrowing the epoch of
-- pg_current_xact_id(), which is the top-level transaction's; a row inserted
-- inside a subtransaction carries the subtransaction's xid, which is larger,
-- so the widened value was taken one epoch back (in epoch 0 it wrapped to
-- 2^64 - 2^32 + xid: "transaction ID ... is in the future").
--
-- Every xid a transaction uses (its own and its subtransactions') is assigned
-- at or after its top-level xid, because a subtransaction's xid is assigned
-- only after its parent's. So the row is ours only if its xmin is at most
-- 2^31 ahead of the top-level xid in 32-bit modular arithmetic, and its full
-- xid is the top-level full xid plus that distance (which also carries into
-- the next epoch when the 32-bit counter wraps). A visible row whose inserting
-- transaction is still in progress can only be ours: rows of other in-progress
-- transactions are invisible, and pg_xact_status answers 'aborted' for a
-- subtransaction rolled back to its savepoint.

-- The full xid of a 32-bit xid that is p_xid - p_top (mod 2^32) ahead of the
-- full xid p_top, or NULL when p_xid precedes p_top (is older than it).
CREATE FUNCTION df._xid_after(p_xid xid, p_top xid8) RETURNS xid8
  LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog
  AS $$
    SELECT CASE WHEN d < 2147483648 THEN (p_top::text::numeric + d)::text::xid8 END
      FROM (SELECT (p_xid::text::bigint - (p_top::text::numeric % 4294967296)::bigint
                    + 4294967296) % 4294967296 AS d) s
  $$;
COMMENT ON FUNCTION df._xid_after(xid, xid8) IS
  'internal: widens a 32-bit xid at or after the full xid p_top (NULL when it precedes p_top)';

-- Whether a row with xmin p_xmin was inserted by the current transaction or
-- one of its live subtransactions.
CREATE FUNCTION df._inserted_here(p_xmin xid) RETURNS boolean
  LANGUAGE plpgsql VOLATILE STRICT SET search_path = pg_catalog
  AS $$
DECLARE
  v_top xid8 := pg_current_xact_id_if_assigned();
  v_full xid8;
BEGIN
  IF v_top IS NULL THEN
    RETURN false;  -- this transaction has written nothing
  END IF;
  v_full := df._xid_after(p_xmin, v_top);
  IF v_full IS NULL THEN
    RETURN false;  -- older than this transaction
  END IF;
  -- A frozen row keeps its raw xmin, so one over 2^31 transactions old can
  -- widen to an xid not yet assigned, which pg_xact_status rejects (22023).
  -- Such a row is not ours.
  BEGIN
    RETURN pg_xact_status(v_full) = 'in progress';
  EXCEPTION WHEN invalid_parameter_value THEN
    RETURN false;
  END;
END $$;
COMMENT ON FUNCTION df._inserted_here(xid) IS
  'internal: whether a row with this xmin was inserted by the current transaction or one of its live subtransactions';

CREATE OR REPLACE FUNCTION df._activate(p_instance_id text, p_options jsonb DEFAULT '{}') RETURNS void
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog
  AS $$
DECLARE
  v_inst record;
  v_role record;
  v_total int;
  v_reached int;
  v_max_depth int;
  v_bad int;
BEGIN
  SELECT id, root_node, status, runnable, submitted_by, xmin INTO v_inst
    FROM df.instances WHERE id = p_instance_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'Instance not found or access denied: %', p_instance_id USING ERRCODE = 'P0002';
  END IF;
  IF v_inst.runnable OR v_inst.status <> 'pending' THEN
    RAISE EXCEPTION 'instance % is not a new instance', p_instance_id USING ERRCODE = '55000';
  END IF;
  -- The row must have been inserted by the current transaction or one of its
  -- subtransactions (a savepoint, an exception block).
  IF NOT df._inserted_here(v_inst.xmin) THEN
    RAISE EXCEPTION 'instance % was not inserted by this transaction; only df.start can make an instance runnable', p_instance_id
      USING ERRCODE = '42501';
  END IF;
  SELECT rolname, rolcanlogin, rolsuper INTO v_role FROM pg_roles WHERE oid = v_inst.submitted_by;
  IF NOT v_role.rolcanlogin THEN
    RAISE EXCEPTION 'current_user "%" does not have LOGIN privilege. The background worker must connect as this role to execute SQL. Grant LOGIN to this role or call df.start() as a role with LOGIN.', v_role.rolname
      USING ERRCODE = '42501';
  END IF;
  IF v_role.rolsuper AND NOT COALESCE(df._setting('enable_superuser_instances')::text::boolean, false) THEN
    RAISE EXCEPTION 'pg_durable: superuser instances are disabled. current_user "%" is a superuser, but pg_durable.enable_superuser_instances is off. Set pg_durable.enable_superuser_instances = on to allow this.', v_role.rolname
      USING ERRCODE = '42501',
            HINT = 'In dfgate the switch is df.config key enable_superuser_instances.';
  END IF;
  -- The rows must form one tree under root_node: every reference resolves,
  -- every node but the root has exactly one parent, all are reachable within
  -- the depth limit, and there are at most 10,000.
  SELECT count(*) INTO v_total FROM df.nodes WHERE instance_id = p_instance_id;
  IF v_total > 10000 THEN
    RAISE EXCEPTION 'Invalid durable function graph: root: Workflow exceeds maximum node count of 10000. Simplify the workflow or break it into multiple instances.'
      USING ERRCODE = '22023';
  END IF;
  WITH refs AS (
    SELECT r.child FROM df.nodes n,
      LATERAL (SELECT n.left_node UNION ALL SELECT n.right_node
               UNION ALL SELECT CASE WHEN n.node_type IN ('IF', 'LOOP') THEN (n.query::jsonb) ->> 'condition_node' END
               UNION ALL SELECT jsonb_array_elements_text(CASE WHEN n.node_type = 'JOIN' AND n.query IS NOT NULL
                                                          THEN COALESCE((n.query::jsonb) -> 'extra_nodes', '[]') ELSE '[]' END)
              ) AS r(child)
     WHERE n.instance_id = p_instance_id AND r.child IS NOT NULL
  )
  SELECT count(*) INTO v_bad FROM (
    SELECT child FROM refs GROUP BY child
    HAVING count(*) > 1 OR child = v_inst.root_node
        OR NOT EXISTS (SELECT 1 FROM df.nodes m WHERE m.instance_id = p_instance_id AND m.id = child)
  ) b;
  IF v_bad > 0 THEN
    RAISE EXCEPTION 'Invalid durable function graph: the nodes of instance % do not form a tree', p_instance_id
      USING ERRCODE = '22023';
  END IF;
  WITH RECURSIVE t(id, depth) AS (
    SELECT v_inst.root_node::text, 0
    UNION ALL
    SELECT r.child, t.depth + 1 FROM t
      JOIN df.nodes n ON n.instance_id = p_instance_id AND n.id = t.id,
      LATERAL (SELECT n.left_node::text UNION ALL SELECT n.right_node::text
               UNION ALL SELECT CASE WHEN n.node_type IN ('IF', 'LOOP') THEN (n.query::jsonb) ->> 'condition_node' END
               UNION ALL SELECT jsonb_array_elements_text(CASE WHEN n.node_type = 'JOIN' AND n.query IS NOT NULL
                                                          THEN COALESCE((n.query::jsonb) -> 'extra_nodes', '[]') ELSE '[]' END)
              ) AS r(child)
     WHERE r.child IS NOT NULL AND t.depth < 257
  )
  SELECT count(*), max(depth) INTO v_reached, v_max_depth FROM t;
  IF v_max_depth > 256 THEN
    RAISE EXCEPTION 'Invalid durable function graph: Graph exceeds maximum nesting depth of 256. Simplify the workflow or break it into multiple instances.'
      USING ERRCODE = '22023';
  END IF;
  IF v_reached <> v_total THEN
    RAISE EXCEPTION 'Invalid durable function graph: the nodes of instance % do not form a tree under its root', p_instance_id
      USING ERRCODE = '22023';
  END IF;
  IF EXISTS (SELECT 1 FROM df.nodes WHERE instance_id = p_instance_id AND node_type IN ('HTTP', 'HTTP_MULTIPART'))
     AND NOT has_function_privilege(v_inst.submitted_by, 'df.http(text,text,text,jsonb,integer)', 'EXECUTE') THEN
    RAISE EXCEPTION 'permission denied for HTTP steps: role "%" may not run df.http', v_role.rolname
      USING ERRCODE = '42501',
            HINT = format('An administrator runs: SELECT df.grant_usage(%L, include_http => true);', v_role.rolname);
  END IF;
  UPDATE df.instances
     SET runnable = true,
         options = COALESCE(p_options, '{}') - 'idempotency_key',
         idempotency_key = p_options ->> 'idempotency_key',
         vars = COALESCE((SELECT jsonb_object_agg(name, value) FROM df.vars
                           WHERE owner = v_inst.submitted_by AND value IS NOT NULL), '{}')
   WHERE id = p_instance_id;
  PERFORM pg_notify('dfgate_wake', 'start:' || p_instance_id);
END $$;

------------------------------------------------------------------------------
-- df.explain of a failed instance says why (dfgate addition to spec §11.6):
-- an 'Error:' header line with the instance's error (cut to 200 bytes) after
-- 'Status:'; the ✗ markers in the tree say where. Otherwise as in 0008.
------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION df.explain(input text) RETURNS text
  LANGUAGE plpgsql VOLATILE STRICT SECURITY INVOKER
  AS $$
DECLARE
  v_in text := btrim(input, E' \t\n\r');
  v_inst record;
  v_status jsonb;
  v_root jsonb;
  v_graph jsonb;
  v_value text;
  v_err text;
  v_state text;
  v_shown text;
  v_icon text;
  v_out text;
BEGIN
  IF v_in ~ '^[0-9a-fA-F]{8}$' THEN
    SELECT i.id, i.label, i.status, i.root_node, i.error INTO v_inst FROM df.instances i WHERE i.id = pg_catalog.lower(v_in);
    IF NOT FOUND THEN
      RETURN format('Instance ''%s'' not found', v_in);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM df.nodes n WHERE n.instance_id = v_inst.id) THEN
      RETURN format('No nodes found for instance ''%s''', v_in);
    END IF;
    SELECT jsonb_object_agg(d.node_id, d.inferred_status) INTO v_status FROM df._derived_status(v_inst.id) d;
    v_root := df._explain_nest(v_inst.id, v_inst.root_node, v_status);
    v_shown := CASE v_inst.status WHEN 'running' THEN 'Running' WHEN 'completed' THEN 'Completed'
                                  WHEN 'failed' THEN 'Failed' WHEN 'cancelled' THEN 'Cancelled' ELSE v_inst.status END;
    v_icon := CASE v_inst.status WHEN 'completed' THEN '✓' WHEN 'failed' THEN '✗' WHEN 'cancelled' THEN '✗'
                                 WHEN 'running' THEN '⏳' ELSE '○' END;
    v_out := df._output(v_inst.id);
    RETURN 'Instance: ' || v_inst.id || CASE WHEN v_inst.label IS NOT NULL THEN format(' (%s)', v_inst.label) ELSE '' END || E'\n'
        || 'Status:   ' || v_icon || ' ' || v_shown || E'\n'
        || CASE WHEN v_out IS NOT NULL THEN 'Output:   ' || df._explain_cut(v_out, 60, 57) || E'\n' ELSE '' END
        || CASE WHEN v_inst.status = 'failed' AND v_inst.error IS NOT NULL
                THEN 'Error:    ' || df._explain_cut(v_inst.error, 200, 197) || E'\n' ELSE '' END
        || E'\n' || df._explain_tree(v_root);
  END IF;
  -- a graph value
  v_graph := df._try_jsonb(v_in);
  IF jsonb_typeof(v_graph) = 'object' AND v_graph ? 'node_type' THEN
    v_err := df._validate(v_graph);
    RETURN COALESCE(v_err, df._explain_tree(v_graph));
  END IF;
  -- a DSL expression, evaluated as the caller
  IF v_in ~ '(~>|\|=>|\?>|!>|@>|df\.)' THEN
    BEGIN
      EXECUTE 'SELECT (' || v_in || E'\n)::text' INTO v_value;
    EXCEPTION WHEN OTHERS THEN
      GET STACKED DIAGNOSTICS v_state = MESSAGE_TEXT;
      RETURN 'Failed to evaluate expression: ' || v_state;
    END;
    IF v_value IS NULL THEN
      RETURN 'Expression returned NULL';
    END IF;
    BEGIN
      v_graph := df._start_node(v_value)::jsonb;
    EXCEPTION WHEN OTHERS THEN
      GET STACKED DIAGNOSTICS v_state = MESSAGE_TEXT;
      RETURN 'Failed to parse Durofut JSON: ' || v_state;
    END;
    v_err := df._validate(v_graph);
    RETURN COALESCE(v_err, df._explain_tree(v_graph));
  END IF;
  IF v_in ~* '^(SELECT|INSERT|UPDATE|DELETE|WITH|CREATE|ALTER|DROP|CALL|DO|TRUNCATE|GRANT|REVOKE|EXPLAIN) '
     OR v_in ~* '^(SELECT|INSERT|UPDATE|DELETE|WITH)\n' THEN
    RETURN df._explain_tree(jsonb_build_object('node_type', 'SQL', 'query', v_in));
  END IF;
  RETURN E'Cannot explain input: not a valid Durofut JSON, instance ID, SQL statement, or DSL expression.\nHint: DSL expressions use df.*() functions and operators like ~>, |=>, &, |.';
END $$;
