-- ifIndex is an Integer32 in IF-MIB, but some OLTs (e.g. Huawei MA5600/MA5800 PON ports,
-- 0xFA000000 + ...) report values above 2^31 - 1 as unsigned: keep them exactly.
ALTER TABLE interfaces ALTER COLUMN if_index TYPE bigint;
ALTER TABLE if_samples ALTER COLUMN if_index TYPE bigint;
ALTER TABLE if_hourly ALTER COLUMN if_index TYPE bigint;
