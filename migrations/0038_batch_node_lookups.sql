-- dfgate migration 0038: a batch of starts reads its nodes by primary key, a
-- batch of one-node workflows skips the tree walk, and no walk of a forged graph
-- can run away.
--
-- df._activate_graphs (the end of df._start_batch, the proxy's form of many
-- starts in one message) joined the new ids to df.nodes. Before df.nodes has
-- been analyzed (a new install, or a table that grew fast since), PostgreSQL
-- estimates ten ids and a couple of hundred nodes per id, and hashes the ids
-- against a scan of every node, twice per batch: on PostgreSQL 15, 100 starts
-- in one message took 50 to 100 ms in the database with 50,000 nodes in the
-- table, against 10 to 12 ms once the table was analyzed (docs/benchmarks.md,
-- "Batches that scanned every node"). The nodes of each id are now read by a
-- lookup of their own (a LATERAL subquery PostgreSQL does not flatten into
-- the join), whatever the statistics.
--
-- And as migration 0035 did for a single start: when every start of the
-- batch is one node, its own root, naming no other node (no left or right
-- node, not IF, LOOP or JOIN), the statement that walks the trees is skipped.
-- Any other batch, and any batch where that answer is unknown, is checked as
-- before, so what is refused, and with which error, is unchanged.
--
-- And the walk of the trees waits for the references to be sound. The one
-- statement computed both, and a node named twice as a child was walked twice
-- at every level below it: a forged one-node THEN whose two children are
-- itself made 2^256 rows, a backend busy until its statement_timeout, where
-- df._activate_graph refuses the same graph at once (it checks the
-- references first). Now the walk does not go below the roots unless every
-- node has one parent and none is a root's child; the error is the same.

CREATE OR REPLACE FUNCTION df._activate_graphs(p_instances text[], p_roots text[], p_labels text[]) RETURNS text[]
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  v_n int := cardinality(p_instances);
  v_found int;
  v_mixed int;
  v_roles int;
  v_sub regrole;
  v_xmins int;
  v_xmin xid;
  v_http boolean;
  v_total int;
  v_largest int;
  v_role record;
  v_bad int;
  v_reached int;
  v_max_depth int;
  v_leaves boolean;
