CREATE SOURCE readings (
    device_id VARCHAR NOT NULL,
    temp      DOUBLE,
    ts        TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'file', path = 'readings.jsonl', format = 'json', batch_rows = '1');

CREATE SINK totals AS
SELECT device_id, COUNT(*) AS n FROM readings GROUP BY device_id
WITH (connector = 'file', path = 'out/totals.jsonl', format = 'json', type = 'upsert');
