-- Nexmark Q14: Calculation: day-time classes and a character count (Flink's `count_char` UDF is the built-in expression here).
-- The sources generate 1,000,000 events by themselves; the harness replays files instead (--input).
CREATE SOURCE bid (
    auction BIGINT NOT NULL, bidder BIGINT NOT NULL, price BIGINT NOT NULL, channel VARCHAR, url VARCHAR,
    date_time TIMESTAMP(3) NOT NULL, extra VARCHAR,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH (connector = 'nexmark', stream = 'bid', events = '1000000');

CREATE SINK q14 AS
SELECT auction, bidder, 0.908 * price AS price,
       CASE
         WHEN date_part('hour', date_time) >= 8 AND date_part('hour', date_time) <= 18 THEN 'dayTime'
         WHEN date_part('hour', date_time) <= 6 OR date_part('hour', date_time) >= 20 THEN 'nightTime'
         ELSE 'otherTime'
       END AS bid_time_type,
       date_time, extra, character_length(extra) - character_length(replace(extra, 'c', '')) AS c_counts
FROM bid
WHERE 0.908 * price > 1000000 AND 0.908 * price < 50000000
WITH (connector = 'file', path = 'out/q14.jsonl', format = 'json');
