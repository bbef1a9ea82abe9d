CREATE SOURCE power (
    device_id VARCHAR NOT NULL, watts BIGINT,
    ts TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '3' SECOND
) WITH (connector = 'file', path = 'power.jsonl', format = 'json');

CREATE SOURCE temps (
    device_id VARCHAR NOT NULL, temp DOUBLE,
    ts TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '3' SECOND
) WITH (connector = 'file', path = 'temps.jsonl', format = 'json');

CREATE MATERIALIZED VIEW p AS SELECT device_id, window_start, window_end, SUM(watts) AS watts
FROM TUMBLE(power, ts, INTERVAL '1' MINUTE) GROUP BY device_id, window_start, window_end;

CREATE MATERIALIZED VIEW t AS SELECT device_id, window_start, window_end, MAX(temp) AS max_temp
FROM TUMBLE(temps, ts, INTERVAL '1' MINUTE) GROUP BY device_id, window_start, window_end;

CREATE SINK both_sides AS
SELECT p.device_id, p.window_start, p.watts, t.max_temp
FROM p JOIN t ON p.device_id = t.device_id AND p.window_start = t.window_start AND p.window_end = t.window_end
WITH (connector = 'file', path = 'out/both_sides.jsonl', format = 'json');

CREATE SINK either_side AS
SELECT p.device_id AS p_dev, t.device_id AS t_dev, COALESCE(p.window_end, t.window_end) AS window_end, p.watts, t.max_temp
FROM p FULL JOIN t ON p.device_id = t.device_id AND p.window_start = t.window_start AND p.window_end = t.window_end
WITH (connector = 'file', path = 'out/either_side.jsonl', format = 'json');
