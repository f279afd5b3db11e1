-- Enforcement: quota policies per plan, enforced state per subscriber, and every action
-- with each NAS's answer. An attempt row is written before its request is sent, so a
-- replayed or restarted enforcer never resends what was already completed.

-- Thresholds with an action each: [{"at": 80, "action": "notify"},
--                                  {"at": 100, "action": "throttle", "rate": "2M/2M"}]
ALTER TABLE plans ADD COLUMN quota_policies jsonb NOT NULL DEFAULT '[]';
-- The plan's normal rate profile, restored by a resume (NULL: resume disconnects instead,
-- so the subscriber re-authenticates into the plan's normal service).
ALTER TABLE plans ADD COLUMN rate_limit text;

-- Enforced state per subscriber: what the NAS should be applying now, and why.
CREATE TABLE enforcement_state (
  tenant_id    text NOT NULL,
  username     text NOT NULL,
  state        text NOT NULL CHECK (state IN ('normal', 'throttled', 'suspended')),
  rate         text,
  reason       text NOT NULL,
  source       text NOT NULL,
  intent_id    text NOT NULL,
  since        timestamptz NOT NULL,
  until        timestamptz,           -- when a cycle-bound state lifts by itself
  updated_at   timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, username)
);

-- Every action (intent), as received.
CREATE TABLE actions (
  tenant_id     text NOT NULL,
  intent_id     text NOT NULL,
  username      text NOT NULL,
  kind          text NOT NULL,
  rate          text,
  source        text NOT NULL,
  reason        text NOT NULL,
  threshold_pct integer,
  cycle_start   date,
  requested_by  text,
  at            timestamptz NOT NULL,
  state         text NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'done', 'partial', 'failed', 'no_sessions')),
  created_at    timestamptz NOT NULL DEFAULT now(),
  completed_at  timestamptz,
  PRIMARY KEY (tenant_id, intent_id)
);
CREATE INDEX actions_by_user ON actions (tenant_id, username, at DESC);
CREATE INDEX actions_by_state ON actions (tenant_id, state, at DESC);

-- One row per (intent, NAS session): intent recorded before sending, outcome after.
CREATE TABLE action_attempts (
  tenant_id    text NOT NULL,
  intent_id    text NOT NULL,
  nas_id       text NOT NULL,
  session_id   text NOT NULL,
  request      text NOT NULL CHECK (request IN ('coa', 'disconnect')),
  state        text NOT NULL CHECK (state IN ('sending', 'ack', 'nak', 'timeout')),
  error_cause  integer,
  attempts     integer NOT NULL DEFAULT 0,
  event_timestamp bigint NOT NULL,     -- the Event-Timestamp sent (fixed across retries)
  created_at   timestamptz NOT NULL DEFAULT now(),
  answered_at  timestamptz,
  PRIMARY KEY (tenant_id, intent_id, nas_id, session_id)
);

DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['enforcement_state', 'actions', 'action_attempts'] LOOP
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format(
      'CREATE POLICY tenant_isolation ON %I TO ispstream_api USING (tenant_id = current_setting(''ispstream.tenant_id'', true)) WITH CHECK (tenant_id = current_setting(''ispstream.tenant_id'', true))',
      t);
  END LOOP;
END $$;
GRANT SELECT ON enforcement_state, actions, action_attempts TO ispstream_api;
GRANT INSERT ON actions TO ispstream_api;
