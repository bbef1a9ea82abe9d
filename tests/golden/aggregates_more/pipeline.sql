CREATE SOURCE readings (
    device_id VARCHAR NOT NULL,
    temp      DOUBLE,
    ts        TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '3' SECOND
) WITH (connector = 'file', path = 'readings.jsonl', format = 'json');

CREATE SINK stats AS
SELECT device_id, window_start, COUNT(*) AS n, COUNT(temp) AS n_temp, COUNT(DISTINCT temp) AS distinct_temps,
       APPROX_DISTINCT(CAST(temp * 100 AS BIGINT)) AS approx_distinct, STDDEV_SAMP(temp) AS sd_samp, STDDEV_POP(temp) AS sd_pop,
       VAR_SAMP(temp) AS v_samp, VAR_POP(temp) AS v_pop, AVG(temp) AS avg_temp
FROM TUMBLE(readings, ts, INTERVAL '1' MINUTE)
GROUP BY device_id, window_start, window_end
WITH (connector = 'file', path = 'out/stats.jsonl', format = 'json');
