CREATE SOURCE events (
    device_id VARCHAR NOT NULL, kind VARCHAR NOT NULL,
    ts TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'file', path = 'events.jsonl', format = 'json');

CREATE SINK unacked AS
SELECT * FROM events MATCH_RECOGNIZE (
    PARTITION BY device_id ORDER BY ts
    MEASURES A.ts AS alarm_at, K.ts AS acked_at, COUNT(N.*) AS n_between, MATCH_STATUS() AS status
    ONE ROW PER MATCH
    PATTERN (A N*? K) WITHIN INTERVAL '30' SECOND EMIT TIMEOUTS
    DEFINE A AS kind = 'alarm', K AS kind = 'ack'
)
WITH (connector = 'file', path = 'out/unacked.jsonl', format = 'json');

CREATE SINK acked_in_time AS
SELECT * FROM events MATCH_RECOGNIZE (
    PARTITION BY device_id ORDER BY ts
    MEASURES A.ts AS alarm_at, K.ts AS acked_at, COUNT(N.*) AS n_between, MATCH_STATUS() AS status
    ONE ROW PER MATCH
    PATTERN (A N*? K) WITHIN INTERVAL '30' SECOND
    DEFINE A AS kind = 'alarm', K AS kind = 'ack'
)
WITH (connector = 'file', path = 'out/acked_in_time.jsonl', format = 'json');
