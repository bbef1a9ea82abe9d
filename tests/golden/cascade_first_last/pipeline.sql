CREATE SOURCE trades (
    symbol VARCHAR NOT NULL,
    price  DOUBLE,
    volume BIGINT,
    ts     TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'file', path = 'trades.jsonl', format = 'json', batch_rows = '1');

CREATE MATERIALIZED VIEW bars_1m AS
SELECT symbol, window_start, window_end,
       FIRST_VALUE(price) AS open, MAX(price) AS high, MIN(price) AS low, LAST_VALUE(price) AS close,
       SUM(volume) AS volume
FROM TUMBLE(trades, ts, INTERVAL '1' MINUTE)
GROUP BY symbol, window_start, window_end;

CREATE SINK bars_5m AS
SELECT symbol, window_start, FIRST_VALUE(open) AS open, MAX(high) AS high, MIN(low) AS low,
       LAST_VALUE(close) AS close, SUM(volume) AS volume
FROM TUMBLE(bars_1m, window_start, INTERVAL '5' MINUTE)
GROUP BY symbol, window_start, window_end
WITH (connector = 'file', path = 'out/bars_5m.jsonl', format = 'json');

CREATE SINK bars_5m_by_end AS
SELECT symbol, window_start, FIRST_VALUE(open) AS open, MAX(high) AS high, MIN(low) AS low,
       LAST_VALUE(close) AS close, SUM(volume) AS volume
FROM TUMBLE(bars_1m, window_end, INTERVAL '5' MINUTE)
WHERE volume > 0
GROUP BY symbol, window_start, window_end
WITH (connector = 'file', path = 'out/bars_5m_by_end.jsonl', format = 'json');

CREATE SINK latest AS
SELECT symbol, FIRST_VALUE(open) AS first_open, LAST_VALUE(close) AS last_close, COUNT(*) AS bars
FROM bars_1m
GROUP BY symbol
WITH (connector = 'file', path = 'out/latest.jsonl', format = 'json', type = 'upsert');
