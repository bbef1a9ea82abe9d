CREATE SOURCE readings (
    device_id VARCHAR NOT NULL,
    temp      DOUBLE,
    ts        TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'file', path = 'readings.jsonl', format = 'json', batch_rows = '1');

CREATE SINK progress AS
SELECT device_id, window_start, COUNT(*) AS n
FROM TUMBLE(readings, ts, INTERVAL '30' SECOND)
GROUP BY device_id, window_start, window_end
EMIT EVERY INTERVAL '10' SECOND
WITH (connector = 'file', path = 'out/progress.jsonl', format = 'json', type = 'upsert');
