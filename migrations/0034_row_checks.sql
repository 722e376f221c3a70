-- dfgate migration 0034: the row checks of df.nodes and df.instances, one
-- function each.
--
-- PostgreSQL keeps a table's CHECK constraints as stored node trees and, at
-- the start of every statement that inserts into or updates the table,
-- reads them back and plans them again (ExecConstraints: stringToNode and
-- expression planning; nothing of it is kept between statements). The nine
-- checks of df.nodes are 12 KB of node text, the four of df.instances 2.8 KB,
-- and every checkpoint, attempt mark, claim and start writes these tables
-- with statements of one or a few rows: a one-row UPDATE of df.nodes cost
-- 0.038 ms with its checks and 0.018 ms with this one (docs/benchmarks.md,
-- "Row checks"). A check that calls a PL/pgSQL function is read back as one
-- short call, and the function is compiled once per session.
--
-- The rules are the same, tested in the order PostgreSQL tested the
-- constraints (by name), and a row that breaks one is refused as before:
-- SQLSTATE 23514, 'new row for relation "nodes" violates check constraint
-- "nodes_structure_check"', with schema, table and constraint name in the
-- error's fields. As with any CHECK, a rule that comes out NULL passes.
--
-- The price is a function call per row (about 1 us) where the old checks
-- cost about 20 us per statement: a statement that writes more than some
-- twenty rows pays more than before. So the functions name every operator
-- and type with its schema instead of pinning search_path, which would save
-- and restore a setting at every row; they depend on no setting and touch
-- no table, so the caller's search_path cannot change what they answer.
--
-- Each check depends on every column it reads: a later migration that drops
-- one of these columns drops the whole check with it and must create it
-- again.

CREATE FUNCTION df._nodes_row_check(p_id text, p_instance_id text, p_left_node text, p_node_type text,
    p_result_name text, p_result_null boolean, p_right_node text, p_status text, p_query_null boolean)
  RETURNS boolean
  LANGUAGE plpgsql IMMUTABLE
  AS $$
DECLARE
  v_broken pg_catalog.text;
BEGIN
  IF NOT (p_id OPERATOR(pg_catalog.~) '^[0-9a-f]{8}$') THEN
    v_broken := 'nodes_id_check';
  ELSIF NOT (p_instance_id OPERATOR(pg_catalog.~) '^[0-9a-f]{8}$') THEN
    v_broken := 'nodes_instance_id_check';
  ELSIF NOT (p_left_node OPERATOR(pg_catalog.~) '^[0-9a-f]{8}$') THEN
    v_broken := 'nodes_left_node_check';
  -- the DSL's own list (migration 0002); inlined and folded when the statement is planned
  ELSIF NOT (p_node_type OPERATOR(pg_catalog.=) ANY (df._valid_types())) THEN
    v_broken := 'nodes_node_type_check';
  ELSIF NOT (p_result_name OPERATOR(pg_catalog.~) '^[A-Za-z_][A-Za-z0-9_]*$') THEN
    v_broken := 'nodes_result_name_check';
  ELSIF NOT (p_result_null OR p_status OPERATOR(pg_catalog.=) ANY ('{completed,failed}'::pg_catalog.text[])) THEN
    v_broken := 'nodes_result_terminal_check';
  ELSIF NOT (p_right_node OPERATOR(pg_catalog.~) '^[0-9a-f]{8}$') THEN
    v_broken := 'nodes_right_node_check';
  ELSIF NOT (p_status OPERATOR(pg_catalog.=) ANY ('{pending,running,completed,failed}'::pg_catalog.text[])) THEN
    v_broken := 'nodes_status_check';
  ELSIF NOT (CASE
               WHEN p_node_type OPERATOR(pg_catalog.=) 'THEN' THEN p_left_node IS NOT NULL AND p_right_node IS NOT NULL AND p_query_null
               WHEN p_node_type OPERATOR(pg_catalog.=) 'IF'   THEN p_left_node IS NOT NULL AND p_right_node IS NOT NULL AND NOT p_query_null
               WHEN p_node_type OPERATOR(pg_catalog.=) 'LOOP' THEN p_left_node IS NOT NULL AND p_right_node IS NULL
               WHEN p_node_type OPERATOR(pg_catalog.=) 'JOIN' THEN p_left_node IS NOT NULL AND p_right_node IS NOT NULL
               WHEN p_node_type OPERATOR(pg_catalog.=) 'RACE' THEN p_left_node IS NOT NULL AND p_right_node IS NOT NULL AND p_query_null
               ELSE p_left_node IS NULL AND p_right_node IS NULL AND NOT p_query_null END) THEN
    v_broken := 'nodes_structure_check';
  ELSE
    RETURN true;
  END IF;
  RAISE EXCEPTION 'new row for relation "nodes" violates check constraint "%"', v_broken
    USING ERRCODE = '23514', SCHEMA = 'df', TABLE = 'nodes', CONSTRAINT = v_broken;
