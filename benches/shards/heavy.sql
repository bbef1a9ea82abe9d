CREATE SOURCE readings (device_id VARCHAR NOT NULL, temp DOUBLE, ts TIMESTAMP(3) NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)
WITH (connector = 'datagen', shape = 'iot', seed = '1', rows = '2000000', devices = '1000', interval = '1ms');
CREATE SINK stats AS
SELECT device_id, window_start, APPROX_PERCENTILE_CONT(temp, 0.99) AS p99, APPROX_DISTINCT(CAST(temp * 10 AS BIGINT)) AS d, STDDEV_SAMP(temp) AS sd, COUNT(*) AS n
FROM HOP(readings, ts, INTERVAL '10' SECOND, INTERVAL '1' MINUTE)
GROUP BY device_id, window_start, window_end
WITH (connector = 'file', path = '/dev/null', format = 'json');
CREATE SINK spikes AS
SELECT * FROM (SELECT device_id, ts, temp, AVG(temp) OVER (PARTITION BY device_id ORDER BY ts ROWS BETWEEN 50 PRECEDING AND CURRENT ROW) AS avg50 FROM readings) WHERE temp > avg50 + 10
WITH (connector = 'file', path = '/dev/null', format = 'json');
