-- dfgate migration 0001: storage.
--
-- The df schema holds every durable workflow: one df.instances row per
-- started workflow, one df.nodes row per node of its graph (spec §5), and the
-- per-role variables in df.vars. dfgate's executor adds its own bookkeeping
-- columns after the spec's (lease owner/epoch/expiry, wake_at, attempts, the
-- variable snapshot) and its own tables: df.signals (the durable signal inbox,
-- DESIGN.md §5 Q1), df.events (history), df.config (settings the in-database
-- functions read) and df.role_grants (which roles were given usage, so the
-- executor can provision their step logins).
--
-- Security model (spec §9): nothing is granted to PUBLIC. df.grant_usage()
-- gives a role what it needs. Row-level security scopes every user table to
-- submitted_by/owner = current_user; the NOLOGIN group df_executor has its own
-- policies over all rows. Only df.start's insert path (df._activate, which
-- re-validates the rows) can make an instance runnable: users hold no
-- privilege on that column.

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'df_executor') THEN
    IF (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user) THEN
      CREATE ROLE df_executor NOLOGIN;
    ELSE
      RAISE EXCEPTION 'dfgate needs the group role df_executor, and role "%" may not create roles', current_user
        USING ERRCODE = '42501',
              HINT = 'An administrator runs once: CREATE ROLE df_executor NOLOGIN;  then run dfgate migrate again.';
    END IF;
  END IF;
END $$;

GRANT USAGE ON SCHEMA df TO df_executor;

-- Settings the in-database functions read. Writable only by the owner of the
-- df schema (no grants); read through df._setting(), a SECURITY DEFINER reader.
CREATE TABLE df.config (
  key         text PRIMARY KEY,
  value       jsonb NOT NULL,
  description text NOT NULL,
  CONSTRAINT config_known_key CHECK (key IN (
    'enable_superuser_instances', 'http_enabled', 'http_allow_private', 'http_allow_hosts',
    'list_instances_max_limit', 'executor_group'))
);
INSERT INTO df.config (key, value, description) VALUES
  ('enable_superuser_instances', 'false', 'allow superusers to start instances (spec §9.4)'),
  ('http_enabled', 'true', 'allow HTTP steps at all (spec §9.6)'),
  ('http_allow_private', 'false', 'allow loopback and private addresses for HTTP steps (link-local and metadata stay refused)'),
  ('http_allow_hosts', '[]', 'when non-empty, HTTP steps may only call these hosts (exact names or ".suffix")'),
  ('list_instances_max_limit', '1000', 'upper bound for df.list_instances limit_count'),
  ('executor_group', '"df_executor"', 'the NOLOGIN group whose members run workflows');
REVOKE ALL ON df.config FROM PUBLIC;
GRANT SELECT ON df.config TO df_executor;

CREATE FUNCTION df._setting(p_key text) RETURNS jsonb
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog
  AS $$ SELECT value FROM df.config WHERE key = p_key $$;
COMMENT ON FUNCTION df._setting(text) IS 'internal: reads one df.config setting';

-- Is the current role the executor, the owner of the df schema (the
-- SECURITY DEFINER functions run as it) or a superuser?
CREATE FUNCTION df._is_executor() RETURNS boolean
  LANGUAGE sql STABLE SET search_path = pg_catalog
  AS $$ SELECT pg_has_role(current_user, 'df_executor', 'MEMBER')
               OR pg_has_role(current_user, (SELECT nspowner FROM pg_namespace WHERE nspname = 'df'), 'MEMBER')
               OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) $$;

