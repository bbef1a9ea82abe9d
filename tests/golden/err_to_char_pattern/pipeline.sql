-- A constant to_char pattern that chrono rejects fails the statement, not every batch.
CREATE SOURCE ev (
    id BIGINT NOT NULL, ts TIMESTAMP(3) NOT NULL, fmt VARCHAR,
    WATERMARK FOR ts AS ts - INTERVAL '1' SECOND
) WITH (connector = 'file', path = 'events.jsonl', format = 'json');
CREATE SINK formatted AS
SELECT id, date_format(ts, '%Y-%Q') AS bad FROM ev
WITH (connector = 'file', path = 'out/formatted.jsonl', format = 'json');
