-- Nexmark Q7: Highest bid: the bids at the highest price of each 10-second window.
-- The sources generate 1,000,000 events by themselves; the harness replays files instead (--input).
CREATE SOURCE bid (
    auction BIGINT NOT NULL, bidder BIGINT NOT NULL, price BIGINT NOT NULL, channel VARCHAR, url VARCHAR,
    date_time TIMESTAMP(3) NOT NULL, extra VARCHAR,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH (connector = 'nexmark', stream = 'bid', events = '1000000');

CREATE MATERIALIZED VIEW max_price AS
SELECT MAX(price) AS maxprice, window_start, window_end
FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND)
GROUP BY window_start, window_end;

CREATE SINK q7 AS
SELECT b.auction, b.price, b.bidder, b.date_time, b.extra
FROM bid b JOIN max_price m
  ON b.price = m.maxprice AND b.date_time BETWEEN m.window_end - INTERVAL '10' SECOND AND m.window_end
WITH (connector = 'file', path = 'out/q7.jsonl', format = 'json');
