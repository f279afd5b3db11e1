-- usage_rated loses its (tenant_id, username, cycle_start) index: the cycle's totals
-- (GET .../cycle) read the subscriber's rows of the cycle's time window through
-- usage_rated_by_user (tenant_id, username, ts) instead (portal_api/queries.py,
-- cycle_totals). Its key held one value per subscriber and month, and adding a row to
-- such long runs of equal keys cost the usage flow's inserts a third of their
-- PostgreSQL time.
DROP INDEX IF EXISTS usage_rated_by_cycle;
