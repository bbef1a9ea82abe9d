CREATE SOURCE readings (
    device_id VARCHAR NOT NULL,
    temp      DOUBLE,
    ts        TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '3' SECOND
) WITH (connector = 'file', path = 'readings.jsonl', format = 'json', batch_rows = '5');

CREATE SINK ranged AS
SELECT device_id, ts,
       SUM(temp) OVER (PARTITION BY device_id ORDER BY ts RANGE BETWEEN INTERVAL '10' SECOND PRECEDING AND CURRENT ROW) AS sum10s,
       COUNT(*) OVER (PARTITION BY device_id ORDER BY ts RANGE BETWEEN INTERVAL '10' SECOND PRECEDING AND CURRENT ROW) AS n10s,
       MAX(temp) OVER (PARTITION BY device_id ORDER BY ts) AS running_max
FROM readings
WITH (connector = 'file', path = 'out/ranged.jsonl', format = 'json');
