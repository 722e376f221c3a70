-- dfgate migration 0008: df.explain (spec §11.6), a tree rendering of a graph
-- value, of a DSL expression, or of an instance with the derived statuses of
-- spec §11.5. Everything runs as the caller.

-- At most p_max bytes of p_text, else its first p_keep bytes (on a character
-- boundary) and '...'.
CREATE FUNCTION df._explain_cut(p_text text, p_max int, p_keep int) RETURNS text
  LANGUAGE plpgsql IMMUTABLE SECURITY INVOKER SET search_path = pg_catalog
  AS $$
DECLARE
  v text := p_text;
BEGIN
  IF octet_length(p_text) <= p_max THEN
    RETURN p_text;
  END IF;
  v := left(p_text, p_keep);
  WHILE octet_length(v) > p_keep LOOP
    v := left(v, -1);
  END LOOP;
  RETURN v || '...';
END $$;

-- One node's text: 'SQL: …', 'SLEEP 5s', 'IF', … with ' |=> ''name''' and, in instance mode, its marker.
CREATE FUNCTION df._explain_text(n jsonb) RETURNS text
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
  RETURN v_text || v_mark;
END $$;

-- The leaves of a chain of THEN nodes, in execution order.
CREATE FUNCTION df._explain_chain(n jsonb) RETURNS jsonb[]
  LANGUAGE plpgsql IMMUTABLE SECURITY INVOKER SET search_path = pg_catalog
  AS $$
BEGIN
  IF n ->> 'node_type' <> 'THEN' THEN
    RETURN ARRAY[n];
  END IF;
  RETURN COALESCE(df._explain_chain(n -> 'left_node'), '{}') || COALESCE(df._explain_chain(n -> 'right_node'), '{}');
END $$;

CREATE FUNCTION df._explain_render(n jsonb, p_prefix text, p_last boolean) RETURNS text[]
  LANGUAGE plpgsql IMMUTABLE SECURITY INVOKER SET search_path = pg_catalog
  AS $$
DECLARE
  v_conn text := CASE WHEN p_prefix = '' THEN '' WHEN p_last THEN '└─' ELSE '├─' END;
  v_lines text[] := '{}';
  v_items jsonb[];
  v_item jsonb;
  i int;
BEGIN
  IF n IS NULL OR jsonb_typeof(n) <> 'object' THEN
    RETURN v_lines;
  END IF;
  IF n ->> 'node_type' = 'THEN' THEN
    v_items := df._explain_chain(n);
    FOR i IN 1 .. cardinality(v_items) LOOP
      v_item := v_items[i];
      v_lines := v_lines || (p_prefix || CASE WHEN i = 1 THEN v_conn ELSE '→ ' END || df._explain_text(v_item));
      IF v_item ->> 'node_type' NOT IN ('SQL', 'SLEEP', 'WAIT_SCHEDULE', 'HTTP', 'HTTP_MULTIPART') THEN
        v_lines := v_lines || df._explain_children(v_item, p_prefix || '    ');
      END IF;
    END LOOP;
    RETURN v_lines;
  END IF;
  v_lines := ARRAY[p_prefix || v_conn || df._explain_text(n)];
  RETURN v_lines || df._explain_children(n,
    CASE WHEN p_prefix = '' THEN '    ' WHEN p_last THEN p_prefix || '    ' ELSE p_prefix || '│   ' END);
END $$;

CREATE FUNCTION df._explain_children(n jsonb, p text) RETURNS text[]
  LANGUAGE plpgsql IMMUTABLE SECURITY INVOKER SET search_path = pg_catalog
  AS $$
DECLARE
  v_lines text[] := '{}';
  v_branches jsonb[];
  i int;
BEGIN
  CASE n ->> 'node_type'
    WHEN 'LOOP' THEN
      v_lines := v_lines || (p || '↻ body:') || df._explain_render(n -> 'left_node', p || '  ', true);
      IF n ? 'condition_node' THEN
        v_lines := v_lines || (p || '? while:') || df._explain_render(n -> 'condition_node', p || '  ', true);
      END IF;
    WHEN 'IF' THEN
      IF n ? 'condition_node' THEN
        v_lines := v_lines || (p || '? condition:') || df._explain_render(n -> 'condition_node', p || '  ', true);
      END IF;
      v_lines := v_lines || (p || '✓ then:') || df._explain_render(n -> 'left_node', p || '  ', true);
      v_lines := v_lines || (p || '✗ else:') || df._explain_render(n -> 'right_node', p || '  ', true);
    WHEN 'JOIN', 'RACE' THEN
      v_branches := ARRAY[n -> 'left_node', n -> 'right_node']
        || COALESCE(ARRAY(SELECT jsonb_array_elements(CASE WHEN jsonb_typeof(n -> 'extra_nodes') = 'array' THEN n -> 'extra_nodes' END)), '{}');
      FOR i IN 1 .. cardinality(v_branches) LOOP
        v_lines := v_lines || (p || format('║ branch %s:', i))
                   || df._explain_render(v_branches[i], p || '  ', i = cardinality(v_branches));
      END LOOP;
    ELSE
      NULL;
  END CASE;
  RETURN v_lines;
END $$;

-- The padded tree: trailing whitespace trimmed, every line padded to the longest + 4.
CREATE FUNCTION df._explain_tree(n jsonb) RETURNS text
  LANGUAGE plpgsql IMMUTABLE SECURITY INVOKER SET search_path = pg_catalog
  AS $$
DECLARE
  v_lines text[];
  v_width int;
BEGIN
  v_lines := string_to_array(rtrim(array_to_string(df._explain_render(n, '', true), E'\n'), E' \n\t'), E'\n');
  SELECT max(length(l)) + 4 INTO v_width FROM unnest(v_lines) AS l;
  RETURN (SELECT string_agg(rpad(l, v_width), E'\n' ORDER BY o) FROM unnest(v_lines) WITH ORDINALITY AS u(l, o));
END $$;

-- An instance's nodes as one nested graph value, each node carrying its derived status.
CREATE FUNCTION df._explain_nest(p_instance text, p_id text, p_status jsonb) RETURNS jsonb
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

-- No SET search_path: a DSL expression is evaluated with the caller's own
-- path (where the operators resolve), as the caller typed it.
CREATE FUNCTION df.explain(input text) RETURNS text
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
    SELECT i.id, i.label, i.status, i.root_node INTO v_inst FROM df.instances i WHERE i.id = pg_catalog.lower(v_in);
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

COMMENT ON FUNCTION df.explain(text) IS 'A tree rendering of an instance (with derived statuses), a graph value or a DSL expression (spec §11.6)';
