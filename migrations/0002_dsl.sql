-- dfgate migration 0002: the DSL in the database.
--
-- Every node constructor and the seven operators of spec §2–§4 as plain SQL
-- and PL/pgSQL, returning graph text byte-identical to pg_durable's (compact
-- JSON, keys in the order node_type, left_node, right_node, condition_node,
-- extra_nodes, query, result_name). PostgreSQL's own parser groups the
-- operators (one precedence level, left to right: spec §3).
--
-- df.start and the proxy's rewrite both end in df._start_graph (SECURITY
-- INVOKER: rows are written as the caller, under RLS), which validates the
-- graph (spec §2.5), assigns ids, inserts the rows and hands them to
-- df._activate (SECURITY DEFINER), the only code that can mark an instance
-- runnable. df._activate re-checks the stored rows (a tree, depth and size
-- limits, HTTP grant, superuser guard, LOGIN, inserted by this very
-- transaction) so calling either function directly gains nothing.
--
-- The operators live in schema df (OPERATOR(df.~>) always works);
-- df.grant_usage appends df to the role's search_path in this database so
-- they resolve unqualified without replacing anyone's existing path.
--
-- Errors: invalid DSL arguments and graphs raise SQLSTATE 22023
-- (invalid_parameter_value); privilege problems 42501; unsupported options
-- 0A000; unknown instances P0002.

------------------------------------------------------------------------------
-- JSON helpers
------------------------------------------------------------------------------

-- Compact serialisation of a json value, keeping its key order (json) or
-- jsonb's order (jsonb cast to json first).
CREATE FUNCTION df._json_compact(p json) RETURNS text
  LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog
  AS $$
DECLARE
  v_out text;
