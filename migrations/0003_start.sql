-- dfgate migration 0003: starting and controlling instances, variables, grants.
--
-- df.start → df._start_graph (SECURITY INVOKER; the one insert path, also the
-- target of the proxy's rewrite) → df._activate (SECURITY DEFINER; re-checks
-- the stored rows and marks the instance runnable). df.signal and df.cancel
-- are transactional (DESIGN.md §5 Q3): they take effect when the caller
-- commits, and pg_notify wakes the executors only then.

------------------------------------------------------------------------------
-- Graph validation (spec §2.5)
------------------------------------------------------------------------------

-- 'Invalid durable function graph: <path>: <message>' for the first problem
-- found in pre-order, or NULL when the graph is valid.
CREATE FUNCTION df._validate(p_graph jsonb) RETURNS text
  LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog
  AS $$
DECLARE
  v_nodes jsonb[] := ARRAY[p_graph];
  v_paths text[] := ARRAY['root'];
  v_depths int[] := ARRAY[0];
  v_top int := 1;
  n jsonb;
  v_path text;
  v_depth int;
  v_type text;
  v_count int := 0;
  v_err text;
  v_cfg jsonb;
  v_has_extra boolean;
  v_has_cond boolean;
  i int;
  k text;
  t text;
BEGIN
  WHILE v_top > 0 LOOP
    n := v_nodes[v_top];
    v_path := v_paths[v_top];
    v_depth := v_depths[v_top];
    v_top := v_top - 1;
    v_count := v_count + 1;
    IF v_count > 10000 THEN
      RETURN 'Invalid durable function graph: root: Workflow exceeds maximum node count of 10000. Simplify the workflow or break it into multiple instances.';
    END IF;
    IF v_depth > 256 THEN
      RETURN format('Invalid durable function graph: %s: Graph exceeds maximum nesting depth of 256. Simplify the workflow or break it into multiple instances.', v_path);
    END IF;
    IF jsonb_typeof(n -> 'node_type') IS DISTINCT FROM 'string' THEN
      RETURN format('Invalid durable function graph: %s: missing or non-string field `node_type`', v_path);
    END IF;
    v_type := n ->> 'node_type';
    IF v_type <> ALL (df._valid_types()) THEN
      RETURN format('Invalid durable function graph: %s: Unknown node_type ''%s''. Valid types: %s', v_path, v_type, array_to_string(df._valid_types(), ', '));
    END IF;
    v_err := df._node_shape_error(n::json);
    IF v_err IS NOT NULL THEN
      RETURN format('Invalid durable function graph: %s: %s', v_path, v_err);
    END IF;
    FOREACH k IN ARRAY ARRAY['left_node', 'right_node'] LOOP
      t := jsonb_typeof(n -> k);
      IF t IS NOT NULL AND t NOT IN ('object', 'null') THEN
        RETURN format('Invalid durable function graph: %s: Durofut children must be JSON objects', v_path);
      END IF;
    END LOOP;
    t := jsonb_typeof(n -> 'condition_node');
    v_has_cond := t IS NOT NULL AND t <> 'null';
    IF v_has_cond AND t <> 'object' THEN
      RETURN format('Invalid durable function graph: %s: condition_node must be a Durofut JSON object', v_path);
    END IF;
    v_has_extra := jsonb_typeof(n -> 'extra_nodes') = 'array' AND jsonb_array_length(n -> 'extra_nodes') > 0;
    IF v_has_extra AND EXISTS (SELECT 1 FROM jsonb_array_elements(n -> 'extra_nodes') e WHERE jsonb_typeof(e) <> 'object') THEN
      RETURN format('Invalid durable function graph: %s: extra_nodes entries must be Durofut JSON objects', v_path);
    END IF;
    IF v_has_cond AND v_type NOT IN ('IF', 'LOOP') THEN
      RETURN format('Invalid durable function graph: %s: condition_node is not valid for %s nodes', v_path, v_type);
    END IF;
    IF v_has_extra AND v_type <> 'JOIN' THEN
      RETURN format('Invalid durable function graph: %s: extra_nodes is not valid for %s nodes', v_path, v_type);
    END IF;
    IF v_type IN ('IF', 'LOOP', 'JOIN') AND jsonb_typeof(n -> 'query') = 'string' THEN
      v_cfg := df._try_jsonb(n ->> 'query');
      IF jsonb_typeof(v_cfg) = 'object' THEN
        IF v_type IN ('IF', 'LOOP') AND v_cfg ? 'condition_node' THEN
          RETURN format('Invalid durable function graph: %s: condition_node in %s must be a first-class Durofut field, not embedded in query', v_path, v_type);
        END IF;
        IF v_type = 'JOIN' AND v_cfg ? 'extra_nodes' THEN
          RETURN format('Invalid durable function graph: %s: extra_nodes in JOIN must be a first-class Durofut field, not embedded in query', v_path);
        END IF;
      END IF;
      IF v_has_cond OR v_has_extra THEN
        IF v_cfg IS NULL THEN
          RETURN format('Invalid durable function graph: %s: query in %s must be valid JSON config: %s', v_path, v_type, df._json_error(n ->> 'query'));
        END IF;
        IF jsonb_typeof(v_cfg) <> 'object' THEN
          RETURN format('Invalid durable function graph: %s: query in %s must be a JSON config object', v_path, v_type);
        END IF;
      END IF;
    END IF;
    -- Push children in reverse pre-order: extras (last first), condition, right, left.
    IF v_has_extra THEN
      FOR i IN REVERSE jsonb_array_length(n -> 'extra_nodes') - 1 .. 0 LOOP
        v_top := v_top + 1;
        v_nodes[v_top] := n -> 'extra_nodes' -> i;
        v_paths[v_top] := v_path || '.extra_nodes[' || i || ']';
        v_depths[v_top] := v_depth + 1;
      END LOOP;
    END IF;
    IF v_has_cond THEN
      v_top := v_top + 1;
      v_nodes[v_top] := n -> 'condition_node';
      v_paths[v_top] := v_path || '.condition_node';
      v_depths[v_top] := v_depth + 1;
    END IF;
    IF jsonb_typeof(n -> 'right_node') = 'object' THEN
      v_top := v_top + 1;
      v_nodes[v_top] := n -> 'right_node';
      v_paths[v_top] := v_path || '.right';
      v_depths[v_top] := v_depth + 1;
    END IF;
    IF jsonb_typeof(n -> 'left_node') = 'object' THEN
      v_top := v_top + 1;
      v_nodes[v_top] := n -> 'left_node';
      v_paths[v_top] := v_path || '.left';
      v_depths[v_top] := v_depth + 1;
    END IF;
  END LOOP;
  RETURN NULL;
