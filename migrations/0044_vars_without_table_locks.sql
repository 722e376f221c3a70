-- dfgate migration 0044: no tenant can lock df.vars against everyone's starts.
--
-- Every start reads the starting role's variables from df.vars (df._activate_graph,
-- df._activate_graphs, df._activate_rows, the executor's on_failure starts), and a
-- granted role held UPDATE and DELETE on the whole table so that df.setvar,
-- df.unsetvar and df.clearvars could run as the caller under row-level security.
-- Table-level UPDATE or DELETE also lets a role LOCK the table in any mode: a hostile
-- review held `LOCK TABLE df.vars IN ACCESS EXCLUSIVE MODE` in one role's open
-- transaction and every other role's df.start waited until it ended (11 s, or as long
-- as the session stays open). Row-level security does not apply to table locks.
--
-- Now a granted role has SELECT and INSERT on df.vars and UPDATE of the value column
-- only. PostgreSQL lets SELECT take ACCESS SHARE and INSERT ROW EXCLUSIVE, neither of
-- which blocks a read; column privileges never allow LOCK TABLE. df.setvar is
-- unchanged (its upsert updates only the value). df.unsetvar and df.clearvars, which
-- deleted rows, set the caller's values to NULL under row-level security and then call
-- df._purge_vars, which deletes the NULL values this transaction wrote: row-level
-- security already decided which rows those could be, so a role cannot remove another
-- role's variables through it. What the functions answer and which rows remain is
-- the same as before.
--
-- Roles granted before this migration keep what they had, less table-level UPDATE and
-- DELETE on df.vars, plus UPDATE (value), with the grant option where they had one.

CREATE FUNCTION df._purge_vars() RETURNS void
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS $$
BEGIN
  DELETE FROM df.vars v WHERE v.value IS NULL AND df._inserted_here(v.xmin);
END $$;

CREATE OR REPLACE FUNCTION df.unsetvar(name text)
 RETURNS text
 LANGUAGE plpgsql
 STRICT
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
  PERFORM df._mark_helper('df.unsetvar()');
  IF df._in_workflow() THEN
    RAISE EXCEPTION 'df.unsetvar() cannot be called inside a workflow - manage variables before starting the workflow'
      USING ERRCODE = '0A000';
  END IF;
  UPDATE df.vars v SET value = NULL WHERE v.owner = quote_ident(current_user)::regrole AND v.name = unsetvar.name;
  PERFORM df._purge_vars();
  RETURN 'OK';
END $function$;

CREATE OR REPLACE FUNCTION df.clearvars()
 RETURNS text
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
  PERFORM df._mark_helper('df.clearvars()');
  IF df._in_workflow() THEN
    RAISE EXCEPTION 'df.clearvars() cannot be called inside a workflow - manage variables before starting the workflow'
      USING ERRCODE = '0A000';
  END IF;
  UPDATE df.vars v SET value = NULL WHERE v.owner = quote_ident(current_user)::regrole;
  PERFORM df._purge_vars();
  RETURN 'OK';
END $function$;

-- df.grant_usage as in migration 0013, with df.vars granted as above.
CREATE OR REPLACE FUNCTION df.grant_usage(p_role text, include_http boolean DEFAULT false, with_grant boolean DEFAULT false) RETURNS void
  LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
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
    ['GRANT SELECT, INSERT ON df.vars TO %s', 'table', 'df.vars', 'SELECT,INSERT'],
    ['GRANT UPDATE (value) ON df.vars TO %s', 'column', 'df.vars', 'UPDATE'],
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

-- Roles granted before: table-level UPDATE and DELETE on df.vars become UPDATE (value).
DO $$
DECLARE
  v_who text[];
  v_grantable boolean[];
  i int;
BEGIN
  -- read every grant first: a REVOKE ... CASCADE below may take grants made by its grantee
  SELECT array_agg(CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE g.grantee::regrole::text END),
         array_agg(g.grantable)
    INTO v_who, v_grantable
    FROM (SELECT a.grantee, bool_or(a.is_grantable) AS grantable
            FROM pg_class c, aclexplode(c.relacl) a
           WHERE c.oid = 'df.vars'::regclass AND a.privilege_type IN ('UPDATE', 'DELETE')
             AND a.grantee <> c.relowner
           GROUP BY a.grantee) g;
  FOR i IN 1 .. coalesce(cardinality(v_who), 0) LOOP
    EXECUTE format('REVOKE UPDATE, DELETE ON df.vars FROM %s CASCADE', v_who[i]);
  END LOOP;
  FOR i IN 1 .. coalesce(cardinality(v_who), 0) LOOP
    EXECUTE format('GRANT UPDATE (value) ON df.vars TO %s%s', v_who[i],
                   CASE WHEN v_grantable[i] THEN ' WITH GRANT OPTION' ELSE '' END);
  END LOOP;
END $$;
