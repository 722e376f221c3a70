-- dfgate migration 0006: what the proxy's rewrite of df.start calls.
--
-- The proxy (DESIGN.md §2 path 2) replaces a df.start(...) call whose
-- workflow is a constant by df._start_graph(<compiled graph>, label, database,
-- df._start_options(...)), pasting the other arguments unchanged so that
-- PostgreSQL converts and checks them exactly as df.start does. df.start is
-- redefined on df._start_options so that both paths share one definition of
-- the options, and its refusal of transaction_mode => 'new' says what works.

CREATE FUNCTION df._start_options(idempotency_key text DEFAULT NULL, max_attempts integer DEFAULT NULL,
                                  max_backoff interval DEFAULT NULL, on_failure text DEFAULT NULL)
  RETURNS jsonb
  LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog
  AS $$
DECLARE
  v_opts jsonb := '{}';
BEGIN
  IF idempotency_key IS NOT NULL THEN v_opts := v_opts || jsonb_build_object('idempotency_key', idempotency_key); END IF;
  IF max_attempts IS NOT NULL THEN
    IF max_attempts < 1 THEN
      RAISE EXCEPTION 'df.start(): max_attempts must be a positive integer' USING ERRCODE = '22023';
    END IF;
    v_opts := v_opts || jsonb_build_object('max_attempts', max_attempts);
  END IF;
  IF max_backoff IS NOT NULL THEN
    IF max_backoff <= interval '0' THEN
      RAISE EXCEPTION 'df.start(): max_backoff must be positive' USING ERRCODE = '22023';
    END IF;
    v_opts := v_opts || jsonb_build_object('max_backoff_seconds', extract(epoch FROM max_backoff));
  END IF;
  IF on_failure IS NOT NULL THEN
    v_opts := v_opts || jsonb_build_object('on_failure', df._compose(on_failure));
  END IF;
  RETURN v_opts;
END $$;

CREATE OR REPLACE FUNCTION df.start(fut text, label text DEFAULT NULL, database text DEFAULT NULL,
                         transaction_mode text DEFAULT 'caller', idempotency_key text DEFAULT NULL,
                         max_attempts integer DEFAULT NULL, max_backoff interval DEFAULT NULL,
                         on_failure text DEFAULT NULL) RETURNS text
  LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog
  AS $$
DECLARE
  v_mode text := lower(COALESCE(transaction_mode, 'caller'));
BEGIN
  IF v_mode NOT IN ('caller', 'new') THEN
    RAISE EXCEPTION 'invalid transaction_mode "%" for df.start(): expected ''caller'' or ''new''', transaction_mode
      USING ERRCODE = '22023';
  END IF;
  IF v_mode = 'new' THEN
    IF df._in_workflow() THEN
      RAISE EXCEPTION 'df.start() with transaction_mode => ''new'' cannot be called inside a workflow - a df.sql() node already runs as a single autocommitted statement, so a plain df.start() there is already independent of any caller transaction'
        USING ERRCODE = '0A000';
    END IF;
    RAISE EXCEPTION 'df.start(..., transaction_mode => ''new'') runs only through the dfgate proxy, as a statement of its own: SELECT df.start(<constants or parameters>, ..., transaction_mode => ''new'')'
      USING ERRCODE = '0A000',
            HINT = 'The database evaluated this call itself (a direct connection, a transaction_mode that is not a constant, or a call inside a larger query). Otherwise use the default transaction_mode => ''caller'': the instance then exists if your transaction commits.';
  END IF;
  RETURN df._start_graph(fut, label, database,
                         df._start_options(idempotency_key, max_attempts, max_backoff, on_failure));
END $$;

COMMENT ON FUNCTION df._start_options(text, integer, interval, text) IS 'internal: the options of df.start as df._start_graph takes them (shared by df.start and the dfgate proxy''s rewrite)';
