CREATE SOURCE readings (
    device_id VARCHAR NOT NULL, temp DOUBLE,
    ts TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '3' SECOND
) WITH (connector = 'file', path = 'readings.jsonl', format = 'json');

CREATE TABLE devices (
    device_id  VARCHAR PRIMARY KEY,
    site       VARCHAR,
    limit_temp DOUBLE,
    active     BOOLEAN
) WITH (connector = 'file', path = 'devices.jsonl', format = 'json');

CREATE SINK enriched AS
SELECT r.device_id, d.site, d.limit_temp, r.temp
FROM readings AS r
LEFT JOIN devices FOR SYSTEM_TIME AS OF r.ts AS d ON r.device_id = d.device_id AND d.active
WITH (connector = 'file', path = 'out/enriched.jsonl', format = 'json');

CREATE SINK over_limit AS
SELECT r.device_id, d.site, r.temp, r.ts
FROM readings r JOIN devices d ON r.device_id = d.device_id
WHERE r.temp > d.limit_temp
WITH (connector = 'file', path = 'out/over_limit.jsonl', format = 'json');
