-- to_char / date_format: a constant pattern (parsed once per batch), a pattern per row, NULLs,
-- and a grouping key built from to_char. Expected output is DataFusion's own to_char.
CREATE SOURCE ev (
    id BIGINT NOT NULL, ts TIMESTAMP(3) NOT NULL, fmt VARCHAR,
    WATERMARK FOR ts AS ts - INTERVAL '1' SECOND
) WITH (connector = 'file', path = 'events.jsonl', format = 'json', batch_rows = '1');
CREATE SINK formatted AS
SELECT id, to_char(ts, '%Y-%m-%d %H:%M:%S%.3f') AS full_ts, date_format(ts, '%a %d %b %Y') AS human,
       to_char(ts, fmt) AS per_row, to_char(ts, '%Y/%j %p') AS day_of_year
FROM ev
WITH (connector = 'file', path = 'out/formatted.jsonl', format = 'json');
CREATE SINK per_day AS
SELECT to_char(ts, '%Y-%m-%d') AS day, COUNT(*) AS n, MAX(to_char(ts, '%H:%M')) AS last_minute
FROM ev
GROUP BY to_char(ts, '%Y-%m-%d')
WITH (connector = 'file', path = 'out/per_day.jsonl', format = 'json', type = 'upsert', primary_key = 'day');
