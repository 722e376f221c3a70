-- dfgate migration 0025: no temporary table can stand in for a catalog.
--
-- Every df function pins its search_path, but to `pg_catalog` alone, and
-- PostgreSQL then still looks for a table name in the session's temporary
-- schema first (functions and operators are never looked up there, tables
-- are). The functions name pg_roles and pg_namespace without a schema, so a
-- caller could create a temporary table called pg_roles or pg_namespace and
-- answer those lookups itself: the submitted_by trigger would let a
-- BYPASSRLS role write another role's name, the LOGIN check and the
-- superuser guard of a start could be passed, and the status guard could be
-- told the caller is a superuser (found by a review of migration 0024).
--
-- Listing pg_temp last in the pinned search_path makes the temporary schema
-- the last place searched, after pg_catalog, as PostgreSQL's documentation
-- advises for SECURITY DEFINER functions; this applies it to every df
-- function that pins its search_path (SECURITY INVOKER ones too: the
-- triggers run as the caller but guard what the caller may write).
-- test/integration/privileges.test.ts checks that every df function that
-- pins a search_path pins exactly this one, so a later migration cannot
-- bring the old setting back unnoticed.
DO $$
DECLARE
  f regprocedure;
BEGIN
  FOR f IN SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
            WHERE p.pronamespace = 'df'::regnamespace
              AND EXISTS (SELECT 1 FROM pg_catalog.unnest(p.proconfig) c WHERE c LIKE 'search_path=%')
  LOOP
    EXECUTE pg_catalog.format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp', f);
  END LOOP;
END $$;
