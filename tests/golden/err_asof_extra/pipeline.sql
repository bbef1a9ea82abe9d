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
CREATE SINK s AS SELECT c.cmd_id FROM commands c ASOF JOIN acks a ON c.cmd_id = a.cmd_id AND c.ts >= a.ts AND a.status = 'ok'
WITH (connector = 'console');
