-- dfgate migration 0032: a checkpoint with one stamp also writes its nodes by primary key.
--
-- Migration 0030 gave checkpoints without stamps an UPDATE by primary key;
-- one with a stamp still went through the statement that joins stamps and
-- marks. In a chain of SQL steps nearly every checkpoint carries one stamp:
-- the THEN node that the step completes (its result is the step's), beside
-- the next step's mark. On the peers' W1 (200 workflows of 10 chained steps)
-- 1,800 of 2,000 checkpoints did, and the joined statement cost 0.24 ms of
-- PostgreSQL's time where the primary-key one costs 0.10 to 0.15 ms
-- (docs/benchmarks.md, "One stamp by primary key"). Now a checkpoint with
-- exactly one stamp, an object whose id is a string naming neither the step
-- itself nor the marked node, and at most one mark writes the three nodes in
-- one UPDATE by primary key. Any other checkpoint runs as before.
--
-- What is written, and what is refused, is unchanged. The joined statement
-- converts a stamp's result and extra to jsonb (and extra's attempt to an
-- integer) only for a stamp whose node exists, in that order; this path does
-- the same conversions in the same order, only after finding the stamp's
-- node, and before the UPDATE (so that a custom plan never folds a
-- conversion that no row would reach).

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
  v_marks jsonb := CASE WHEN jsonb_typeof(p_after -> 'marks') = 'array' THEN p_after -> 'marks' ELSE '[]' END;
  v_mark jsonb := v_marks -> 0;
  v_m_node text;
  v_m_attempt int;
  -- the one stamp of the primary-key path with a stamp (NULL: no such path)
  v_stamp jsonb := CASE WHEN jsonb_typeof(p_after -> 'stamps') = 'array'
                             AND jsonb_array_length(p_after -> 'stamps') = 1
                        THEN p_after -> 'stamps' -> 0 END;
  v_s_id text;
  v_s_result jsonb;
  v_s_extra jsonb;
  v_s_attempt int;
  -- the statement that joins stamps and marks: for stamps, more than one mark, or a mark that
  -- is not an object (jsonb_to_recordset refuses it, as before)
  v_joined boolean := CASE WHEN jsonb_typeof(p_after -> 'stamps') = 'array'
                           THEN jsonb_array_length(p_after -> 'stamps') > 0 ELSE false END
                      OR jsonb_array_length(v_marks) > 1
                      OR (v_mark IS NOT NULL AND jsonb_typeof(v_mark) <> 'object');
