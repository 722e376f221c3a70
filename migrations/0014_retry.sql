-- dfgate migration: retries and on_failure (df.start's max_attempts,
-- max_backoff, on_failure; docs/executor.md "Retries").
--
-- The retry state itself lives in df.events (each attempt of a step is its own
-- activation, `<key>@<n>` for attempt n > 1; the backoff before it is an
-- `armed` event with its due time) and in the node's status_details, which the
-- executor extends for a step under a retry policy with "attempt",
-- "max_attempts", "last_error" and, while it waits, "retry_at". df.nodes.attempts
-- is that attempt number. This migration adds where the on_failure child is
-- recorded and shows both in df.explain.

-- The instance the on_failure workflow started as, set when this instance failed.
ALTER TABLE df.instances ADD COLUMN on_failure_instance varchar(8)
  CONSTRAINT instances_on_failure_instance_check CHECK (on_failure_instance ~ '^[0-9a-f]{8}$');
COMMENT ON COLUMN df.instances.on_failure_instance IS
  'dfgate: id of the instance started by df.start(..., on_failure => ...) when this one failed';

-- Node text (from migration 0008) with ' (attempt n/m)' for a step under a retry policy.
CREATE OR REPLACE FUNCTION df._explain_text(n jsonb) RETURNS text
  LANGUAGE plpgsql IMMUTABLE SECURITY INVOKER SET search_path = pg_catalog
  AS $$
DECLARE
  v_type text := n ->> 'node_type';
  v_q text := n ->> 'query';
  v_cfg jsonb := CASE WHEN v_type NOT IN ('SQL', 'SLEEP') THEN df._try_jsonb(n ->> 'query') END;
  v_name text := CASE WHEN n ->> 'result_name' IS NOT NULL THEN format(' |=> ''%s''', n ->> 'result_name') ELSE '' END;
  v_mark text := COALESCE(CASE n ->> '_status' WHEN 'completed' THEN ' ✓' WHEN 'failed' THEN ' ✗'
                            WHEN 'running' THEN ' ⏳' WHEN 'pending' THEN ' ○' WHEN 'skipped' THEN ' ⊘' END, '');
  v_text text;
BEGIN
  v_text := CASE v_type
    WHEN 'SQL' THEN 'SQL: ' || df._explain_cut(COALESCE(v_q, ''), 50, 47) || v_name
    WHEN 'SLEEP' THEN format('SLEEP %ss', v_q) || v_name
    WHEN 'WAIT_SCHEDULE' THEN format('WAIT ''%s''', v_cfg ->> 'cron_expr') || v_name
    WHEN 'HTTP' THEN format('HTTP %s %s', v_cfg ->> 'method', df._explain_cut(v_cfg ->> 'url', 40, 37)) || v_name
    WHEN 'HTTP_MULTIPART' THEN format('HTTP_MULTIPART %s %s', v_cfg ->> 'method', df._explain_cut(v_cfg ->> 'url', 40, 37)) || v_name
    WHEN 'SIGNAL' THEN format('SIGNAL ''%s''', v_cfg ->> 'signal_name')
                       || CASE WHEN jsonb_typeof(v_cfg -> 'timeout_seconds') = 'number' THEN format(' (%ss)', v_cfg ->> 'timeout_seconds') ELSE '' END
                       || v_name
    WHEN 'LOOP' THEN CASE WHEN n ? 'condition_node' THEN 'LOOP (while)' ELSE 'LOOP (infinite)' END || v_name
    WHEN 'BREAK' THEN CASE WHEN v_cfg ->> 'break_value' IS NULL THEN 'BREAK'
                           ELSE format('BREAK ''%s''', df._explain_cut(v_cfg ->> 'break_value', 20, 17)) END || v_name
    WHEN 'JOIN' THEN format('JOIN (%s)', 2 + COALESCE(jsonb_array_length(CASE WHEN jsonb_typeof(n -> 'extra_nodes') = 'array' THEN n -> 'extra_nodes' END), 0)) || v_name
    ELSE COALESCE(v_type, '?') || v_name END;
  -- a step under a retry policy (df.start's max_attempts): its attempt, e.g. ' (attempt 2/3)'
  IF n ? '_attempt' THEN
    v_text := v_text || format(' (attempt %s/%s)', n -> '_attempt' ->> 'attempt', n -> '_attempt' ->> 'max_attempts');
  END IF;
  RETURN v_text || v_mark;
END $$;

-- Instance nodes as one nested value (from migration 0008), carrying the retry keys of status_details.
CREATE OR REPLACE FUNCTION df._explain_nest(p_instance text, p_id text, p_status jsonb) RETURNS jsonb
  LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog
  AS $$
DECLARE
  r record;
  v jsonb;
  v_cfg jsonb;
  v_extras jsonb := '[]';
  e text;
BEGIN
  SELECT * INTO r FROM df.nodes WHERE instance_id = p_instance AND id = p_id;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  v := jsonb_build_object('node_type', r.node_type, '_status', p_status ->> p_id);
  IF r.status_details ? 'attempt' AND r.status_details ? 'max_attempts' THEN
    v := v || jsonb_build_object('_attempt', r.status_details);
  END IF;
  IF r.left_node IS NOT NULL THEN v := v || jsonb_build_object('left_node', df._explain_nest(p_instance, r.left_node, p_status)); END IF;
  IF r.right_node IS NOT NULL THEN v := v || jsonb_build_object('right_node', df._explain_nest(p_instance, r.right_node, p_status)); END IF;
  IF r.node_type IN ('IF', 'LOOP', 'JOIN') THEN
    v_cfg := df._try_jsonb(r.query);
    IF v_cfg ->> 'condition_node' IS NOT NULL THEN
      v := v || jsonb_build_object('condition_node', df._explain_nest(p_instance, v_cfg ->> 'condition_node', p_status));
    END IF;
    IF jsonb_typeof(v_cfg -> 'extra_nodes') = 'array' THEN
      FOR e IN SELECT jsonb_array_elements_text(v_cfg -> 'extra_nodes') LOOP
        v_extras := v_extras || jsonb_build_array(df._explain_nest(p_instance, e, p_status));
      END LOOP;
      v := v || jsonb_build_object('extra_nodes', v_extras);
    END IF;
  END IF;
  IF r.query IS NOT NULL THEN v := v || jsonb_build_object('query', r.query); END IF;
  IF r.result_name IS NOT NULL THEN v := v || jsonb_build_object('result_name', r.result_name); END IF;
  RETURN v;
END $$;

-- df.explain (from migration 0012) with an 'On failure:' line naming the on_failure instance.
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
