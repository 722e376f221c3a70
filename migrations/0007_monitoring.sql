-- dfgate migration 0007: the monitoring surface (spec §11).
--
-- Every function but df.metrics is SECURITY INVOKER: a role sees its own
-- instances (row-level security), exactly as with df.status. df.metrics counts
-- across all roles and is therefore not executable by PUBLIC.
-- df.instances.output keeps an instance's final result in the in-memory form
-- (spec §6.15: compact JSON, keys in production order), written by the
-- executor when the instance completes; instances finished before this
-- migration fall back to the stored (jsonb) result of their root node.

ALTER TABLE df.instances ADD COLUMN output text;

-- The root scope's generation (spec §5.6): 1, plus one per iteration of a loop
-- at the root of the graph, read from the stamps the executor wrote.
CREATE FUNCTION df._root_generation(p_instance text) RETURNS bigint
  LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog
  AS $$
  SELECT COALESCE(max(substr(s, length(p_instance) + 3)::bigint), 1)
    FROM (SELECT n.status_details ->> 'execution_id' AS s FROM df.nodes n WHERE n.instance_id = p_instance) x
   WHERE s LIKE p_instance || '::%' AND substr(s, length(p_instance) + 3) ~ '^[0-9]{1,18}$' $$;

-- The output column of the monitoring functions: the in-memory result once completed.
CREATE FUNCTION df._output(p_instance text) RETURNS text
  LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog
  AS $$
  SELECT CASE WHEN i.status = 'completed' THEN COALESCE(i.output, n.result::text) END
    FROM df.instances i LEFT JOIN df.nodes n ON n.instance_id = i.id AND n.id = i.root_node
   WHERE i.id = p_instance $$;

CREATE FUNCTION df._list_limit(p_limit integer) RETURNS integer
  LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog
  AS $$
