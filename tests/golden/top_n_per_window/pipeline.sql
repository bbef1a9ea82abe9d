CREATE SOURCE readings (
    device_id VARCHAR NOT NULL,
    temp      DOUBLE,
    ts        TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '3' SECOND
) WITH (connector = 'file', path = 'readings.jsonl', format = 'json');

CREATE MATERIALIZED VIEW per_minute AS
SELECT device_id, window_start, window_end, COUNT(*) AS n
FROM TUMBLE(readings, ts, INTERVAL '1' MINUTE)
GROUP BY device_id, window_start, window_end;

CREATE SINK top2 AS
SELECT window_start, device_id, n, place FROM (
    SELECT window_start, device_id, n,
           ROW_NUMBER() OVER (PARTITION BY window_start ORDER BY n DESC, device_id) AS place
    FROM per_minute
) WHERE place <= 2
WITH (connector = 'file', path = 'out/top2.jsonl', format = 'json');
