-- Nexmark Q5: Hot items: the auctions with the most bids in each 10-second window sliding by 2 seconds.
-- The sources generate 1,000,000 events by themselves; the harness replays files instead (--input).
CREATE SOURCE bid (
    auction BIGINT NOT NULL, bidder BIGINT NOT NULL, price BIGINT NOT NULL, channel VARCHAR, url VARCHAR,
    date_time TIMESTAMP(3) NOT NULL, extra VARCHAR,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH (connector = 'nexmark', stream = 'bid', events = '1000000');

CREATE MATERIALIZED VIEW auction_bids AS
SELECT auction, COUNT(*) AS num, window_start, window_end
FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
GROUP BY auction, window_start, window_end;

-- The windows of auction_bids, each with its largest count: regrouping by window_start (one
-- 2-second step) gathers exactly the rows of one hopping window.
CREATE MATERIALIZED VIEW max_bids AS
SELECT MAX(num) AS maxn, window_start, window_end
FROM TUMBLE(auction_bids, window_start, INTERVAL '2' SECOND)
GROUP BY window_start, window_end;

CREATE SINK q5 AS
SELECT a.auction, a.num
FROM auction_bids a JOIN max_bids m
  ON a.window_start = m.window_start AND a.window_end - INTERVAL '8' SECOND = m.window_end
WHERE a.num >= m.maxn
WITH (connector = 'file', path = 'out/q5.jsonl', format = 'json');
