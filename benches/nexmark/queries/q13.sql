-- Nexmark Q13: Bounded side input join: each bid joined with a value from a table by its auction.
-- The sources generate 1,000,000 events by themselves; the harness replays files instead (--input).
-- side_input.jsonl is written by nexmark_gen beside the events; the harness and the test run a copy
-- of this file from that directory.
CREATE SOURCE bid (
    auction BIGINT NOT NULL, bidder BIGINT NOT NULL, price BIGINT NOT NULL, channel VARCHAR, url VARCHAR,
    date_time TIMESTAMP(3) NOT NULL, extra VARCHAR,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH (connector = 'nexmark', stream = 'bid', events = '1000000');
CREATE TABLE side_input (key BIGINT PRIMARY KEY, value VARCHAR)
WITH (connector = 'file', path = 'side_input.jsonl', format = 'json');

CREATE SINK q13 AS
SELECT b.auction, b.bidder, b.price, b.date_time, s.value
FROM bid b JOIN side_input FOR SYSTEM_TIME AS OF b.date_time AS s ON b.auction % 10000 = s.key
WITH (connector = 'file', path = 'out/q13.jsonl', format = 'json');
