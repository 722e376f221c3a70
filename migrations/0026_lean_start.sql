-- dfgate migration 0026: the checks of a start, with fewer statements.
--
-- A single df.start through the proxy is its own transaction, and PL/pgSQL
-- prepares every expression of a function again in each transaction that
-- calls it, so what a start costs is mostly how many statements and
-- expressions its functions evaluate, not what they write. Results, errors
-- and every check are unchanged:
--   - df._force_submitter (the submitted_by trigger of every df table) no
--     longer reads pg_roles to except superusers: pg_has_role(..., 'MEMBER')
--     is true for a superuser and any role, so the schema owner's test
--     already excepts them. Same for df._is_executor.
--   - df._inserted_here answers a row of the top-level transaction itself
--     without entering an exception block (a subtransaction); rows of
--     subtransactions and frozen rows go the way they went.
--   - df._activate_graph learns whether the nodes hold an HTTP step from the
--     same statement that counts them, and checks options only when there
--     are any.

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
          -- a superuser is a member of every role, so this excepts superusers too
          AND NOT pg_has_role(current_user, (SELECT nspowner FROM pg_namespace WHERE nspname = 'df'), 'MEMBER') THEN
      RAISE EXCEPTION 'new row violates row-level security policy for table "%": submitted_by must be the current role (%), not %',
        TG_TABLE_NAME, v_me, NEW.submitted_by USING ERRCODE = '42501';
    END IF;
  ELSIF NEW.submitted_by IS DISTINCT FROM OLD.submitted_by THEN
    RAISE EXCEPTION 'submitted_by of %.% cannot be changed', TG_TABLE_SCHEMA, TG_TABLE_NAME USING ERRCODE = '42501';
  END IF;
  RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION df._is_executor() RETURNS boolean
  LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
  AS $$
BEGIN
  -- superusers are members of every role
  RETURN pg_has_role(current_user, 'df_executor', 'MEMBER')
      OR pg_has_role(current_user, (SELECT nspowner FROM pg_namespace WHERE nspname = 'df'), 'MEMBER');
END $$;

CREATE OR REPLACE FUNCTION df._inserted_here(p_xmin xid) RETURNS boolean
  LANGUAGE plpgsql VOLATILE STRICT SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  v_top xid8 := pg_current_xact_id_if_assigned();
  v_full xid8;
BEGIN
  IF v_top IS NULL THEN
    RETURN false;  -- this transaction has written nothing
  END IF;
  IF p_xmin = v_top::xid THEN
    RETURN true;   -- the top-level transaction itself (what the path below answers for it too)
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

CREATE OR REPLACE FUNCTION df._activate_graph(p_instance text, p_root text, p_label text, p_options jsonb) RETURNS text
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
  v_http boolean;
BEGIN
  -- Whose nodes, written when: no lock, and one answer for every id but this transaction's own.
  SELECT count(*), count(DISTINCT submitted_by), min(submitted_by::oid)::regrole,
         count(DISTINCT xmin::text), min(xmin::text)::xid,
         coalesce(bool_or(node_type IN ('HTTP', 'HTTP_MULTIPART')), false)
    INTO v_total, v_roles, v_sub, v_xmins, v_xmin, v_http
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


-- The edge's form of a start (docs/proxy.md): the proxy has already applied
-- the start rule and validated the workflow, and sends its nodes as rows in
-- pre-order, the root first, each {"i": id, "t": node_type, "q": query,
-- "n": result_name, "l": left_node, "r": right_node}. They are inserted as
-- the caller, exactly as df._start_graph inserts them, and df._activate_graph
-- checks them and inserts the instance. Nothing is trusted: called directly,
-- it is the same as inserting nodes by hand and calling df._activate_graph
-- (docs/security.md), and it skips only the PL/pgSQL evaluation of the start
-- rule, the validation and the flattening, which a single start paid again
-- in every transaction.
CREATE FUNCTION df._start_rows(p_rows json, p_label text DEFAULT NULL) RETURNS text
  LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  v_instance text := df._free_instance_id();
BEGIN
  INSERT INTO df.nodes (id, instance_id, node_type, query, result_name, left_node, right_node, database)
  SELECT r.i, v_instance, r.t, r.q, r.n, r.l, r.r, NULL
    FROM json_to_recordset(p_rows) AS r(i text, t text, q text, n text, l text, r text);
  RETURN df._activate_graph(v_instance, p_rows -> 0 ->> 'i', p_label, '{}');
END $$;
COMMENT ON FUNCTION df._start_rows(json, text) IS
  'internal: the proxy''s form of df.start for a workflow it compiled: the nodes as rows, inserted as the caller, then df._activate_graph';
