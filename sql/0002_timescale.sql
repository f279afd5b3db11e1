-- ispstream: requires timescaledb
-- Applied only when the timescaledb extension is available (the production stack);
-- re-checked on every `ispstream migrate` until it applies. Queries never depend on it.

CREATE EXTENSION IF NOT EXISTS timescaledb;

-- Rated usage and rollups become hypertables (7-day / 30-day chunks).
SELECT create_hypertable('usage_rated', 'ts', chunk_time_interval => interval '7 days',
                         migrate_data => true, if_not_exists => true);
SELECT create_hypertable('usage_hourly', 'hour', chunk_time_interval => interval '30 days',
                         migrate_data => true, if_not_exists => true);

-- Compress closed chunks, segmented by subscriber (billing reads one subscriber's rows).
ALTER TABLE usage_rated SET (timescaledb.compress,
  timescaledb.compress_segmentby = 'tenant_id, username', timescaledb.compress_orderby = 'ts');
SELECT add_compression_policy('usage_rated', interval '45 days', if_not_exists => true);

-- Rated rows are kept 25 months (invoices and disputes); rollups 5 years.
SELECT add_retention_policy('usage_rated', interval '25 months', if_not_exists => true);
SELECT add_retention_policy('usage_hourly', interval '5 years', if_not_exists => true);