BEGIN
  CASE json_typeof(p)
    WHEN 'object' THEN
      SELECT '{' || COALESCE(string_agg(to_json(e.key)::text || ':' || df._json_compact(e.value), ',' ORDER BY e.ord), '') || '}'
        INTO v_out FROM json_each(p) WITH ORDINALITY AS e(key, value, ord);
    WHEN 'array' THEN
      SELECT '[' || COALESCE(string_agg(df._json_compact(e.value), ',' ORDER BY e.ord), '') || ']'
        INTO v_out FROM json_array_elements(p) WITH ORDINALITY AS e(value, ord);
    WHEN 'string' THEN
      v_out := to_json(p #>> '{}')::text;
    ELSE
      v_out := btrim(p::text, E' \t\n\r');
  END CASE;
  RETURN v_out;
END $$;

-- The parse error of a text as JSON, or NULL when it is valid JSON.
CREATE FUNCTION df._json_error(p text) RETURNS text
  LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog
  AS $$
BEGIN
  PERFORM p::json;
  RETURN NULL;
EXCEPTION WHEN invalid_text_representation OR invalid_parameter_value OR untranslatable_character THEN
  RETURN SQLERRM;
END $$;

-- The text as jsonb, or NULL when it is not JSON.
CREATE FUNCTION df._try_jsonb(p text) RETURNS jsonb
  LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog
  AS $$
BEGIN
  RETURN p::jsonb;
EXCEPTION WHEN invalid_text_representation OR invalid_parameter_value OR untranslatable_character THEN
  RETURN NULL;
END $$;

CREATE FUNCTION df._valid_types() RETURNS text[]
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  AS $$ SELECT ARRAY['SQL','THEN','IF','JOIN','LOOP','BREAK','RACE','SLEEP','WAIT_SCHEDULE','HTTP','HTTP_MULTIPART','SIGNAL'] $$;

-- One node's canonical text. Children are node texts embedded verbatim.
CREATE FUNCTION df._node(p_type text, p_left text DEFAULT NULL, p_right text DEFAULT NULL,
                         p_cond text DEFAULT NULL, p_extras text[] DEFAULT NULL,
                         p_query text DEFAULT NULL, p_name text DEFAULT NULL) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog
  AS $$
SELECT '{"node_type":' || to_json(p_type)::text
    || COALESCE(',"left_node":' || p_left, '')
    || COALESCE(',"right_node":' || p_right, '')
    || COALESCE(',"condition_node":' || p_cond, '')
    || CASE WHEN cardinality(p_extras) > 0 THEN ',"extra_nodes":[' || array_to_string(p_extras, ',') || ']' ELSE '' END
    || COALESCE(',"query":' || to_json(p_query)::text, '')
    || COALESCE(',"result_name":' || to_json(p_name)::text, '')
    || '}'
$$;

------------------------------------------------------------------------------
-- Auto-wrap (spec §2.3)
------------------------------------------------------------------------------

-- Non-future helpers (df.setvar, ...) leave a marker stamped with the
-- statement's start time; a non-JSON argument of a composition in the same
-- statement is then refused instead of becoming a SQL step named "OK".
CREATE FUNCTION df._mark_helper(p_helper text) RETURNS void
  LANGUAGE sql VOLATILE SET search_path = pg_catalog
  AS $$ SELECT set_config('df.last_helper', statement_timestamp()::text || '|' || p_helper, false); $$;

CREATE FUNCTION df._helper_guard(s text, p_prefix text) RETURNS void
  LANGUAGE plpgsql STABLE SET search_path = pg_catalog
  AS $$
DECLARE
  v_mark text;
  v_helper text;
BEGIN
  IF left(ltrim(s, E' \t\n\r\f\v'), 1) = '{' THEN
    RETURN;
  END IF;
  v_mark := current_setting('df.last_helper', true);
  IF v_mark IS NULL OR v_mark = '' THEN
    RETURN;
  END IF;
  IF split_part(v_mark, '|', 1) = statement_timestamp()::text THEN
    v_helper := split_part(v_mark, '|', 2);
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = p_prefix || v_helper || ' cannot be used as a workflow step. Call ' || v_helper || ' before df.start().';
  END IF;
END $$;

-- Why a json node object fails to deserialize, or NULL.
CREATE FUNCTION df._node_shape_error(j json) RETURNS text
  LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog
  AS $$
DECLARE
  k text;
  t text;
BEGIN
  FOREACH k IN ARRAY ARRAY['query', 'result_name'] LOOP
    t := json_typeof(j -> k);
    IF t IS NOT NULL AND t NOT IN ('string', 'null') THEN
      RETURN format('invalid type: %s, expected a string for field `%s`', t, k);
    END IF;
  END LOOP;
  t := json_typeof(j -> 'extra_nodes');
  IF t IS NOT NULL AND t NOT IN ('array', 'null') THEN
    RETURN format('invalid type: %s, expected a sequence for field `extra_nodes`', t);
  END IF;
  RETURN NULL;
END $$;

-- The canonical text of a graph value: top-level keys re-serialised in
-- canonical order, children copied verbatim.
CREATE FUNCTION df._canonical(j json) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog
  AS $$
SELECT df._node(
  j ->> 'node_type',
  CASE WHEN json_typeof(j -> 'left_node') <> 'null' THEN btrim((j -> 'left_node')::text, E' \t\n\r') END,
  CASE WHEN json_typeof(j -> 'right_node') <> 'null' THEN btrim((j -> 'right_node')::text, E' \t\n\r') END,
  CASE WHEN json_typeof(j -> 'condition_node') <> 'null' THEN btrim((j -> 'condition_node')::text, E' \t\n\r') END,
  CASE WHEN json_typeof(j -> 'extra_nodes') = 'array' THEN
    ARRAY(SELECT btrim(e.value::text, E' \t\n\r') FROM json_array_elements(j -> 'extra_nodes') WITH ORDINALITY AS e(value, ord) ORDER BY e.ord)
  END,
  j ->> 'query',
  j ->> 'result_name')
$$;

-- Node text for s if s is a graph value, NULL if it should be wrapped as SQL.
-- p_start selects the start rule's errors instead of the composition rule's.
CREATE FUNCTION df._as_node(s text, p_start boolean) RETURNS text
  LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog
  AS $$
DECLARE
  j json;
  v_type text;
  v_err text;
BEGIN
  IF left(ltrim(s, E' \t\n\r'), 1) <> '{' THEN
    RETURN NULL;
  END IF;
  BEGIN
    j := s::json;
  EXCEPTION WHEN invalid_text_representation OR invalid_parameter_value OR untranslatable_character THEN
    RETURN NULL;
  END;
  IF json_typeof(j) <> 'object' OR json_typeof(j -> 'node_type') IS DISTINCT FROM 'string' THEN
    RETURN NULL;
  END IF;
  v_type := j ->> 'node_type';
  v_err := df._node_shape_error(j);
  IF p_start THEN
    IF v_type <> ALL (df._valid_types()) THEN
      RAISE EXCEPTION 'Invalid durable function: Unknown node_type ''%''. Valid types: %', v_type, array_to_string(df._valid_types(), ', ')
        USING ERRCODE = '22023';
    END IF;
    IF v_err IS NOT NULL THEN
      RAISE EXCEPTION 'Invalid durable function: Malformed Durofut JSON with node_type ''%'': %', v_type, v_err
        USING ERRCODE = '22023';
    END IF;
  ELSE
    IF v_err IS NOT NULL THEN
      RAISE EXCEPTION 'Invalid Durofut JSON: failed to deserialize workflow step: %', v_err USING ERRCODE = '22023';
    END IF;
    IF v_type <> ALL (df._valid_types()) THEN
      RETURN NULL; -- [QUIRK] unknown types silently become SQL text
    END IF;
  END IF;
  RETURN df._canonical(j);
END $$;

-- The composition rule: every node argument of the constructors and operators.
CREATE FUNCTION df._compose(s text) RETURNS text
  LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog
  AS $$
BEGIN
  PERFORM df._helper_guard(s, '');
  RETURN COALESCE(df._as_node(s, false), df._node('SQL', p_query => s));
END $$;

------------------------------------------------------------------------------
-- Node constructors (spec §4.1)
------------------------------------------------------------------------------

CREATE FUNCTION df.sql(query text) RETURNS text
  LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog
  AS $$ SELECT df._node('SQL', p_query => query) $$;

CREATE FUNCTION df.seq(a text, b text) RETURNS text
  LANGUAGE sql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog
  AS $$ SELECT df._node('THEN', df._compose(a), df._compose(b)) $$;

CREATE FUNCTION df.as(fut text, name text) RETURNS text
  LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog
  AS $$
DECLARE
  j json;
BEGIN
  IF name = '' THEN
    RAISE EXCEPTION 'df.as: result name cannot be empty' USING ERRCODE = '22023';
  END IF;
  IF name !~ '^[A-Za-z_][A-Za-z0-9_]*$' THEN
    RAISE EXCEPTION 'df.as: result name ''%'' is not a valid identifier — must match [a-zA-Z_][a-zA-Z0-9_]*', name
      USING ERRCODE = '22023';
  END IF;
  j := df._compose(fut)::json;
  RETURN df._node(
    j ->> 'node_type',
    (j -> 'left_node')::text,
    (j -> 'right_node')::text,
    (j -> 'condition_node')::text,
    ARRAY(SELECT e.value::text FROM json_array_elements(COALESCE(j -> 'extra_nodes', '[]')) WITH ORDINALITY AS e(value, ord) ORDER BY e.ord),
    j ->> 'query',
    name);
END $$;

CREATE FUNCTION df.join(a text, b text) RETURNS text
  LANGUAGE sql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog
  AS $$ SELECT df._node('JOIN', df._compose(a), df._compose(b)) $$;

CREATE FUNCTION df.join3(a text, b text, c text) RETURNS text
  LANGUAGE sql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog
  AS $$ SELECT df._node('JOIN', df._compose(a), df._compose(b), p_extras => ARRAY[df._compose(c)]) $$;

CREATE FUNCTION df.race(a text, b text) RETURNS text
  LANGUAGE sql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog
  AS $$ SELECT df._node('RACE', df._compose(a), df._compose(b)) $$;

CREATE FUNCTION df.if(condition text, then_branch text, else_branch text) RETURNS text
  LANGUAGE sql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog
  AS $$ SELECT df._node('IF', df._compose(then_branch), df._compose(else_branch), df._compose(condition)) $$;

CREATE FUNCTION df.if_rows(result_name text, then_branch text, else_branch text) RETURNS text
  LANGUAGE sql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog
  AS $$ SELECT df._node('IF', df._compose(then_branch), df._compose(else_branch),
                        p_query => '{"condition_type":"result_has_rows","result_name":' || to_json(result_name)::text || '}') $$;

CREATE FUNCTION df.loop(body text, condition text DEFAULT NULL) RETURNS text
  LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog
  AS $$
BEGIN
  IF body IS NULL THEN
    RAISE EXCEPTION 'df.loop: body cannot be NULL' USING ERRCODE = '22004';
  END IF;
  RETURN df._node('LOOP', df._compose(body),
                  p_cond => CASE WHEN condition IS NOT NULL THEN df._compose(condition) END);
END $$;

CREATE FUNCTION df.break(value text DEFAULT NULL) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog
  AS $$ SELECT df._node('BREAK', p_query => '{"break_value":' || COALESCE(to_json(value)::text, 'null') || '}') $$;

CREATE FUNCTION df.sleep(seconds numeric) RETURNS text
  LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog
  AS $$
DECLARE
  v text;
BEGIN
  IF seconds < 0 THEN
    RAISE EXCEPTION 'Sleep duration must be non-negative' USING ERRCODE = '22023';
  END IF;
  IF seconds = trunc(seconds) THEN
    v := trunc(seconds)::text;
  ELSE
    v := rtrim(seconds::text, '0');
  END IF;
  RETURN df._node('SLEEP', p_query => v);
END $$;

-- Cron (DESIGN.md §5): five fields minute hour day-of-month month
-- day-of-week; *, lists, ranges, steps (*/n, a-b/n), month and day names;
-- Sunday is 0 or 7. Returns what is wrong, or NULL.
CREATE FUNCTION df._cron_error(p_expr text) RETURNS text
  LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog
  AS $$
DECLARE
  v_fields text[] := regexp_split_to_array(btrim(p_expr, E' \t\n\r'), E'[ \t\n\r]+');
  v_names text[] := ARRAY['minute', 'hour', 'day-of-month', 'month', 'day-of-week'];
  v_min int[] := ARRAY[0, 0, 1, 1, 0];
  v_max int[] := ARRAY[59, 23, 31, 12, 7];
  v_months text[] := ARRAY['JAN','FEB','MAR','APR','MAY','JUN','JUL','AUG','SEP','OCT','NOV','DEC'];
  v_days text[] := ARRAY['SUN','MON','TUE','WED','THU','FRI','SAT'];
  i int;
  v_item text;
  v_base text;
  v_step text;
  v_parts text[];
  v_lo int;
  v_hi int;
  v_val int;
  v_tok text;
  k int;
BEGIN
  IF btrim(p_expr, E' \t\n\r') = '' THEN
    RETURN 'expected 5 fields (minute hour day-of-month month day-of-week), got 0';
  END IF;
  IF cardinality(v_fields) <> 5 THEN
    RETURN format('expected 5 fields (minute hour day-of-month month day-of-week), got %s', cardinality(v_fields));
  END IF;
  FOR i IN 1..5 LOOP
    FOREACH v_item IN ARRAY string_to_array(v_fields[i], ',') LOOP
      IF v_item = '' THEN
        RETURN format('%s field ''%s'': empty list element', v_names[i], v_fields[i]);
      END IF;
      v_parts := string_to_array(v_item, '/');
      IF cardinality(v_parts) > 2 THEN
        RETURN format('%s field: ''%s'' has more than one step', v_names[i], v_item);
      END IF;
      v_base := v_parts[1];
      v_step := v_parts[2];
      IF v_step IS NOT NULL THEN
        IF v_step !~ '^[0-9]{1,4}$' OR v_step::int < 1 OR v_step::int > v_max[i] THEN
          RETURN format('%s field: step ''%s'' must be a number from 1 to %s', v_names[i], v_step, v_max[i]);
        END IF;
        IF v_base <> '*' AND position('-' IN v_base) = 0 THEN
          RETURN format('%s field: step ''%s'' needs a range or * before the /', v_names[i], v_item);
        END IF;
      END IF;
      IF v_base = '*' THEN
        CONTINUE;
      END IF;
      v_parts := string_to_array(v_base, '-');
      IF cardinality(v_parts) > 2 THEN
        RETURN format('%s field: ''%s'' is not a value or range', v_names[i], v_item);
      END IF;
      v_lo := NULL;
      v_hi := NULL;
      FOR k IN 1..cardinality(v_parts) LOOP
        v_tok := upper(v_parts[k]);
        IF v_tok ~ '^[0-9]{1,4}$' THEN
          v_val := v_tok::int;
        ELSIF i = 4 AND v_tok = ANY (v_months) THEN
          v_val := array_position(v_months, v_tok);
        ELSIF i = 5 AND v_tok = ANY (v_days) THEN
          v_val := array_position(v_days, v_tok) - 1;
        ELSE
          RETURN format('%s field: ''%s'' is not a valid value', v_names[i], v_parts[k]);
        END IF;
        IF v_val < v_min[i] OR v_val > v_max[i] THEN
          RETURN format('%s field: %s is out of range %s-%s', v_names[i], v_parts[k], v_min[i], v_max[i]);
        END IF;
        IF k = 1 THEN v_lo := v_val; ELSE v_hi := v_val; END IF;
      END LOOP;
      IF v_hi IS NOT NULL AND v_hi < v_lo THEN
        RETURN format('%s field: range ''%s'' runs backwards', v_names[i], v_base);
      END IF;
    END LOOP;
  END LOOP;
  RETURN NULL;
END $$;

CREATE FUNCTION df.wait_for_schedule(cron_expr text) RETURNS text
  LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog
  AS $$
DECLARE
  v_err text := df._cron_error(cron_expr);
BEGIN
  IF v_err IS NOT NULL THEN
    RAISE EXCEPTION 'Invalid cron expression ''%'': %', cron_expr, v_err USING ERRCODE = '22023';
  END IF;
  RETURN df._node('WAIT_SCHEDULE', p_query => '{"cron_expr":' || to_json(cron_expr)::text || '}');
END $$;

CREATE FUNCTION df.wait_for_signal(name text, timeout_seconds integer DEFAULT NULL) RETURNS text
  LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog
  AS $$
BEGIN
  IF name IS NULL THEN
    RAISE EXCEPTION 'Signal name cannot be NULL' USING ERRCODE = '22004';
  END IF;
  IF name = '' THEN
    RAISE EXCEPTION 'Signal name cannot be empty' USING ERRCODE = '22023';
  END IF;
  IF timeout_seconds <= 0 THEN
    RAISE EXCEPTION 'Timeout must be positive' USING ERRCODE = '22023';
  END IF;
  RETURN df._node('SIGNAL', p_query => '{"signal_name":' || to_json(name)::text
    || ',"timeout_seconds":' || COALESCE(timeout_seconds::text, 'null') || '}');
END $$;

-- Shared build-time checks of df.http and df.http_multipart (spec §4.1).
CREATE FUNCTION df._http_checks(p_fn text, url text, p_method text, p_allowed text[], timeout_seconds integer) RETURNS text
  LANGUAGE plpgsql STABLE SET search_path = pg_catalog
  AS $$
DECLARE
  v_scheme text;
  v_method text := upper(p_method);
BEGIN
  IF url IS NULL THEN
    RAISE EXCEPTION '%: url cannot be NULL', p_fn USING ERRCODE = '22004';
  END IF;
  IF NOT COALESCE((df._setting('http_enabled'))::text::boolean, true) THEN
    RAISE EXCEPTION '% is disabled. An administrator enables HTTP steps with: UPDATE df.config SET value = ''true'' WHERE key = ''http_enabled''', p_fn
      USING ERRCODE = '0A000';
  END IF;
  IF position('{' IN url) = 0 THEN
    v_scheme := lower(CASE WHEN position('://' IN url) > 0 THEN left(url, position('://' IN url) - 1) ELSE url END);
    IF v_scheme NOT IN ('http', 'https') THEN
      RAISE EXCEPTION 'Blocked: unsupported URL scheme ''%''. Only http and https are allowed.', v_scheme
        USING ERRCODE = '22023';
    END IF;
  END IF;
  IF p_method IS NULL OR v_method <> ALL (p_allowed) THEN
    IF p_fn = 'df.http()' THEN
      RAISE EXCEPTION 'Invalid HTTP method: %. Must be GET, POST, PUT, DELETE, or PATCH', p_method USING ERRCODE = '22023';
    ELSE
      RAISE EXCEPTION 'Invalid HTTP method for multipart: %. Must be POST, PUT, or PATCH', p_method USING ERRCODE = '22023';
    END IF;
  END IF;
  IF timeout_seconds IS NULL OR timeout_seconds <= 0 THEN
    RAISE EXCEPTION 'Timeout must be positive' USING ERRCODE = '22023';
  END IF;
  RETURN v_method;
END $$;

CREATE FUNCTION df.http(url text, method text DEFAULT 'POST', body text DEFAULT NULL,
                        headers jsonb DEFAULT NULL, timeout_seconds integer DEFAULT 30) RETURNS text
  LANGUAGE plpgsql STABLE SET search_path = pg_catalog
  AS $$
DECLARE
  v_method text := df._http_checks('df.http()', url, method, ARRAY['GET','POST','PUT','DELETE','PATCH'], timeout_seconds);
BEGIN
  RETURN df._node('HTTP', p_query => '{"url":' || to_json(url)::text
    || ',"method":' || to_json(v_method)::text
    || ',"body":' || COALESCE(to_json(body)::text, 'null')
    || ',"headers":' || COALESCE(df._json_compact(headers::json), 'null')
    || ',"timeout_seconds":' || timeout_seconds::text || '}');
END $$;

CREATE FUNCTION df.http_multipart(url text, method text DEFAULT 'POST', parts jsonb DEFAULT NULL,
                                  headers jsonb DEFAULT NULL, timeout_seconds integer DEFAULT 30) RETURNS text
  LANGUAGE plpgsql STABLE SET search_path = pg_catalog
  AS $$
DECLARE
  v_method text := df._http_checks('df.http_multipart()', url, method, ARRAY['POST','PUT','PATCH'], timeout_seconds);
BEGIN
  IF parts IS NULL THEN
    RAISE EXCEPTION 'parts is required and cannot be NULL' USING ERRCODE = '22023';
  END IF;
  IF jsonb_typeof(parts) <> 'array' THEN
    RAISE EXCEPTION 'parts must be a JSON array of part objects' USING ERRCODE = '22023';
  END IF;
  IF jsonb_array_length(parts) = 0 THEN
    RAISE EXCEPTION 'parts must contain at least one part' USING ERRCODE = '22023';
  END IF;
  RETURN df._node('HTTP_MULTIPART', p_query => '{"url":' || to_json(url)::text
    || ',"method":' || to_json(v_method)::text
    || ',"parts":' || df._json_compact(parts::json)
    || ',"headers":' || COALESCE(df._json_compact(headers::json), 'null')
    || ',"timeout_seconds":' || timeout_seconds::text || '}');
END $$;

------------------------------------------------------------------------------
-- Operators (spec §3)
------------------------------------------------------------------------------

CREATE FUNCTION df._partial_if(c text, t text) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog
  AS $$ SELECT jsonb_build_object('_partial_if', true, 'condition', c, 'then_branch', t)::text $$;

CREATE FUNCTION df._if_else(p text, e text) RETURNS text
  LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog
  AS $$
DECLARE
  j jsonb := p::jsonb;
BEGIN
  IF jsonb_typeof(j) <> 'object' OR (j -> '_partial_if') IS NULL OR jsonb_typeof(j -> '_partial_if') = 'null' THEN
    RAISE EXCEPTION 'Invalid if-then-else: left side of !> must be a ?> expression' USING ERRCODE = '22023';
  END IF;
  RETURN df.if(j ->> 'condition', j ->> 'then_branch', e);
END $$;

CREATE FUNCTION df._loop_op(body text) RETURNS text
  LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog
  AS $$ SELECT df.loop(body) $$;

CREATE FUNCTION df._as_op(fut text, name text) RETURNS text
  LANGUAGE sql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog
  AS $$ SELECT df.as(fut, name) $$;

CREATE OPERATOR df.~>  (LEFTARG = text, RIGHTARG = text, FUNCTION = df.seq);
CREATE OPERATOR df.|=> (LEFTARG = text, RIGHTARG = text, FUNCTION = df._as_op);
CREATE OPERATOR df.&   (LEFTARG = text, RIGHTARG = text, FUNCTION = df.join);
CREATE OPERATOR df.|   (LEFTARG = text, RIGHTARG = text, FUNCTION = df.race);
CREATE OPERATOR df.?>  (LEFTARG = text, RIGHTARG = text, FUNCTION = df._partial_if);
CREATE OPERATOR df.!>  (LEFTARG = text, RIGHTARG = text, FUNCTION = df._if_else);
CREATE OPERATOR df.@>  (RIGHTARG = text, FUNCTION = df._loop_op);

COMMENT ON OPERATOR df.~> (text, text) IS 'sequence: run the left node, then the right (df.seq)';
COMMENT ON OPERATOR df.|=> (text, text) IS 'name a node''s result (df.as)';
COMMENT ON OPERATOR df.& (text, text) IS 'run both branches in parallel and wait for both (df.join)';
COMMENT ON OPERATOR df.| (text, text) IS 'run both branches, the first to finish wins (df.race)';
COMMENT ON OPERATOR df.?> (text, text) IS 'condition ?> then-branch: the first half of an if-then-else';
COMMENT ON OPERATOR df.!> (text, text) IS '(c ?> t) !> else-branch: completes an if-then-else (df.if)';
COMMENT ON OPERATOR df.@> (NONE, text) IS 'loop the node forever, until a df.break (df.loop)';
