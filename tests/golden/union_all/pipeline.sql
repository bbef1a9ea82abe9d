CREATE SOURCE readings (
    device_id VARCHAR NOT NULL,
    temp      DOUBLE,
    ts        TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'file', path = 'readings.jsonl', format = 'json');

CREATE SOURCE more (
    device_id VARCHAR NOT NULL, temp DOUBLE, ts TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'file', path = 'more.jsonl', format = 'json');
CREATE MATERIALIZED VIEW everything AS
SELECT device_id, ts FROM readings UNION ALL SELECT device_id, ts FROM more;
CREATE SINK per_minute AS
SELECT window_start, COUNT(*) AS n FROM TUMBLE(everything, ts, INTERVAL '1' MINUTE)
GROUP BY window_start, window_end
WITH (connector = 'file', path = 'out/per_minute.jsonl', format = 'json');
