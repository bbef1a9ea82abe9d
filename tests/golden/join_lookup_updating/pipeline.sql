CREATE SOURCE readings (
    device_id VARCHAR NOT NULL, temp DOUBLE,
    ts TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '3' SECOND
) WITH (connector = 'file', path = 'readings.jsonl', format = 'json', batch_rows = '1');

CREATE TABLE devices (device_id VARCHAR PRIMARY KEY, site VARCHAR, limit_temp DOUBLE, active BOOLEAN)
WITH (connector = 'file', path = 'devices.jsonl', format = 'json');

CREATE MATERIALIZED VIEW counts AS SELECT device_id, COUNT(*) AS n FROM readings GROUP BY device_id;

CREATE SINK sited AS
SELECT c.device_id, c.n, d.site FROM counts c JOIN devices d ON c.device_id = d.device_id
WITH (connector = 'file', path = 'out/sited.jsonl', format = 'json', type = 'upsert');
