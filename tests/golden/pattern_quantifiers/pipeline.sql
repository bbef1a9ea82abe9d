CREATE SOURCE readings (
    device_id VARCHAR NOT NULL, temp DOUBLE,
    ts TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '3' SECOND
) WITH (connector = 'file', path = 'readings.jsonl', format = 'json');

CREATE SINK greedy AS
SELECT * FROM readings MATCH_RECOGNIZE (
    PARTITION BY device_id ORDER BY ts
    MEASURES FIRST(UP.ts) AS start_ts, LAST(UP.ts) AS peak_ts, COUNT(UP.*) AS ups, LAST(DOWN.temp) AS after_temp
    ONE ROW PER MATCH
    AFTER MATCH SKIP PAST LAST ROW
    PATTERN (UP+ DOWN) 
    DEFINE UP AS UP.temp > PREV(UP.temp), DOWN AS DOWN.temp < PREV(DOWN.temp)
)
WITH (connector = 'file', path = 'out/greedy.jsonl', format = 'json');

CREATE SINK reluctant_range AS
SELECT * FROM readings MATCH_RECOGNIZE (
    PARTITION BY device_id ORDER BY ts
    MEASURES FIRST(A.ts) AS a_ts, COUNT(A.*) AS a_n, LAST(B.temp) AS b_temp
    ONE ROW PER MATCH
    AFTER MATCH SKIP PAST LAST ROW
    PATTERN (A{1,4}? B) 
    DEFINE A AS A.temp >= 19, B AS B.temp > PREV(B.temp)
)
WITH (connector = 'file', path = 'out/reluctant_range.jsonl', format = 'json');

CREATE SINK alternation_group AS
SELECT * FROM readings MATCH_RECOGNIZE (
    PARTITION BY device_id ORDER BY ts
    MEASURES FIRST(ts) AS start_ts, COUNT(*) AS n, COUNT(F.*) AS flats
    ONE ROW PER MATCH
    AFTER MATCH SKIP PAST LAST ROW
    PATTERN ((U | F){2} D) 
    DEFINE U AS U.temp > PREV(U.temp), F AS F.temp = PREV(F.temp), D AS D.temp < PREV(D.temp)
)
WITH (connector = 'file', path = 'out/alternation_group.jsonl', format = 'json');

CREATE SINK history_define AS
SELECT * FROM readings MATCH_RECOGNIZE (
    PARTITION BY device_id ORDER BY ts
    MEASURES FIRST(X.ts) AS x_ts, AVG(X.temp) AS x_avg, Y.temp AS y_temp
    ONE ROW PER MATCH
    AFTER MATCH SKIP PAST LAST ROW
    PATTERN (X+ Y) 
    DEFINE X AS AVG(X.temp) < 21, Y AS Y.temp > LAST(X.temp) + 0.9 AND Y.temp > FIRST(X.temp)
)
WITH (connector = 'file', path = 'out/history_define.jsonl', format = 'json');

CREATE SINK optional_star_exact AS
SELECT * FROM readings MATCH_RECOGNIZE (
    PARTITION BY device_id ORDER BY ts
    MEASURES FIRST(ts) AS start_ts, COUNT(S.*) AS steady, COUNT(*) AS n
    ONE ROW PER MATCH
    AFTER MATCH SKIP PAST LAST ROW
    PATTERN (D{2} S* U?  X) 
    DEFINE D AS D.temp < PREV(D.temp), S AS S.temp = PREV(S.temp), U AS U.temp > PREV(U.temp), X AS X.temp >= 20
)
WITH (connector = 'file', path = 'out/optional_star_exact.jsonl', format = 'json');

CREATE SINK at_most AS
SELECT * FROM readings MATCH_RECOGNIZE (
    PARTITION BY device_id ORDER BY ts
    MEASURES FIRST(ts) AS start_ts, COUNT(*) AS n
    ONE ROW PER MATCH
    AFTER MATCH SKIP PAST LAST ROW
    PATTERN (H{,3} C) 
    DEFINE H AS H.temp >= 21, C AS C.temp < 19.5
)
WITH (connector = 'file', path = 'out/at_most.jsonl', format = 'json');
