CREATE SOURCE r (k VARCHAR, a TIMESTAMP(3), b TIMESTAMP(3), WATERMARK FOR a AS a)
WITH (connector = 'file', path = 'readings.jsonl');
CREATE SINK s AS SELECT k, window_start, COUNT(*) AS n FROM TUMBLE(r, b, INTERVAL '1' MINUTE)
GROUP BY k, window_start, window_end WITH (connector = 'console');
