-- dfgate migration 0009: a step's checkpoint also writes its node's final
-- status, result and stamp (spec §5.6) in the step's own transaction, so the
-- executor needs no separate round trip for it. The seven-argument form stays
-- for executors of an earlier version during an upgrade.

CREATE FUNCTION df._complete_step(p_instance text, p_node text, p_activation text, p_epoch bigint,
                                  p_token text, p_kind text, p_detail jsonb, p_stamp text) RETURNS bigint
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog
  AS $$
DECLARE
  v_seq bigint;
BEGIN
  v_seq := df._complete_step(p_instance, p_node, p_activation, p_epoch, p_token, p_kind, p_detail);
  UPDATE df.nodes
     SET status = CASE WHEN p_kind = 'done' THEN 'completed' ELSE 'failed' END,
         result = CASE WHEN p_kind = 'done'
                       THEN COALESCE(df._try_jsonb(p_detail ->> 'result'), to_jsonb(p_detail ->> 'result'))
                       ELSE to_jsonb(p_detail ->> 'error') END,
         status_details = jsonb_build_object('execution_id', p_stamp),
         updated_at = now()
   WHERE instance_id = p_instance AND id = p_node;
  RETURN v_seq;
END $$;
COMMENT ON FUNCTION df._complete_step(text, text, text, bigint, text, text, jsonb, text) IS
  'internal: records a step''s outcome and its node''s final status and stamp in the step''s own transaction';
