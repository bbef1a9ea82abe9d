CREATE SOURCE readings (
    device_id VARCHAR NOT NULL, temp DOUBLE, ts TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'datagen', shape = 'iot');
CREATE SINK hot AS SELECT device_id, temp FROM readings WHERE temp > 25
WITH (connector = 'console');
