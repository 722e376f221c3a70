-- dfgate migration 0040: df.explain shows only trees, and no forged graph makes it
-- run away.
--
-- A role may insert an instance row and nodes by hand; they stay inert (only
-- df.start's checks make an instance runnable), but df.explain(<id>) rendered
-- them by walking from the root node by node (df._explain_nest), expanding a
-- node as often as it is named. A forged chain of 40 THEN nodes, each naming
-- the next as both children, doubled the work at every level: 18 levels took
-- 22 s and 5.7 MB, 40 would not end; the web console calls df.explain for
-- its instance page, so a superuser's console session was stuck on another
-- role's instance (a hostile review, docs/security.md).
--
-- Now df.explain first checks, in one statement that visits each reachable
-- node once, that the nodes reachable from the root form one tree (no node
-- named twice, the root named by none, at most 10,000 nodes), and answers
-- with a line saying so when they do not. An instance df.start accepted is
-- such a tree, and is shown as before. df._explain_nest, which a role may
-- also call directly, counts the nodes it has expanded and stops with 22023
-- past 10,000 (the most a workflow has), so no call of it runs away either;
-- its result carries the count as "_n", which the rendering ignores.

CREATE FUNCTION df._explain_count(p_n integer, p_child jsonb) RETURNS integer
  LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  v_n int := p_n + coalesce((p_child ->> '_n')::int, 0);
BEGIN
  IF v_n > 10000 THEN
    RAISE EXCEPTION 'Invalid durable function graph: more than 10,000 nodes under one root (a node named more than once?)'
      USING ERRCODE = '22023';
  END IF;
  RETURN v_n;
END $$;
COMMENT ON FUNCTION df._explain_count(integer, jsonb) IS
  'internal: df._explain_nest''s running count of the nodes it expanded; refuses more than 10,000';

CREATE FUNCTION df._explain_is_tree(p_instance text, p_root text) RETURNS boolean
  LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
  AS $$
  -- each node reachable from the root once (UNION), with the children it names
  WITH RECURSIVE reach(id) AS (
    SELECT p_root
    UNION
    SELECT c.child FROM reach
      JOIN df.nodes n ON n.instance_id = p_instance AND n.id = reach.id,
      LATERAL (SELECT n.left_node::text UNION ALL SELECT n.right_node::text
               UNION ALL SELECT CASE WHEN n.node_type IN ('IF', 'LOOP', 'JOIN') THEN df._try_jsonb(n.query) ->> 'condition_node' END
               UNION ALL SELECT jsonb_array_elements_text(CASE WHEN n.node_type IN ('IF', 'LOOP', 'JOIN')
                                                            AND jsonb_typeof(df._try_jsonb(n.query) -> 'extra_nodes') = 'array'
                                                          THEN df._try_jsonb(n.query) -> 'extra_nodes' ELSE '[]' END)
              ) AS c(child)
     WHERE c.child IS NOT NULL
  ), named AS (
    SELECT c.child FROM reach
      JOIN df.nodes n ON n.instance_id = p_instance AND n.id = reach.id,
      LATERAL (SELECT n.left_node::text UNION ALL SELECT n.right_node::text
               UNION ALL SELECT CASE WHEN n.node_type IN ('IF', 'LOOP', 'JOIN') THEN df._try_jsonb(n.query) ->> 'condition_node' END
               UNION ALL SELECT jsonb_array_elements_text(CASE WHEN n.node_type IN ('IF', 'LOOP', 'JOIN')
                                                            AND jsonb_typeof(df._try_jsonb(n.query) -> 'extra_nodes') = 'array'
                                                          THEN df._try_jsonb(n.query) -> 'extra_nodes' ELSE '[]' END)
              ) AS c(child)
     WHERE c.child IS NOT NULL
  )
  SELECT (SELECT count(*) FROM reach) <= 10000
     AND NOT EXISTS (SELECT 1 FROM named GROUP BY named.child HAVING count(*) > 1 OR named.child = p_root)
$$;
COMMENT ON FUNCTION df._explain_is_tree(text, text) IS
  'internal: whether the nodes of an instance reachable from p_root form one tree (each named once, the root by none, at most 10,000): df.explain shows nothing else';

CREATE OR REPLACE FUNCTION df._explain_nest(p_instance text, p_id text, p_status jsonb) RETURNS jsonb
  LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  r record;
  v jsonb;
  v_cfg jsonb;
  v_extras jsonb := '[]';
  e text;
  v_n int := 1;
BEGIN
  SELECT * INTO r FROM df.nodes WHERE instance_id = p_instance AND id = p_id;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  v := jsonb_build_object('node_type', r.node_type, '_status', p_status ->> p_id);
  IF r.status_details ? 'attempt' AND r.status_details ? 'max_attempts' THEN
    v := v || jsonb_build_object('_attempt', r.status_details);
  END IF;
  IF r.left_node IS NOT NULL THEN
    v := v || jsonb_build_object('left_node', df._explain_nest(p_instance, r.left_node, p_status));
    v_n := df._explain_count(v_n, v -> 'left_node');
  END IF;
  IF r.right_node IS NOT NULL THEN
    v := v || jsonb_build_object('right_node', df._explain_nest(p_instance, r.right_node, p_status));
    v_n := df._explain_count(v_n, v -> 'right_node');
  END IF;
  IF r.node_type IN ('IF', 'LOOP', 'JOIN') THEN
    v_cfg := df._try_jsonb(r.query);
    IF v_cfg ->> 'condition_node' IS NOT NULL THEN
      v := v || jsonb_build_object('condition_node', df._explain_nest(p_instance, v_cfg ->> 'condition_node', p_status));
      v_n := df._explain_count(v_n, v -> 'condition_node');
    END IF;
    IF jsonb_typeof(v_cfg -> 'extra_nodes') = 'array' THEN
      FOR e IN SELECT jsonb_array_elements_text(v_cfg -> 'extra_nodes') LOOP
        v_extras := v_extras || jsonb_build_array(df._explain_nest(p_instance, e, p_status));
        v_n := df._explain_count(v_n, v_extras -> -1);
      END LOOP;
      v := v || jsonb_build_object('extra_nodes', v_extras);
    END IF;
  END IF;
  IF r.query IS NOT NULL THEN v := v || jsonb_build_object('query', r.query); END IF;
  IF r.result_name IS NOT NULL THEN v := v || jsonb_build_object('result_name', r.result_name); END IF;
  RETURN v || jsonb_build_object('_n', v_n);
END $$;

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
    SELECT i.id, i.label, i.status, i.root_node, i.error, i.on_failure_instance INTO v_inst FROM df.instances i WHERE i.id = pg_catalog.lower(v_in);
    IF NOT FOUND THEN
      RETURN format('Instance ''%s'' not found', v_in);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM df.nodes n WHERE n.instance_id = v_inst.id) THEN
      RETURN format('No nodes found for instance ''%s''', v_in);
    END IF;
    IF NOT df._explain_is_tree(v_inst.id, v_inst.root_node) THEN
      RETURN format('Instance ''%s'' cannot be shown: its nodes do not form one tree under its root (df.start never accepted them)', v_in);
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
        || CASE WHEN v_inst.on_failure_instance IS NOT NULL
                THEN 'On failure: ' || v_inst.on_failure_instance || E'\n' ELSE '' END
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
