CREATE SOURCE r (ts TIMESTAMP(3), WATERMARK FOR ts AS ts + INTERVAL '1' SECOND)
WITH (connector = 'file', path = 'readings.jsonl');
