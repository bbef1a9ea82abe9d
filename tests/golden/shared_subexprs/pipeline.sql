-- Sub-expressions computed once (engine/src/ops/shared_exprs.rs): results as if each ran where written.
CREATE SOURCE bids (
    id BIGINT NOT NULL, qty BIGINT, channel VARCHAR, url VARCHAR, ts TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '1' SECOND
) WITH (connector = 'file', path = 'bids.jsonl', format = 'json');

-- Nexmark q21's shape: the URL's channel_id and lower(channel) in both WHERE and SELECT.
CREATE SINK channel_ids AS
SELECT id, channel,
       CASE
         WHEN lower(channel) = 'apple' THEN '0'
         WHEN lower(channel) = 'google' THEN '1'
         ELSE regexp_match(url, '(&|^)channel_id=([^&]*)')[2]
       END AS channel_id
FROM bids
WHERE regexp_match(url, '(&|^)channel_id=([^&]*)')[2] IS NOT NULL
   OR lower(channel) IN ('apple', 'google')
WITH (connector = 'file', path = 'out/channel_ids.jsonl', format = 'json');

-- A division the WHERE guards with CASE: the SELECT's copy must not run before the filter.
CREATE SINK guarded_where AS
SELECT id, 100 / qty AS per FROM bids WHERE CASE WHEN qty = 0 THEN false ELSE 100 / qty >= 10 END
WITH (connector = 'file', path = 'out/guarded_where.jsonl', format = 'json');

-- The same division twice, guarded by CASE both times.
CREATE SINK guarded_case AS
SELECT id, CASE WHEN qty = 0 THEN -1 ELSE 100 / qty END AS per,
       CASE WHEN qty = 0 THEN -1 ELSE 100 / qty + 1 END AS per_plus_one
FROM bids
WITH (connector = 'file', path = 'out/guarded_case.jsonl', format = 'json');

-- Shared inside one projection: upper(channel) three times, one of them unguarded.
CREATE SINK upper_thrice AS
SELECT id, upper(channel) AS u, upper(channel) || '!' AS loud, coalesce(upper(channel), '-') AS shown
FROM bids WHERE ts > TIMESTAMP '2026-03-01 08:00:00.000'
WITH (connector = 'file', path = 'out/upper_thrice.jsonl', format = 'json');

-- regexp_match(...)[k] lists only the groups that took part (engine/src/sql/regexp_group.rs):
-- where `(query=)?` is absent the digits are element 1 and there is no element 2. And a CASE
-- without ELSE over NULL comparisons, evaluated eagerly (engine/src/ops/eager_case.rs).
CREATE SINK groups_listed AS
SELECT id, regexp_match(url, '(query=)?([0-9]+)')[1] AS first, regexp_match(url, '(query=)?([0-9]+)')[2] AS second,
       CASE WHEN qty > 10 THEN 'many' WHEN qty = 0 THEN 'none' END AS amount
FROM bids
WITH (connector = 'file', path = 'out/groups_listed.jsonl', format = 'json');
