CREATE SOURCE readings (
    device_id VARCHAR NOT NULL, temp DOUBLE,
    ts TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '3' SECOND
) WITH (connector = 'file', path = 'readings.jsonl', format = 'json');
CREATE SINK s AS SELECT * FROM readings MATCH_RECOGNIZE (
    PARTITION BY device_id ORDER BY ts
    MEASURES COUNT(*) AS n
    ONE ROW PER MATCH
    AFTER MATCH SKIP PAST LAST ROW
    PATTERN (A*) 
    DEFINE A AS A.temp > 1
)
WITH (connector = 'console');
