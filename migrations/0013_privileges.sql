-- dfgate migration 0013: privileges (issue 10), retention per role.
--
-- 1. df.role_grants becomes a view of the catalog. It was a table written by
--    df._record_grant, a SECURITY DEFINER function every granted role could
--    call: it recorded any role the catalog said could use schema df (a
--    superuser always can), so `SELECT df._record_grant('postgres')` made
--    `dfgate roles` print `GRANT "postgres" TO "dfgate_step_…"`, and it set
--    granted_by to the caller's name on any row. The view lists exactly the
--    roles holding an explicit USAGE grant on schema df (not the schema owner,
--    not the executor group), with the grantors PostgreSQL recorded, so there
--    is nothing left to write and nothing to forge. df._record_grant is
--    dropped; df.grant_usage and df.revoke_usage no longer call it.
-- 2. A caller learns nothing about instances it does not own. df._activate
--    (SECURITY DEFINER, sees every row) answered "not found", "not a new
--    instance" or "not inserted by this transaction" depending on another
--    role's instance, and locked it first. It now refuses, with one error and
--    without taking a lock, every id that is not a row inserted by the
--    current transaction (which, by the submitted_by trigger and row-level
--    security, is always the caller's own), and only then runs the original
--    checks (kept as df._activate_rows, callable by the schema owner only).
--    df._complete_step checked the instance's existence, lease epoch and
--    status before the attempt token; it now checks the token first, so
--    without the token (a secret only the executor holds) every id gives the
--    same "stale attempt" error and no row is locked.
-- 3. df.version() works for granted roles (it read df.schema_migrations, on
--    which they hold no privilege): SECURITY DEFINER, and STABLE, since it
--    reads a table.
-- 4. Retention applies per submitting role: retention_max_instances keeps the
--    newest N terminal instances of each role, so one role's volume never
--    deletes another role's history. An index on (submitted_by, age) lets
--    each pass visit only what it deletes plus N entries per role.

------------------------------------------------------------------------------
-- 1. df.role_grants from the catalog
------------------------------------------------------------------------------

DROP TABLE df.role_grants;
DROP FUNCTION df._record_grant(text);

CREATE VIEW df.role_grants (role_name, include_http, granted_by) AS
  SELECT CASE WHEN a.grantee = 0 THEN 'public' ELSE pg_catalog.pg_get_userbyid(a.grantee)::text END,
         EXISTS (SELECT 1 FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) h
                  WHERE p.oid = 'df.http(text,text,text,jsonb,integer)'::pg_catalog.regprocedure
                    AND h.grantee = a.grantee AND h.privilege_type = 'EXECUTE'),
         pg_catalog.string_agg(DISTINCT pg_catalog.pg_get_userbyid(a.grantor)::text, ', ')
    FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a
   WHERE n.nspname = 'df' AND a.privilege_type = 'USAGE' AND a.grantee <> n.nspowner
     AND a.grantee NOT IN (SELECT r.oid FROM pg_catalog.pg_roles r
                            WHERE r.rolname IN ('df_executor', (SELECT c.value #>> '{}' FROM df.config c WHERE c.key = 'executor_group')))
   GROUP BY a.grantee;
REVOKE ALL ON df.role_grants FROM PUBLIC;
GRANT SELECT ON df.role_grants TO df_executor;
COMMENT ON VIEW df.role_grants IS
  'Roles holding USAGE on schema df by an explicit grant (df.grant_usage), read from the catalog; `dfgate roles` provisions their step logins';

-- df.grant_usage and df.revoke_usage as in migration 0004, without df._record_grant.
CREATE OR REPLACE FUNCTION df.grant_usage(p_role text, include_http boolean DEFAULT false, with_grant boolean DEFAULT false) RETURNS void
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

CREATE OR REPLACE FUNCTION df.revoke_usage(p_role text) RETURNS void
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
  RAISE NOTICE 'pg_durable: revoked df usage privileges granted by "%" from "%"', current_user, p_role;
END $$;

------------------------------------------------------------------------------
-- 2. No answers about other roles' instances
------------------------------------------------------------------------------

-- The original checks, now reached only through df._activate below.
ALTER FUNCTION df._activate(text, jsonb) RENAME TO _activate_rows;
REVOKE EXECUTE ON FUNCTION df._activate_rows(text, jsonb) FROM PUBLIC;
COMMENT ON FUNCTION df._activate_rows(text, jsonb) IS
  'internal: the checks of df._activate on a row the current transaction inserted (schema owner only)';

-- Whether a row whose xmin is p_xmin was inserted by the current transaction
-- or one of its live subtransactions: its xid is at most 2^31 ahead of the
-- top-level xid (a subtransaction's xid is assigned after its parent's), and
-- that transaction is still in progress (a visible row of another
-- in-progress transaction does not exist; a rolled-back savepoint reads as
-- aborted).
CREATE FUNCTION df._inserted_by_this_transaction(p_xmin xid) RETURNS boolean
  LANGUAGE plpgsql VOLATILE STRICT SET search_path = pg_catalog
  AS $$
DECLARE
  v_top xid8 := pg_current_xact_id_if_assigned();
  v_ahead bigint;
BEGIN
  IF v_top IS NULL THEN
    RETURN false;  -- this transaction has written nothing
  END IF;
  v_ahead := (p_xmin::text::bigint - (v_top::text::numeric % 4294967296)::bigint + 4294967296) % 4294967296;
  IF v_ahead >= 2147483648 THEN
    RETURN false;  -- older than this transaction
  END IF;
  BEGIN
    RETURN pg_xact_status((v_top::text::numeric + v_ahead)::text::xid8) = 'in progress';
  EXCEPTION WHEN invalid_parameter_value THEN
    RETURN false;  -- a frozen row older than 2^31 transactions widens to an unassigned xid
  END;
END $$;
REVOKE EXECUTE ON FUNCTION df._inserted_by_this_transaction(xid) FROM PUBLIC;
COMMENT ON FUNCTION df._inserted_by_this_transaction(xid) IS
  'internal: whether a row with this xmin was inserted by the current transaction (used by df._activate)';

CREATE FUNCTION df._activate(p_instance_id text, p_options jsonb DEFAULT '{}') RETURNS void
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog
  AS $$
DECLARE
  v_xmin xid;
BEGIN
  -- No lock and one answer until the row is known to be the caller's own:
  -- only this transaction's rows pass, and the submitted_by trigger and
  -- row-level security let a role insert (or update) only rows in its own name.
  SELECT xmin INTO v_xmin FROM df.instances WHERE id = p_instance_id;
  IF NOT FOUND OR NOT df._inserted_by_this_transaction(v_xmin) THEN
    RAISE EXCEPTION 'Instance not found or access denied: %', p_instance_id USING ERRCODE = 'P0002',
      HINT = 'df._activate accepts only an instance inserted by the current transaction; only df.start makes an instance runnable.';
  END IF;
  PERFORM df._activate_rows(p_instance_id, p_options);
END $$;
COMMENT ON FUNCTION df._activate(text, jsonb) IS
  'internal: re-checks an instance inserted by this transaction and marks it runnable (one error for every other id)';

-- Both forms of df._complete_step: the attempt token first. Without it every
-- instance id, existing or not, another role's or not, gives the same error,
-- and nothing is locked. The eight-argument form, which this version's
-- executor calls, raises dfgate's own SQLSTATEs (class DF, unused by
-- PostgreSQL; docs/sqlstates.md): DF001 the lease was taken over, DF002 the
-- attempt is not the current one, DF003 the instance finished, was cancelled
-- or is gone. The seven-argument form keeps the codes executors of earlier
-- versions recognise (40001, 57014, P0002, with their messages).
CREATE OR REPLACE FUNCTION df._complete_step(p_instance text, p_node text, p_activation text, p_epoch bigint,
                                             p_token text, p_kind text, p_detail jsonb) RETURNS bigint
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog
  AS $$
DECLARE
  v_inst record;
  v_seq bigint;
  v_hash text := encode(sha256(convert_to(p_token, 'UTF8')), 'hex');
BEGIN
  IF NOT EXISTS (SELECT 1 FROM df.nodes WHERE instance_id = p_instance AND id = p_node
                  AND activation = p_activation AND attempt_token = v_hash) THEN
    RAISE EXCEPTION 'dfgate: stale attempt for node % of instance %', p_node, p_instance USING ERRCODE = '40001';
  END IF;
  SELECT status, lease_epoch, submitted_by, event_seq INTO v_inst
    FROM df.instances WHERE id = p_instance FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'dfgate: instance % not found', p_instance USING ERRCODE = 'P0002';
  END IF;
  IF v_inst.lease_epoch <> p_epoch THEN
    RAISE EXCEPTION 'dfgate: lease of instance % was taken over (epoch % is not %)', p_instance, p_epoch, v_inst.lease_epoch
      USING ERRCODE = '40001';
  END IF;
  IF v_inst.status NOT IN ('pending', 'running') THEN
    RAISE EXCEPTION 'dfgate: instance % is %', p_instance, v_inst.status USING ERRCODE = '57014';
  END IF;
  -- again under the instance's lock: the token may have been replaced meanwhile
  IF NOT EXISTS (SELECT 1 FROM df.nodes WHERE instance_id = p_instance AND id = p_node
                  AND activation = p_activation AND attempt_token = v_hash) THEN
    RAISE EXCEPTION 'dfgate: stale attempt for node % of instance %', p_node, p_instance USING ERRCODE = '40001';
  END IF;
  v_seq := v_inst.event_seq + 1;
  INSERT INTO df.events (instance_id, submitted_by, node_id, kind, detail, seq, activation)
  VALUES (p_instance, v_inst.submitted_by, p_node, p_kind, p_detail, v_seq, p_activation);
  UPDATE df.instances SET event_seq = v_seq, updated_at = now() WHERE id = p_instance;
  UPDATE df.nodes SET attempt_token = NULL WHERE instance_id = p_instance AND id = p_node;
  RETURN v_seq;
END $$;

CREATE OR REPLACE FUNCTION df._complete_step(p_instance text, p_node text, p_activation text, p_epoch bigint,
                                             p_token text, p_kind text, p_detail jsonb, p_stamp text) RETURNS bigint
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog
  AS $$
DECLARE
  v_inst record;
  v_seq bigint;
  v_hash text := encode(sha256(convert_to(p_token, 'UTF8')), 'hex');
BEGIN
  IF NOT EXISTS (SELECT 1 FROM df.nodes WHERE instance_id = p_instance AND id = p_node
                  AND activation = p_activation AND attempt_token = v_hash) THEN
    RAISE EXCEPTION 'dfgate: stale attempt for node % of instance %', p_node, p_instance USING ERRCODE = 'DF002';
  END IF;
  SELECT status, lease_epoch, submitted_by, event_seq INTO v_inst
    FROM df.instances WHERE id = p_instance FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'dfgate: instance % not found', p_instance USING ERRCODE = 'DF003';
  END IF;
  IF v_inst.lease_epoch <> p_epoch THEN
    RAISE EXCEPTION 'dfgate: lease of instance % was taken over (epoch % is not %)', p_instance, p_epoch, v_inst.lease_epoch
      USING ERRCODE = 'DF001';
  END IF;
  IF v_inst.status NOT IN ('pending', 'running') THEN
    RAISE EXCEPTION 'dfgate: instance % is %', p_instance, v_inst.status USING ERRCODE = 'DF003';
  END IF;
  UPDATE df.nodes
     SET attempt_token = NULL,
         status = CASE WHEN p_kind = 'done' THEN 'completed' ELSE 'failed' END,
         result = CASE WHEN p_kind = 'done'
                       THEN COALESCE(df._try_jsonb(p_detail ->> 'result'), to_jsonb(p_detail ->> 'result'))
                       ELSE to_jsonb(p_detail ->> 'error') END,
         status_details = jsonb_build_object('execution_id', p_stamp),
         updated_at = now()
   WHERE instance_id = p_instance AND id = p_node AND activation = p_activation
     AND attempt_token = v_hash;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'dfgate: stale attempt for node % of instance %', p_node, p_instance USING ERRCODE = 'DF002';
  END IF;
  v_seq := v_inst.event_seq + 1;
  INSERT INTO df.events (instance_id, submitted_by, node_id, kind, detail, seq, activation)
  VALUES (p_instance, v_inst.submitted_by, p_node, p_kind, p_detail, v_seq, p_activation);
  UPDATE df.instances SET event_seq = v_seq, updated_at = now() WHERE id = p_instance;
  RETURN v_seq;
END $$;

------------------------------------------------------------------------------
-- 3. df.version() for granted roles
------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION df.version() RETURNS text
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog
  AS $$ SELECT '0.2.6 (dfgate schema ' || (SELECT max(version) FROM df.schema_migrations)::text || ')' $$;

------------------------------------------------------------------------------
-- 4. Retention per submitting role
------------------------------------------------------------------------------

CREATE INDEX instances_retention_idx ON df.instances (submitted_by, (COALESCE(completed_at, created_at)) DESC, id)
  WHERE status IN ('completed', 'failed', 'cancelled');

UPDATE df.config SET description = 'at most this many terminal instances are kept per submitting role (its newest)'
 WHERE key = 'retention_max_instances';

-- Deletes at most p_batch expired terminal instances; returns how many. A
-- terminal instance expires when it is older than retention_days or not among
-- the newest retention_max_instances terminal instances of its submitting
-- role. The roles are found by a skip scan of instances_retention_idx, and per
-- role the index yields the rows past the newest N and those past the age
-- limit directly. One pass at a time across executors.
CREATE OR REPLACE FUNCTION df._reconcile(p_batch integer DEFAULT 5000) RETURNS integer
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog
  AS $$
DECLARE
  v_days numeric := COALESCE((df._setting('retention_days') #>> '{}')::numeric, 30);
  v_keep bigint := COALESCE((df._setting('retention_max_instances') #>> '{}')::bigint, 10000);
  v_cutoff timestamptz;
  v_n integer;
BEGIN
  IF NOT pg_try_advisory_xact_lock(hashtext('dfgate reconcile')) THEN
    RETURN 0;
  END IF;
  v_cutoff := clock_timestamp() - make_interval(secs => v_days * 86400);
  WITH RECURSIVE roles(r) AS (
         (SELECT i.submitted_by FROM df.instances i
           WHERE i.status IN ('completed', 'failed', 'cancelled')
           ORDER BY i.submitted_by LIMIT 1)
         UNION ALL
         SELECT (SELECT i.submitted_by FROM df.instances i
                  WHERE i.status IN ('completed', 'failed', 'cancelled') AND i.submitted_by > roles.r
                  ORDER BY i.submitted_by LIMIT 1)
           FROM roles WHERE roles.r IS NOT NULL),
       doomed AS (
         SELECT d.id FROM roles, LATERAL (
             (SELECT i.id FROM df.instances i
               WHERE i.submitted_by = roles.r AND i.status IN ('completed', 'failed', 'cancelled')
               ORDER BY COALESCE(i.completed_at, i.created_at) DESC, i.id
               OFFSET v_keep LIMIT p_batch)
             UNION
             (SELECT i.id FROM df.instances i
               WHERE i.submitted_by = roles.r AND i.status IN ('completed', 'failed', 'cancelled')
                 AND COALESCE(i.completed_at, i.created_at) <= v_cutoff
               LIMIT p_batch)) d
          WHERE roles.r IS NOT NULL
          LIMIT p_batch)
  DELETE FROM df.instances i USING doomed d
   WHERE i.id = d.id AND i.status IN ('completed', 'failed', 'cancelled');
  GET DIAGNOSTICS v_n = ROW_COUNT;
  RETURN v_n;
END $$;
COMMENT ON FUNCTION df._reconcile(integer) IS
  'internal: deletes terminal instances past retention_days or beyond the newest retention_max_instances of their submitting role (spec §12.2)';

-- Helpers of df._activate_rows (which runs as the owner) added by 0012: not for callers.
REVOKE EXECUTE ON FUNCTION df._xid_after(xid, xid8) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION df._inserted_here(xid) FROM PUBLIC;
