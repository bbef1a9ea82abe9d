-- Many keys, each with little work: a non-windowed GROUP BY over 200,000 devices, whose upserts
-- leave after every batch. What it measures is a step's fixed cost per shard, not per-row work.
CREATE SOURCE readings (device_id VARCHAR NOT NULL, temp DOUBLE, ts TIMESTAMP(3) NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)
WITH (connector = 'datagen', shape = 'iot', seed = '1', rows = '2000000', devices = '200000', interval = '1ms');
CREATE SINK per_device AS
SELECT device_id, COUNT(*) AS n, MAX(temp) AS t FROM readings GROUP BY device_id
WITH (connector = 'file', path = '/dev/null', format = 'json', type = 'upsert');