CREATE TABLE df.instances (
  id               varchar(8) PRIMARY KEY CONSTRAINT instances_id_check CHECK (id ~ '^[0-9a-f]{8}$'),
  label            text,
  root_node        varchar(8) NOT NULL CONSTRAINT instances_root_node_check CHECK (root_node ~ '^[0-9a-f]{8}$'),
  status           text NOT NULL DEFAULT 'pending'
                   CONSTRAINT instances_status_check CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
  submitted_by     regrole NOT NULL,
  database         text,
  created_at       timestamptz NOT NULL DEFAULT now(),
  updated_at       timestamptz NOT NULL DEFAULT now(),
  completed_at     timestamptz,
  -- dfgate's own columns, written only by df._activate and the executor.
  runnable         boolean NOT NULL DEFAULT false,
  wake_at          timestamptz,
  lease_owner      text,
  lease_epoch      bigint NOT NULL DEFAULT 0,
  lease_expires_at timestamptz,
  attempts         integer NOT NULL DEFAULT 0,
  vars             jsonb NOT NULL DEFAULT '{}',
  options          jsonb NOT NULL DEFAULT '{}',
  idempotency_key  text,
  CONSTRAINT instances_id_submitted_by_key UNIQUE (id, submitted_by)
);
CREATE INDEX instances_status_created_idx ON df.instances (status, created_at DESC, id);
CREATE INDEX instances_created_idx ON df.instances (created_at DESC, id);
CREATE INDEX instances_label_idx ON df.instances (label, created_at DESC, id) WHERE label IS NOT NULL;
-- The claim query: runnable, unfinished, fair across roles (oldest first per role).
CREATE INDEX instances_claim_idx ON df.instances (submitted_by, created_at, id)
  WHERE runnable AND status IN ('pending', 'running');
-- The timer scan: instances sleeping until wake_at.
CREATE INDEX instances_wake_idx ON df.instances (wake_at)
  WHERE runnable AND wake_at IS NOT NULL AND status IN ('pending', 'running');
-- Expired leases.
CREATE INDEX instances_lease_idx ON df.instances (lease_expires_at)
  WHERE lease_owner IS NOT NULL;
CREATE UNIQUE INDEX instances_idempotency_idx ON df.instances (submitted_by, idempotency_key)
  WHERE idempotency_key IS NOT NULL;

