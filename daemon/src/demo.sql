-- The built-in demo: simulated plant telemetry, per-device statistics every 10 seconds,
-- an alert stream for hot readings, and a view of each site's figures. Run it with `eddyd demo`.
CREATE SOURCE readings (
    device_id VARCHAR NOT NULL,
    site      VARCHAR,
    temp      DOUBLE,
    humidity  DOUBLE,
    ts        TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'datagen', shape = 'iot', devices = '6', rate = '200', disorder = '1s',
        late_ratio = '0.002', error_ratio = '0.001', seed = '7');

CREATE SINK per_device AS
SELECT device_id, window_start, window_end, COUNT(*) AS n, ROUND(AVG(temp), 2) AS avg_temp,
       MIN(temp) AS min_temp, MAX(temp) AS max_temp, ROUND(STDDEV_SAMP(temp), 3) AS sd_temp
FROM TUMBLE(readings, ts, INTERVAL '10' SECOND)
GROUP BY device_id, window_start, window_end
WITH (connector = 'console');

-- Current figures per site, kept for on-demand queries: `eddyctl query "SELECT * FROM per_site"`.
CREATE MATERIALIZED VIEW per_site AS
SELECT site, COUNT(*) AS readings, ROUND(AVG(temp), 2) AS avg_temp, MAX(temp) AS max_temp
FROM readings GROUP BY site;

CREATE SINK hot AS
SELECT device_id, site, temp, ts FROM readings WHERE temp > 31.5
WITH (connector = 'console');

CREATE SINK rejected AS
SELECT error, raw FROM ERRORS(readings)
WITH (connector = 'console');
