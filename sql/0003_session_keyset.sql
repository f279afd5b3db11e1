-- Keyset pagination of sessions, newest first (GET /v1/sessions): the sort key
-- (started_at, nas_id, session_id) per tenant, and per tenant and subscriber. Neither
-- column changes after a session starts, so session updates stay HOT-eligible.
CREATE INDEX IF NOT EXISTS sessions_by_start
  ON sessions (tenant_id, started_at, nas_id, session_id);
CREATE INDEX IF NOT EXISTS sessions_by_user_start
  ON sessions (tenant_id, username, started_at, nas_id, session_id);
