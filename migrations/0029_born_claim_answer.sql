-- dfgate migration 0029: a start born claimed hands its claim over in its own answer.
--
-- A start through dfgate that is born leased (df._start_rows with a lease)
-- was read back by the executor after its commit: one more round trip on the
-- way from the start to its first step, about 1 ms on an idle machine. This
-- form of df._start_rows reads the instance as the executor's claim returns
-- it, in the start's own transaction, and raises it as a NOTICE that names a
-- one-time nonce only the proxy knows; the proxy keeps that notice from the
-- client and hands the claim to its executor once the start has committed
-- (docs/executor.md, "The wake path").
--
-- The read runs as the caller: row-level security shows it only the caller's
-- own rows, so the notice holds nothing the caller could not read itself. An
-- instance with variables raises nothing (their values stay out of notices and
-- server logs); the executor reads it after the commit, as before.

CREATE FUNCTION df._start_rows(p_rows json, p_label text, p_lease_owner text, p_lease_ms integer,
                               p_nonce text) RETURNS text
  LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET client_min_messages = notice
  AS $$
DECLARE
  v_id text := df._start_rows(p_rows, p_label, p_lease_owner, p_lease_ms);
  v_claim text;
BEGIN
  IF p_lease_owner IS NOT NULL AND p_nonce ~ '^[0-9a-f]{24}$' THEN
    SELECT json_build_object(
             'id', i.id, 'label', i.label, 'root_node', i.root_node, 'status', i.status,
             'lease_epoch', i.lease_epoch::text, 'event_seq', i.event_seq::text,
             'options', i.options, 'vars', i.vars,
             'role_oid', i.submitted_by::oid::int, 'role_name', r.rolname, 'rolsuper', r.rolsuper,
             'events', '[]'::json,
             'nodes', (SELECT json_agg(json_build_object('id', n.id, 'st', n.status,
                                                         'sd', n.status_details ->> 'execution_id'))
                         FROM df.nodes n WHERE n.instance_id = i.id),
             'graph', (SELECT json_agg(json_build_object('id', n.id, 'node_type', n.node_type, 'query', n.query,
                                                         'result_name', n.result_name, 'left_node', n.left_node,
                                                         'right_node', n.right_node))
                         FROM df.nodes n WHERE n.instance_id = i.id))::text
      INTO v_claim
      FROM df.instances i LEFT JOIN pg_roles r ON r.oid = i.submitted_by
     WHERE i.id = v_id AND i.lease_owner = p_lease_owner AND i.lease_epoch = 1 AND i.event_seq = 0
       AND i.status = 'running' AND i.vars = '{}'::jsonb;
    IF v_claim IS NOT NULL THEN
      RAISE NOTICE USING MESSAGE = 'dfgate born claim ' || p_nonce || ' ' || v_claim;
    END IF;
  END IF;
  RETURN v_id;
END $$;

COMMENT ON FUNCTION df._start_rows(json, text, text, integer, text) IS
  'internal: df._start_rows with a lease whose claim (the instance as the executor reads it) is raised as a NOTICE naming p_nonce, for the proxy that asked';
