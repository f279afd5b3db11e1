-- ispstream: requires timescaledb
-- Telemetry samples as hypertables (1-day chunks), compressed after 7 days, kept 90 days;
-- hourly rollups kept 2 years. Applied only where the extension exists.

SELECT create_hypertable('if_samples', 'ts', chunk_time_interval => interval '1 day',
                         migrate_data => true, if_not_exists => true);
SELECT create_hypertable('onu_optical_samples', 'ts', chunk_time_interval => interval '1 day',
                         migrate_data => true, if_not_exists => true);
ALTER TABLE if_samples SET (timescaledb.compress,
  timescaledb.compress_segmentby = 'tenant_id, device_id, if_index',
  timescaledb.compress_orderby = 'ts');
ALTER TABLE onu_optical_samples SET (timescaledb.compress,
  timescaledb.compress_segmentby = 'tenant_id, olt_id, pon, onu_id',
  timescaledb.compress_orderby = 'ts');
SELECT add_compression_policy('if_samples', interval '7 days', if_not_exists => true);
SELECT add_compression_policy('onu_optical_samples', interval '7 days', if_not_exists => true);
SELECT add_retention_policy('if_samples', interval '90 days', if_not_exists => true);
SELECT add_retention_policy('onu_optical_samples', interval '90 days', if_not_exists => true);
SELECT create_hypertable('if_hourly', 'hour', chunk_time_interval => interval '30 days',
                         migrate_data => true, if_not_exists => true);
SELECT create_hypertable('onu_optical_hourly', 'hour', chunk_time_interval => interval '30 days',
                         migrate_data => true, if_not_exists => true);
SELECT add_retention_policy('if_hourly', interval '2 years', if_not_exists => true);
SELECT add_retention_policy('onu_optical_hourly', interval '2 years', if_not_exists => true);
