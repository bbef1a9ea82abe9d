CREATE SOURCE readings (
    device_id VARCHAR NOT NULL,
    temp      DOUBLE,
    ts        TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'file', path = 'readings.jsonl', format = 'json');

-- The error points at the function, not at the statement's first line.
CREATE SINK s AS
SELECT device_id,
       fahrenheit(temp) AS temp_f
FROM readings
WITH (connector = 'console');
