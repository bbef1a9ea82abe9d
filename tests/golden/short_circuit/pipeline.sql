-- AND / OR evaluate their right side only where the left leaves the row open (as Flink does):
-- a guard on the left keeps a division on the right from rows it would fail on, whatever else
-- shares the batch (engine/src/ops/short_circuit.rs).
CREATE SOURCE bids (
    id BIGINT NOT NULL, qty BIGINT, channel VARCHAR, url VARCHAR, ts TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '1' SECOND
) WITH (connector = 'file', path = 'bids.jsonl', format = 'json');

-- Guarded by AND in WHERE; qty NULL leaves the left NULL, so the right runs (and is NULL too).
CREATE SINK and_where AS
SELECT id, 100 / qty AS per FROM bids WHERE qty <> 0 AND 100 / qty >= 10
WITH (connector = 'file', path = 'out/and_where.jsonl', format = 'json');

-- Guarded by OR: the right runs only where qty = 0 is not TRUE.
CREATE SINK or_where AS
SELECT id FROM bids WHERE qty = 0 OR 100 / qty < 10
WITH (connector = 'file', path = 'out/or_where.jsonl', format = 'json');

-- In a projection, with three-valued results (NULL AND FALSE is FALSE, NULL AND TRUE is NULL),
-- and a chain of three where the middle one guards the last.
CREATE SINK and_or_select AS
SELECT id,
       qty <> 0 AND 100 / qty > 10 AS big,
       qty = 0 OR 100 / qty > 10 AS zero_or_big,
       channel IS NOT NULL AND qty <> 0 AND 1000 / qty > 100 AS named_and_big
FROM bids
WITH (connector = 'file', path = 'out/and_or_select.jsonl', format = 'json');

-- In an aggregate's FILTER and in HAVING over an updating stream.
CREATE SINK per_channel AS
SELECT channel,
       COUNT(*) AS n,
       COUNT(*) FILTER (WHERE qty <> 0 AND 100 / qty >= 10) AS small_orders
FROM bids
GROUP BY channel
HAVING SUM(qty) <> 0 AND 1000 / SUM(qty) > 1
WITH (connector = 'file', path = 'out/per_channel.jsonl', format = 'json', type = 'upsert');
