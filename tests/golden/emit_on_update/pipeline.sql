CREATE SOURCE readings (
    device_id VARCHAR NOT NULL,
    temp      DOUBLE,
    ts        TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'file', path = 'readings.jsonl', format = 'json', batch_rows = '1');

CREATE SINK live_counts AS
SELECT device_id, window_start, window_end, COUNT(*) AS n
FROM TUMBLE(readings, ts, INTERVAL '20' SECOND)
GROUP BY device_id, window_start, window_end
EMIT ON UPDATE
WITH (connector = 'file', path = 'out/live_counts.jsonl', format = 'json', type = 'upsert');
