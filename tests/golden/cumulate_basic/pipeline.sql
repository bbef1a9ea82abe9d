CREATE SOURCE readings (
    device_id VARCHAR NOT NULL,
    temp      DOUBLE,
    ts        TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '3' SECOND
) WITH (connector = 'file', path = 'readings.jsonl', format = 'json');

CREATE SINK cumulative AS
SELECT device_id, window_start, window_end, COUNT(*) AS n, SUM(temp) AS total
FROM CUMULATE(readings, ts, INTERVAL '20' SECOND, INTERVAL '1' MINUTE)
GROUP BY device_id, window_start, window_end
WITH (connector = 'file', path = 'out/cumulative.jsonl', format = 'json');
