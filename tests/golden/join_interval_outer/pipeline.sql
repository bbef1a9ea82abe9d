CREATE SOURCE commands (
    cmd_id VARCHAR NOT NULL, device_id VARCHAR,
    ts TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'file', path = 'commands.jsonl', format = 'json');

CREATE SOURCE acks (
    cmd_id VARCHAR NOT NULL, status VARCHAR,
    ts TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'file', path = 'acks.jsonl', format = 'json');

CREATE SINK acked AS
SELECT c.cmd_id, a.status, c.ts AS sent_at, a.ts AS acked_at
FROM commands c LEFT JOIN acks a
  ON c.cmd_id = a.cmd_id AND a.ts BETWEEN c.ts AND c.ts + INTERVAL '10' SECOND AND a.status <> 'dup'
WITH (connector = 'file', path = 'out/acked.jsonl', format = 'json');

CREATE SINK everything AS
SELECT c.cmd_id AS c_cmd, a.cmd_id AS a_cmd, c.ts AS sent_at, a.ts AS acked_at
FROM commands c FULL OUTER JOIN acks a
  ON c.cmd_id = a.cmd_id AND a.ts >= c.ts AND a.ts <= c.ts + INTERVAL '10' SECOND
WITH (connector = 'file', path = 'out/everything.jsonl', format = 'json');

CREATE MATERIALIZED VIEW near AS
SELECT c.cmd_id, c.ts AS sent_at FROM commands c JOIN acks a
  ON a.cmd_id = c.cmd_id AND a.ts BETWEEN c.ts - INTERVAL '5' SECOND AND c.ts + INTERVAL '2' SECOND;

CREATE SINK near_per_window AS
SELECT window_start, COUNT(*) AS n FROM TUMBLE(near, sent_at, INTERVAL '20' SECOND)
GROUP BY window_start, window_end
WITH (connector = 'file', path = 'out/near_per_window.jsonl', format = 'json');
