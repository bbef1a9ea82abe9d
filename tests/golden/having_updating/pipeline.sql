CREATE SOURCE readings (
    device_id VARCHAR NOT NULL,
    temp      DOUBLE,
    ts        TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'file', path = 'readings.jsonl', format = 'json', batch_rows = '1');

CREATE SINK even AS
SELECT device_id, COUNT(*) AS n FROM readings GROUP BY device_id HAVING COUNT(*) % 2 = 0
WITH (connector = 'file', path = 'out/even.jsonl', format = 'json', type = 'upsert');
