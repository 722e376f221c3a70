-- dfgate migration 0028: a checkpoint locks and writes its instance row in one statement.
--
-- df._complete_step read the instance row FOR UPDATE to check the lease
-- epoch and status, and wrote it at the end (event_seq, and the finish):
-- two statements on the same row per step. Now, after the attempt check,
-- which still comes first (a caller without the attempt's token learns
-- nothing of the instance and locks nothing), one UPDATE takes the row lock,
-- checks epoch and status in its WHERE clause and returns the new event
-- sequence number. When it finds no row, a read says which refusal applies
-- (DF001 lease taken over, DF003 instance finished or gone), as before; the
-- refusal rolls the update back with the step. Everything else is unchanged.

CREATE OR REPLACE FUNCTION df._complete_step(p_instance text, p_node text, p_activation text, p_epoch bigint,
                                  p_token text, p_kind text, p_detail jsonb, p_stamp text,
                                  p_after jsonb) RETURNS bigint
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  v_inst record;
  v_seq bigint;
  v_sub regrole;
  v_hash text := encode(sha256(convert_to(p_token, 'UTF8')), 'hex');
  v_finish boolean := p_after ? 'finish';
  v_own int;
BEGIN
  IF NOT EXISTS (SELECT 1 FROM df.nodes WHERE instance_id = p_instance AND id = p_node
                  AND activation = p_activation AND attempt_token = v_hash) THEN
    RAISE EXCEPTION 'dfgate: stale attempt for node % of instance %', p_node, p_instance USING ERRCODE = 'DF002';
  END IF;
  UPDATE df.instances
     SET event_seq = event_seq + 1, updated_at = now(),
         status = CASE WHEN v_finish THEN 'completed' ELSE status END,
         output = CASE WHEN v_finish THEN p_after -> 'finish' ->> 'output' ELSE output END,
         error = CASE WHEN v_finish THEN NULL ELSE error END,
         completed_at = CASE WHEN v_finish THEN now() ELSE completed_at END,
         lease_owner = CASE WHEN v_finish THEN NULL ELSE lease_owner END,
         lease_expires_at = CASE WHEN v_finish THEN NULL ELSE lease_expires_at END,
         wake_at = CASE WHEN v_finish THEN NULL ELSE wake_at END,
         waiting_signals = CASE WHEN v_finish THEN NULL ELSE waiting_signals END
   WHERE id = p_instance AND lease_epoch = p_epoch AND status IN ('pending', 'running')
   RETURNING event_seq, submitted_by INTO v_seq, v_sub;
  IF NOT FOUND THEN
    SELECT status, lease_epoch INTO v_inst FROM df.instances WHERE id = p_instance;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'dfgate: instance % not found', p_instance USING ERRCODE = 'DF003';
    END IF;
    IF v_inst.lease_epoch <> p_epoch THEN
      RAISE EXCEPTION 'dfgate: lease of instance % was taken over (epoch % is not %)', p_instance, p_epoch, v_inst.lease_epoch
        USING ERRCODE = 'DF001';
    END IF;
    RAISE EXCEPTION 'dfgate: instance % is %', p_instance, v_inst.status USING ERRCODE = 'DF003';
  END IF;
  INSERT INTO df.events (instance_id, submitted_by, node_id, kind, detail, seq, activation)
  VALUES (p_instance, v_sub, p_node, p_kind, p_detail, v_seq, p_activation);
  WITH s AS (
    SELECT * FROM jsonb_to_recordset(CASE WHEN jsonb_typeof(p_after -> 'stamps') = 'array'
                                          THEN p_after -> 'stamps' ELSE '[]' END)
                  AS u(id text, status text, result text, stamp text, extra text)
  ), m AS (
    SELECT * FROM jsonb_to_recordset(CASE WHEN jsonb_typeof(p_after -> 'marks') = 'array'
                                          THEN p_after -> 'marks' ELSE '[]' END)
                  AS m(node text, activation text, token_hash text, stamp text, attempt int)
     WHERE m.node <> p_node
       AND NOT EXISTS (SELECT 1 FROM df.events e WHERE e.instance_id = p_instance AND e.activation = m.activation
                          AND e.kind IN ('done', 'failed'))
  ), c AS (
    -- one row per node: the step's own (o), a stamp (s), an attempt mark (m)
    SELECT COALESCE(m.node, s.id, o.id) AS id, o.id IS NOT NULL AS own, s.id IS NOT NULL AS stamped,
           m.node IS NOT NULL AS marked, s.status AS s_status, s.result AS s_result, s.stamp AS s_stamp,
           s.extra::jsonb AS s_extra, m.activation AS m_activation, m.token_hash AS m_token,
           m.stamp AS m_stamp, m.attempt AS m_attempt
      FROM (SELECT p_node AS id) o
      FULL JOIN s ON s.id = o.id
      FULL JOIN m ON m.node = COALESCE(s.id, o.id)
  ), upd AS (
    UPDATE df.nodes n
       SET activation = CASE WHEN c.marked THEN c.m_activation ELSE n.activation END,
           attempt_token = CASE WHEN c.marked THEN c.m_token WHEN c.own THEN NULL ELSE n.attempt_token END,
           attempts = CASE WHEN c.marked THEN c.m_attempt
                           WHEN c.stamped THEN COALESCE((c.s_extra ->> 'attempt')::int, n.attempts)
                           ELSE n.attempts END,
           status = CASE WHEN c.marked THEN 'running'
                         WHEN c.stamped THEN c.s_status
                         WHEN p_kind = 'done' THEN 'completed' ELSE 'failed' END,
           result = CASE WHEN c.marked THEN NULL
                         WHEN c.stamped THEN CASE WHEN c.s_result IS NULL THEN NULL ELSE c.s_result::jsonb END
                         WHEN p_kind = 'done'
                         THEN COALESCE(df._try_jsonb(p_detail ->> 'result'), to_jsonb(p_detail ->> 'result'))
                         ELSE to_jsonb(p_detail ->> 'error') END,
           status_details = CASE WHEN c.marked THEN jsonb_build_object('execution_id', c.m_stamp)
                                 WHEN c.stamped THEN jsonb_build_object('execution_id', c.s_stamp) || COALESCE(c.s_extra, '{}')
                                 ELSE jsonb_build_object('execution_id', p_stamp) END,
           updated_at = now()
      FROM c
     WHERE n.instance_id = p_instance AND n.id = c.id
       AND (NOT c.own OR (n.activation = p_activation AND n.attempt_token = v_hash))
    RETURNING n.id
  )
  SELECT count(*) FILTER (WHERE upd.id = p_node) INTO v_own FROM upd;
  IF v_own = 0 THEN
    RAISE EXCEPTION 'dfgate: stale attempt for node % of instance %', p_node, p_instance USING ERRCODE = 'DF002';
  END IF;
  RETURN v_seq;
END $$;
