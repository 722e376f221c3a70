-- dfgate migration 0005: executor bookkeeping.
--
-- The executor is event-sourced per instance: every leaf activation (a SQL
-- step, a timer, a signal wait) ends in one row of df.events, numbered by a
-- per-instance sequence (df.instances.event_seq) under the instance's row
-- lock, so the numbering is the commit order. The executor derives
-- everything else (which node runs next, named results, loop iterations) by
-- replaying the graph over these events. A SQL step writes its event in the
-- same transaction as its own effect, through df._complete_step, which checks
-- the lease epoch and a per-attempt token: a step commits exactly once, and a
-- stalled executor whose lease was taken over cannot commit anything.
-- Loop iterations are summarised by 'iter' events, after which the events of
-- older iterations are deleted, so long-running loops keep a bounded history.

ALTER TABLE df.instances
  ADD COLUMN event_seq bigint NOT NULL DEFAULT 0,
  ADD COLUMN waiting_signals text[],
  ADD COLUMN error text;

ALTER TABLE df.nodes
  ADD COLUMN attempt_token text,
  ADD COLUMN activation text;

ALTER TABLE df.events
  ADD COLUMN seq bigint,
  ADD COLUMN activation text;
CREATE UNIQUE INDEX events_activation_idx ON df.events (instance_id, activation, kind) WHERE activation IS NOT NULL;

-- Instances waiting for a signal that has arrived.
CREATE INDEX signals_unconsumed_idx ON df.signals (instance_id, signal_name) WHERE consumed_at IS NULL;

-- Records the outcome of a leaf activation. Called by the executor on the step
-- connection (inside the step's own transaction, as the submitting role) or on
-- its control connection. Raises, so the caller's transaction rolls back, when
-- the lease was taken over, the instance has finished or been cancelled, or
-- the attempt token is not the current one.
CREATE FUNCTION df._complete_step(p_instance text, p_node text, p_activation text, p_epoch bigint,
                                  p_token text, p_kind text, p_detail jsonb) RETURNS bigint
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog
  AS $$
DECLARE
  v_inst record;
  v_seq bigint;
BEGIN
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
  IF NOT EXISTS (SELECT 1 FROM df.nodes WHERE instance_id = p_instance AND id = p_node
                  AND activation = p_activation
                  AND attempt_token = encode(sha256(convert_to(p_token, 'UTF8')), 'hex')) THEN
    RAISE EXCEPTION 'dfgate: stale attempt for node % of instance %', p_node, p_instance USING ERRCODE = '40001';
  END IF;
  v_seq := v_inst.event_seq + 1;
  INSERT INTO df.events (instance_id, submitted_by, node_id, kind, detail, seq, activation)
  VALUES (p_instance, v_inst.submitted_by, p_node, p_kind, p_detail, v_seq, p_activation);
  UPDATE df.instances SET event_seq = v_seq, updated_at = now() WHERE id = p_instance;
  UPDATE df.nodes SET attempt_token = NULL WHERE instance_id = p_instance AND id = p_node;
  RETURN v_seq;
END $$;
-- EXECUTE stays with PUBLIC: the step runs as the submitting role. Calling it
-- by hand needs the attempt token, of which the database holds only a hash.
COMMENT ON FUNCTION df._complete_step(text, text, text, bigint, text, text, jsonb) IS
  'internal: records a step''s outcome in the step''s own transaction (lease epoch and attempt token checked)';

-- Records an event decided on the executor's control connection (timers armed
-- and fired, signals delivered, loop iterations summarised), under the same
-- lease check. Only the executor group may call it.
CREATE FUNCTION df._record_event(p_instance text, p_epoch bigint, p_node text, p_activation text,
                                 p_kind text, p_detail jsonb) RETURNS bigint
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog
  AS $$
DECLARE
  v_inst record;
  v_seq bigint;
BEGIN
  SELECT status, lease_epoch, submitted_by, event_seq INTO v_inst
    FROM df.instances WHERE id = p_instance FOR UPDATE;
  IF NOT FOUND OR v_inst.lease_epoch <> p_epoch OR v_inst.status NOT IN ('pending', 'running') THEN
    RAISE EXCEPTION 'dfgate: lease of instance % is no longer held', p_instance USING ERRCODE = '40001';
  END IF;
  v_seq := v_inst.event_seq + 1;
  INSERT INTO df.events AS e (instance_id, submitted_by, node_id, kind, detail, seq, activation)
  VALUES (p_instance, v_inst.submitted_by, p_node, p_kind, p_detail, v_seq, p_activation)
  ON CONFLICT (instance_id, activation, kind) WHERE activation IS NOT NULL
  DO UPDATE SET detail = EXCLUDED.detail, seq = EXCLUDED.seq, created_at = clock_timestamp();
  UPDATE df.instances SET event_seq = v_seq WHERE id = p_instance;
  RETURN v_seq;
END $$;
REVOKE EXECUTE ON FUNCTION df._record_event(text, bigint, text, text, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION df._record_event(text, bigint, text, text, text, jsonb) TO df_executor;
COMMENT ON FUNCTION df._record_event(text, bigint, text, text, text, jsonb) IS
  'internal: records an executor-side event of an instance whose lease the caller holds';

-- df.result: the parameter is referenced by position, since a column of
-- df.nodes (instance_id) shares its name.
CREATE OR REPLACE FUNCTION df.result(instance_id text) RETURNS text
  LANGUAGE sql STABLE STRICT SECURITY INVOKER SET search_path = pg_catalog
  AS $$ SELECT n.result::text FROM df.instances i JOIN df.nodes n ON n.instance_id = i.id AND n.id = i.root_node
         WHERE i.id = $1 AND n.status = 'completed' $$;
