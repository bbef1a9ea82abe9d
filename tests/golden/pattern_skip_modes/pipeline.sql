CREATE SOURCE readings (
    device_id VARCHAR NOT NULL, temp DOUBLE,
    ts TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '3' SECOND
) WITH (connector = 'file', path = 'readings.jsonl', format = 'json');

CREATE SINK past_last AS
SELECT * FROM readings MATCH_RECOGNIZE (
    PARTITION BY device_id ORDER BY ts
    MEASURES FIRST(ts) AS start_ts, LAST(ts) AS end_ts, COUNT(*) AS n
    ONE ROW PER MATCH
    AFTER MATCH SKIP PAST LAST ROW
    PATTERN (A{2,} B+) 
    DEFINE A AS A.temp <= 21, B AS B.temp > 20
)
WITH (connector = 'file', path = 'out/past_last.jsonl', format = 'json');

CREATE SINK to_next AS
SELECT * FROM readings MATCH_RECOGNIZE (
    PARTITION BY device_id ORDER BY ts
    MEASURES FIRST(ts) AS start_ts, LAST(ts) AS end_ts, COUNT(*) AS n
    ONE ROW PER MATCH
    AFTER MATCH SKIP TO NEXT ROW
    PATTERN (A{2,} B+) 
    DEFINE A AS A.temp <= 21, B AS B.temp > 20
)
WITH (connector = 'file', path = 'out/to_next.jsonl', format = 'json');

CREATE SINK to_first_b AS
SELECT * FROM readings MATCH_RECOGNIZE (
    PARTITION BY device_id ORDER BY ts
    MEASURES FIRST(ts) AS start_ts, LAST(ts) AS end_ts, COUNT(*) AS n
    ONE ROW PER MATCH
    AFTER MATCH SKIP TO FIRST B
    PATTERN (A{2,} B+) 
    DEFINE A AS A.temp <= 21, B AS B.temp > 20
)
WITH (connector = 'file', path = 'out/to_first_b.jsonl', format = 'json');

CREATE SINK to_last_a AS
SELECT * FROM readings MATCH_RECOGNIZE (
    PARTITION BY device_id ORDER BY ts
    MEASURES FIRST(ts) AS start_ts, LAST(ts) AS end_ts, COUNT(*) AS n
    ONE ROW PER MATCH
    AFTER MATCH SKIP TO LAST A
    PATTERN (A{2,} B+) 
    DEFINE A AS A.temp <= 21, B AS B.temp > 20
)
WITH (connector = 'file', path = 'out/to_last_a.jsonl', format = 'json');