BEGIN
  IF v_stamp IS NOT NULL AND jsonb_typeof(v_stamp) = 'object' AND jsonb_typeof(v_stamp -> 'id') = 'string'
     AND jsonb_array_length(v_marks) <= 1 AND (v_mark IS NULL OR jsonb_typeof(v_mark) = 'object') THEN
    v_s_id := v_stamp ->> 'id';
    IF v_s_id = p_node OR v_s_id = v_mark ->> 'node' THEN
      v_s_id := NULL;
    END IF;
  END IF;
  -- a stamp on a third node: the primary-key path with a stamp
  IF v_s_id IS NOT NULL THEN
    v_joined := false;
  END IF;
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
  IF v_joined THEN
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
  ELSIF v_s_id IS NOT NULL THEN
    -- one stamp on a third node and at most one mark: the three nodes by primary key
    v_m_node := v_mark ->> 'node';
    IF v_m_node = p_node THEN
      v_m_node := NULL;
    END IF;
    v_m_attempt := (v_mark ->> 'attempt')::int;
    -- the stamp's conversions, for a node that exists, in the joined statement's order
    IF EXISTS (SELECT 1 FROM df.nodes WHERE instance_id = p_instance AND id = v_s_id) THEN
      v_s_result := CASE WHEN v_stamp ->> 'result' IS NULL THEN NULL ELSE (v_stamp ->> 'result')::jsonb END;
      v_s_extra := (v_stamp ->> 'extra')::jsonb;
      v_s_attempt := (v_s_extra ->> 'attempt')::int;
    END IF;
    WITH upd AS (
      UPDATE df.nodes n
         SET activation = CASE WHEN n.id = p_node OR n.id = v_s_id THEN n.activation ELSE v_mark ->> 'activation' END,
             attempt_token = CASE WHEN n.id = p_node THEN NULL
                                  WHEN n.id = v_s_id THEN n.attempt_token ELSE v_mark ->> 'token_hash' END,
             attempts = CASE WHEN n.id = p_node THEN n.attempts
                             WHEN n.id = v_s_id THEN COALESCE(v_s_attempt, n.attempts) ELSE v_m_attempt END,
             status = CASE WHEN n.id = v_s_id THEN v_stamp ->> 'status'
                           WHEN n.id <> p_node THEN 'running'
                           WHEN p_kind = 'done' THEN 'completed' ELSE 'failed' END,
             result = CASE WHEN n.id = v_s_id THEN v_s_result
                           WHEN n.id <> p_node THEN NULL
                           WHEN p_kind = 'done'
                           THEN COALESCE(df._try_jsonb(p_detail ->> 'result'), to_jsonb(p_detail ->> 'result'))
                           ELSE to_jsonb(p_detail ->> 'error') END,
             status_details = CASE WHEN n.id = p_node THEN jsonb_build_object('execution_id', p_stamp)
                                   WHEN n.id = v_s_id
                                   THEN jsonb_build_object('execution_id', v_stamp ->> 'stamp') || COALESCE(v_s_extra, '{}')
                                   ELSE jsonb_build_object('execution_id', v_mark ->> 'stamp') END,
             updated_at = now()
       WHERE n.instance_id = p_instance AND n.id = ANY (ARRAY[p_node, v_m_node, v_s_id])
         AND CASE WHEN n.id = p_node THEN n.activation = p_activation AND n.attempt_token = v_hash
                  WHEN n.id = v_s_id THEN true
                  ELSE NOT EXISTS (SELECT 1 FROM df.events e WHERE e.instance_id = p_instance
                                      AND e.activation = v_mark ->> 'activation' AND e.kind IN ('done', 'failed'))
             END
      RETURNING n.id
    )
    SELECT count(*) FILTER (WHERE upd.id = p_node) INTO v_own FROM upd;
    IF v_own = 0 THEN
      RAISE EXCEPTION 'dfgate: stale attempt for node % of instance %', p_node, p_instance USING ERRCODE = 'DF002';
    END IF;
  ELSE
    -- no stamps and at most one mark: the step's own node and the marked one by primary key,
    -- in one statement (one set-up of the table's check constraints, no joins)
    v_m_node := v_mark ->> 'node';
    IF v_m_node = p_node THEN
      v_m_node := NULL;
    END IF;
    -- the attempt is read whether or not the mark applies, as the joined statement reads
    -- every mark: one that is not a whole number is refused either way
    v_m_attempt := (v_mark ->> 'attempt')::int;
    WITH upd AS (
      UPDATE df.nodes n
         SET activation = CASE WHEN n.id = p_node THEN n.activation ELSE v_mark ->> 'activation' END,
             attempt_token = CASE WHEN n.id = p_node THEN NULL ELSE v_mark ->> 'token_hash' END,
             attempts = CASE WHEN n.id = p_node THEN n.attempts ELSE v_m_attempt END,
             status = CASE WHEN n.id <> p_node THEN 'running'
                           WHEN p_kind = 'done' THEN 'completed' ELSE 'failed' END,
             result = CASE WHEN n.id <> p_node THEN NULL
                           WHEN p_kind = 'done'
                           THEN COALESCE(df._try_jsonb(p_detail ->> 'result'), to_jsonb(p_detail ->> 'result'))
                           ELSE to_jsonb(p_detail ->> 'error') END,
             status_details = jsonb_build_object('execution_id',
                                                 CASE WHEN n.id = p_node THEN p_stamp ELSE v_mark ->> 'stamp' END),
             updated_at = now()
       WHERE n.instance_id = p_instance AND n.id = ANY (ARRAY[p_node, v_m_node])
         AND CASE WHEN n.id = p_node THEN n.activation = p_activation AND n.attempt_token = v_hash
                  ELSE NOT EXISTS (SELECT 1 FROM df.events e WHERE e.instance_id = p_instance
                                      AND e.activation = v_mark ->> 'activation' AND e.kind IN ('done', 'failed'))
             END
      RETURNING n.id
    )
    SELECT count(*) FILTER (WHERE upd.id = p_node) INTO v_own FROM upd;
    IF v_own = 0 THEN
      RAISE EXCEPTION 'dfgate: stale attempt for node % of instance %', p_node, p_instance USING ERRCODE = 'DF002';
    END IF;
  END IF;
  RETURN v_seq;
END $$;
