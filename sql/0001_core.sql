-- ispstream core schema: inventory, sessions, rated usage, rollups, API keys, audit.
-- Plain PostgreSQL >= 15. Every tenant-owned row carries tenant_id; the API reaches
-- these tables only as role ispstream_api under row-level security.

-- The restricted role the API switches to per transaction (SET LOCAL ROLE).
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ispstream_api') THEN
    CREATE ROLE ispstream_api NOLOGIN NOSUPERUSER NOBYPASSRLS;
  END IF;
  -- The role that runs migrations (and the API's login role) must be able to switch to it.
  EXECUTE format('GRANT ispstream_api TO %I', current_user);
END $$;

-- Tenants: one ISP each.
CREATE TABLE tenants (
  id          text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
  timezone    text NOT NULL,
  currency    char(3) NOT NULL,
  updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Plans: price, quota and the after-quota behaviour.
CREATE TABLE plans (
  tenant_id       text NOT NULL REFERENCES tenants(id),
  id              text NOT NULL,
  monthly_fee     numeric NOT NULL CHECK (monthly_fee >= 0),
  quota_bytes     bigint CHECK (quota_bytes IS NULL OR quota_bytes >= 0),
  quota_counts    text NOT NULL DEFAULT 'total'
                  CHECK (quota_counts IN ('download', 'upload', 'total')),
  overage_per_gb  numeric CHECK (overage_per_gb IS NULL OR overage_per_gb >= 0),
  throttle_rate   text,
  off_peak        jsonb NOT NULL DEFAULT '[]',
  updated_at      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, id)
);

-- NAS devices. The source IP chooses the secret, so an IP belongs to one tenant only.
CREATE TABLE nas (
  tenant_id   text NOT NULL REFERENCES tenants(id),
  id          text NOT NULL,
  ip          inet NOT NULL UNIQUE,
  secret      text NOT NULL,
  vendor      text NOT NULL DEFAULT 'generic',
  coa_port    integer NOT NULL DEFAULT 3799,
  require_message_authenticator boolean NOT NULL DEFAULT false,
  updated_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, id)
);

-- Subscribers: the RADIUS User-Name is the subscriber's identity within a tenant.
CREATE TABLE subscribers (
  tenant_id        text NOT NULL REFERENCES tenants(id),
  username         text NOT NULL,
  plan_id          text NOT NULL,
  cycle_anchor_day smallint NOT NULL DEFAULT 1 CHECK (cycle_anchor_day BETWEEN 1 AND 31),
  updated_at       timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, username),
  FOREIGN KEY (tenant_id, plan_id) REFERENCES plans(tenant_id, id)
);

-- Sessions as the usage flow sees them; version only grows, so replays never regress.
CREATE TABLE sessions (
  tenant_id        text NOT NULL,
  nas_id           text NOT NULL,
  session_id       text NOT NULL,
  username         text,
  state            text NOT NULL CHECK (state IN ('open', 'closed', 'stale')),
  close_reason     text,
  started_at       timestamptz NOT NULL,
  updated_at       timestamptz NOT NULL,
  stopped_at       timestamptz,
  upload_bytes     bigint NOT NULL DEFAULT 0,
  download_bytes   bigint NOT NULL DEFAULT 0,
  resets           integer NOT NULL DEFAULT 0,
  interim_interval integer,
  framed_ip        text,
  version          bigint NOT NULL,
  PRIMARY KEY (tenant_id, nas_id, session_id)
);
CREATE INDEX sessions_by_user ON sessions (tenant_id, username, state);

