-- Fault flow: threshold overrides, the delivery queue of alert announcements, and what the
-- Alertmanager receiver of the API may write.

-- Threshold overrides, layered: built-in defaults < scope 'tenant' (name '') < scope
-- 'profile' (name = the OLT's vendor profile) < scope 'device' (name = device or OLT id).
-- params: {"onu_rx_min": -29, "flap_transitions": 6, ...}; names as in the flow's
-- Thresholds (an unknown name makes the flow ignore that row and log why).
CREATE TABLE fault_thresholds (
  tenant_id  text NOT NULL REFERENCES tenants(id),
  scope      text NOT NULL CHECK (scope IN ('tenant', 'profile', 'device')),
  name       text NOT NULL DEFAULT '',
  params     jsonb NOT NULL CHECK (jsonb_typeof(params) = 'object'),
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, scope, name),
  CHECK ((scope = 'tenant') = (name = ''))
);
ALTER TABLE fault_thresholds ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON fault_thresholds TO ispstream_api
  USING (tenant_id = current_setting('ispstream.tenant_id', true))
  WITH CHECK (tenant_id = current_setting('ispstream.tenant_id', true));
GRANT SELECT ON fault_thresholds TO ispstream_api;

-- Deliveries are a durable queue: one row per alert, channel and announced state; the
-- delivery worker sends rows that are due, retrying with backoff. 'skipped': not sent on
-- purpose (suppressed meanwhile, cleared within the hold, channel disabled, the opening
-- was never delivered). payload: the AlertEvent JSON that is sent.
ALTER TABLE alert_deliveries
  ADD COLUMN next_attempt_at timestamptz NOT NULL DEFAULT now(),
  ADD COLUMN payload jsonb,
  ADD COLUMN delivered_at timestamptz,
  DROP CONSTRAINT alert_deliveries_status_check,
  ADD CONSTRAINT alert_deliveries_status_check
    CHECK (status IN ('pending', 'delivered', 'failed', 'skipped'));
CREATE INDEX alert_deliveries_due ON alert_deliveries (next_attempt_at)
  WHERE status = 'pending';

-- The Alertmanager receiver (API role) upserts alerts keyed 'am:<fingerprint>' and queues
-- their announcements; it may not create or rewrite the flow's own alerts.
GRANT INSERT ON alerts TO ispstream_api;
GRANT UPDATE (kind, severity, device_id, object, title, explanation, probable_cause,
              details, last_seen_at, cleared_at) ON alerts TO ispstream_api;
GRANT INSERT ON alert_deliveries TO ispstream_api;
CREATE POLICY api_inserts_only_alertmanager_alerts ON alerts AS RESTRICTIVE FOR INSERT
  TO ispstream_api WITH CHECK (key LIKE 'am:%');

-- Column grants cannot depend on the row: a trigger keeps the API role from changing
-- anything but the lifecycle columns (state, acknowledgement, cleared_at, last_seen_at)
-- of alerts that are not the receiver's own.
CREATE FUNCTION alerts_api_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.key NOT LIKE 'am:%' AND (
       NEW.key, NEW.kind, NEW.severity, NEW.device_id, NEW.object, NEW.title,
       NEW.explanation, NEW.probable_cause, NEW.affected_subscribers, NEW.suppressed_by,
       NEW.details, NEW.opened_at)
     IS DISTINCT FROM (
       OLD.key, OLD.kind, OLD.severity, OLD.device_id, OLD.object, OLD.title,
       OLD.explanation, OLD.probable_cause, OLD.affected_subscribers, OLD.suppressed_by,
       OLD.details, OLD.opened_at) THEN
    RAISE EXCEPTION 'alert % is maintained by the fault flow; only its state may change',
      OLD.alert_id USING ERRCODE = 'insufficient_privilege';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER alerts_api_guard BEFORE UPDATE ON alerts
  FOR EACH ROW WHEN (current_user = 'ispstream_api') EXECUTE FUNCTION alerts_api_guard();
