-- dfgate migration 0004: grants (spec §9.1) and function documentation.
--
-- Nothing is granted to PUBLIC: USAGE on schema df is the gate for ordinary
-- df.* functions (which keep PostgreSQL's default PUBLIC EXECUTE); the
-- sensitive ones (df.http, df.http_multipart, df.grant_usage,
-- df.revoke_usage) have EXECUTE revoked from PUBLIC. df.grant_usage issues a
-- role's grants, records it in df.role_grants (so the executor can provision
-- that role's step login) and appends df to the role's search_path in this
-- database so the DSL operators resolve unqualified.

REVOKE EXECUTE ON FUNCTION df.http(text, text, text, jsonb, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION df.http_multipart(text, text, jsonb, jsonb, integer) FROM PUBLIC;

-- Records a grant as a fact the catalog confirms (so calling it directly can
-- only record the truth).
CREATE FUNCTION df._record_grant(p_role text) RETURNS void
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog
  AS $$
DECLARE
  v_usage boolean;
  v_http boolean;
BEGIN
  IF p_role = 'public' THEN
    v_usage := EXISTS (SELECT 1 FROM pg_namespace n, aclexplode(n.nspacl) a
                        WHERE n.nspname = 'df' AND a.grantee = 0 AND a.privilege_type = 'USAGE');
    v_http := EXISTS (SELECT 1 FROM pg_proc p, aclexplode(p.proacl) a
                       WHERE p.oid = 'df.http(text,text,text,jsonb,integer)'::regprocedure AND a.grantee = 0);
  ELSE
    v_usage := has_schema_privilege(p_role, 'df', 'USAGE');
    v_http := has_function_privilege(p_role, 'df.http(text,text,text,jsonb,integer)', 'EXECUTE');
  END IF;
  IF v_usage THEN
    INSERT INTO df.role_grants AS g (role_name, include_http, granted_by)
    VALUES (p_role, v_http, session_user)
    ON CONFLICT (role_name) DO UPDATE SET include_http = EXCLUDED.include_http, granted_by = EXCLUDED.granted_by, granted_at = now();
  ELSE
    DELETE FROM df.role_grants WHERE role_name = p_role;
  END IF;
END $$;

CREATE FUNCTION df.grant_usage(p_role text, include_http boolean DEFAULT false, with_grant boolean DEFAULT false) RETURNS void
  LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog
  AS $$
DECLARE
  v_grantee text;
  v_opt text := CASE WHEN with_grant THEN ' WITH GRANT OPTION' ELSE '' END;
  v_stmts text[] := ARRAY[]::text[];
  v_checks text[][];
  v_stmt text;
  v_missing text[] := ARRAY[]::text[];
  v_super boolean := (SELECT rolsuper FROM pg_roles WHERE rolname = current_user);
  v_path text;
  i int;
BEGIN
  IF p_role IS NULL OR p_role = '' THEN
    RAISE EXCEPTION 'df.grant_usage: role name cannot be empty' USING ERRCODE = '22023';
  END IF;
  IF p_role <> 'public' AND NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = p_role) THEN
    RAISE EXCEPTION 'role "%" does not exist', p_role USING ERRCODE = '42704';
  END IF;
  v_grantee := CASE WHEN p_role = 'public' THEN 'PUBLIC' ELSE quote_ident(p_role) END;
  -- each statement, with the privilege the caller needs (WITH GRANT OPTION) to issue it
  v_checks := ARRAY[
    ['GRANT USAGE ON SCHEMA df TO %s', 'schema', 'df', 'USAGE'],
    ['GRANT SELECT ON df.instances TO %s', 'table', 'df.instances', 'SELECT'],
    ['GRANT UPDATE (status, updated_at) ON df.instances TO %s', 'column', 'df.instances', 'UPDATE'],
    ['GRANT INSERT (id, label, root_node, submitted_by, database) ON df.instances TO %s', 'column', 'df.instances', 'INSERT'],
    ['GRANT SELECT ON df.nodes TO %s', 'table', 'df.nodes', 'SELECT'],
    ['GRANT INSERT (id, instance_id, node_type, query, result_name, left_node, right_node, submitted_by, database) ON df.nodes TO %s', 'column', 'df.nodes', 'INSERT'],
    ['GRANT SELECT, INSERT, UPDATE, DELETE ON df.vars TO %s', 'table', 'df.vars', 'SELECT,INSERT,UPDATE,DELETE'],
    ['GRANT SELECT, INSERT (instance_id, submitted_by, signal_name, payload) ON df.signals TO %s', 'column', 'df.signals', 'SELECT,INSERT'],
    ['GRANT SELECT ON df.events TO %s', 'table', 'df.events', 'SELECT']];
  IF include_http THEN
    v_checks := v_checks || ARRAY[
      ['GRANT EXECUTE ON FUNCTION df.http(text, text, text, jsonb, integer) TO %s', 'function', 'df.http(text,text,text,jsonb,integer)', 'EXECUTE'],
      ['GRANT EXECUTE ON FUNCTION df.http_multipart(text, text, jsonb, jsonb, integer) TO %s', 'function', 'df.http_multipart(text,text,jsonb,jsonb,integer)', 'EXECUTE']];
  END IF;
  IF with_grant THEN
    v_checks := v_checks || ARRAY[
      ['GRANT EXECUTE ON FUNCTION df.grant_usage(text, boolean, boolean) TO %s', 'function', 'df.grant_usage(text,boolean,boolean)', 'EXECUTE'],
      ['GRANT EXECUTE ON FUNCTION df.revoke_usage(text) TO %s', 'function', 'df.revoke_usage(text)', 'EXECUTE']];
    IF to_regprocedure('df.metrics()') IS NOT NULL THEN
      v_checks := v_checks || ARRAY[['GRANT EXECUTE ON FUNCTION df.metrics() TO %s', 'function', 'df.metrics()', 'EXECUTE']];
    END IF;
  END IF;
  FOR i IN 1 .. array_length(v_checks, 1) LOOP
    v_stmt := format(v_checks[i][1], v_grantee) || v_opt;
    v_stmts := v_stmts || v_stmt;
    IF NOT v_super AND NOT (
      SELECT bool_and(CASE v_checks[i][2]
        WHEN 'schema' THEN has_schema_privilege(v_checks[i][3], p || ' WITH GRANT OPTION')
        WHEN 'function' THEN has_function_privilege(v_checks[i][3], p || ' WITH GRANT OPTION')
        ELSE has_table_privilege(v_checks[i][3], p || ' WITH GRANT OPTION')
          OR (v_checks[i][2] = 'column' AND has_any_column_privilege(v_checks[i][3], p || ' WITH GRANT OPTION')) END)
      FROM unnest(string_to_array(v_checks[i][4], ',')) AS p) THEN
      v_missing := v_missing || (format(v_checks[i][1], quote_ident(current_user)) || ' WITH GRANT OPTION;');
    END IF;
  END LOOP;
  IF cardinality(v_missing) > 0 THEN
    RAISE EXCEPTION 'permission denied: role "%" cannot grant df usage to "%" (it lacks % grant option(s))', current_user, p_role, cardinality(v_missing)
      USING ERRCODE = '42501',
            HINT = 'An administrator runs: ' || array_to_string(v_missing, ' ')
                   || format(' (or: SELECT df.grant_usage(%L, include_http => %s, with_grant => true);)', current_user, CASE WHEN include_http THEN 'true' ELSE 'false' END);
  END IF;
  FOREACH v_stmt IN ARRAY v_stmts LOOP
    EXECUTE v_stmt;
  END LOOP;
  PERFORM df._record_grant(p_role);
  -- Make the operators resolve unqualified: append df to the search_path the
  -- role already gets in this database (role-in-database, role, database, default).
  IF p_role <> 'public' THEN
    SELECT substr(cfg, length('search_path=') + 1) INTO v_path
      FROM (SELECT s.setdatabase, s.setrole, unnest(s.setconfig) AS cfg FROM pg_db_role_setting s
             WHERE (s.setrole = (SELECT oid FROM pg_roles WHERE rolname = p_role) AND s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database())))
                OR (s.setrole = 0 AND s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database()))) x
     WHERE cfg LIKE 'search_path=%'
     ORDER BY (setrole <> 0) DESC, (setdatabase <> 0) DESC
     LIMIT 1;
    v_path := COALESCE(v_path, '"$user", public');
    IF NOT ('df' = ANY (SELECT btrim(e) FROM unnest(string_to_array(v_path, ',')) AS e)) THEN
      v_stmt := format('ALTER ROLE %s IN DATABASE %s SET search_path = %s, df', quote_ident(p_role), quote_ident(current_database()), v_path);
      BEGIN
        EXECUTE v_stmt;
      EXCEPTION WHEN insufficient_privilege THEN
        RAISE NOTICE 'dfgate: could not add df to the search_path of "%"; the DSL operators need OPERATOR(df.~>) until an administrator runs: %;', p_role, v_stmt;
      END;
    END IF;
  END IF;
  RAISE NOTICE 'pg_durable: granted df usage privileges to "%"', p_role;