-- Rated usage: one row per piece of a counter delta. (tenant_id, record_id, piece, ts)
-- is a pure function of the accounting record, so replays upsert the same rows.
CREATE TABLE usage_rated (
  tenant_id        text NOT NULL,
  record_id        text NOT NULL,
  piece            smallint NOT NULL,
  ts               timestamptz NOT NULL,
  ts_start         timestamptz NOT NULL,
  username         text NOT NULL,
  nas_id           text NOT NULL,
  session_id       text NOT NULL,
  plan_id          text,
  cycle_start      date NOT NULL,
  upload_bytes     bigint NOT NULL,
  download_bytes   bigint NOT NULL,
  billable_bytes   bigint NOT NULL,
  zero_rated_bytes bigint NOT NULL,
  over_quota_bytes bigint NOT NULL,
  charge           numeric NOT NULL,
  rate_multiplier  numeric NOT NULL,
  flags            text[] NOT NULL DEFAULT '{}',
  PRIMARY KEY (tenant_id, record_id, piece, ts)
);
CREATE INDEX usage_rated_by_user ON usage_rated (tenant_id, username, ts);
CREATE INDEX usage_rated_by_cycle ON usage_rated (tenant_id, username, cycle_start);

-- Hourly rollup, recomputed from usage_rated for every hour a batch touches.
CREATE TABLE usage_hourly (
  tenant_id        text NOT NULL,
  username         text NOT NULL,
  hour             timestamptz NOT NULL,
  upload_bytes     bigint NOT NULL,
  download_bytes   bigint NOT NULL,
  billable_bytes   bigint NOT NULL,
  zero_rated_bytes bigint NOT NULL,
  over_quota_bytes bigint NOT NULL,
  charge           numeric NOT NULL,
  PRIMARY KEY (tenant_id, username, hour)
);

-- API keys: only a SHA-256 of the secret part is stored.
CREATE TABLE api_keys (
  id          text PRIMARY KEY,
  tenant_id   text NOT NULL REFERENCES tenants(id),
  role        text NOT NULL CHECK (role IN ('customer', 'operator', 'analyst', 'admin')),
  key_hash    bytea NOT NULL UNIQUE,
  subscriber  text,
  created_at  timestamptz NOT NULL DEFAULT now(),
  revoked_at  timestamptz
);

-- Audit trail of every mutating call (and of administrative CLI actions).
CREATE TABLE audit_log (
  id          bigserial PRIMARY KEY,
  tenant_id   text NOT NULL,
  api_key_id  text,
  action      text NOT NULL,
  target      text,
  detail      jsonb NOT NULL DEFAULT '{}',
  at          timestamptz NOT NULL DEFAULT now()
);

-- Key lookup happens before the tenant is known: a narrow SECURITY DEFINER function.
CREATE FUNCTION ispstream_authenticate(p_key_id text, p_hash bytea)
RETURNS TABLE (tenant_id text, role text, subscriber text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
  SELECT k.tenant_id, k.role, k.subscriber FROM public.api_keys k
  WHERE k.id = p_key_id AND k.key_hash = p_hash AND k.revoked_at IS NULL
$$;
REVOKE ALL ON FUNCTION ispstream_authenticate(text, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ispstream_authenticate(text, bytea) TO ispstream_api;

-- Row-level security: no tenant set means no rows.
DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['tenants', 'plans', 'nas', 'subscribers', 'sessions',
                           'usage_rated', 'usage_hourly', 'api_keys', 'audit_log'] LOOP
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format(
      'CREATE POLICY tenant_isolation ON %I TO ispstream_api USING (%s = current_setting(''ispstream.tenant_id'', true)) WITH CHECK (%s = current_setting(''ispstream.tenant_id'', true))',
      t, CASE WHEN t = 'tenants' THEN 'id' ELSE 'tenant_id' END,
      CASE WHEN t = 'tenants' THEN 'id' ELSE 'tenant_id' END);
  END LOOP;
END $$;

GRANT USAGE ON SCHEMA public TO ispstream_api;
GRANT SELECT ON tenants, plans, subscribers, sessions, usage_rated, usage_hourly
  TO ispstream_api;
GRANT SELECT (tenant_id, id, ip, vendor, coa_port) ON nas TO ispstream_api;
GRANT INSERT ON audit_log TO ispstream_api;
GRANT USAGE ON SEQUENCE audit_log_id_seq TO ispstream_api;
