-- dfgate migration 0019: the small helpers on every start, step and DSL
-- operator become PL/pgSQL; what each returns is unchanged.
--
-- A LANGUAGE sql function with a SET clause (all of ours pin search_path) is
-- never inlined, and PostgreSQL parses, analyses and plans its body again at
-- nearly every call from a trigger or from PL/pgSQL. Profiling df.start on
-- PostgreSQL 15 (perf on the backend) put 17 % of its CPU in those three
-- stages for four one-line helpers: df._xid_after (twice per start),
-- df._is_executor (the status guard), df._node and df._setting. PL/pgSQL
-- keeps its plans for the session, so a call costs an expression evaluation.
-- The DSL operators ~> and |=> (df.seq, df._as_op), df.sql and df._canonical,
-- evaluated once per operator when a workflow is written in SQL, get the same
-- treatment.

CREATE OR REPLACE FUNCTION df._xid_after(p_xid xid, p_top xid8) RETURNS xid8
  LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE STRICT SET search_path = pg_catalog
  AS $$
DECLARE
  d bigint := (p_xid::text::bigint - (p_top::text::numeric % 4294967296)::bigint + 4294967296) % 4294967296;
BEGIN
  RETURN CASE WHEN d < 2147483648 THEN (p_top::text::numeric + d)::text::xid8 END;
END $$;

CREATE OR REPLACE FUNCTION df._is_executor() RETURNS boolean
  LANGUAGE plpgsql STABLE SET search_path = pg_catalog
  AS $$
BEGIN
  RETURN pg_has_role(current_user, 'df_executor', 'MEMBER')
      OR pg_has_role(current_user, (SELECT nspowner FROM pg_namespace WHERE nspname = 'df'), 'MEMBER')
      OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user);
END $$;

CREATE OR REPLACE FUNCTION df._node(p_type text, p_left text DEFAULT NULL, p_right text DEFAULT NULL,
                                    p_cond text DEFAULT NULL, p_extras text[] DEFAULT NULL,
                                    p_query text DEFAULT NULL, p_name text DEFAULT NULL) RETURNS text
  LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog
  AS $$
BEGIN
  RETURN '{"node_type":' || to_json(p_type)::text
      || COALESCE(',"left_node":' || p_left, '')
      || COALESCE(',"right_node":' || p_right, '')
      || COALESCE(',"condition_node":' || p_cond, '')
      || CASE WHEN cardinality(p_extras) > 0 THEN ',"extra_nodes":[' || array_to_string(p_extras, ',') || ']' ELSE '' END
      || COALESCE(',"query":' || to_json(p_query)::text, '')
      || COALESCE(',"result_name":' || to_json(p_name)::text, '')
      || '}';
END $$;

CREATE OR REPLACE FUNCTION df._setting(p_key text) RETURNS jsonb
  LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog
  AS $$
BEGIN
  RETURN (SELECT value FROM df.config WHERE key = p_key);
END $$;

CREATE OR REPLACE FUNCTION df._in_workflow() RETURNS boolean
  LANGUAGE plpgsql STABLE SET search_path = pg_catalog
  AS $$
BEGIN
  RETURN COALESCE(current_setting('df.in_workflow', true), '') = 'true';
END $$;

CREATE OR REPLACE FUNCTION df.seq(a text, b text) RETURNS text
  LANGUAGE plpgsql STABLE PARALLEL SAFE STRICT SET search_path = pg_catalog
  AS $$
BEGIN
  RETURN df._node('THEN', df._compose(a), df._compose(b));
END $$;

CREATE OR REPLACE FUNCTION df.sql(query text) RETURNS text
  LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE STRICT SET search_path = pg_catalog
  AS $$
BEGIN
  RETURN df._node('SQL', p_query => query);
END $$;

CREATE OR REPLACE FUNCTION df._as_op(fut text, name text) RETURNS text
  LANGUAGE plpgsql STABLE PARALLEL SAFE STRICT SET search_path = pg_catalog
  AS $$
BEGIN
  RETURN df.as(fut, name);
END $$;

CREATE OR REPLACE FUNCTION df._canonical(j json) RETURNS text
  LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog
  AS $$
BEGIN
  RETURN df._node(
    j ->> 'node_type',
    CASE WHEN json_typeof(j -> 'left_node') <> 'null' THEN btrim((j -> 'left_node')::text, E' \t\n\r') END,
    CASE WHEN json_typeof(j -> 'right_node') <> 'null' THEN btrim((j -> 'right_node')::text, E' \t\n\r') END,
    CASE WHEN json_typeof(j -> 'condition_node') <> 'null' THEN btrim((j -> 'condition_node')::text, E' \t\n\r') END,
    CASE WHEN json_typeof(j -> 'extra_nodes') = 'array' THEN
      ARRAY(SELECT btrim(e.value::text, E' \t\n\r') FROM json_array_elements(j -> 'extra_nodes') WITH ORDINALITY AS e(value, ord) ORDER BY e.ord)
    END,
    j ->> 'query',
    j ->> 'result_name');
END $$;
