-- Change notifications for the web console (docs/ui.md).
--
-- The console keeps one LISTEN connection per dfgate process on the channel
-- dfgate_ui and pushes "these instances changed" to the browsers of the role
-- that owns them (server-sent events); browsers then re-read what they show,
-- as their own role. Nothing here is needed for workflows to run.
--
-- The triggers are statement-level with transition tables, so one UPDATE of
-- many nodes (the executor writes a tick's node statuses in one statement)
-- costs one trigger call and at most one notification per owning role, and
-- PostgreSQL folds identical notifications of one transaction into one.
-- Instance updates that change neither status nor waiting signals (lease
-- renewals, wake times) notify nothing. Payload: {"r": <owner as regrole
-- text>, "i": [<instance ids>]}, with "i": null when more than 100 instances
-- changed at once (the console then refreshes everything of that role).
-- The functions keep PUBLIC EXECUTE (USAGE on schema df gates them, as for
-- the other df.* functions): users' own statements (df.start, df.signal,
-- df.cancel) fire these triggers. Anyone may pg_notify any channel anyway; a
-- forged notification only makes browsers re-read what RLS lets them see.

CREATE FUNCTION df._ui_notify(p_rows jsonb) RETURNS void
  LANGUAGE sql SET search_path = pg_catalog
  AS $$
  SELECT pg_notify('dfgate_ui', json_build_object(
           'r', r.who,
           'i', CASE WHEN cardinality(r.ids) > 100 THEN NULL ELSE to_json(r.ids) END)::text)
    FROM (SELECT x->>'r' AS who, array_agg(DISTINCT x->>'i' ORDER BY x->>'i') AS ids
            FROM jsonb_array_elements(p_rows) AS x
           GROUP BY x->>'r') AS r
$$;

CREATE FUNCTION df._ui_notify_instances() RETURNS trigger
  LANGUAGE plpgsql SET search_path = pg_catalog
  AS $$
DECLARE
  v_rows jsonb;
BEGIN
  IF TG_OP = 'INSERT' THEN
    SELECT jsonb_agg(jsonb_build_object('r', n.submitted_by::text, 'i', n.id)) INTO v_rows
      FROM ui_new n;
  ELSE
    SELECT jsonb_agg(jsonb_build_object('r', n.submitted_by::text, 'i', n.id)) INTO v_rows
      FROM ui_new n JOIN ui_old o ON o.id = n.id
     WHERE n.status IS DISTINCT FROM o.status
        OR n.waiting_signals IS DISTINCT FROM o.waiting_signals;
  END IF;
  IF v_rows IS NOT NULL THEN
    PERFORM df._ui_notify(v_rows);
  END IF;
  RETURN NULL;
END $$;

CREATE FUNCTION df._ui_notify_children() RETURNS trigger
  LANGUAGE plpgsql SET search_path = pg_catalog
  AS $$
DECLARE
  v_rows jsonb;
BEGIN
  SELECT jsonb_agg(DISTINCT jsonb_build_object('r', n.submitted_by::text, 'i', n.instance_id))
    INTO v_rows
    FROM ui_new n
   WHERE n.submitted_by IS NOT NULL;
  IF v_rows IS NOT NULL THEN
    PERFORM df._ui_notify(v_rows);
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER instances_ui_insert AFTER INSERT ON df.instances
  REFERENCING NEW TABLE AS ui_new
  FOR EACH STATEMENT EXECUTE FUNCTION df._ui_notify_instances();
CREATE TRIGGER instances_ui_update AFTER UPDATE ON df.instances
  REFERENCING OLD TABLE AS ui_old NEW TABLE AS ui_new
  FOR EACH STATEMENT EXECUTE FUNCTION df._ui_notify_instances();
CREATE TRIGGER nodes_ui_update AFTER UPDATE ON df.nodes
  REFERENCING NEW TABLE AS ui_new
  FOR EACH STATEMENT EXECUTE FUNCTION df._ui_notify_children();
CREATE TRIGGER signals_ui_insert AFTER INSERT ON df.signals
  REFERENCING NEW TABLE AS ui_new
  FOR EACH STATEMENT EXECUTE FUNCTION df._ui_notify_children();
CREATE TRIGGER signals_ui_update AFTER UPDATE ON df.signals
  REFERENCING NEW TABLE AS ui_new
  FOR EACH STATEMENT EXECUTE FUNCTION df._ui_notify_children();

COMMENT ON FUNCTION df._ui_notify(jsonb) IS 'internal: the web console''s change notification (channel dfgate_ui)';
COMMENT ON FUNCTION df._ui_notify_instances() IS 'internal: trigger, notifies the web console of instance changes';
COMMENT ON FUNCTION df._ui_notify_children() IS 'internal: trigger, notifies the web console of node and signal changes';
