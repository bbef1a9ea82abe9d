CREATE SOURCE readings (
    device_id VARCHAR NOT NULL,
    temp      DOUBLE,
    ts        TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'file', path = 'readings.jsonl', format = 'json');

CREATE SINK ok AS SELECT device_id, temp FROM readings WITH (connector = 'file', path = 'out/ok.jsonl');
CREATE SINK bad AS SELECT error FROM ERRORS(readings) WITH (connector = 'file', path = 'out/bad.jsonl');