END $$;

CREATE FUNCTION df.revoke_usage(p_role text) RETURNS void
  LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog
  AS $$
DECLARE
  v_grantee text;
  v_stmt text;
BEGIN
  IF p_role <> 'public' AND NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = p_role) THEN
    RAISE EXCEPTION 'role "%" does not exist', p_role USING ERRCODE = '42704';
  END IF;
  v_grantee := CASE WHEN p_role = 'public' THEN 'PUBLIC' ELSE quote_ident(p_role) END;
  FOREACH v_stmt IN ARRAY ARRAY[
    'REVOKE ALL ON df.instances, df.nodes, df.vars, df.signals, df.events FROM %s CASCADE',
    'REVOKE ALL (id, label, root_node, submitted_by, database, status, updated_at) ON df.instances FROM %s CASCADE',
    'REVOKE ALL (id, instance_id, node_type, query, result_name, left_node, right_node, submitted_by, database) ON df.nodes FROM %s CASCADE',
    'REVOKE ALL (instance_id, submitted_by, signal_name, payload) ON df.signals FROM %s CASCADE',
    'REVOKE USAGE ON SCHEMA df FROM %s CASCADE'] LOOP
    EXECUTE format(v_stmt, v_grantee);
  END LOOP;
  FOREACH v_stmt IN ARRAY ARRAY[
    'REVOKE EXECUTE ON FUNCTION df.http(text, text, text, jsonb, integer) FROM %s CASCADE',
    'REVOKE EXECUTE ON FUNCTION df.http_multipart(text, text, jsonb, jsonb, integer) FROM %s CASCADE',
    'REVOKE EXECUTE ON FUNCTION df.grant_usage(text, boolean, boolean) FROM %s CASCADE',
    'REVOKE EXECUTE ON FUNCTION df.revoke_usage(text) FROM %s CASCADE'] LOOP
    BEGIN
      EXECUTE format(v_stmt, v_grantee);
    EXCEPTION WHEN insufficient_privilege THEN
      NULL;
    END;
  END LOOP;
  IF to_regprocedure('df.metrics()') IS NOT NULL THEN
    BEGIN
      EXECUTE format('REVOKE EXECUTE ON FUNCTION df.metrics() FROM %s CASCADE', v_grantee);
    EXCEPTION WHEN insufficient_privilege THEN
      NULL;
    END;
  END IF;
  PERFORM df._record_grant(p_role);
  RAISE NOTICE 'pg_durable: revoked df usage privileges granted by "%" from "%"', current_user, p_role;
