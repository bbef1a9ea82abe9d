CREATE SOURCE readings (
    device_id VARCHAR NOT NULL, temp DOUBLE, ts TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'file', path = 'readings.csv', format = 'csv');
CREATE SINK shaped AS
SELECT UPPER(device_id) AS dev, CAST(ROUND(temp) AS BIGINT) AS t, CASE WHEN temp > 22.5 THEN 'warm' ELSE 'cool' END AS feel,
       date_trunc('minute', ts) AS minute, concat(device_id, '@', 'plant') AS tag
FROM readings
WITH (connector = 'file', path = 'out/shaped.jsonl', format = 'json');
CREATE SINK bad AS SELECT error FROM ERRORS(readings)
WITH (connector = 'file', path = 'out/bad.jsonl', format = 'json');
