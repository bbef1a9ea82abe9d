-- Nexmark Q0: Pass-through: every bid.
-- The sources generate 1,000,000 events by themselves; the harness replays files instead (--input).
CREATE SOURCE bid (
    auction BIGINT NOT NULL, bidder BIGINT NOT NULL, price BIGINT NOT NULL, channel VARCHAR, url VARCHAR,
    date_time TIMESTAMP(3) NOT NULL, extra VARCHAR,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH (connector = 'nexmark', stream = 'bid', events = '1000000');

CREATE SINK q0 AS
SELECT auction, bidder, price, date_time, extra FROM bid
WITH (connector = 'file', path = 'out/q0.jsonl', format = 'json');