END $$;
COMMENT ON FUNCTION df._nodes_row_check(text, text, text, text, text, boolean, text, text, boolean) IS
  'internal: the row check of df.nodes (constraint nodes_row_check); raises 23514 naming the rule a row breaks';

CREATE FUNCTION df._instances_row_check(p_id text, p_on_failure_instance text, p_root_node text, p_status text)
  RETURNS boolean
  LANGUAGE plpgsql IMMUTABLE
  AS $$
DECLARE
  v_broken pg_catalog.text;
BEGIN
  IF NOT (p_id OPERATOR(pg_catalog.~) '^[0-9a-f]{8}$') THEN
    v_broken := 'instances_id_check';
  ELSIF NOT (p_on_failure_instance OPERATOR(pg_catalog.~) '^[0-9a-f]{8}$') THEN
    v_broken := 'instances_on_failure_instance_check';
  ELSIF NOT (p_root_node OPERATOR(pg_catalog.~) '^[0-9a-f]{8}$') THEN
    v_broken := 'instances_root_node_check';
  ELSIF NOT (p_status OPERATOR(pg_catalog.=) ANY ('{pending,running,completed,failed,cancelled}'::pg_catalog.text[])) THEN
    v_broken := 'instances_status_check';
  ELSE
    RETURN true;
  END IF;
  RAISE EXCEPTION 'new row for relation "instances" violates check constraint "%"', v_broken
    USING ERRCODE = '23514', SCHEMA = 'df', TABLE = 'instances', CONSTRAINT = v_broken;
END $$;
COMMENT ON FUNCTION df._instances_row_check(text, text, text, text) IS
  'internal: the row check of df.instances (constraint instances_row_check); raises 23514 naming the rule a row breaks';

-- NOT VALID: every existing row passed the same rules when it was written,
-- and validating would read both tables under the lock the DROPs take, for
-- as long as that takes (seconds per million rows); new and updated rows are
-- checked all the same. `ALTER TABLE df.nodes VALIDATE CONSTRAINT
-- nodes_row_check` (and instances_row_check) may be run at any time; it
-- takes a lock that lets reads and writes go on.
ALTER TABLE df.nodes
  DROP CONSTRAINT nodes_id_check,
  DROP CONSTRAINT nodes_instance_id_check,
  DROP CONSTRAINT nodes_left_node_check,
  DROP CONSTRAINT nodes_node_type_check,
  DROP CONSTRAINT nodes_result_name_check,
  DROP CONSTRAINT nodes_result_terminal_check,
  DROP CONSTRAINT nodes_right_node_check,
  DROP CONSTRAINT nodes_status_check,
  DROP CONSTRAINT nodes_structure_check,
  ADD CONSTRAINT nodes_row_check CHECK (df._nodes_row_check(id, instance_id, left_node, node_type,
    result_name, result IS NULL, right_node, status, query IS NULL)) NOT VALID;
ALTER TABLE df.instances
  DROP CONSTRAINT instances_id_check,
  DROP CONSTRAINT instances_on_failure_instance_check,
  DROP CONSTRAINT instances_root_node_check,
  DROP CONSTRAINT instances_status_check,
  ADD CONSTRAINT instances_row_check CHECK (df._instances_row_check(id, on_failure_instance, root_node, status)) NOT VALID;
