-- Network telemetry and faults: monitored devices, ONUs and their subscribers, samples,
-- current state, alerts with their history, and alert delivery channels.

-- Monitored devices (routers, switches, NAS, OLTs). SNMP secrets are stored because the
-- poller needs them; they are never logged and never returned by the API.
CREATE TABLE devices (
  tenant_id          text NOT NULL REFERENCES tenants(id),
  id                 text NOT NULL,
  kind               text NOT NULL CHECK (kind IN ('router', 'switch', 'nas', 'olt')),
  address            inet NOT NULL UNIQUE,       -- traps are attributed by source address
  snmp_port          integer NOT NULL DEFAULT 161,
  snmp_version       text NOT NULL CHECK (snmp_version IN ('2c', '3')),
  community          text,
  v3_user            text,
  v3_auth_protocol   text CHECK (v3_auth_protocol IN ('MD5', 'SHA', 'SHA224', 'SHA256',
                                                      'SHA384', 'SHA512')),
  v3_auth_key        text,
  v3_priv_protocol   text CHECK (v3_priv_protocol IN ('DES', 'AES', 'AES192', 'AES256')),
  v3_priv_key        text,
  v3_engine_id       text,                        -- the device's engine id, for its traps
  vendor_profile     text,                        -- OLTs: the ONU optics profile
  interval_if_s      integer NOT NULL DEFAULT 60 CHECK (interval_if_s >= 10),
  interval_optical_s integer NOT NULL DEFAULT 300 CHECK (interval_optical_s >= 30),
  max_inflight       integer NOT NULL DEFAULT 2 CHECK (max_inflight BETWEEN 1 AND 64),
  timeout_s          real NOT NULL DEFAULT 2,
  retries            integer NOT NULL DEFAULT 1,
  updated_at         timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, id),
  CHECK (snmp_version = '3' OR community IS NOT NULL),
  CHECK (snmp_version = '2c' OR v3_user IS NOT NULL)
);

-- Which subscriber an ONU serves: by serial, or by OLT + PON + ONU id.
CREATE TABLE onu_links (
  tenant_id  text NOT NULL,
  username   text NOT NULL,
  olt_id     text NOT NULL,
  serial     text,
  pon        text,
  onu_id     text,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, username),
  FOREIGN KEY (tenant_id, username) REFERENCES subscribers(tenant_id, username),
  FOREIGN KEY (tenant_id, olt_id) REFERENCES devices(tenant_id, id),
  CHECK (serial IS NOT NULL OR (pon IS NOT NULL AND onu_id IS NOT NULL))
);
CREATE UNIQUE INDEX onu_links_serial ON onu_links (tenant_id, olt_id, serial)
  WHERE serial IS NOT NULL;
CREATE UNIQUE INDEX onu_links_position ON onu_links (tenant_id, olt_id, pon, onu_id)
  WHERE pon IS NOT NULL;

-- Device reachability as last seen by the poller.
CREATE TABLE device_status (
  tenant_id   text NOT NULL,
  device_id   text NOT NULL,
  reachable   boolean NOT NULL,
  reason      text,
  changed_at  timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, device_id)
);

-- Interfaces: current state (one row each) and samples (rates from 64-bit counters).
CREATE TABLE interfaces (
  tenant_id        text NOT NULL,
  device_id        text NOT NULL,
  if_index         integer NOT NULL,
  name             text,
  alias            text,
  oper_status      smallint,
  admin_status     smallint,
  high_speed_mbps  integer,
  last_change      timestamptz,
  updated_at       timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, device_id, if_index)
);

CREATE TABLE if_samples (
  tenant_id        text NOT NULL,
  device_id        text NOT NULL,
  if_index         integer NOT NULL,
  ts               timestamptz NOT NULL,
  oper_status      smallint,
  in_bps           double precision,   -- NULL across a counter discontinuity
  out_bps          double precision,
  in_util          real,               -- fraction of ifHighSpeed
  out_util         real,
  discontinuity    boolean NOT NULL DEFAULT false,
  PRIMARY KEY (tenant_id, device_id, if_index, ts)
);

-- ONUs: current state (discovered from the OLT) and optical samples.
CREATE TABLE onus (
  tenant_id        text NOT NULL,
  olt_id           text NOT NULL,
  pon              text NOT NULL,
  onu_id           text NOT NULL,
  serial           text,
  online           boolean,
  onu_rx_dbm       real,
  onu_tx_dbm       real,
  olt_rx_dbm       real,
  baseline_rx_dbm  real,               -- the ONU's own long-run level (EWMA)
  last_seen        timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, olt_id, pon, onu_id)
);

CREATE TABLE onu_optical_samples (
  tenant_id        text NOT NULL,
  olt_id           text NOT NULL,
  pon              text NOT NULL,
  onu_id           text NOT NULL,
  ts               timestamptz NOT NULL,
  online           boolean,
  onu_rx_dbm       real,
  onu_tx_dbm       real,
  olt_rx_dbm       real,
  temperature_c    real,
  voltage_v        real,
  bias_ma          real,
  PRIMARY KEY (tenant_id, olt_id, pon, onu_id, ts)
);

