CREATE SOURCE readings (
    device_id VARCHAR NOT NULL,
    temp      DOUBLE,
    ts        TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'file', path = 'readings.jsonl', format = 'json');

CREATE SINK per_10s AS
SELECT device_id, window_start, FIRST_VALUE(temp) AS first_temp, LAST_VALUE(temp) AS last_temp, COUNT(*) AS n
FROM TUMBLE(readings, ts, INTERVAL '10' SECOND)
GROUP BY device_id, window_start, window_end
WITH (connector = 'file', path = 'out/per_10s.jsonl', format = 'json');
