CREATE SOURCE readings (
    device_id VARCHAR NOT NULL,
    code      BIGINT,
    temp      DOUBLE,
    ts        TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'file', path = 'readings.jsonl', format = 'json', batch_rows = '1');

CREATE SINK codes AS
SELECT device_id,
       COUNT(DISTINCT code) AS codes,
       COUNT(DISTINCT code) FILTER (WHERE temp < 20) AS cold_codes,
       COUNT(DISTINCT code) FILTER (WHERE temp >= 20) AS warm_codes,
       COUNT(DISTINCT CAST(temp AS BIGINT)) FILTER (WHERE code > 2) AS whole_temps
FROM readings GROUP BY device_id
WITH (connector = 'file', path = 'out/codes.jsonl', format = 'json', type = 'upsert');