END $$;

-- The start rule (spec §2.3): fut as a graph value.
CREATE FUNCTION df._start_node(fut text) RETURNS text
  LANGUAGE plpgsql STABLE SET search_path = pg_catalog
  AS $$
BEGIN
  IF fut IS NULL THEN
    RAISE EXCEPTION 'Invalid durable function: fut cannot be NULL' USING ERRCODE = '22004';
  END IF;
  PERFORM df._helper_guard(fut, 'Invalid durable function: ');
  RETURN COALESCE(df._as_node(fut, true), df._node('SQL', p_query => fut));
END $$;

CREATE FUNCTION df._in_workflow() RETURNS boolean
  LANGUAGE sql STABLE SET search_path = pg_catalog
  AS $$ SELECT COALESCE(current_setting('df.in_workflow', true), '') = 'true' $$;

------------------------------------------------------------------------------
-- The insert path
------------------------------------------------------------------------------

-- Marks a freshly inserted instance runnable after re-checking its stored
-- rows. Callable directly, but only for rows this transaction inserted and
-- only if they pass every check df.start applies, so it gains nothing.
CREATE FUNCTION df._activate(p_instance_id text, p_options jsonb DEFAULT '{}') RETURNS void
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog
  AS $$
DECLARE
  v_inst record;
  v_role record;
  v_cur bigint;
  v_full bigint;
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
  -- The row must have been inserted by the current transaction: a visible row
  -- whose inserting transaction is still in progress can only be ours.
  v_cur := pg_current_xact_id()::text::bigint;
  v_full := ((v_cur >> 32) << 32) | v_inst.xmin::text::bigint;
  IF v_full > v_cur THEN
    v_full := v_full - 4294967296;
  END IF;
  IF pg_xact_status(v_full::text::xid8) IS DISTINCT FROM 'in progress' THEN
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