END $$;

REVOKE EXECUTE ON FUNCTION df.grant_usage(text, boolean, boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION df.revoke_usage(text) FROM PUBLIC;

-- \df+ df.* documents every user-facing function.
COMMENT ON FUNCTION df.sql(text) IS 'A SQL step: the statement runs as the submitting role, in its own transaction';
COMMENT ON FUNCTION df.seq(text, text) IS 'Run a, then b (operator ~>); the result is b''s';
COMMENT ON FUNCTION df.as(text, text) IS 'Name a node''s result for $name substitution (operator |=>)';
COMMENT ON FUNCTION df.join(text, text) IS 'Run a and b in parallel and wait for both (operator &); the result is [ra, rb]';
COMMENT ON FUNCTION df.join3(text, text, text) IS 'Run three branches in parallel and wait for all; the result is [ra, rb, rc]';
COMMENT ON FUNCTION df.race(text, text) IS 'Run a and b in parallel; the first to finish wins (operator |)';
COMMENT ON FUNCTION df.if(text, text, text) IS 'Run the condition node, then then_branch if its result is truthy, else else_branch (operators ?> !>)';
COMMENT ON FUNCTION df.if_rows(text, text, text) IS 'then_branch if the named result has rows, else else_branch';
COMMENT ON FUNCTION df.loop(text, text) IS 'Repeat body forever (until df.break), or while condition stays truthy after each pass (prefix operator @>)';
COMMENT ON FUNCTION df.break(text) IS 'Leave the innermost loop, with an optional value';
COMMENT ON FUNCTION df.sleep(numeric) IS 'A durable timer of the given seconds (fractions allowed)';
COMMENT ON FUNCTION df.wait_for_schedule(text) IS 'Wait until the next time matching a five-field cron expression (UTC)';
COMMENT ON FUNCTION df.wait_for_signal(text, integer) IS 'Wait for df.signal(instance, name, data), optionally with a timeout in seconds';
COMMENT ON FUNCTION df.http(text, text, text, jsonb, integer) IS 'An HTTP request step (needs df.grant_usage(..., include_http => true))';
COMMENT ON FUNCTION df.http_multipart(text, text, jsonb, jsonb, integer) IS 'A multipart/form-data HTTP request step (needs include_http)';
COMMENT ON FUNCTION df.start(text, text, text, text, text, integer, interval, text) IS 'Start a durable workflow instance; returns its 8-hex id. The instance exists once the calling transaction commits';
COMMENT ON FUNCTION df._start_graph(text, text, text, jsonb) IS 'internal: the single insert path of df.start and the dfgate proxy (SECURITY INVOKER, re-validates everything)';
COMMENT ON FUNCTION df._activate(text, jsonb) IS 'internal: re-checks an instance inserted by this transaction and marks it runnable';
COMMENT ON FUNCTION df.signal(text, text, text) IS 'Send a signal to an instance (delivered when the calling transaction commits; kept until a wait takes it)';
COMMENT ON FUNCTION df.cancel(text, text) IS 'Cancel an instance (takes effect when the calling transaction commits)';
COMMENT ON FUNCTION df.status(text) IS 'pending, running, completed, failed or cancelled; NULL for unknown or invisible ids';
COMMENT ON FUNCTION df.result(text) IS 'The result of a completed instance''s root node, else NULL';
COMMENT ON FUNCTION df.await_instance(text, integer) IS 'Wait (polling) until an instance finishes; returns its final status';
COMMENT ON FUNCTION df.wait_for_completion(text, integer) IS 'Deprecated alias of df.await_instance';
COMMENT ON FUNCTION df.run(text) IS 'Does nothing (kept for pg_durable compatibility)';
COMMENT ON FUNCTION df.version() IS 'The pg_durable API version dfgate implements and the df schema version';
COMMENT ON FUNCTION df.target_database() IS 'The database whose workflows this schema holds';
COMMENT ON FUNCTION df.setvar(text, text) IS 'Set a variable of the current role ({name} in steps; snapshotted by df.start)';
COMMENT ON FUNCTION df.getvar(text) IS 'The current role''s variable, or NULL';
COMMENT ON FUNCTION df.unsetvar(text) IS 'Delete a variable of the current role';
COMMENT ON FUNCTION df.clearvars() IS 'Delete all variables of the current role';
COMMENT ON FUNCTION df.grant_usage(text, boolean, boolean) IS 'Let a role use dfgate (optionally HTTP steps, optionally re-grant)';
COMMENT ON FUNCTION df.revoke_usage(text) IS 'Undo df.grant_usage';
