CREATE SOURCE readings (
    device_id VARCHAR NOT NULL,
    temp      DOUBLE,
    ts        TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'file', path = 'readings.jsonl', format = 'json');

CREATE MATERIALIZED VIEW whole AS SELECT device_id, CAST(temp AS BIGINT) AS t, ts FROM readings;
CREATE SINK s AS SELECT device_id, t / (t - t) AS r FROM whole WITH (connector = 'file', path = 'out/s.jsonl');
