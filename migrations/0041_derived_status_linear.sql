-- dfgate migration 0041: the derived status of an instance's nodes in linear time.
--
-- df._derived_status (spec §11.5; behind df.instance_nodes, df.explain and the
-- web console's instance page) gathered the nodes into a jsonb object and its
-- answers into another, one node at a time; each step copied the whole object
-- so far. For a workflow of 10,000 nodes (the most df.start accepts) that was
-- 42 s, and 11 s for 5,000 (a hostile review measured it, PostgreSQL 15); the
-- console's queries now stop after 15 s (migration 0040's change to the
-- console). The nodes are now gathered in one statement, and the answers kept
-- in arrays by node position, assigned in place. The walk, the rules and the
-- rows returned (and their order) are as before.
--
-- df._explain_nest (df.explain's walk) grew a JOIN's list of extra nodes the
-- same way; it now appends to an array in place. Its answer is unchanged.

CREATE OR REPLACE FUNCTION df._derived_status(p_instance text)
  RETURNS TABLE (node_id text, inferred_status text, inferred_from text)
  LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  v_root text;
  v_nodes jsonb := '{}';
  v_scope_max jsonb := '{}';
  -- per node, by its position in v_ids (the order jsonb_object_keys gave before): derived
  -- status, ancestor, visited; assigned in place (expanded arrays), never copied whole
  v_ids text[];
  v_phys_all text[];
  o_st text[];
  o_from text[];
  v_seen boolean[];
  v_k int;
  n jsonb;
  v_stamp text;
  v_scope text;
  v_gen bigint;
  -- the walk: parallel stacks of node id, nearest terminal ancestor, highest-generation ancestor
  s_id text[];
  s_nta text[];
  s_hi text[];
  s_hig bigint[];
  v_top int;
  v_id text;
  v_nta text;
  v_hi text;
  v_hig bigint;
  v_phys text;
  v_sup boolean;
  v_status text;
  v_from text;
  v_cfg jsonb;
  v_kids text[];
  v_child_nta text;
  i int;
BEGIN
  SELECT root_node INTO v_root FROM df.instances WHERE id = p_instance;
  IF NOT FOUND THEN
    RETURN;
  END IF;
  -- every node once, in one statement: its fields, scope and generation, and its position
  -- (a jsonb object grown node by node is copied at every step: 42 s for 10,000 nodes)
  WITH n AS (
    SELECT x.id::text AS id, x.node_type, x.query, x.left_node, x.right_node, x.status,
           CASE WHEN x.status_details ->> 'execution_id' ~ '::[0-9]{1,18}$'
                THEN regexp_replace(x.status_details ->> 'execution_id', '::[0-9]+$', '') END AS sc,
           CASE WHEN x.status_details ->> 'execution_id' ~ '::[0-9]{1,18}$'
                THEN substring(x.status_details ->> 'execution_id' FROM '::([0-9]+)$')::bigint END AS g
      FROM df.nodes x WHERE x.instance_id = p_instance
  ), o AS (
    SELECT n.*, row_number() OVER (ORDER BY n.id COLLATE "C")::int AS k FROM n
  )
  SELECT coalesce(jsonb_object_agg(o.id, jsonb_build_object(
           't', o.node_type, 'q', o.query, 'l', o.left_node, 'r', o.right_node,
           'st', o.status, 'sc', o.sc, 'g', o.g, 'k', o.k)), '{}'),
         coalesce(array_agg(o.id ORDER BY o.k), '{}'),
         coalesce(array_agg(o.status ORDER BY o.k), '{}'),
         coalesce((SELECT jsonb_object_agg(m.sc, m.g) FROM (SELECT o2.sc, max(o2.g) AS g FROM o o2
                                                             WHERE o2.sc IS NOT NULL GROUP BY o2.sc) m), '{}')
    INTO v_nodes, v_ids, v_phys_all, v_scope_max
    FROM o;
  o_st := array_fill(NULL::text, ARRAY[greatest(cardinality(v_ids), 1)]);
  o_from := o_st;
  v_seen := array_fill(false, ARRAY[greatest(cardinality(v_ids), 1)]);
  s_id := ARRAY[v_root]; s_nta := ARRAY[NULL::text]; s_hi := ARRAY[NULL::text]; s_hig := ARRAY[NULL::bigint];
  v_top := 1;
  WHILE v_top > 0 LOOP
    v_id := s_id[v_top]; v_nta := s_nta[v_top]; v_hi := s_hi[v_top]; v_hig := s_hig[v_top];
    v_top := v_top - 1;
    n := v_nodes -> v_id;
    CONTINUE WHEN n IS NULL;
    v_k := (n ->> 'k')::int;
    CONTINUE WHEN v_seen[v_k];
    v_seen[v_k] := true;
    v_phys := COALESCE(n ->> 'st', 'pending');
    v_sup := df._stamp_superseded(n ->> 'sc', (n ->> 'g')::bigint, v_scope_max);
    IF v_phys IN ('completed', 'failed') THEN
      IF NOT v_sup THEN v_status := v_phys; v_from := NULL;
      ELSIF v_nta IS NOT NULL THEN v_status := 'skipped'; v_from := v_nta;
      ELSE v_status := 'pending'; v_from := v_hi;
      END IF;
    ELSIF v_nta IS NOT NULL THEN v_status := 'skipped'; v_from := v_nta;
    ELSE v_status := CASE WHEN v_phys = 'running' THEN 'running' ELSE 'pending' END; v_from := NULL;
    END IF;
    o_st[v_k] := v_status;
    o_from[v_k] := v_from;
    v_child_nta := CASE WHEN v_phys IN ('completed', 'failed') AND NOT v_sup THEN v_id ELSE v_nta END;
    IF (n ->> 'g') IS NOT NULL AND (v_hig IS NULL OR (n ->> 'g')::bigint >= v_hig) THEN
      v_hi := v_id; v_hig := (n ->> 'g')::bigint;
    END IF;
    v_cfg := CASE WHEN n ->> 't' IN ('IF', 'LOOP', 'JOIN') THEN df._try_jsonb(n ->> 'q') END;
    v_kids := CASE n ->> 't'
      WHEN 'IF' THEN ARRAY[v_cfg ->> 'condition_node', n ->> 'l', n ->> 'r']
      WHEN 'LOOP' THEN ARRAY[n ->> 'l', v_cfg ->> 'condition_node']
      WHEN 'JOIN' THEN ARRAY[n ->> 'l', n ->> 'r']
                       || COALESCE(ARRAY(SELECT jsonb_array_elements_text(CASE WHEN jsonb_typeof(v_cfg -> 'extra_nodes') = 'array' THEN v_cfg -> 'extra_nodes' END)), '{}')
      ELSE ARRAY[n ->> 'l', n ->> 'r'] END;
    -- pushed in reverse so that they are visited in order
    FOR i IN REVERSE cardinality(v_kids) .. 1 LOOP
      CONTINUE WHEN v_kids[i] IS NULL;
      v_top := v_top + 1;
      s_id[v_top] := v_kids[i]; s_nta[v_top] := v_child_nta; s_hi[v_top] := v_hi; s_hig[v_top] := v_hig;
    END LOOP;
  END LOOP;
  RETURN QUERY
    SELECT u.id, COALESCE(o_st[u.k], COALESCE(u.st, 'pending')), o_from[u.k]
      FROM unnest(v_ids, v_phys_all) WITH ORDINALITY AS u(id, st, k);
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
  IF r.node_type IN ('IF', 'LOOP', 'JOIN') THEN
    v_cfg := df._try_jsonb(r.query);
    IF v_cfg ->> 'condition_node' IS NOT NULL THEN
      v := v || jsonb_build_object('condition_node', df._explain_nest(p_instance, v_cfg ->> 'condition_node', p_status));
      v_n := df._explain_count(v_n, v -> 'condition_node');
    END IF;
    IF jsonb_typeof(v_cfg -> 'extra_nodes') = 'array' THEN
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
