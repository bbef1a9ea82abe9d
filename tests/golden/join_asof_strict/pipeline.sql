CREATE SOURCE trades (
    symbol VARCHAR NOT NULL, price DOUBLE,
    ts TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'file', path = 'trades.jsonl', format = 'json');

CREATE SOURCE quotes (
    symbol VARCHAR NOT NULL, bid DOUBLE,
    ts TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'file', path = 'quotes.jsonl', format = 'json');

CREATE SINK priced AS
SELECT t.symbol, t.ts, t.price, q.bid, q.ts AS quoted_at
FROM trades t ASOF JOIN quotes q ON q.symbol = t.symbol AND t.ts > q.ts
WITH (connector = 'file', path = 'out/priced.jsonl', format = 'json');
