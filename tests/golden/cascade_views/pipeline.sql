CREATE SOURCE readings (
    device_id VARCHAR NOT NULL,
    temp      DOUBLE,
    ts        TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '3' SECOND
) WITH (connector = 'file', path = 'readings.jsonl', format = 'json');

CREATE MATERIALIZED VIEW bars_10s AS
SELECT device_id, window_start, window_end, COUNT(*) AS n
FROM TUMBLE(readings, ts, INTERVAL '10' SECOND)
GROUP BY device_id, window_start, window_end;

CREATE SINK bars_1m AS
SELECT device_id, window_start AS minute, SUM(n) AS n
FROM TUMBLE(bars_10s, window_start, INTERVAL '1' MINUTE)
GROUP BY device_id, window_start, window_end
WITH (connector = 'file', path = 'out/bars_1m.jsonl', format = 'json');

CREATE SINK bars_1m_by_end AS
SELECT device_id, window_start AS minute, SUM(n) AS n
FROM TUMBLE(bars_10s, window_end, INTERVAL '1' MINUTE)
GROUP BY device_id, window_start, window_end
WITH (connector = 'file', path = 'out/bars_1m_by_end.jsonl', format = 'json');
