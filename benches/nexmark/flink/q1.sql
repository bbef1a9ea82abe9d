-- Nexmark Q1 in Flink SQL (the standard query; columns in snake_case).
SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bid
