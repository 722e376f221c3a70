-- dfgate migration 0024: a start writes each row once.
--
-- Until now df._start_graph inserted the instance row and its nodes as the
-- caller and then called df._activate, which read them back and updated the
-- instance row to make it runnable. That update is a second version of the
-- row in every one of df.instances' indexes (runnable is in the partial
-- indexes' predicates, so it can never be a HOT update), and in the peers'
-- W2 workload a start was the largest single cost: one application
-- connection sends them one after another, so their cost is the workload's
-- rate.
--
-- Now the caller inserts only the nodes, as before under row-level security
-- and the submitted_by trigger, which is what proves who is starting. Then
-- df._activate_graph (SECURITY DEFINER) takes the submitter from those rows,
-- applies every check df._activate applied, and inserts the instance row
-- once, runnable, with its options and variables. Its checks:
--   - the nodes of the id were all written by this transaction (one
--     statement: one xmin, as df._start_graph's single INSERT writes them),
--     by one role; any other id gets one answer, P0002, before any lock, so
--     it tells nothing about other roles' instances;
--   - LOGIN and the superuser guard of that role; at most 10,000 nodes; one
--     tree under the given root within depth 256; the HTTP grant;
--   - no instance has the id yet (df._free_instance_id drew it; the primary
--     key settles a race).
-- Nodes a caller inserts by hand in its own name pass only if they form a
-- graph df.start would have accepted the same way, so calling it directly
-- gains nothing. df._activate stays for instance rows inserted by hand.
--
-- The submitted_by trigger now also lets the schema owner (the role the
-- SECURITY DEFINER functions run as) write another role's name: only those
-- functions do, and only after the checks above. Superusers could before.
--
-- Also: a graph of up to 32 nodes draws its random ids one by one.

CREATE OR REPLACE FUNCTION df._force_submitter() RETURNS trigger
  LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  v_me regrole := quote_ident(current_user)::regrole;
BEGIN
  IF TG_OP = 'INSERT' THEN
    IF NEW.submitted_by IS NULL THEN
      NEW.submitted_by := v_me;
    ELSIF NEW.submitted_by <> v_me
          AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
          AND NOT pg_has_role(current_user, (SELECT nspowner FROM pg_namespace WHERE nspname = 'df'), 'MEMBER') THEN
      RAISE EXCEPTION 'new row violates row-level security policy for table "%": submitted_by must be the current role (%), not %',
        TG_TABLE_NAME, v_me, NEW.submitted_by USING ERRCODE = '42501';
    END IF;
  ELSIF NEW.submitted_by IS DISTINCT FROM OLD.submitted_by THEN
    RAISE EXCEPTION 'submitted_by of %.% cannot be changed', TG_TABLE_SCHEMA, TG_TABLE_NAME USING ERRCODE = '42501';
  END IF;
  RETURN NEW;
END $$;

CREATE FUNCTION df._free_instance_id() RETURNS text
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  v_id text;
BEGIN
  FOR v_try IN 1 .. 10 LOOP
    v_id := right(gen_random_uuid()::text, 8);
    IF NOT EXISTS (SELECT 1 FROM df.instances WHERE id = v_id) THEN
      RETURN v_id;
    END IF;
  END LOOP;
  RAISE EXCEPTION 'Failed to create instance: exhausted 10 attempts to generate a collision-free ID' USING ERRCODE = '23505';
END $$;
COMMENT ON FUNCTION df._free_instance_id() IS
  'internal: a random instance id no instance has (df._start_graph draws its id here, as the caller sees only its own rows)';

CREATE FUNCTION df._activate_graph(p_instance text, p_root text, p_label text, p_options jsonb) RETURNS text
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  v_total int;
  v_roles int;
  v_sub regrole;
  v_xmins int;
  v_xmin xid;
  v_role record;
  v_bad int;
  v_reached int;
  v_max_depth int;
  v_id text;
BEGIN
  -- Whose nodes, written when: no lock, and one answer for every id but this transaction's own.
  SELECT count(*), count(DISTINCT submitted_by), min(submitted_by::oid)::regrole,
         count(DISTINCT xmin::text), min(xmin::text)::xid
    INTO v_total, v_roles, v_sub, v_xmins, v_xmin
    FROM df.nodes WHERE instance_id = p_instance;
  IF v_total = 0 OR v_roles <> 1 OR v_xmins <> 1 OR NOT df._inserted_here(v_xmin) THEN
    RAISE EXCEPTION 'Instance not found or access denied: %', p_instance USING ERRCODE = 'P0002',
      HINT = 'df._activate_graph accepts only nodes inserted by the current transaction; only df.start makes an instance runnable.';
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
  -- One tree under p_root: every reference resolves, every node but the root has one
  -- parent, all are reachable within the depth limit, and there are at most 10,000.
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
     WHERE n.instance_id = p_instance AND r.child IS NOT NULL
  )
  SELECT count(*) INTO v_bad FROM (
    SELECT child FROM refs GROUP BY child
    HAVING count(*) > 1 OR child = p_root
        OR NOT EXISTS (SELECT 1 FROM df.nodes m WHERE m.instance_id = p_instance AND m.id = child)
  ) b;
  IF v_bad > 0 THEN
    RAISE EXCEPTION 'Invalid durable function graph: the nodes of instance % do not form a tree', p_instance
      USING ERRCODE = '22023';
  END IF;
  WITH RECURSIVE t(id, depth) AS (
    SELECT n.id::text, 0 FROM df.nodes n WHERE n.instance_id = p_instance AND n.id = p_root
    UNION ALL
    SELECT r.child, t.depth + 1 FROM t
      JOIN df.nodes n ON n.instance_id = p_instance AND n.id = t.id,
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
    RAISE EXCEPTION 'Invalid durable function graph: the nodes of instance % do not form a tree under its root', p_instance
      USING ERRCODE = '22023';
  END IF;
  IF EXISTS (SELECT 1 FROM df.nodes WHERE instance_id = p_instance AND node_type IN ('HTTP', 'HTTP_MULTIPART'))
     AND NOT has_function_privilege(v_sub, 'df.http(text,text,text,jsonb,integer)', 'EXECUTE') THEN
    RAISE EXCEPTION 'permission denied for HTTP steps: role "%" may not run df.http', v_role.rolname
      USING ERRCODE = '42501',
            HINT = format('An administrator runs: SELECT df.grant_usage(%L, include_http => true);', v_role.rolname);
  END IF;
  -- the options as df.start checks them (a direct caller could pass anything)
  IF p_options IS NOT NULL AND jsonb_typeof(p_options) <> 'object' THEN
    RAISE EXCEPTION 'df._start_graph: options must be a JSON object' USING ERRCODE = '22023';
  END IF;
  IF (p_options -> 'max_attempts') IS NOT NULL AND
     (jsonb_typeof(p_options -> 'max_attempts') <> 'number' OR (p_options ->> 'max_attempts')::numeric < 1
      OR (p_options ->> 'max_attempts')::numeric <> trunc((p_options ->> 'max_attempts')::numeric)) THEN
    RAISE EXCEPTION 'df.start(): max_attempts must be a positive integer' USING ERRCODE = '22023';
  END IF;
  IF (p_options -> 'max_backoff_seconds') IS NOT NULL AND
     (jsonb_typeof(p_options -> 'max_backoff_seconds') <> 'number' OR (p_options ->> 'max_backoff_seconds')::numeric <= 0) THEN
    RAISE EXCEPTION 'df.start(): max_backoff must be positive' USING ERRCODE = '22023';
  END IF;
  IF (p_options -> 'on_failure') IS NOT NULL AND jsonb_typeof(p_options -> 'on_failure') <> 'string' THEN
    RAISE EXCEPTION 'df.start(): on_failure must be a workflow' USING ERRCODE = '22023';
  END IF;
  -- An idempotency key is settled by its unique index: a start with the same key that
  -- committed first wins, this one's nodes go, and its id is the answer (no lock a
  -- guessable key would let another role hold).
  INSERT INTO df.instances (id, label, root_node, submitted_by, database, runnable, options, idempotency_key, vars)
  VALUES (p_instance, p_label, p_root, v_sub, NULL, true,
          COALESCE(p_options, '{}') - 'idempotency_key' - 'transaction_mode', p_options ->> 'idempotency_key',
          COALESCE((SELECT jsonb_object_agg(name, value) FROM df.vars
                     WHERE owner = v_sub AND value IS NOT NULL), '{}'))
  ON CONFLICT (submitted_by, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
  RETURNING id INTO v_id;
  IF v_id IS NULL THEN
    DELETE FROM df.nodes WHERE instance_id = p_instance;
    SELECT id INTO v_id FROM df.instances
     WHERE submitted_by = v_sub AND idempotency_key = p_options ->> 'idempotency_key';
    RETURN v_id;
  END IF;
  PERFORM pg_notify('dfgate_wake', 'start:' || p_instance);
  RETURN p_instance;
END $$;
COMMENT ON FUNCTION df._activate_graph(text, text, text, jsonb) IS
  'internal: checks the nodes the current transaction inserted under a new instance id, then inserts that instance, runnable, and returns its id (or that of the instance with the same idempotency key) (the end of df._start_graph)';

CREATE OR REPLACE FUNCTION df._start_graph(graph text, label text DEFAULT NULL, database text DEFAULT NULL,
                                options jsonb DEFAULT '{}') RETURNS text
  LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
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
  v_x text;
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
  IF v_n <= 32 THEN
    -- a few ids: drawn one at a time (the set-based draw below costs more to start than to run)
    v_ids := '{}';
    WHILE cardinality(v_ids) < v_n LOOP
      v_x := right(gen_random_uuid()::text, 8);
      IF v_x <> ALL (v_ids) THEN
        v_ids := v_ids || v_x;
      END IF;
    END LOOP;
  ELSE
    LOOP
      SELECT array_agg(x) INTO v_ids FROM (
        SELECT x FROM (SELECT DISTINCT right(gen_random_uuid()::text, 8) AS x
                         FROM generate_series(1, v_n + 8)) d
         ORDER BY random() LIMIT v_n) s;
      EXIT WHEN cardinality(v_ids) = v_n;
    END LOOP;
  END IF;
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
  -- 6. the nodes, as the caller (row-level security, the submitted_by trigger), under an
  --    instance id no instance has (also none the caller cannot see)
  v_instance := df._free_instance_id();
  INSERT INTO df.nodes (id, instance_id, node_type, query, result_name, left_node, right_node, database)
  SELECT u.id, v_instance, u.t, u.q, u.nm, u.l, u.r, NULL
    FROM unnest(v_row_ids, v_types, v_queries, v_names, v_lefts, v_rights) AS u(id, t, q, nm, l, r);
  -- 7./8./9. re-check the nodes, then the instance row, runnable, with its variables; notify on commit
  RETURN df._activate_graph(v_instance, v_ids[1], label, COALESCE(options, '{}') - 'transaction_mode');
END $$;