DECLARE
  v_max integer := COALESCE((df._setting('list_instances_max_limit') #>> '{}')::integer, 1000);
BEGIN
  IF p_limit IS NULL OR p_limit < 1 THEN
    RAISE EXCEPTION 'limit_count must be at least 1' USING ERRCODE = '22023';
  END IF;
  IF p_limit > v_max THEN
    RAISE EXCEPTION 'df.list_instances: limit_count (%) exceeds pg_durable.list_instances_max_limit (%); request fewer rows, or use the paginated df.list_instances overload (after_cursor/next_cursor) for large result sets', p_limit, v_max
      USING ERRCODE = '22023',
            HINT = 'In dfgate the cap is df.config key list_instances_max_limit.';
  END IF;
  RETURN p_limit;
END $$;

CREATE FUNCTION df.list_instances(status_filter text DEFAULT NULL, limit_count integer DEFAULT 100)
  RETURNS TABLE (instance_id text, label text, function_name text, status text,
                 execution_count bigint, output text)
  LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog
  AS $$
DECLARE
  v_limit integer := df._list_limit(limit_count);
BEGIN
  RETURN QUERY
    SELECT i.id::text, i.label, 'pg_durable::orchestration::execute-function-graph'::text, i.status,
           df._root_generation(i.id), df._output(i.id)
      FROM df.instances i
     WHERE status_filter IS NULL OR i.status = status_filter
     ORDER BY i.created_at DESC
     LIMIT v_limit;
END $$;

-- Keyset cursors (spec §11.1): lowercase hex of 'v1|<created_at>|<id>'.
CREATE FUNCTION df._list_cursor(p_at timestamptz, p_id text) RETURNS text
  LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog
  AS $$ SELECT encode(convert_to('v1|' || to_char(p_at, 'YYYY-MM-DD"T"HH24:MI:SS.USOF') || '|' || p_id, 'UTF8'), 'hex') $$;

CREATE FUNCTION df.list_instances(status_filter text, limit_count integer, label_filter text,
                                  after_cursor text DEFAULT NULL)
  RETURNS TABLE (instance_id text, label text, function_name text, status text,
                 execution_count bigint, output text, created_at timestamptz,
                 completed_at timestamptz, next_cursor text)
  LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog
  AS $$
#variable_conflict use_column
DECLARE
  v_limit integer := df._list_limit(limit_count);
  v_text text;
  v_parts text[];
  v_ts timestamptz;
  v_id text;
  v_next text;
  v_n integer;
BEGIN
  IF after_cursor IS NOT NULL THEN
    BEGIN
      IF after_cursor = '' OR length(after_cursor) > 512 OR length(after_cursor) % 2 = 1
         OR after_cursor !~ '^[0-9a-fA-F]+$' THEN
        RAISE EXCEPTION 'bad cursor';
      END IF;
      v_text := convert_from(decode(after_cursor, 'hex'), 'UTF8');
      v_parts := string_to_array(v_text, '|');
      IF cardinality(v_parts) <> 3 OR v_parts[1] <> 'v1' OR v_parts[2] = '' OR v_parts[3] = ''
         OR v_parts[2] !~ '^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}[+-]\d{2}(:\d{2})?$' THEN
        RAISE EXCEPTION 'bad cursor';
      END IF;
      v_ts := v_parts[2]::timestamptz;
      v_id := v_parts[3];
    EXCEPTION WHEN OTHERS THEN
      RAISE EXCEPTION 'df.list_instances: invalid after_cursor' USING ERRCODE = '22023';
    END;
  END IF;
  SELECT count(*) INTO v_n FROM (
    SELECT 1 FROM df.instances i
     WHERE (status_filter IS NULL OR i.status = status_filter)
       AND (label_filter IS NULL OR i.label = label_filter)
       AND i.created_at IS NOT NULL
       AND (v_ts IS NULL OR i.created_at < v_ts OR (i.created_at = v_ts AND i.id > v_id))
     LIMIT v_limit + 1) x;
  IF v_n > v_limit THEN
    SELECT df._list_cursor(i.created_at, i.id) INTO v_next FROM df.instances i
     WHERE (status_filter IS NULL OR i.status = status_filter)
       AND (label_filter IS NULL OR i.label = label_filter)
       AND i.created_at IS NOT NULL
       AND (v_ts IS NULL OR i.created_at < v_ts OR (i.created_at = v_ts AND i.id > v_id))
     ORDER BY i.created_at DESC, i.id ASC
     OFFSET v_limit - 1 LIMIT 1;
  END IF;
  RETURN QUERY
    SELECT i.id::text, i.label, 'pg_durable::orchestration::execute-function-graph'::text, i.status,
           df._root_generation(i.id), df._output(i.id), i.created_at,
           CASE WHEN i.status = 'completed' THEN i.completed_at END, v_next
      FROM df.instances i
     WHERE (status_filter IS NULL OR i.status = status_filter)
       AND (label_filter IS NULL OR i.label = label_filter)
       AND i.created_at IS NOT NULL
       AND (v_ts IS NULL OR i.created_at < v_ts OR (i.created_at = v_ts AND i.id > v_id))
     ORDER BY i.created_at DESC, i.id ASC
     LIMIT v_limit;
END $$;

CREATE FUNCTION df.instance_info(instance_id text)
  RETURNS TABLE (instance_id text, label text, function_name text, function_version text,
                 current_execution_id bigint, status text, output text)
  LANGUAGE sql STABLE STRICT SECURITY INVOKER SET search_path = pg_catalog
  AS $$
  SELECT i.id, i.label, 'pg_durable::orchestration::execute-function-graph'::text, '1.0.0'::text,
         df._root_generation(i.id), i.status, df._output(i.id)
    FROM df.instances i WHERE i.id = $1 $$;

-- One row per root-scope generation, newest first. dfgate keeps no per-
-- generation history beyond the stamps (loop iterations are compacted), so
-- earlier generations report ContinuedAsNew with 0 events and 0 ms.
CREATE FUNCTION df.instance_executions(instance_id text, limit_count integer DEFAULT 5)
  RETURNS TABLE (execution_id bigint, status text, event_count bigint, duration_ms bigint, output text)
  LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog
  AS $$
DECLARE
  v_inst record;
  v_gen bigint;
  v_limit integer;
BEGIN
  IF limit_count IS NULL OR limit_count < 1 THEN
    RAISE EXCEPTION 'limit_count must be at least 1' USING ERRCODE = '22023';
  END IF;
  v_limit := least(limit_count, 10000);
  SELECT i.id, i.status, i.created_at, i.completed_at, i.updated_at INTO v_inst
    FROM df.instances i WHERE i.id = $1;
  IF NOT FOUND THEN
    RETURN;
  END IF;
  v_gen := df._root_generation(v_inst.id);
  RETURN QUERY
    SELECT g,
           CASE WHEN g < v_gen THEN 'ContinuedAsNew'
                ELSE CASE v_inst.status WHEN 'completed' THEN 'Completed' WHEN 'failed' THEN 'Failed'
                                        WHEN 'cancelled' THEN 'Cancelled' ELSE 'Running' END END,
           CASE WHEN g = v_gen THEN (SELECT count(*) FROM df.events e WHERE e.instance_id = v_inst.id) ELSE 0 END,
           CASE WHEN g = v_gen AND v_inst.status IN ('completed', 'failed', 'cancelled')
                THEN (extract(epoch FROM COALESCE(v_inst.completed_at, v_inst.updated_at) - v_inst.created_at) * 1000)::bigint
                ELSE 0 END,
           CASE WHEN g = v_gen THEN df._output(v_inst.id) END
      FROM generate_series(v_gen, greatest(1, v_gen - v_limit + 1), -1) AS g;
END $$;

CREATE FUNCTION df.metrics()
  RETURNS TABLE (total_instances bigint, running_instances bigint, completed_instances bigint,
                 failed_instances bigint, total_executions bigint, total_events bigint)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog
  AS $$
  SELECT count(*), count(*) FILTER (WHERE i.status IN ('pending', 'running')),
         count(*) FILTER (WHERE i.status = 'completed'), count(*) FILTER (WHERE i.status = 'failed'),
         count(*) + COALESCE((SELECT sum(g - 1) FROM (
             SELECT max(substr(n.status_details ->> 'execution_id', length(n.instance_id) + 3)::bigint) AS g
               FROM df.nodes n
              WHERE n.status_details ->> 'execution_id' LIKE n.instance_id || '::%'
                AND substr(n.status_details ->> 'execution_id', length(n.instance_id) + 3) ~ '^[0-9]{1,18}$'
              GROUP BY n.instance_id) x), 0)::bigint,
         (SELECT count(*) FROM df.events)
    FROM df.instances i $$;
REVOKE EXECUTE ON FUNCTION df.metrics() FROM PUBLIC;

-- The derived status of spec §11.5, shared with df.explain: one row per node.
CREATE FUNCTION df._derived_status(p_instance text)
  RETURNS TABLE (node_id text, inferred_status text, inferred_from text)
  LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog
  AS $$
DECLARE
  v_root text;
  v_nodes jsonb := '{}';
  v_scope_max jsonb := '{}';
  v_out jsonb := '{}';
  r record;
  n jsonb;
  v_stamp text;
  v_scope text;
  v_gen bigint;
  -- the walk: parallel stacks of node id, nearest terminal ancestor, highest-generation ancestor
  s_id text[];
  s_nta text[];
  s_hi text[];
  s_hig bigint[];
  v_top int;
  v_id text;
  v_nta text;
  v_hi text;
  v_hig bigint;
  v_phys text;
  v_sup boolean;
  v_status text;
  v_from text;
  v_cfg jsonb;
  v_kids text[];
  v_child_nta text;
  i int;
BEGIN
  SELECT root_node INTO v_root FROM df.instances WHERE id = p_instance;
  IF NOT FOUND THEN
    RETURN;
  END IF;
  FOR r IN SELECT * FROM df.nodes WHERE instance_id = p_instance LOOP
    v_stamp := r.status_details ->> 'execution_id';
    v_scope := NULL;
    v_gen := NULL;
    IF v_stamp ~ '::[0-9]{1,18}$' THEN
      v_scope := regexp_replace(v_stamp, '::[0-9]+$', '');
      v_gen := substring(v_stamp FROM '::([0-9]+)$')::bigint;
      IF v_gen > COALESCE((v_scope_max ->> v_scope)::bigint, 0) THEN
        v_scope_max := v_scope_max || jsonb_build_object(v_scope, v_gen);
      END IF;
    END IF;
    v_nodes := v_nodes || jsonb_build_object(r.id, jsonb_build_object(
      't', r.node_type, 'q', r.query, 'l', r.left_node, 'r', r.right_node,
      'st', r.status, 'sc', v_scope, 'g', v_gen));
  END LOOP;
  s_id := ARRAY[v_root]; s_nta := ARRAY[NULL::text]; s_hi := ARRAY[NULL::text]; s_hig := ARRAY[NULL::bigint];
  v_top := 1;
  WHILE v_top > 0 LOOP
    v_id := s_id[v_top]; v_nta := s_nta[v_top]; v_hi := s_hi[v_top]; v_hig := s_hig[v_top];
    v_top := v_top - 1;
    n := v_nodes -> v_id;
    CONTINUE WHEN n IS NULL OR v_out ? v_id;
    v_phys := COALESCE(n ->> 'st', 'pending');
    v_sup := df._stamp_superseded(n ->> 'sc', (n ->> 'g')::bigint, v_scope_max);
    IF v_phys IN ('completed', 'failed') THEN
      IF NOT v_sup THEN v_status := v_phys; v_from := NULL;
      ELSIF v_nta IS NOT NULL THEN v_status := 'skipped'; v_from := v_nta;
      ELSE v_status := 'pending'; v_from := v_hi;
      END IF;
    ELSIF v_nta IS NOT NULL THEN v_status := 'skipped'; v_from := v_nta;
    ELSE v_status := CASE WHEN v_phys = 'running' THEN 'running' ELSE 'pending' END; v_from := NULL;
    END IF;
    v_out := v_out || jsonb_build_object(v_id, jsonb_build_array(v_status, v_from));
    v_child_nta := CASE WHEN v_phys IN ('completed', 'failed') AND NOT v_sup THEN v_id ELSE v_nta END;
    IF (n ->> 'g') IS NOT NULL AND (v_hig IS NULL OR (n ->> 'g')::bigint >= v_hig) THEN
      v_hi := v_id; v_hig := (n ->> 'g')::bigint;
    END IF;
    v_cfg := CASE WHEN n ->> 't' IN ('IF', 'LOOP', 'JOIN') THEN df._try_jsonb(n ->> 'q') END;
    v_kids := CASE n ->> 't'
      WHEN 'IF' THEN ARRAY[v_cfg ->> 'condition_node', n ->> 'l', n ->> 'r']
      WHEN 'LOOP' THEN ARRAY[n ->> 'l', v_cfg ->> 'condition_node']
      WHEN 'JOIN' THEN ARRAY[n ->> 'l', n ->> 'r']
                       || COALESCE(ARRAY(SELECT jsonb_array_elements_text(CASE WHEN jsonb_typeof(v_cfg -> 'extra_nodes') = 'array' THEN v_cfg -> 'extra_nodes' END)), '{}')
      ELSE ARRAY[n ->> 'l', n ->> 'r'] END;
    -- pushed in reverse so that they are visited in order
    FOR i IN REVERSE cardinality(v_kids) .. 1 LOOP
      CONTINUE WHEN v_kids[i] IS NULL;
      v_top := v_top + 1;
      s_id[v_top] := v_kids[i]; s_nta[v_top] := v_child_nta; s_hi[v_top] := v_hi; s_hig[v_top] := v_hig;
    END LOOP;
  END LOOP;
  RETURN QUERY
    SELECT k, COALESCE(v_out -> k ->> 0, COALESCE(v_nodes -> k ->> 'st', 'pending')), v_out -> k ->> 1
      FROM jsonb_object_keys(v_nodes) AS k;
END $$;

-- Is a stamp (scope, generation) superseded (spec §11.5 step 2)?
CREATE FUNCTION df._stamp_superseded(p_scope text, p_gen bigint, p_max jsonb) RETURNS boolean
  LANGUAGE plpgsql IMMUTABLE SECURITY INVOKER SET search_path = pg_catalog
  AS $$
DECLARE
  v_scope text := p_scope;
  v_gen bigint := p_gen;
  v_parent text;
BEGIN
  WHILE v_scope IS NOT NULL AND v_gen IS NOT NULL LOOP
    IF v_gen < COALESCE((p_max ->> v_scope)::bigint, 0) THEN
      RETURN true;
    END IF;
    -- a composed scope P::pg::node: is (P, pg) superseded?
    v_parent := substring(v_scope FROM '^(.*)::[0-9]+::[^:]+$');
    EXIT WHEN v_parent IS NULL;
    v_gen := substring(v_scope FROM '::([0-9]+)::[^:]+$')::bigint;
    v_scope := v_parent;
  END LOOP;
  RETURN false;
END $$;

CREATE FUNCTION df.instance_nodes(instance_id_param text)
  RETURNS TABLE (node_id text, node_type text, query text, result_name text, left_node text,
                 right_node text, status text, result text, status_details text,
                 inferred_status text, inferred_status_from_ancestor_id text, updated_at timestamptz)
  LANGUAGE sql STABLE STRICT SECURITY INVOKER SET search_path = pg_catalog
  AS $$
  SELECT n.id, n.node_type, n.query, n.result_name, n.left_node, n.right_node, n.status,
         n.result::text, n.status_details::text, d.inferred_status, d.inferred_from, n.updated_at
    FROM df.nodes n JOIN df._derived_status($1) d ON d.node_id = n.id
   WHERE n.instance_id = $1 $$;

CREATE FUNCTION df.instance_nodes(instance_id_param text, _last_n_executions integer)
  RETURNS TABLE (execution_id bigint, node_id text, node_type text, query text, result_name text,
                 left_node text, right_node text, status text, result text, updated_at timestamptz)
  LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog
  AS $$
  SELECT 1::bigint, n.id, n.node_type, n.query, n.result_name, n.left_node, n.right_node, n.status,
         n.result::text, n.updated_at
    FROM df.nodes n WHERE n.instance_id = $1 $$;

COMMENT ON COLUMN df.instances.output IS 'the final result in the in-memory form (spec §6.15), once completed';
COMMENT ON FUNCTION df.list_instances(text, integer) IS 'The caller''s instances, newest first (spec §11.1)';
COMMENT ON FUNCTION df.list_instances(text, integer, text, text) IS 'The caller''s instances with keyset pagination (spec §11.1)';
COMMENT ON FUNCTION df.instance_info(text) IS 'One instance: label, status, execution id, output (spec §11.2)';
COMMENT ON FUNCTION df.instance_executions(text, integer) IS 'An instance''s root-scope generations, newest first (spec §11.3)';
COMMENT ON FUNCTION df.metrics() IS 'System-wide counters across all roles (spec §11.4); not executable by PUBLIC';
COMMENT ON FUNCTION df.instance_nodes(text) IS 'One row per node with its derived status (spec §11.5)';
COMMENT ON FUNCTION df.instance_nodes(text, integer) IS 'Legacy 10-column shape of df.instance_nodes (spec §11.5)';
