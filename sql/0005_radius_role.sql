-- RADIUS authorization (POST /v1/radius/authorize, called by FreeRADIUS's rest module):
-- an API key role for NAS-facing callers, a plan's optional walled garden for suspended
-- subscribers, and the index behind the tenant's action list (GET /v1/actions).

-- Keys of role 'radius' may only call the RADIUS authorization endpoint.
ALTER TABLE api_keys DROP CONSTRAINT api_keys_role_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check
  CHECK (role IN ('customer', 'operator', 'analyst', 'admin', 'radius'));

-- A suspended subscriber of a plan with a walled garden is accepted into it on
-- re-authentication (e.g. MikroTik: Mikrotik-Address-List = this name) instead of
-- being rejected. NULL: rejected.
ALTER TABLE plans ADD COLUMN walled_garden text
  CHECK (walled_garden IS NULL OR walled_garden ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$');

-- The tenant's actions newest first, keyset-paged on (at, intent_id), with no filter
-- on state (actions_by_state serves the filtered list).
CREATE INDEX actions_by_at ON actions (tenant_id, at DESC, intent_id DESC);