-- The single internal insert function (DESIGN.md §2): df.start and the
-- proxy's rewrite both call it.
CREATE FUNCTION df._start_graph(graph text, label text DEFAULT NULL, database text DEFAULT NULL,
                                options jsonb DEFAULT '{}') RETURNS text
  LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog
  AS $$
DECLARE
  v_root text;
  v_graph jsonb;
  v_err text;
  v_me text := current_user;
  v_role record;
  v_key text := options ->> 'idempotency_key';
  v_existing text;
  v_n int;
  v_ids text[];
  v_types text[] := '{}';
  v_queries text[] := '{}';
  v_names text[] := '{}';
  v_lefts text[] := '{}';
  v_rights text[] := '{}';
  v_stack jsonb[];
  v_stack_ids text[];
  v_row_ids text[] := '{}';
  v_top int;
  v_next int;
  n jsonb;
  v_idx int := 0;
  v_cfg text;
  v_extra_ids text[];
  v_cond_id text;
  v_left_id text;
  v_right_id text;
  i int;
  v_instance text;
  v_try int;
BEGIN
  -- 1. the start rule
  v_root := df._start_node(graph);
  -- 2. the database argument (DESIGN.md §5 Q9)
  IF database IS NOT NULL THEN
    RAISE EXCEPTION 'df.start(): the database argument is not supported by dfgate yet; steps run in the database df.start is called in'
      USING ERRCODE = '0A000',
            HINT = 'Call df.start() without database, connected to the database the steps should run in.';
  END IF;
  -- 3./4. identity: LOGIN and the superuser guard
  SELECT rolcanlogin, rolsuper INTO v_role FROM pg_roles WHERE rolname = v_me;
  IF NOT v_role.rolcanlogin THEN
    RAISE EXCEPTION 'current_user "%" does not have LOGIN privilege. The background worker must connect as this role to execute SQL. Grant LOGIN to this role or call df.start() as a role with LOGIN.', v_me
      USING ERRCODE = '42501';
  END IF;
  IF v_role.rolsuper AND NOT COALESCE(df._setting('enable_superuser_instances')::text::boolean, false) THEN
    RAISE EXCEPTION 'pg_durable: superuser instances are disabled. current_user "%" is a superuser, but pg_durable.enable_superuser_instances is off. Set pg_durable.enable_superuser_instances = on to allow this.', v_me
      USING ERRCODE = '42501',
            HINT = 'In dfgate the switch is df.config key enable_superuser_instances.';
  END IF;
  -- options (dfgate's additions to df.start)
  IF options IS NOT NULL AND jsonb_typeof(options) <> 'object' THEN
    RAISE EXCEPTION 'df._start_graph: options must be a JSON object' USING ERRCODE = '22023';
  END IF;
  IF (options -> 'max_attempts') IS NOT NULL AND
     (jsonb_typeof(options -> 'max_attempts') <> 'number' OR (options ->> 'max_attempts')::numeric < 1
      OR (options ->> 'max_attempts')::numeric <> trunc((options ->> 'max_attempts')::numeric)) THEN
    RAISE EXCEPTION 'df.start(): max_attempts must be a positive integer' USING ERRCODE = '22023';
  END IF;
  IF v_key IS NOT NULL THEN
    PERFORM pg_advisory_xact_lock(hashtext('dfgate-idem:' || v_me), hashtext(v_key));
    SELECT id INTO v_existing FROM df.instances
     WHERE submitted_by = quote_ident(v_me)::regrole AND idempotency_key = v_key;
    IF FOUND THEN
      RETURN v_existing;
    END IF;
  END IF;
  -- 5. validate, then flatten in pre-order
  v_graph := v_root::jsonb;
  v_err := df._validate(v_graph);
  IF v_err IS NOT NULL THEN
    RAISE EXCEPTION 'Invalid durable function: %', v_err USING ERRCODE = '22023';
  END IF;
  IF v_graph::text LIKE '%"node_type": "HTTP%' AND jsonb_path_exists(v_graph, 'strict $.**.node_type ? (@ == "HTTP" || @ == "HTTP_MULTIPART")') THEN
    IF NOT COALESCE(df._setting('http_enabled')::text::boolean, true) THEN
      RAISE EXCEPTION 'HTTP steps are disabled in this database (df.config http_enabled)' USING ERRCODE = '0A000';
    END IF;
    IF NOT has_function_privilege('df.http(text,text,text,jsonb,integer)', 'EXECUTE') THEN
      RAISE EXCEPTION 'permission denied for HTTP steps: role "%" may not run df.http', v_me
        USING ERRCODE = '42501',
              HINT = format('An administrator runs: SELECT df.grant_usage(%L, include_http => true);', v_me);
    END IF;
  END IF;
  -- node count is known to be <= 10000; draw that many distinct random ids
  v_n := (SELECT count(*) FROM jsonb_path_query(v_graph, 'strict $.**.node_type'));
  LOOP
    SELECT array_agg(x) INTO v_ids FROM (
      SELECT x FROM (SELECT DISTINCT right(gen_random_uuid()::text, 8) AS x
                       FROM generate_series(1, v_n + 8)) d
       ORDER BY random() LIMIT v_n) s;
    EXIT WHEN cardinality(v_ids) = v_n;
  END LOOP;
  v_stack := ARRAY[v_graph];
  v_stack_ids := ARRAY[v_ids[1]];
  v_top := 1;
  v_next := 2;
  WHILE v_top > 0 LOOP
    n := v_stack[v_top];
    v_idx := v_idx + 1;
    v_row_ids[v_idx] := v_stack_ids[v_top];
    v_top := v_top - 1;
    v_left_id := NULL;
    v_right_id := NULL;
    v_cond_id := NULL;
    v_extra_ids := '{}';
    IF jsonb_typeof(n -> 'left_node') = 'object' THEN
      v_left_id := v_ids[v_next];
      v_next := v_next + 1;
    END IF;
    IF jsonb_typeof(n -> 'right_node') = 'object' THEN
      v_right_id := v_ids[v_next];
      v_next := v_next + 1;
    END IF;
    IF jsonb_typeof(n -> 'condition_node') = 'object' THEN
      v_cond_id := v_ids[v_next];
      v_next := v_next + 1;
    END IF;
    IF jsonb_typeof(n -> 'extra_nodes') = 'array' THEN
      FOR i IN 0 .. jsonb_array_length(n -> 'extra_nodes') - 1 LOOP
        v_extra_ids := v_extra_ids || v_ids[v_next];
        v_next := v_next + 1;
      END LOOP;
    END IF;
    -- Rows are emitted in pre-order (the stack pops left before right);
    -- each child's random id is fixed when its parent is emitted.
    v_cfg := n ->> 'query';
    IF v_cond_id IS NOT NULL OR cardinality(v_extra_ids) > 0 THEN
      v_cfg := CASE WHEN v_cfg IS NULL OR btrim(v_cfg) = '' THEN '{' ELSE rtrim(df._json_compact(v_cfg::json), '}') END;
      IF v_cfg <> '{' THEN v_cfg := v_cfg || ','; END IF;
      IF v_cond_id IS NOT NULL THEN
        v_cfg := v_cfg || '"condition_node":' || to_json(v_cond_id)::text;
      ELSE
        v_cfg := v_cfg || '"extra_nodes":' || to_json(v_extra_ids)::text;
      END IF;
      v_cfg := v_cfg || '}';
    END IF;
    v_types[v_idx] := n ->> 'node_type';
    v_queries[v_idx] := v_cfg;
    v_names[v_idx] := n ->> 'result_name';
    v_lefts[v_idx] := v_left_id;
    v_rights[v_idx] := v_right_id;
    -- push in reverse pre-order
    IF cardinality(v_extra_ids) > 0 THEN
      FOR i IN REVERSE cardinality(v_extra_ids) .. 1 LOOP
        v_top := v_top + 1;
        v_stack[v_top] := n -> 'extra_nodes' -> (i - 1);
        v_stack_ids[v_top] := v_extra_ids[i];
      END LOOP;
    END IF;
    IF v_cond_id IS NOT NULL THEN
      v_top := v_top + 1;
      v_stack[v_top] := n -> 'condition_node';
      v_stack_ids[v_top] := v_cond_id;
    END IF;
    IF v_right_id IS NOT NULL THEN
      v_top := v_top + 1;
      v_stack[v_top] := n -> 'right_node';
      v_stack_ids[v_top] := v_right_id;
    END IF;
    IF v_left_id IS NOT NULL THEN
      v_top := v_top + 1;
      v_stack[v_top] := n -> 'left_node';
      v_stack_ids[v_top] := v_left_id;
    END IF;
  END LOOP;
  -- the structure rules the table enforces, with the spec's message
  FOR i IN 1 .. v_n LOOP
    IF NOT (CASE v_types[i]
              WHEN 'THEN' THEN v_lefts[i] IS NOT NULL AND v_rights[i] IS NOT NULL AND v_queries[i] IS NULL
              WHEN 'IF'   THEN v_lefts[i] IS NOT NULL AND v_rights[i] IS NOT NULL AND v_queries[i] IS NOT NULL
              WHEN 'LOOP' THEN v_lefts[i] IS NOT NULL AND v_rights[i] IS NULL
              WHEN 'JOIN' THEN v_lefts[i] IS NOT NULL AND v_rights[i] IS NOT NULL
              WHEN 'RACE' THEN v_lefts[i] IS NOT NULL AND v_rights[i] IS NOT NULL AND v_queries[i] IS NULL
              ELSE v_lefts[i] IS NULL AND v_rights[i] IS NULL AND v_queries[i] IS NOT NULL END)
       OR v_names[i] !~ '^[A-Za-z_][A-Za-z0-9_]*$' THEN
      RAISE EXCEPTION 'Failed to insert node batch ''%..%'': new row for relation "nodes" violates check constraint "%"',
        v_row_ids[1], v_row_ids[v_n], CASE WHEN v_names[i] !~ '^[A-Za-z_][A-Za-z0-9_]*$' THEN 'nodes_result_name_check' ELSE 'nodes_structure_check' END
        USING ERRCODE = '23514',
              DETAIL = format('node %s (%s) in pre-order position %s', v_row_ids[i], v_types[i], i);
    END IF;
  END LOOP;
  -- 6. the instance row, re-rolling its id on a collision (also with rows we cannot see)
  FOR v_try IN 1 .. 10 LOOP
    INSERT INTO df.instances (id, label, root_node, database)
    VALUES (right(gen_random_uuid()::text, 8), label, v_ids[1], NULL)
    ON CONFLICT (id) DO NOTHING
    RETURNING id INTO v_instance;
    EXIT WHEN v_instance IS NOT NULL;
  END LOOP;
  IF v_instance IS NULL THEN
    RAISE EXCEPTION 'Failed to create instance: exhausted 10 attempts to generate a collision-free ID' USING ERRCODE = '23505';
  END IF;
  -- 7. the nodes
  INSERT INTO df.nodes (id, instance_id, node_type, query, result_name, left_node, right_node, database)
  SELECT u.id, v_instance, u.t, u.q, u.nm, u.l, u.r, NULL
    FROM unnest(v_row_ids, v_types, v_queries, v_names, v_lefts, v_rights) AS u(id, t, q, nm, l, r);
  -- 8./9. re-check, snapshot the variables, mark runnable, notify on commit
  PERFORM df._activate(v_instance, COALESCE(options, '{}') - 'transaction_mode');
  RETURN v_instance;
END $$;

CREATE FUNCTION df.start(fut text, label text DEFAULT NULL, database text DEFAULT NULL,
                         transaction_mode text DEFAULT 'caller', idempotency_key text DEFAULT NULL,
                         max_attempts integer DEFAULT NULL, max_backoff interval DEFAULT NULL,
                         on_failure text DEFAULT NULL) RETURNS text
  LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog
  AS $$
DECLARE
  v_mode text := lower(COALESCE(transaction_mode, 'caller'));
  v_opts jsonb := '{}';
BEGIN
  IF v_mode NOT IN ('caller', 'new') THEN
    RAISE EXCEPTION 'invalid transaction_mode "%" for df.start(): expected ''caller'' or ''new''', transaction_mode
      USING ERRCODE = '22023';
  END IF;
  IF v_mode = 'new' THEN
    IF df._in_workflow() THEN
      RAISE EXCEPTION 'df.start() with transaction_mode => ''new'' cannot be called inside a workflow - a df.sql() node already runs as a single autocommitted statement, so a plain df.start() there is already independent of any caller transaction'
        USING ERRCODE = '0A000';
    END IF;
    RAISE EXCEPTION 'df.start(..., transaction_mode => ''new'') needs the dfgate proxy: connect through dfgate, which runs the start in its own transaction'
      USING ERRCODE = '0A000',
            HINT = 'On a direct connection, use the default transaction_mode => ''caller'' (the instance then exists only if your transaction commits).';
  END IF;
  IF idempotency_key IS NOT NULL THEN v_opts := v_opts || jsonb_build_object('idempotency_key', idempotency_key); END IF;
  IF max_attempts IS NOT NULL THEN
    IF max_attempts < 1 THEN
      RAISE EXCEPTION 'df.start(): max_attempts must be a positive integer' USING ERRCODE = '22023';
    END IF;
    v_opts := v_opts || jsonb_build_object('max_attempts', max_attempts);
  END IF;
  IF max_backoff IS NOT NULL THEN
    IF max_backoff <= interval '0' THEN
      RAISE EXCEPTION 'df.start(): max_backoff must be positive' USING ERRCODE = '22023';
    END IF;
    v_opts := v_opts || jsonb_build_object('max_backoff_seconds', extract(epoch FROM max_backoff));
  END IF;
  IF on_failure IS NOT NULL THEN
    v_opts := v_opts || jsonb_build_object('on_failure', df._compose(on_failure));
  END IF;
  RETURN df._start_graph(fut, label, database, v_opts);
END $$;

------------------------------------------------------------------------------
-- Signals and cancellation (transactional: DESIGN.md §5 Q3)
------------------------------------------------------------------------------

CREATE FUNCTION df.signal(instance_id text, signal_name text, signal_data text DEFAULT '{}') RETURNS text
  LANGUAGE plpgsql VOLATILE STRICT SECURITY INVOKER SET search_path = pg_catalog
  AS $$
DECLARE
  v_inst record;
BEGIN
  IF instance_id = '' THEN
    RAISE EXCEPTION 'Instance ID cannot be empty' USING ERRCODE = '22023';
  END IF;
  IF signal_name = '' THEN
    RAISE EXCEPTION 'Signal name cannot be empty' USING ERRCODE = '22023';
  END IF;
  SELECT i.id, i.status, i.submitted_by INTO v_inst FROM df.instances i WHERE i.id = instance_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'Instance not found or access denied: %', instance_id USING ERRCODE = 'P0002';
  END IF;
  IF v_inst.status IN ('completed', 'failed', 'cancelled') THEN
    RAISE EXCEPTION 'Failed to send signal: instance % is already %; signals reach only pending or running instances', instance_id, v_inst.status
      USING ERRCODE = '55000';
  END IF;
  INSERT INTO df.signals (instance_id, submitted_by, signal_name, payload)
  VALUES (v_inst.id, v_inst.submitted_by, signal_name, COALESCE(df._try_jsonb(signal_data), to_jsonb(signal_data)));
  PERFORM pg_notify('dfgate_wake', 'signal:' || v_inst.id);
  RETURN 'OK';
END $$;

CREATE FUNCTION df.cancel(instance_id text, reason text DEFAULT 'Cancelled by user') RETURNS text
  LANGUAGE plpgsql VOLATILE STRICT SECURITY INVOKER SET search_path = pg_catalog
  AS $$
BEGIN
  PERFORM 1 FROM df.instances i WHERE i.id = instance_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'Instance not found or access denied: %', instance_id USING ERRCODE = 'P0002';
  END IF;
  UPDATE df.instances i SET status = 'cancelled', updated_at = now()
   WHERE i.id = instance_id AND i.status NOT IN ('completed', 'failed', 'cancelled');
  PERFORM pg_notify('dfgate_wake', 'cancel:' || instance_id);
  RETURN format('Instance %s cancelled: %s', instance_id, reason);
END $$;

CREATE FUNCTION df.status(instance_id text) RETURNS text
  LANGUAGE sql STABLE STRICT SECURITY INVOKER SET search_path = pg_catalog
  AS $$ SELECT i.status FROM df.instances i WHERE i.id = instance_id $$;

CREATE FUNCTION df.result(instance_id text) RETURNS text
  LANGUAGE sql STABLE STRICT SECURITY INVOKER SET search_path = pg_catalog
  AS $$ SELECT n.result::text FROM df.instances i JOIN df.nodes n ON n.instance_id = i.id AND n.id = i.root_node
         WHERE i.id = instance_id AND n.status = 'completed' $$;

CREATE FUNCTION df.await_instance(instance_id text, timeout_seconds integer DEFAULT 30) RETURNS text
  LANGUAGE plpgsql VOLATILE STRICT SECURITY INVOKER SET search_path = pg_catalog
  AS $$
DECLARE
  v_status text;
  v_polls int := 0;
BEGIN
  PERFORM df._mark_helper('df.await_instance()');
  IF df._in_workflow() THEN
    RAISE EXCEPTION 'df.await_instance() cannot be called inside a workflow - it would block a worker thread (and self-deadlock if waiting on the current instance). Use df.signal() and df.wait_for_signal() for cross-workflow coordination.'
      USING ERRCODE = '0A000';
  END IF;
  IF timeout_seconds <= 0 THEN
    RAISE EXCEPTION 'Timeout must be positive' USING ERRCODE = '22023';
  END IF;
  LOOP
    SELECT i.status INTO v_status FROM df.instances i WHERE i.id = instance_id;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'Instance not found: %', instance_id USING ERRCODE = 'P0002';
    END IF;
    IF v_status IN ('completed', 'failed', 'cancelled') THEN
      RETURN v_status;
    END IF;
    IF v_polls >= timeout_seconds * 10 THEN
      RAISE EXCEPTION 'Timeout after %s waiting for instance % (status: %). Check if background worker is running.', timeout_seconds, instance_id, v_status
        USING ERRCODE = '57014';
    END IF;
    v_polls := v_polls + 1;
    PERFORM pg_sleep(0.1);
  END LOOP;
END $$;

CREATE FUNCTION df.wait_for_completion(instance_id text, timeout_seconds integer DEFAULT 30) RETURNS text
  LANGUAGE plpgsql VOLATILE STRICT SECURITY INVOKER SET search_path = pg_catalog
  AS $$
BEGIN
  RAISE WARNING 'df.wait_for_completion() is deprecated; use df.await_instance() instead';
  RETURN df.await_instance(instance_id, timeout_seconds);
END $$;

CREATE FUNCTION df.run(instance_id text DEFAULT NULL) RETURNS text
  LANGUAGE sql IMMUTABLE SET search_path = pg_catalog
  AS $$ SELECT CASE WHEN instance_id IS NULL THEN 'Triggered run for all pending instances'
                    ELSE 'Triggered run for instance: ' || instance_id END $$;

CREATE FUNCTION df.version() RETURNS text
  LANGUAGE sql IMMUTABLE SET search_path = pg_catalog
  AS $$ SELECT '0.2.6 (dfgate schema ' || (SELECT max(version) FROM df.schema_migrations)::text || ')' $$;

CREATE FUNCTION df.target_database() RETURNS text
  LANGUAGE sql STABLE SET search_path = pg_catalog
  AS $$ SELECT current_database()::text $$;

------------------------------------------------------------------------------
-- Variables (spec §4.3)
------------------------------------------------------------------------------

CREATE FUNCTION df.setvar(name text, value text) RETURNS text
  LANGUAGE plpgsql VOLATILE STRICT SECURITY INVOKER SET search_path = pg_catalog
  AS $$
#variable_conflict use_column
BEGIN
  PERFORM df._mark_helper('df.setvar()');
  IF df._in_workflow() THEN
    RAISE EXCEPTION 'df.setvar() cannot be called inside a workflow - set variables before starting the workflow'
      USING ERRCODE = '0A000';
  END IF;
  INSERT INTO df.vars AS v (name, value, owner) VALUES (setvar.name, setvar.value, quote_ident(current_user)::regrole)
  ON CONFLICT (owner, name) DO UPDATE SET value = EXCLUDED.value;
  RETURN 'OK';
END $$;

CREATE FUNCTION df.getvar(name text) RETURNS text
  LANGUAGE sql STABLE STRICT SECURITY INVOKER SET search_path = pg_catalog
  AS $$ SELECT v.value FROM df.vars v WHERE v.owner = quote_ident(current_user)::regrole AND v.name = getvar.name $$;

CREATE FUNCTION df.unsetvar(name text) RETURNS text
  LANGUAGE plpgsql VOLATILE STRICT SECURITY INVOKER SET search_path = pg_catalog
  AS $$
BEGIN
  PERFORM df._mark_helper('df.unsetvar()');
  IF df._in_workflow() THEN
    RAISE EXCEPTION 'df.unsetvar() cannot be called inside a workflow - manage variables before starting the workflow'
      USING ERRCODE = '0A000';
  END IF;
  DELETE FROM df.vars v WHERE v.owner = quote_ident(current_user)::regrole AND v.name = unsetvar.name;
  RETURN 'OK';
END $$;

CREATE FUNCTION df.clearvars() RETURNS text
  LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog
  AS $$
BEGIN
  PERFORM df._mark_helper('df.clearvars()');
  IF df._in_workflow() THEN
    RAISE EXCEPTION 'df.clearvars() cannot be called inside a workflow - manage variables before starting the workflow'
      USING ERRCODE = '0A000';
  END IF;
  DELETE FROM df.vars v WHERE v.owner = quote_ident(current_user)::regrole;
  RETURN 'OK';
END $$;
