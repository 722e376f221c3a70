-- dfgate migration 0020: a step's checkpoint carries what follows from it.
--
-- Until now a SQL step cost three transactions: the attempt mark (control
-- connection), the step with its checkpoint (step connection), and then the
-- node stamps that follow from the outcome, the next step's attempt mark, or
-- the instance's completion (control connection again). The executor knows
-- the step's result before it sends the checkpoint, and its core is
-- deterministic, so it can work out what the committed outcome will lead to
-- and hand that to the checkpoint itself. This nine-argument form of
-- df._complete_step writes, in the step's own transaction and after the
-- same token, lease and status checks as the eight-argument form:
--   stamps  the node statuses that change with this outcome, the step's own
--           node included when a retry policy adds its attempt and last
--           error (as the executor's node stamp writes);
--   marks   the attempt marks of the SQL steps that start next (as the
--           executor's attempt mark: activation, the new attempt token's
--           hash, attempts, status running), each only if its activation
--           has no outcome yet;
--   finish  the instance's completion with its output, when this outcome
--           completes the workflow.
-- Everything commits with the step's effect or nothing does; the executor
-- writes whatever it could not hand over the way it did before. p_after
-- comes from the executor alone: without the attempt token the function
-- refuses, as the other forms do, before it reads anything.

CREATE FUNCTION df._complete_step(p_instance text, p_node text, p_activation text, p_epoch bigint,
                                  p_token text, p_kind text, p_detail jsonb, p_stamp text,
                                  p_after jsonb) RETURNS bigint
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog
  AS $$
DECLARE
  v_inst record;
  v_seq bigint;
  v_hash text := encode(sha256(convert_to(p_token, 'UTF8')), 'hex');
  v_finish boolean := p_after ? 'finish';
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
  IF jsonb_typeof(p_after -> 'stamps') = 'array' THEN
    UPDATE df.nodes n
       SET status = u.status,
           result = CASE WHEN u.result IS NULL THEN NULL ELSE u.result::jsonb END,
           status_details = jsonb_build_object('execution_id', u.stamp) || COALESCE(u.extra::jsonb, '{}'),
           attempts = COALESCE((u.extra::jsonb ->> 'attempt')::int, n.attempts),
           updated_at = now()
      FROM jsonb_to_recordset(p_after -> 'stamps') AS u(id text, status text, result text, stamp text, extra text)
     WHERE n.instance_id = p_instance AND n.id = u.id;
  END IF;
  IF jsonb_typeof(p_after -> 'marks') = 'array' THEN
    UPDATE df.nodes n
       SET activation = m.activation, attempt_token = m.token_hash, attempts = m.attempt,
           status = 'running', result = NULL,
           status_details = jsonb_build_object('execution_id', m.stamp), updated_at = now()
      FROM jsonb_to_recordset(p_after -> 'marks') AS m(node text, activation text, token_hash text, stamp text, attempt int)
     WHERE n.instance_id = p_instance AND n.id = m.node AND n.id <> p_node
       AND NOT EXISTS (SELECT 1 FROM df.events e WHERE e.instance_id = p_instance AND e.activation = m.activation
                          AND e.kind IN ('done', 'failed'));
  END IF;
  UPDATE df.instances
     SET event_seq = v_seq, updated_at = now(),
         status = CASE WHEN v_finish THEN 'completed' ELSE status END,
         output = CASE WHEN v_finish THEN p_after -> 'finish' ->> 'output' ELSE output END,
         error = CASE WHEN v_finish THEN NULL ELSE error END,
         completed_at = CASE WHEN v_finish THEN now() ELSE completed_at END,
         lease_owner = CASE WHEN v_finish THEN NULL ELSE lease_owner END,
         lease_expires_at = CASE WHEN v_finish THEN NULL ELSE lease_expires_at END,
         wake_at = CASE WHEN v_finish THEN NULL ELSE wake_at END,
         waiting_signals = CASE WHEN v_finish THEN NULL ELSE waiting_signals END
   WHERE id = p_instance;
  RETURN v_seq;
END $$;

COMMENT ON FUNCTION df._complete_step(text, text, text, bigint, text, text, jsonb, text, jsonb) IS
  'internal: as the eight-argument form, and writes in the same transaction what the executor says follows from the outcome (node stamps, the next attempt marks, the instance''s completion)';