BEGIN
  IF v_n IS NULL OR v_n NOT BETWEEN 1 AND 1000
     OR cardinality(p_roots) IS DISTINCT FROM v_n OR cardinality(p_labels) IS DISTINCT FROM v_n
     OR (SELECT count(DISTINCT x) FROM unnest(p_instances) x) <> v_n THEN
    RAISE EXCEPTION 'df._activate_graphs: 1 to 1,000 distinct instance ids, each with a root and a label'
      USING ERRCODE = '22023';
  END IF;
  -- Whose nodes, written when (as df._activate_graph): every id's nodes written by this
  -- transaction in one statement, by one role; one answer for any other id, before any lock.
  -- The nodes of each id by primary key, one lookup per id (OFFSET 0 keeps the lookup
  -- where it is): never a scan of every node, whatever the statistics say of df.nodes.
  SELECT count(*), count(*) FILTER (WHERE g.sub_lo <> g.sub_hi OR g.x_lo <> g.x_hi),
         count(DISTINCT g.sub_lo), min(g.sub_lo)::regrole, count(DISTINCT g.x_lo), min(g.x_lo)::xid,
         coalesce(bool_or(g.http), false), sum(g.total), max(g.total),
         bool_and(coalesce(g.total = 1 AND g.leaf, false))
    INTO v_found, v_mixed, v_roles, v_sub, v_xmins, v_xmin, v_http, v_total, v_largest, v_leaves
    FROM (SELECT b.iid AS instance_id, count(*) AS total,
                 min(n.submitted_by::oid) AS sub_lo, max(n.submitted_by::oid) AS sub_hi,
                 min(n.xmin::text) AS x_lo, max(n.xmin::text) AS x_hi,
                 bool_or(n.node_type IN ('HTTP', 'HTTP_MULTIPART')) AS http,
                 -- the one node of a one-node graph is its root and names no other node (an
                 -- unknown answer is a no: bool_and passes over NULLs)
                 bool_and(coalesce(n.id = b.root AND n.left_node IS NULL AND n.right_node IS NULL
                                   AND n.node_type NOT IN ('IF', 'LOOP', 'JOIN'), false)) AS leaf
            FROM unnest(p_instances, p_roots) AS b(iid, root)
            CROSS JOIN LATERAL (SELECT n.id, n.submitted_by, n.xmin, n.node_type, n.left_node, n.right_node
                                  FROM df.nodes n WHERE n.instance_id = b.iid OFFSET 0) n
           GROUP BY b.iid) g;
  IF v_found <> v_n OR v_mixed > 0 OR v_roles <> 1 OR v_xmins <> 1 OR NOT df._inserted_here(v_xmin) THEN
    RAISE EXCEPTION 'Instance not found or access denied: %',
      (SELECT string_agg(x, ', ') FROM unnest(p_instances) x) USING ERRCODE = 'P0002',
      HINT = 'df._activate_graphs accepts only nodes inserted by the current transaction; only df.start makes an instance runnable.';
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
  IF v_largest > 10000 THEN
    RAISE EXCEPTION 'Invalid durable function graph: root: Workflow exceeds maximum node count of 10000. Simplify the workflow or break it into multiple instances.'
      USING ERRCODE = '22023';
  END IF;
  -- One tree under each root: every reference resolves within its instance, every node but
  -- the root has one parent, and all are reachable within the depth limit. The nodes are read
  -- once, by primary key, one lookup per id (OFFSET 0, as above). A batch of one-node graphs
  -- whose node is its root and names no other node is a forest of such trees: nothing to
  -- walk (IS TRUE: an unknown answer, a NULL root say, takes the checks).
  IF v_leaves IS NOT TRUE THEN
    WITH RECURSIVE mine AS MATERIALIZED (
      SELECT b.iid, b.root, n.id::text AS id, r.child
        FROM unnest(p_instances, p_roots) AS b(iid, root)
        CROSS JOIN LATERAL (SELECT n.id, n.left_node, n.right_node, n.node_type, n.query
                              FROM df.nodes n WHERE n.instance_id = b.iid OFFSET 0) n
        CROSS JOIN LATERAL (SELECT n.left_node::text UNION ALL SELECT n.right_node::text
                 UNION ALL SELECT CASE WHEN n.node_type IN ('IF', 'LOOP') THEN (n.query::jsonb) ->> 'condition_node' END
                 UNION ALL SELECT jsonb_array_elements_text(CASE WHEN n.node_type = 'JOIN' AND n.query IS NOT NULL
                                                            THEN COALESCE((n.query::jsonb) -> 'extra_nodes', '[]') ELSE '[]' END)
                ) AS r(child)
    ), refs AS (
      SELECT r.iid, r.root, r.child, k.id IS NOT NULL AS present
        FROM mine r LEFT JOIN (SELECT DISTINCT m.iid, m.id FROM mine m) k ON k.iid = r.iid AND k.id = r.child
       WHERE r.child IS NOT NULL
    ), bad AS MATERIALIZED (
      SELECT count(*) AS n FROM (SELECT 1 FROM refs GROUP BY refs.iid, refs.root, refs.child
                                  HAVING count(*) > 1 OR refs.child = refs.root OR NOT bool_and(refs.present)) x
    ), t(iid, id, depth) AS (
      SELECT DISTINCT m.iid, m.id, 0 FROM mine m WHERE m.id = m.root
      UNION ALL
      -- walked only when every reference is sound (each node one parent, never the root): a
      -- node named twice would be walked twice at every level below it, 2^256 rows for a
      -- THEN node that is both its own children (refused below by v_bad either way)
      SELECT t.iid, m.child, t.depth + 1 FROM t JOIN mine m ON m.iid = t.iid AND m.id = t.id
       WHERE m.child IS NOT NULL AND t.depth < 257 AND (SELECT bad.n FROM bad) = 0
    )
    SELECT (SELECT bad.n FROM bad), (SELECT count(*) FROM t), (SELECT max(depth) FROM t)
      INTO v_bad, v_reached, v_max_depth;
    IF v_bad > 0 THEN
      RAISE EXCEPTION 'Invalid durable function graph: the nodes of instances % do not form a tree',
        array_to_string(p_instances, ', ') USING ERRCODE = '22023';
    END IF;
    IF v_max_depth > 256 THEN
      RAISE EXCEPTION 'Invalid durable function graph: Graph exceeds maximum nesting depth of 256. Simplify the workflow or break it into multiple instances.'
        USING ERRCODE = '22023';
    END IF;
    IF v_reached <> v_total THEN
      RAISE EXCEPTION 'Invalid durable function graph: the nodes of instances % do not form a tree under their roots',
        array_to_string(p_instances, ', ') USING ERRCODE = '22023';
    END IF;
  END IF;
  IF v_http AND NOT has_function_privilege(v_sub, 'df.http(text,text,text,jsonb,integer)', 'EXECUTE') THEN
    RAISE EXCEPTION 'permission denied for HTTP steps: role "%" may not run df.http', v_role.rolname
      USING ERRCODE = '42501',
            HINT = format('An administrator runs: SELECT df.grant_usage(%L, include_http => true);', v_role.rolname);
  END IF;
  -- The instances, runnable, with the role's variables; no options (the proxy batches
  -- only starts without them). An id some instance already has fails the primary key.
  INSERT INTO df.instances (id, label, root_node, submitted_by, database, runnable, options, vars)
  SELECT b.iid, b.label, b.root, v_sub, NULL, true, '{}',
         COALESCE((SELECT jsonb_object_agg(name, value) FROM df.vars WHERE owner = v_sub AND value IS NOT NULL), '{}')
    FROM unnest(p_instances, p_roots, p_labels) AS b(iid, root, label);
  PERFORM pg_notify('dfgate_wake', 'start:' || x) FROM unnest(p_instances) x;
  RETURN p_instances;
END $$;
