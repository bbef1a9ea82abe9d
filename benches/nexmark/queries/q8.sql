-- Nexmark Q8: Monitor new users: people who opened an auction in the 10-second window they registered in.
-- The sources generate 1,000,000 events by themselves; the harness replays files instead (--input).
CREATE SOURCE person (
    id BIGINT NOT NULL, name VARCHAR, email_address VARCHAR, credit_card VARCHAR, city VARCHAR, state VARCHAR,
    date_time TIMESTAMP(3) NOT NULL, extra VARCHAR,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH (connector = 'nexmark', stream = 'person', events = '1000000');
CREATE SOURCE auction (
    id BIGINT NOT NULL, item_name VARCHAR, description VARCHAR, initial_bid BIGINT, reserve BIGINT,
    date_time TIMESTAMP(3) NOT NULL, expires TIMESTAMP(3), seller BIGINT, category BIGINT, extra VARCHAR,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH (connector = 'nexmark', stream = 'auction', events = '1000000');

CREATE MATERIALIZED VIEW p AS
SELECT id, name, window_start, window_end
FROM TUMBLE(person, date_time, INTERVAL '10' SECOND)
GROUP BY id, name, window_start, window_end;

CREATE MATERIALIZED VIEW a AS
SELECT seller, window_start, window_end
FROM TUMBLE(auction, date_time, INTERVAL '10' SECOND)
GROUP BY seller, window_start, window_end;

CREATE SINK q8 AS
SELECT p.id, p.name, p.window_start AS starttime
FROM p JOIN a ON p.id = a.seller AND p.window_start = a.window_start AND p.window_end = a.window_end
WITH (connector = 'file', path = 'out/q8.jsonl', format = 'json');
