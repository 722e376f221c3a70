-- dfgate migration 0046: the console's change notifications name instances, not their owners.
--
-- LISTEN needs no privilege, so any role connected to the database hears the
-- channel dfgate_ui. Its payloads said whose instances had changed
-- ({"r": <role>, "i": [<ids>]}), so a role could watch which other roles were
-- active, when, and with which instance ids (found by a hostile review). They
-- now carry instance ids alone, at most 100 to a notification, as the wake
-- channel's do: the console looks the owners up itself, batched, only while a
-- browser listens (src/ui/live.ts), and other roles learn that ids changed,
-- not whose they are nor anything in them. The triggers and the executor
-- call df._ui_notify as before; the owners they pass are no longer sent.

CREATE OR REPLACE FUNCTION df._ui_notify(p_rows jsonb) RETURNS void
  LANGUAGE sql SET search_path = pg_catalog, pg_temp
  AS $$
  SELECT pg_notify('dfgate_ui', json_build_object('i', to_json(c.ids))::text)
    FROM (SELECT array_agg(d.i ORDER BY d.i) AS ids
            FROM (SELECT u.i, (row_number() OVER (ORDER BY u.i) - 1) / 100 AS k
                    FROM (SELECT DISTINCT x->>'i' AS i FROM jsonb_array_elements(p_rows) AS x
                           WHERE x->>'i' IS NOT NULL) u) d
           GROUP BY d.k) c
$$;
COMMENT ON FUNCTION df._ui_notify(jsonb) IS
  'internal: the web console''s change notification (channel dfgate_ui): instance ids only, at most 100 to a notification';
