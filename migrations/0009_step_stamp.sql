-- dfgate migration 0009: a step's checkpoint also writes its node's final
-- status, result and stamp (spec §5.6) in the step's own transaction, so the
-- executor needs no separate round trip for it. The seven-argument form stays
-- for executors of an earlier version during an upgrade.

CREATE FUNCTION df._complete_step(p_instance text, p_node text, p_activation text, p_epoch bigint,
                                  p_token text, p_kind text, p_detail jsonb, p_stamp text) RETURNS bigint
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog
  AS $$
DECLARE
  v_inst record;
  v_seq bigint;
BEGIN
  -- the same checks as the seven-argument form (0005), then one update of the node
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
  UPDATE df.nodes
     SET attempt_token = NULL,
         status = CASE WHEN p_kind = 'done' THEN 'completed' ELSE 'failed' END,
         result = CASE WHEN p_kind = 'done'
                       THEN COALESCE(df._try_jsonb(p_detail ->> 'result'), to_jsonb(p_detail ->> 'result'))
                       ELSE to_jsonb(p_detail ->> 'error') END,
         status_details = jsonb_build_object('execution_id', p_stamp),
         updated_at = now()
   WHERE instance_id = p_instance AND id = p_node AND activation = p_activation
     AND attempt_token = encode(sha256(convert_to(p_token, 'UTF8')), 'hex');
  IF NOT FOUND THEN
    RAISE EXCEPTION 'dfgate: stale attempt for node % of instance %', p_node, p_instance USING ERRCODE = '40001';
  END IF;
  v_seq := v_inst.event_seq + 1;
  INSERT INTO df.events (instance_id, submitted_by, node_id, kind, detail, seq, activation)
  VALUES (p_instance, v_inst.submitted_by, p_node, p_kind, p_detail, v_seq, p_activation);
  UPDATE df.instances SET event_seq = v_seq, updated_at = now() WHERE id = p_instance;
  RETURN v_seq;
END $$;
COMMENT ON FUNCTION df._complete_step(text, text, text, bigint, text, text, jsonb, text) IS
  'internal: records a step''s outcome and its node''s final status and stamp in the step''s own transaction';
