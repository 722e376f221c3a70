-- dfgate migration 0043: a start walks its tree by primary key.
--
-- df._activate_graph (the end of every df.start, through dfgate or in the
-- database) and df._activate_rows (df._activate's checks) walk the new
-- instance's tree from its root, one level at a time, to see that every node
-- is reached within the depth limit. Each level joined the nodes it reached
-- to the instance's nodes; with no statistics that say how many nodes one
-- instance has (a new install, or a table that grew fast), PostgreSQL read all
-- of the instance's nodes again at every level and compared each with each
-- node of the level. A legal start of a balanced tree of 7,999 nodes took
-- 8.4 s, nearly all of it in that walk, and one of 3,999 nodes 2.0 s
-- (docs/benchmarks.md, "A start walked its tree once per level").
--
-- Now each node the walk reaches is read by its primary key (a LATERAL
-- subquery PostgreSQL does not flatten into the join, as migration 0038 did
-- for a batch of starts): 7,999 nodes in 0.85 s, 9,999 in 1.2 s, the rest of
-- it the start's validation and inserts. What is checked, in which order, and
-- with which error, is unchanged.

CREATE OR REPLACE FUNCTION df._activate_graph(p_instance text, p_root text, p_label text, p_options jsonb, p_lease_owner text, p_lease_ms integer)
 RETURNS text
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
  v_http boolean;
  v_leaf boolean;
BEGIN
  IF p_lease_owner IS NOT NULL AND (length(p_lease_owner) NOT BETWEEN 1 AND 200
                                    OR p_lease_ms IS NULL OR p_lease_ms NOT BETWEEN 1000 AND 300000) THEN
    RAISE EXCEPTION 'df._activate_graph: a lease needs an owner of 1 to 200 characters and 1,000 to 300,000 ms'
      USING ERRCODE = '22023';
  END IF;
  -- Whose nodes, written when: no lock, and one answer for every id but this transaction's own.
  SELECT count(*), count(DISTINCT submitted_by), min(submitted_by::oid)::regrole,
         count(DISTINCT xmin::text), min(xmin::text)::xid,
         coalesce(bool_or(node_type IN ('HTTP', 'HTTP_MULTIPART')), false),
         -- the one node of a one-node graph is its root and names no other node
         bool_and(id = p_root AND left_node IS NULL AND right_node IS NULL
                  AND node_type NOT IN ('IF', 'LOOP', 'JOIN'))
    INTO v_total, v_roles, v_sub, v_xmins, v_xmin, v_http, v_leaf
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
  -- A one-node graph whose node is the root and names no other node is a tree: the two
  -- statements below would find no reference and reach that one node at depth 0. IS TRUE:
  -- an unknown answer (a NULL root, say) takes the checks.
  IF NOT (v_total = 1 AND v_leaf IS TRUE) THEN
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
        -- each node by primary key (OFFSET 0 keeps the lookup where it is): never all of the
        -- instance's nodes again at every level, whatever the statistics say of df.nodes
        CROSS JOIN LATERAL (SELECT n.left_node, n.right_node, n.node_type, n.query FROM df.nodes n
                             WHERE n.instance_id = p_instance AND n.id = t.id OFFSET 0) n,
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
  END IF;
  IF v_http AND NOT has_function_privilege(v_sub, 'df.http(text,text,text,jsonb,integer)', 'EXECUTE') THEN
    RAISE EXCEPTION 'permission denied for HTTP steps: role "%" may not run df.http', v_role.rolname
      USING ERRCODE = '42501',
            HINT = format('An administrator runs: SELECT df.grant_usage(%L, include_http => true);', v_role.rolname);
  END IF;
  -- the options as df.start checks them (a direct caller could pass anything); none is the usual case
  IF p_options IS NOT NULL AND p_options <> '{}'::jsonb THEN
    IF jsonb_typeof(p_options) <> 'object' THEN
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
  END IF;
  -- An idempotency key is settled by its unique index: a start with the same key that
  -- committed first wins, this one's nodes go, and its id is the answer (no lock a
  -- guessable key would let another role hold).
  -- With a lease, the instance is born claimed by that executor (epoch 1), as the claim
  -- would leave it: the start's own commit makes the lease durable.
  INSERT INTO df.instances (id, label, root_node, submitted_by, database, runnable, options, idempotency_key, vars,
                            status, lease_owner, lease_epoch, lease_expires_at)
  VALUES (p_instance, p_label, p_root, v_sub, NULL, true,
          COALESCE(p_options, '{}') - 'idempotency_key' - 'transaction_mode', p_options ->> 'idempotency_key',
          COALESCE((SELECT jsonb_object_agg(name, value) FROM df.vars
                     WHERE owner = v_sub AND value IS NOT NULL), '{}'),
          CASE WHEN p_lease_owner IS NULL THEN 'pending' ELSE 'running' END,
          p_lease_owner, CASE WHEN p_lease_owner IS NULL THEN 0 ELSE 1 END,
          CASE WHEN p_lease_owner IS NOT NULL
               THEN clock_timestamp() + make_interval(secs => p_lease_ms::float8 / 1000) END)
  ON CONFLICT (submitted_by, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
  RETURNING id INTO v_id;
  IF v_id IS NULL THEN
    DELETE FROM df.nodes WHERE instance_id = p_instance;
    SELECT id INTO v_id FROM df.instances
     WHERE submitted_by = v_sub AND idempotency_key = p_options ->> 'idempotency_key';
    RETURN v_id;
  END IF;
  -- a leased start wakes its executor through dfgate (docs/executor.md, "The wake path")
  IF p_lease_owner IS NULL THEN
    PERFORM pg_notify('dfgate_wake', 'start:' || p_instance);
  END IF;
  RETURN p_instance;
END $function$;


CREATE OR REPLACE FUNCTION df._activate_rows(p_instance_id text, p_options jsonb DEFAULT '{}'::jsonb)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
      -- each node by primary key (OFFSET 0 keeps the lookup where it is): never all of the
      -- instance's nodes again at every level, whatever the statistics say of df.nodes
      CROSS JOIN LATERAL (SELECT n.left_node, n.right_node, n.node_type, n.query FROM df.nodes n
                           WHERE n.instance_id = p_instance_id AND n.id = t.id OFFSET 0) n,
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
END $function$;

