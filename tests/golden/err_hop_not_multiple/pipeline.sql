CREATE SOURCE readings (
    device_id VARCHAR NOT NULL,
    temp      DOUBLE,
    ts        TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'file', path = 'readings.jsonl', format = 'json');

CREATE SINK s AS SELECT window_start, COUNT(*) AS n FROM HOP(readings, ts, INTERVAL '7' SECOND, INTERVAL '1' MINUTE)
GROUP BY window_start, window_end WITH (connector = 'console');
