CREATE SOURCE readings (
    device_id VARCHAR NOT NULL,
    temp      DOUBLE,
    ts        TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '3' SECOND
) WITH (connector = 'file', path = 'readings.jsonl', format = 'json', batch_rows = '7');

CREATE SINK moving AS
SELECT device_id, ts, temp,
       AVG(temp) OVER (PARTITION BY device_id ORDER BY ts ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS avg3,
       LAG(temp) OVER (PARTITION BY device_id ORDER BY ts) AS prev,
       LEAD(temp) OVER (PARTITION BY device_id ORDER BY ts) AS next,
       ROW_NUMBER() OVER (PARTITION BY device_id ORDER BY ts) AS rn,
       RANK() OVER (PARTITION BY device_id ORDER BY ts) AS rk,
       DENSE_RANK() OVER (PARTITION BY device_id ORDER BY ts) AS drk
FROM readings
WITH (connector = 'file', path = 'out/moving.jsonl', format = 'json');
