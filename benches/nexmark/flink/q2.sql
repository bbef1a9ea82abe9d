-- Nexmark Q2 in Flink SQL (the standard query; columns in snake_case).
SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0