-- Hourly rollups, recomputed for every hour a batch touches.
CREATE TABLE if_hourly (
  tenant_id text NOT NULL, device_id text NOT NULL, if_index integer NOT NULL,
  hour timestamptz NOT NULL,
  in_bps_avg double precision, out_bps_avg double precision,
  in_bps_max double precision, out_bps_max double precision,
  samples integer NOT NULL,
  PRIMARY KEY (tenant_id, device_id, if_index, hour)
);
CREATE TABLE onu_optical_hourly (
  tenant_id text NOT NULL, olt_id text NOT NULL, pon text NOT NULL, onu_id text NOT NULL,
  hour timestamptz NOT NULL,
  onu_rx_avg real, onu_rx_min real, olt_rx_avg real, olt_rx_min real,
  samples integer NOT NULL, offline_samples integer NOT NULL,
  PRIMARY KEY (tenant_id, olt_id, pon, onu_id, hour)
);

-- Alerts: one row per episode of a condition; at most one non-cleared row per key.
CREATE TABLE alerts (
  tenant_id            text NOT NULL,
  alert_id             text NOT NULL,
  key                  text NOT NULL,
  kind                 text NOT NULL,
  severity             text NOT NULL
                       CHECK (severity IN ('critical', 'major', 'minor', 'warning', 'info')),
  state                text NOT NULL CHECK (state IN ('open', 'acknowledged', 'cleared')),
  device_id            text,
  object               text,
  title                text NOT NULL,
  explanation          text NOT NULL,
  probable_cause       text,
  affected_subscribers text[] NOT NULL DEFAULT '{}',
  suppressed_by        text,
  details              jsonb NOT NULL DEFAULT '{}',
  opened_at            timestamptz NOT NULL,
  last_seen_at         timestamptz NOT NULL,
  acknowledged_at      timestamptz,
  acknowledged_by      text,
  cleared_at           timestamptz,
  PRIMARY KEY (tenant_id, alert_id)
);
CREATE UNIQUE INDEX alerts_one_live_per_key ON alerts (tenant_id, key)
  WHERE state <> 'cleared';
CREATE INDEX alerts_by_state ON alerts (tenant_id, state, severity, opened_at DESC);
CREATE INDEX alerts_by_device ON alerts (tenant_id, device_id, opened_at DESC);

CREATE TABLE alert_history (
  tenant_id  text NOT NULL,
  alert_id   text NOT NULL,
  at         timestamptz NOT NULL,
  state      text NOT NULL,
  note       text,
  by_key     text,
  PRIMARY KEY (tenant_id, alert_id, at, state)
);

-- Where alerts go: a generic signed webhook or e-mail, per tenant.
CREATE TABLE alert_channels (
  tenant_id    text NOT NULL REFERENCES tenants(id),
  id           text NOT NULL,
  kind         text NOT NULL CHECK (kind IN ('webhook', 'email')),
  config       jsonb NOT NULL,          -- webhook: url, secret; email: to, from, smtp
  min_severity text NOT NULL DEFAULT 'warning',
  enabled      boolean NOT NULL DEFAULT true,
  updated_at   timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, id)
);

CREATE TABLE alert_deliveries (
  tenant_id    text NOT NULL,
  alert_id     text NOT NULL,
  channel_id   text NOT NULL,
  state        text NOT NULL,           -- the alert state being announced
  status       text NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
  attempts     integer NOT NULL DEFAULT 0,
  last_error   text,
  updated_at   timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, alert_id, channel_id, state)
);

DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['devices', 'onu_links', 'device_status', 'interfaces',
                           'if_samples', 'onus', 'onu_optical_samples', 'if_hourly',
                           'onu_optical_hourly', 'alerts', 'alert_history', 'alert_channels',
                           'alert_deliveries'] LOOP
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format(
      'CREATE POLICY tenant_isolation ON %I TO ispstream_api USING (tenant_id = current_setting(''ispstream.tenant_id'', true)) WITH CHECK (tenant_id = current_setting(''ispstream.tenant_id'', true))',
      t);
  END LOOP;
END $$;
-- The API never reads SNMP secrets.
GRANT SELECT (tenant_id, id, kind, address, snmp_port, snmp_version, vendor_profile,
              interval_if_s, interval_optical_s, updated_at) ON devices TO ispstream_api;
GRANT SELECT ON onu_links, device_status, interfaces, if_samples, onus, onu_optical_samples,
  if_hourly, onu_optical_hourly, alerts, alert_history, alert_deliveries TO ispstream_api;
GRANT SELECT (tenant_id, id, kind, min_severity, enabled) ON alert_channels TO ispstream_api;
GRANT UPDATE (state, acknowledged_at, acknowledged_by) ON alerts TO ispstream_api;
GRANT INSERT ON alert_history TO ispstream_api;
