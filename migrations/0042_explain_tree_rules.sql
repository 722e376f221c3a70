-- dfgate migration 0042: df.explain's tree check by df.start's rules, in linear
-- time, with the depth limit.
--
-- A review of migration 0040 found four things in it:
--
-- - df._explain_is_tree walked the nodes reachable from the root with a join
--   PostgreSQL planned as a read of all the instance's nodes at every level
--   of the tree, under row-level security each time: 8.8 s for a legal
--   instance of 9,751 nodes and depth 251 as its own role (0.6 s as a
--   superuser), and df.explain 12.2 s, near the console's 15 s limit.
-- - It took a condition node and extra nodes from the query of any IF, LOOP
--   or JOIN, where df.start's checks (df._activate_graph) know a condition
--   node only in IF and LOOP and extra nodes only in JOIN: an IF whose query
--   also held "extra_nodes" naming one id twice, which df.start accepts, was
--   refused by df.explain. df._explain_nest expanded the same keys, so such
--   keys could also make it expand a subtree twice.
-- - A chain deeper than 256 written by hand passed, and df._explain_nest then
--   failed on PostgreSQL's stack depth limit (54001) instead of the one line.
-- - df._explain_nest's limit of 10,000 nodes applied per call level. A role
--   calling it directly on its own rows can still spend its own session's
--   time that way (as with any query it writes); df.explain, the console and
--   other roles are not affected, since df.explain walks only checked trees.
--
-- Now the check reads the instance's nodes once: at most 10,000 of them, no
-- node named twice as a child and the root named by none, by df.start's
-- rules; only then does it walk from the root, each node looked up by its
-- primary key (OFFSET 0), and it refuses a depth beyond 256. df._explain_nest
-- follows the same rules for children. A graph df.start accepted is shown as
-- before; its text does not change (the renderer never showed those keys).

CREATE OR REPLACE FUNCTION df._explain_is_tree(p_instance text, p_root text) RETURNS boolean
  LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  v_total bigint;
  v_bad bigint;
  v_depth int;
BEGIN
  SELECT count(*) INTO v_total FROM df.nodes n WHERE n.instance_id = p_instance;
  IF v_total > 10000 THEN
    RETURN false;
  END IF;
  -- every child any node of the instance names, once each, and never the root
  SELECT count(*) INTO v_bad FROM (
    SELECT c.child FROM df.nodes n
      CROSS JOIN LATERAL (SELECT n.left_node::text UNION ALL SELECT n.right_node::text
                 UNION ALL SELECT CASE WHEN n.node_type IN ('IF', 'LOOP') THEN df._try_jsonb(n.query) ->> 'condition_node' END
                 UNION ALL SELECT jsonb_array_elements_text(CASE WHEN n.node_type = 'JOIN'
                                                                 AND jsonb_typeof(df._try_jsonb(n.query) -> 'extra_nodes') = 'array'
                                                            THEN df._try_jsonb(n.query) -> 'extra_nodes' ELSE '[]' END)
                ) AS c(child)
     WHERE n.instance_id = p_instance AND c.child IS NOT NULL
     GROUP BY c.child HAVING count(*) > 1 OR c.child = p_root) b;
  IF v_bad > 0 THEN
    RETURN false;
  END IF;
  -- each node has at most one parent: the walk from the root visits each once
  WITH RECURSIVE t(id, depth) AS (
    SELECT p_root, 0
    UNION ALL
    SELECT c.child, t.depth + 1 FROM t
      CROSS JOIN LATERAL (SELECT x.left_node, x.right_node, x.node_type, x.query FROM df.nodes x
                           WHERE x.instance_id = p_instance AND x.id = t.id OFFSET 0) n
      CROSS JOIN LATERAL (SELECT n.left_node::text UNION ALL SELECT n.right_node::text
                 UNION ALL SELECT CASE WHEN n.node_type IN ('IF', 'LOOP') THEN df._try_jsonb(n.query) ->> 'condition_node' END
                 UNION ALL SELECT jsonb_array_elements_text(CASE WHEN n.node_type = 'JOIN'
                                                                 AND jsonb_typeof(df._try_jsonb(n.query) -> 'extra_nodes') = 'array'
                                                            THEN df._try_jsonb(n.query) -> 'extra_nodes' ELSE '[]' END)
                ) AS c(child)
     WHERE c.child IS NOT NULL AND t.depth < 257
  )
  SELECT max(t.depth) INTO v_depth FROM t;
  RETURN v_depth <= 256;
END $$;

CREATE OR REPLACE FUNCTION df._explain_nest(p_instance text, p_id text, p_status jsonb) RETURNS jsonb
  LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  r record;
  v jsonb;
  v_cfg jsonb;
  v_extras jsonb[] := '{}';
  e text;
  v_n int := 1;
BEGIN
  SELECT * INTO r FROM df.nodes WHERE instance_id = p_instance AND id = p_id;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  v := jsonb_build_object('node_type', r.node_type, '_status', p_status ->> p_id);
  IF r.status_details ? 'attempt' AND r.status_details ? 'max_attempts' THEN
    v := v || jsonb_build_object('_attempt', r.status_details);
  END IF;
  IF r.left_node IS NOT NULL THEN
    v := v || jsonb_build_object('left_node', df._explain_nest(p_instance, r.left_node, p_status));
    v_n := df._explain_count(v_n, v -> 'left_node');
  END IF;
  IF r.right_node IS NOT NULL THEN
    v := v || jsonb_build_object('right_node', df._explain_nest(p_instance, r.right_node, p_status));
    v_n := df._explain_count(v_n, v -> 'right_node');
  END IF;
  -- the children df.start's checks know: a condition node of IF and LOOP, the extra nodes
  -- of JOIN (anything else in a query is not a node, as df._activate_graph reads it)
  IF r.node_type IN ('IF', 'LOOP', 'JOIN') THEN
    v_cfg := df._try_jsonb(r.query);
    IF r.node_type IN ('IF', 'LOOP') AND v_cfg ->> 'condition_node' IS NOT NULL THEN
      v := v || jsonb_build_object('condition_node', df._explain_nest(p_instance, v_cfg ->> 'condition_node', p_status));
      v_n := df._explain_count(v_n, v -> 'condition_node');
    END IF;
    IF r.node_type = 'JOIN' AND jsonb_typeof(v_cfg -> 'extra_nodes') = 'array' THEN
      FOR e IN SELECT jsonb_array_elements_text(v_cfg -> 'extra_nodes') LOOP
        -- appended in place (a jsonb array grown by || is copied at every step)
        v_extras := array_append(v_extras, df._explain_nest(p_instance, e, p_status));
        v_n := df._explain_count(v_n, v_extras[cardinality(v_extras)]);
      END LOOP;
      v := v || jsonb_build_object('extra_nodes', coalesce(to_jsonb(v_extras), '[]'));
    END IF;
  END IF;
  IF r.query IS NOT NULL THEN v := v || jsonb_build_object('query', r.query); END IF;
  IF r.result_name IS NOT NULL THEN v := v || jsonb_build_object('result_name', r.result_name); END IF;
  RETURN v || jsonb_build_object('_n', v_n);
END $$;
