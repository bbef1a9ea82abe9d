-- Nexmark Q0 in Flink SQL (the standard query; columns in snake_case).
SELECT auction, bidder, price, date_time, extra FROM bid