CREATE TABLE df.nodes (
  id             varchar(8) NOT NULL CONSTRAINT nodes_id_check CHECK (id ~ '^[0-9a-f]{8}$'),
  instance_id    varchar(8) NOT NULL CONSTRAINT nodes_instance_id_check CHECK (instance_id ~ '^[0-9a-f]{8}$'),
  node_type      text NOT NULL CONSTRAINT nodes_node_type_check CHECK (node_type IN (
                   'SQL', 'THEN', 'IF', 'JOIN', 'LOOP', 'BREAK', 'RACE', 'SLEEP', 'WAIT_SCHEDULE',
                   'HTTP', 'HTTP_MULTIPART', 'SIGNAL')),
  query          text,
  result_name    text CONSTRAINT nodes_result_name_check CHECK (result_name ~ '^[A-Za-z_][A-Za-z0-9_]*$'),
  left_node      varchar(8) CONSTRAINT nodes_left_node_check CHECK (left_node ~ '^[0-9a-f]{8}$'),
  right_node     varchar(8) CONSTRAINT nodes_right_node_check CHECK (right_node ~ '^[0-9a-f]{8}$'),
  status         text NOT NULL DEFAULT 'pending'
                 CONSTRAINT nodes_status_check CHECK (status IN ('pending', 'running', 'completed', 'failed')),
  result         jsonb,
  error          text,
  submitted_by   regrole,
  database       text,
  created_at     timestamptz NOT NULL DEFAULT now(),
  updated_at     timestamptz NOT NULL DEFAULT now(),
  status_details jsonb,
  -- dfgate's own columns.
  attempts       integer NOT NULL DEFAULT 0,
  wake_at        timestamptz,
  PRIMARY KEY (instance_id, id),
  CONSTRAINT nodes_result_terminal_check CHECK (result IS NULL OR status IN ('completed', 'failed')),
  CONSTRAINT nodes_structure_check CHECK (CASE node_type
    WHEN 'THEN' THEN left_node IS NOT NULL AND right_node IS NOT NULL AND query IS NULL
    WHEN 'IF'   THEN left_node IS NOT NULL AND right_node IS NOT NULL AND query IS NOT NULL
    WHEN 'LOOP' THEN left_node IS NOT NULL AND right_node IS NULL
    WHEN 'JOIN' THEN left_node IS NOT NULL AND right_node IS NOT NULL
    WHEN 'RACE' THEN left_node IS NOT NULL AND right_node IS NOT NULL AND query IS NULL
    ELSE left_node IS NULL AND right_node IS NULL AND query IS NOT NULL END),
  CONSTRAINT nodes_instance_fkey FOREIGN KEY (instance_id, submitted_by)
    REFERENCES df.instances (id, submitted_by) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
  CONSTRAINT nodes_left_fkey FOREIGN KEY (instance_id, left_node)
    REFERENCES df.nodes (instance_id, id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
  CONSTRAINT nodes_right_fkey FOREIGN KEY (instance_id, right_node)
    REFERENCES df.nodes (instance_id, id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED
);
CREATE INDEX nodes_instance_idx ON df.nodes (instance_id);
CREATE INDEX nodes_wake_idx ON df.nodes (wake_at) WHERE wake_at IS NOT NULL;

ALTER TABLE df.instances ADD CONSTRAINT instances_root_fkey FOREIGN KEY (id, root_node)
  REFERENCES df.nodes (instance_id, id) DEFERRABLE INITIALLY DEFERRED;

CREATE TABLE df.vars (
  name  text NOT NULL,
  value text,
  owner regrole NOT NULL DEFAULT quote_ident(current_user)::regrole,
  PRIMARY KEY (owner, name)
);

-- Durable signal inbox (DESIGN.md §5 Q1): a wait takes the oldest unconsumed
-- signal of its name.
CREATE TABLE df.signals (
  id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  instance_id  varchar(8) NOT NULL,
  submitted_by regrole NOT NULL,
  signal_name  text NOT NULL CONSTRAINT signals_name_check CHECK (signal_name <> ''),
  payload      jsonb NOT NULL,
  sent_by      regrole NOT NULL DEFAULT quote_ident(current_user)::regrole,
  created_at   timestamptz NOT NULL DEFAULT now(),
  consumed_at  timestamptz,
  consumed_by  varchar(8),
  CONSTRAINT signals_instance_fkey FOREIGN KEY (instance_id, submitted_by)
    REFERENCES df.instances (id, submitted_by) ON DELETE CASCADE
);
CREATE INDEX signals_pending_idx ON df.signals (instance_id, signal_name, id) WHERE consumed_at IS NULL;

-- Event history, written by the executor (one row per state change).
CREATE TABLE df.events (
  id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  instance_id  varchar(8) NOT NULL,
  submitted_by regrole NOT NULL,
  node_id      varchar(8),
  kind         text NOT NULL,
  detail       jsonb,
  created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
  CONSTRAINT events_instance_fkey FOREIGN KEY (instance_id, submitted_by)
    REFERENCES df.instances (id, submitted_by) ON DELETE CASCADE
);
CREATE INDEX events_instance_idx ON df.events (instance_id, id);

-- Roles given usage by df.grant_usage (the executor provisions their step logins).
CREATE TABLE df.role_grants (
  role_name    text PRIMARY KEY,
  include_http boolean NOT NULL,
  granted_by   text NOT NULL,
  granted_at   timestamptz NOT NULL DEFAULT now()
);

-- Identity trigger: submitted_by (owner for vars) defaults to current_user,
-- may not name another role (except for superusers), and never changes.
CREATE FUNCTION df._force_submitter() RETURNS trigger
  LANGUAGE plpgsql SET search_path = pg_catalog
  AS $$
DECLARE
  v_me regrole := quote_ident(current_user)::regrole;
BEGIN
  IF TG_OP = 'INSERT' THEN
    IF NEW.submitted_by IS NULL THEN
      NEW.submitted_by := v_me;
    ELSIF NEW.submitted_by <> v_me AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
      RAISE EXCEPTION 'new row violates row-level security policy for table "%": submitted_by must be the current role (%), not %',
        TG_TABLE_NAME, v_me, NEW.submitted_by USING ERRCODE = '42501';
    END IF;
  ELSIF NEW.submitted_by IS DISTINCT FROM OLD.submitted_by THEN
    RAISE EXCEPTION 'submitted_by of %.% cannot be changed', TG_TABLE_SCHEMA, TG_TABLE_NAME USING ERRCODE = '42501';
  END IF;
  RETURN NEW;
END $$;

CREATE TRIGGER instances_submitter BEFORE INSERT OR UPDATE OF submitted_by ON df.instances
  FOR EACH ROW EXECUTE FUNCTION df._force_submitter();
CREATE TRIGGER nodes_submitter BEFORE INSERT OR UPDATE OF submitted_by ON df.nodes
  FOR EACH ROW EXECUTE FUNCTION df._force_submitter();
CREATE TRIGGER signals_submitter BEFORE INSERT OR UPDATE OF submitted_by ON df.signals
  FOR EACH ROW EXECUTE FUNCTION df._force_submitter();

-- Users may change their instance's status only to 'cancelled', and only
-- while it is unfinished; finished rows never change status again.
CREATE FUNCTION df._guard_instance_update() RETURNS trigger
  LANGUAGE plpgsql SET search_path = pg_catalog
  AS $$
BEGIN
  IF NEW.status IS DISTINCT FROM OLD.status THEN
    IF OLD.status IN ('completed', 'failed', 'cancelled') THEN
      RAISE EXCEPTION 'instance % is already %; its status cannot change', OLD.id, OLD.status
        USING ERRCODE = '55000';
    END IF;
    IF NEW.status <> 'cancelled' AND NOT df._is_executor() THEN
      RAISE EXCEPTION 'instance status can only be changed to ''cancelled'' (use df.cancel)'
        USING ERRCODE = '42501';
    END IF;
  END IF;
  IF NEW.runnable AND NOT OLD.runnable AND NOT df._is_executor() THEN
    RAISE EXCEPTION 'only df.start can make an instance runnable' USING ERRCODE = '42501';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER instances_guard BEFORE UPDATE ON df.instances
  FOR EACH ROW EXECUTE FUNCTION df._guard_instance_update();

-- Row-level security (spec §9.2), plus explicit policies for the executor.
ALTER TABLE df.instances ENABLE ROW LEVEL SECURITY;
ALTER TABLE df.nodes     ENABLE ROW LEVEL SECURITY;
ALTER TABLE df.vars      ENABLE ROW LEVEL SECURITY;
ALTER TABLE df.signals   ENABLE ROW LEVEL SECURITY;
ALTER TABLE df.events    ENABLE ROW LEVEL SECURITY;

CREATE POLICY instances_owner ON df.instances FOR ALL
  USING (submitted_by = quote_ident(current_user)::regrole)
  WITH CHECK (submitted_by = quote_ident(current_user)::regrole);
CREATE POLICY nodes_owner ON df.nodes FOR ALL
  USING (submitted_by = quote_ident(current_user)::regrole)
  WITH CHECK (submitted_by = quote_ident(current_user)::regrole);
CREATE POLICY vars_owner ON df.vars FOR ALL
  USING (owner = quote_ident(current_user)::regrole)
  WITH CHECK (owner = quote_ident(current_user)::regrole);
CREATE POLICY signals_owner ON df.signals FOR ALL
  USING (submitted_by = quote_ident(current_user)::regrole)
  WITH CHECK (submitted_by = quote_ident(current_user)::regrole);
CREATE POLICY events_owner ON df.events FOR SELECT
  USING (submitted_by = quote_ident(current_user)::regrole);

CREATE POLICY instances_executor ON df.instances FOR ALL TO df_executor USING (true) WITH CHECK (true);
CREATE POLICY nodes_executor     ON df.nodes     FOR ALL TO df_executor USING (true) WITH CHECK (true);
CREATE POLICY vars_executor      ON df.vars      FOR SELECT TO df_executor USING (true);
CREATE POLICY signals_executor   ON df.signals   FOR ALL TO df_executor USING (true) WITH CHECK (true);
CREATE POLICY events_executor    ON df.events    FOR ALL TO df_executor USING (true) WITH CHECK (true);

-- Privileges: nothing to PUBLIC (spec §9.1); df.grant_usage grants per role.
REVOKE ALL ON df.instances, df.nodes, df.vars, df.signals, df.events, df.role_grants FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON df.instances, df.nodes, df.signals, df.events TO df_executor;
GRANT SELECT ON df.vars, df.role_grants TO df_executor;
