CREATE SOURCE readings (
    device_id VARCHAR NOT NULL,
    temp      DOUBLE,
    ts        TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '3' SECOND
) WITH (connector = 'file', path = 'readings.jsonl', format = 'json');

CREATE SINK per_minute AS
SELECT device_id, window_start, window_end, COUNT(*) AS n, MAX(temp) AS max_temp
FROM TABLE(TUMBLE(TABLE readings, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
GROUP BY device_id, window_start, window_end
WITH (connector = 'file', path = 'out/per_minute.jsonl', format = 'json');
