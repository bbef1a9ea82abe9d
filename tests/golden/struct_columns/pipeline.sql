CREATE SOURCE r (
    device_id VARCHAR NOT NULL, loc STRUCT<lat DOUBLE, lon DOUBLE, floor VARCHAR>, ts TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts
) WITH (connector = 'file', path = 'r.jsonl');
CREATE SINK located AS SELECT device_id, loc['lat'] AS lat, loc['floor'] AS floor, loc FROM r
WITH (connector = 'file', path = 'out/located.jsonl');
