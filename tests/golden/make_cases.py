#!/usr/bin/env python3
"""Writes the golden cases' inputs and expected rows.

The expected rows come from the small reference of the spec below (row by row, in arrival order),
written independently of the engine. Run it after changing a case: python3 tests/golden/make_cases.py
"""
import json, math, os, random, shutil
from golden_lib import HERE, T0, iso, readings, accept, write_case, windows

SRC = """CREATE SOURCE readings (
    device_id VARCHAR NOT NULL,
    temp      DOUBLE,
    ts        TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '{delay}' SECOND
) WITH (connector = 'file', path = 'readings.jsonl', format = 'json'{extra});
"""

def window_counts(acc, kind, a, b=None):
    groups = {}
    for r, _ in acc:
        for (s, e) in windows(kind, r['_ms'], a, b):
            g = groups.setdefault((r['device_id'], s, e), [])
            g.append(r['temp'])
    return groups

# ---- CUMULATE ----
rows = readings(120, 1)
acc = accept(rows, 3000)
g = window_counts(acc, 'cumulate', 20000, 60000)
write_case('cumulate_basic', SRC.format(delay=3, extra='') + """
CREATE SINK cumulative AS
SELECT device_id, window_start, window_end, COUNT(*) AS n, SUM(temp) AS total
FROM CUMULATE(readings, ts, INTERVAL '20' SECOND, INTERVAL '1' MINUTE)
GROUP BY device_id, window_start, window_end
WITH (connector = 'file', path = 'out/cumulative.jsonl', format = 'json');
""", {'readings.jsonl': rows}, {'cumulative': [
    {'device_id': k[0], 'window_start': iso(k[1]), 'window_end': iso(k[2]), 'n': len(v), 'total': sum(v)} for k, v in g.items()]})

# ---- Flink spelling: same as TUMBLE ----
g = window_counts(acc, 'tumble', 60000)
tumble_rows = [{'device_id': k[0], 'window_start': iso(k[1]), 'window_end': iso(k[2]), 'n': len(v), 'max_temp': max(v)} for k, v in g.items()]
write_case('flink_tvf_spelling', SRC.format(delay=3, extra='') + """
CREATE SINK per_minute AS
SELECT device_id, window_start, window_end, COUNT(*) AS n, MAX(temp) AS max_temp
FROM TABLE(TUMBLE(TABLE readings, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
GROUP BY device_id, window_start, window_end
WITH (connector = 'file', path = 'out/per_minute.jsonl', format = 'json');
""", {'readings.jsonl': rows}, {'per_minute': tumble_rows})

# ---- HAVING ----
write_case('having_filter', SRC.format(delay=3, extra='') + """
CREATE SINK busy AS
SELECT device_id, window_start, COUNT(*) AS n
FROM TUMBLE(readings, ts, INTERVAL '1' MINUTE)
GROUP BY device_id, window_start, window_end
HAVING COUNT(*) >= 14
WITH (connector = 'file', path = 'out/busy.jsonl', format = 'json');
""", {'readings.jsonl': rows}, {'busy': [
    {'device_id': k[0], 'window_start': iso(k[1]), 'n': len(v)} for k, v in g.items() if len(v) >= 14]})

# ---- cascading views: 10 s counts -> 1 min sums over window_start and over window_end ----
g10 = window_counts(acc, 'tumble', 10000)
per_min = {}
for (dev, s, e), v in g10.items():
    m = s - s % 60000
    per_min[(dev, m)] = per_min.get((dev, m), 0) + len(v)
per_min_end = {}
for (dev, s, e), v in g10.items():
    m = e - e % 60000
    per_min_end[(dev, m)] = per_min_end.get((dev, m), 0) + len(v)
write_case('cascade_views', SRC.format(delay=3, extra='') + """
CREATE MATERIALIZED VIEW bars_10s AS
SELECT device_id, window_start, window_end, COUNT(*) AS n
FROM TUMBLE(readings, ts, INTERVAL '10' SECOND)
GROUP BY device_id, window_start, window_end;

CREATE SINK bars_1m AS
SELECT device_id, window_start AS minute, SUM(n) AS n
FROM TUMBLE(bars_10s, window_start, INTERVAL '1' MINUTE)
GROUP BY device_id, window_start, window_end
WITH (connector = 'file', path = 'out/bars_1m.jsonl', format = 'json');

CREATE SINK bars_1m_by_end AS
SELECT device_id, window_start AS minute, SUM(n) AS n
FROM TUMBLE(bars_10s, window_end, INTERVAL '1' MINUTE)
GROUP BY device_id, window_start, window_end
WITH (connector = 'file', path = 'out/bars_1m_by_end.jsonl', format = 'json');
""", {'readings.jsonl': rows}, {
    'bars_1m': [{'device_id': d, 'minute': iso(m), 'n': n} for (d, m), n in per_min.items()],
    'bars_1m_by_end': [{'device_id': d, 'minute': iso(m), 'n': n} for (d, m), n in per_min_end.items()]})

# ---- more aggregates ----
def sq(x):
    return None if x is None else math.sqrt(x)
def var(v, ddof):
    if len(v) - ddof <= 0:
        return None
    m = sum(v) / len(v)
    return sum((x - m) ** 2 for x in v) / (len(v) - ddof)
rows_a = readings(90, 7, devices=2)
for i, r in enumerate(rows_a):
    r['temp'] = [20.5, 21.0, 22.25, 20.5, None][i % 5]
acc_a = accept(rows_a, 3000)
ga = window_counts(acc_a, 'tumble', 60000)
exp = []
for k, v in ga.items():
    nn = [x for x in v if x is not None]
    exp.append({'device_id': k[0], 'window_start': iso(k[1]), 'n': len(v), 'n_temp': len(nn), 'distinct_temps': len(set(nn)),
                'approx_distinct': len(set(nn)), 'sd_samp': sq(var(nn, 1)), 'sd_pop': sq(var(nn, 0)),
                'v_samp': var(nn, 1), 'v_pop': var(nn, 0), 'avg_temp': sum(nn) / len(nn)})
write_case('aggregates_more', SRC.format(delay=3, extra='') + """
CREATE SINK stats AS
SELECT device_id, window_start, COUNT(*) AS n, COUNT(temp) AS n_temp, COUNT(DISTINCT temp) AS distinct_temps,
       APPROX_DISTINCT(CAST(temp * 100 AS BIGINT)) AS approx_distinct, STDDEV_SAMP(temp) AS sd_samp, STDDEV_POP(temp) AS sd_pop,
       VAR_SAMP(temp) AS v_samp, VAR_POP(temp) AS v_pop, AVG(temp) AS avg_temp
FROM TUMBLE(readings, ts, INTERVAL '1' MINUTE)
GROUP BY device_id, window_start, window_end
WITH (connector = 'file', path = 'out/stats.jsonl', format = 'json');
""", {'readings.jsonl': rows_a}, {'stats': exp})

# ---- EMIT ON UPDATE, one row per batch: every change is emitted ----
small = readings(30, 3, devices=2, disorder=2000)
acc_s = accept(small, 2000)
ups = []
state = {}
for r, _ in acc_s:
    for (s, e) in windows('tumble', r['_ms'], 20000):
        k = (r['device_id'], s, e)
        state[k] = state.get(k, 0) + 1
        ups.append({'device_id': k[0], 'window_start': iso(s), 'window_end': iso(e), 'n': state[k], '_op': 'upsert'})
write_case('emit_on_update', SRC.format(delay=2, extra=", batch_rows = '1'") + """
CREATE SINK live_counts AS
SELECT device_id, window_start, window_end, COUNT(*) AS n
FROM TUMBLE(readings, ts, INTERVAL '20' SECOND)
GROUP BY device_id, window_start, window_end
EMIT ON UPDATE
WITH (connector = 'file', path = 'out/live_counts.jsonl', format = 'json', type = 'upsert');
""", {'readings.jsonl': small}, {'live_counts': ups})

# ---- EMIT EVERY: changed groups when the watermark crosses a 10 s boundary, final rows on close ----
out = []
state = {}
dirty = set()
last_w = None
def cross(w_prev, w):
    return w_prev is None or w // 10000 > w_prev // 10000
for r, w in acc_s:
    for (s, e) in windows('tumble', r['_ms'], 30000):
        k = (r['device_id'], s, e)
        state[k] = state.get(k, 0) + 1
        dirty.add(k)
    if last_w is None or w > last_w:
        if cross(last_w, w):
            for k in sorted(dirty):
                out.append({'device_id': k[0], 'window_start': iso(k[1]), 'n': state[k], '_op': 'upsert'})
            dirty.clear()
        for k in sorted([k for k in state if k[2] <= w]):
            out.append({'device_id': k[0], 'window_start': iso(k[1]), 'n': state[k], '_op': 'upsert'})
            del state[k]
            dirty.discard(k)
        last_w = w
for k in sorted(dirty):
    out.append({'device_id': k[0], 'window_start': iso(k[1]), 'n': state[k], '_op': 'upsert'})
for k in sorted(state):
    out.append({'device_id': k[0], 'window_start': iso(k[1]), 'n': state[k], '_op': 'upsert'})
write_case('emit_every', SRC.format(delay=2, extra=", batch_rows = '1'") + """
CREATE SINK progress AS
SELECT device_id, window_start, COUNT(*) AS n
FROM TUMBLE(readings, ts, INTERVAL '30' SECOND)
GROUP BY device_id, window_start, window_end
EMIT EVERY INTERVAL '10' SECOND
WITH (connector = 'file', path = 'out/progress.jsonl', format = 'json', type = 'upsert');
""", {'readings.jsonl': small}, {'progress': out})

# ---- non-windowed GROUP BY into an upsert sink; HAVING turns groups that fall out into deletes ----
ups = []
cnt = {}
mx = {}
for r, _ in acc_s:
    d = r['device_id']
    cnt[d] = cnt.get(d, 0) + 1
    ups.append({'device_id': d, 'n': cnt[d], '_op': 'upsert'})
write_case('group_by_upsert', SRC.format(delay=2, extra=", batch_rows = '1'") + """
CREATE SINK totals AS
SELECT device_id, COUNT(*) AS n FROM readings GROUP BY device_id
WITH (connector = 'file', path = 'out/totals.jsonl', format = 'json', type = 'upsert');
""", {'readings.jsonl': small}, {'totals': ups})

hv = []
cnt = {}
for r, _ in acc_s:
    d = r['device_id']
    cnt[d] = cnt.get(d, 0) + 1
    hv.append({'device_id': d, 'n': cnt[d], '_op': 'upsert' if cnt[d] % 2 == 0 else 'delete'})
write_case('having_updating', SRC.format(delay=2, extra=", batch_rows = '1'") + """
CREATE SINK even AS
SELECT device_id, COUNT(*) AS n FROM readings GROUP BY device_id HAVING COUNT(*) % 2 = 0
WITH (connector = 'file', path = 'out/even.jsonl', format = 'json', type = 'upsert');
""", {'readings.jsonl': small}, {'even': hv})

# ---- processing time: no WATERMARK, nothing is late, windows close at the end of replay ----
gp = {}
for r in rows:
    for (s, e) in windows('tumble', r['_ms'], 60000):
        gp[(r['device_id'], s)] = gp.get((r['device_id'], s), 0) + 1
write_case('processing_time', """CREATE SOURCE readings (
    device_id VARCHAR NOT NULL, temp DOUBLE, ts TIMESTAMP(3) NOT NULL
) WITH (connector = 'file', path = 'readings.jsonl', format = 'json');
CREATE SINK per_minute AS
SELECT device_id, window_start, COUNT(*) AS n FROM TUMBLE(readings, ts, INTERVAL '1' MINUTE)
GROUP BY device_id, window_start, window_end
WITH (connector = 'file', path = 'out/per_minute.jsonl', format = 'json');
""", {'readings.jsonl': rows}, {'per_minute': [{'device_id': d, 'window_start': iso(s), 'n': n} for (d, s), n in gp.items()]})

# ---- CSV source, scalar functions, UNION ALL ----
csv_text = 'device_id,temp,ts\n' + ''.join(f"{r['device_id']},{r['temp']},{r['ts']}\n" for r in small) + 'dev-9,notanumber,2026-03-01T08:00:00Z\n'
write_case('csv_and_functions', """CREATE SOURCE readings (
    device_id VARCHAR NOT NULL, temp DOUBLE, ts TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'file', path = 'readings.csv', format = 'csv');
CREATE SINK shaped AS
SELECT UPPER(device_id) AS dev, CAST(ROUND(temp) AS BIGINT) AS t, CASE WHEN temp > 22.5 THEN 'warm' ELSE 'cool' END AS feel,
       date_trunc('minute', ts) AS minute, concat(device_id, '@', 'plant') AS tag
FROM readings
WITH (connector = 'file', path = 'out/shaped.jsonl', format = 'json');
CREATE SINK bad AS SELECT error FROM ERRORS(readings)
WITH (connector = 'file', path = 'out/bad.jsonl', format = 'json');
""", {'readings.csv': csv_text}, {
    'shaped': [{'dev': r['device_id'].upper(), 't': int(math.floor(r['temp'] + 0.5)), 'feel': 'warm' if r['temp'] > 22.5 else 'cool',
                'minute': iso(r['_ms'] - r['_ms'] % 60000), 'tag': r['device_id'] + '@plant'} for r, _ in acc_s],
    'bad': [{'error': "column 'temp': expected DOUBLE, got string \"notanumber\""}]})

other = readings(20, 11, devices=2, disorder=0)
for r in other:
    r['device_id'] = 'x-' + r['device_id']
acc_o = accept(other, 2000)
gu = {}
for r, _ in acc_s + acc_o:
    for (s, e) in windows('tumble', r['_ms'], 60000):
        gu[s] = gu.get(s, 0) + 1
write_case('union_all', SRC.format(delay=2, extra='') + """
CREATE SOURCE more (
    device_id VARCHAR NOT NULL, temp DOUBLE, ts TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'file', path = 'more.jsonl', format = 'json');
CREATE MATERIALIZED VIEW everything AS
SELECT device_id, ts FROM readings UNION ALL SELECT device_id, ts FROM more;
CREATE SINK per_minute AS
SELECT window_start, COUNT(*) AS n FROM TUMBLE(everything, ts, INTERVAL '1' MINUTE)
GROUP BY window_start, window_end
WITH (connector = 'file', path = 'out/per_minute.jsonl', format = 'json');
""", {'readings.jsonl': small, 'more.jsonl': other}, {'per_minute': [{'window_start': iso(s), 'n': n} for s, n in gu.items()]})

# ---- --input / --output overrides ----
write_case('replay_overrides', """CREATE SOURCE readings (
    device_id VARCHAR NOT NULL, temp DOUBLE, ts TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'datagen', shape = 'iot');
CREATE SINK hot AS SELECT device_id, temp FROM readings WHERE temp > 25
WITH (connector = 'console');
""", {'alt.jsonl': small}, {'hot': [{'device_id': r['device_id'], 'temp': r['temp']} for r, _ in acc_s if r['temp'] > 25]},
    args='--input readings=alt.jsonl --output hot=out/hot.jsonl')

# ---- errors: each must fail with a clear message ----
ERR = {
    'err_append_updating': (SRC.format(delay=2, extra='') + """
CREATE SINK totals AS SELECT device_id, COUNT(*) AS n FROM readings GROUP BY device_id
WITH (connector = 'file', path = 'out/totals.jsonl', format = 'json');""",
        "statement 2 (line 8, column 1)\nupdating result\ntype = 'upsert'"),
    'err_unknown_option': (SRC.format(delay=2, extra='') + """
CREATE SINK s AS SELECT * FROM readings WITH (connector = 'file', pth = 'x.jsonl');""",
        "unknown option 'pth' for connector 'file'; valid options: connector, format, path, primary_key, type"),
    'err_bad_option_value': (SRC.format(delay=2, extra=", on_error = 'panic'") + """
CREATE SINK s AS SELECT * FROM readings WITH (connector = 'console');""",
        "source 'readings'\noption 'on_error' must be one of skip, fail, not 'panic'"),
    'err_sink_type': (SRC.format(delay=2, extra='') + """
CREATE SINK s AS SELECT * FROM readings WITH (connector = 'file', path = 'out/s.jsonl', type = 'Merge');""",
        "sink 's'\noption 'type' must be one of append, upsert, not 'Merge'"),
    'err_sink_format': (SRC.format(delay=2, extra='') + """
CREATE SINK s AS SELECT * FROM readings WITH (connector = 'file', path = 'out/s.csv', format = 'csv');""",
        "sink 's'\noption 'format' 'csv': file sinks write format 'json' (the default)"),
    'err_unknown_connector': ("""CREATE SOURCE r (a INT) WITH (connector = 'kafak');""", "unknown connector 'kafak'"),
    'err_syntax': (SRC.format(delay=2, extra='') + """
CREATE SINK s AS SELECT device_id FROM readings WHERE WITH (connector = 'console');""",
        "statement 2 (line 8"),
    'err_unknown_column': (SRC.format(delay=2, extra='') + """
CREATE SINK s AS SELECT humidity FROM readings WITH (connector = 'console');""",
        "statement 2 (line 8, column 1)\nhumidity"),
    'err_unknown_relation': ("""CREATE SINK s AS SELECT * FROM nowhere WITH (connector = 'console');""", "unknown relation 'nowhere'"),
    'err_on_error_fail': (SRC.format(delay=2, extra=", on_error = 'fail'") + """
CREATE SINK s AS SELECT * FROM readings WITH (connector = 'file', path = 'out/s.jsonl');""",
        "source 'readings': bad row under on_error = 'fail'\nexpected DOUBLE, got string \"hot\""),
    'err_session_needs_aggregate': (SRC.format(delay=2, extra='') + """
CREATE SINK s AS SELECT * FROM SESSION(readings, ts, INTERVAL '1' MINUTE) WITH (connector = 'console');""",
        "SESSION windows must be aggregated"),
    'err_emit_without_aggregate': (SRC.format(delay=2, extra='') + """
CREATE SINK s AS SELECT * FROM readings EMIT ON WINDOW CLOSE WITH (connector = 'console');""",
        "EMIT applies to aggregations"),
    'err_window_on_column_without_watermark': ("""CREATE SOURCE r (k VARCHAR, a TIMESTAMP(3), b TIMESTAMP(3), WATERMARK FOR a AS a)
WITH (connector = 'file', path = 'readings.jsonl');
CREATE SINK s AS SELECT k, window_start, COUNT(*) AS n FROM TUMBLE(r, b, INTERVAL '1' MINUTE)
GROUP BY k, window_start, window_end WITH (connector = 'console');""", "column 'b' has no watermark"),
    'err_hop_not_multiple': (SRC.format(delay=2, extra='') + """
CREATE SINK s AS SELECT window_start, COUNT(*) AS n FROM HOP(readings, ts, INTERVAL '7' SECOND, INTERVAL '1' MINUTE)
GROUP BY window_start, window_end WITH (connector = 'console');""", "must be a whole multiple of its slide"),
    'err_bad_watermark': ("""CREATE SOURCE r (ts TIMESTAMP(3), WATERMARK FOR ts AS ts + INTERVAL '1' SECOND)
WITH (connector = 'file', path = 'readings.jsonl');""", "WATERMARK FOR ts AS ts - INTERVAL '...' expected"),
    'err_duplicate_name': (SRC.format(delay=2, extra='') + """
CREATE MATERIALIZED VIEW readings AS SELECT * FROM readings;""", "'readings' is already defined"),
    'err_replay_unbounded': ("""CREATE SOURCE r (ts TIMESTAMP(3)) WITH (connector = 'datagen');""", "set option 'rows'"),
    'err_missing_file': (SRC.format(delay=2, extra='').replace('readings.jsonl', 'missing.jsonl') + """
CREATE SINK s AS SELECT * FROM readings WITH (connector = 'console');""", "missing.jsonl: No such file"),
    # An error while evaluating names the statement and operator, with DataFusion's innermost message once.
    'err_divide_by_zero': (SRC.format(delay=2, extra='') + """
CREATE MATERIALIZED VIEW whole AS SELECT device_id, CAST(temp AS BIGINT) AS t, ts FROM readings;
CREATE SINK s AS SELECT device_id, t / (t - t) AS r FROM whole WITH (connector = 'file', path = 'out/s.jsonl');""",
        "eddyd: sink 's' (project): Divide by zero error"),
}
bad_rows = small[:3] + [{'device_id': 'dev-1', 'temp': 'hot', 'ts': iso(T0)}]
for name, (sql, err) in ERR.items():
    write_case(name, sql, {'readings.jsonl': bad_rows}, {'error.txt': err})
print('cases written')

# ---- OVER: ROWS frame, LAG, LEAD, ROW_NUMBER, RANK, DENSE_RANK (rows in event-time order per partition) ----
ov = readings(40, 21, devices=2, disorder=3000, step=1000)
for i, r in enumerate(ov):
    if i % 9 == 4:  # equal timestamps: peers
        r['ts'], r['_ms'] = ov[i - 1]['ts'], ov[i - 1]['_ms']
acc_v = accept(ov, 3000)
by_dev = {}
for idx, (r, _) in enumerate(acc_v):
    by_dev.setdefault(r['device_id'], []).append((r['_ms'], idx, r))
exp_rows, exp_range = [], []
for dev, lst in by_dev.items():
    lst.sort(key=lambda x: (x[0], x[1]))
    temps = [x[2]['temp'] for x in lst]
    for i, (t, _, r) in enumerate(lst):
        w = temps[max(0, i - 2): i + 1]
        rank = 1 + sum(1 for x in lst if x[0] < t)
        dense = 1 + len({x[0] for x in lst if x[0] < t})
        exp_rows.append({'device_id': dev, 'ts': r['ts'], 'temp': r['temp'], 'avg3': sum(w) / len(w),
                         'prev': temps[i - 1] if i > 0 else None, 'next': temps[i + 1] if i + 1 < len(temps) else None,
                         'rn': i + 1, 'rk': rank, 'drk': dense})
        in_range = [x[2]['temp'] for x in lst if t - 10000 <= x[0] <= t]
        running = [x[2]['temp'] for x in lst if x[0] <= t]
        exp_range.append({'device_id': dev, 'ts': r['ts'], 'sum10s': sum(in_range), 'n10s': len(in_range), 'running_max': max(running)})
write_case('over_rows_lag_lead', SRC.format(delay=3, extra=", batch_rows = '7'") + """
CREATE SINK moving AS
SELECT device_id, ts, temp,
       AVG(temp) OVER (PARTITION BY device_id ORDER BY ts ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS avg3,
       LAG(temp) OVER (PARTITION BY device_id ORDER BY ts) AS prev,
       LEAD(temp) OVER (PARTITION BY device_id ORDER BY ts) AS next,
       ROW_NUMBER() OVER (PARTITION BY device_id ORDER BY ts) AS rn,
       RANK() OVER (PARTITION BY device_id ORDER BY ts) AS rk,
       DENSE_RANK() OVER (PARTITION BY device_id ORDER BY ts) AS drk
FROM readings
WITH (connector = 'file', path = 'out/moving.jsonl', format = 'json');
""", {'readings.jsonl': ov}, {'moving': exp_rows})
write_case('over_range', SRC.format(delay=3, extra=", batch_rows = '5'") + """
CREATE SINK ranged AS
SELECT device_id, ts,
       SUM(temp) OVER (PARTITION BY device_id ORDER BY ts RANGE BETWEEN INTERVAL '10' SECOND PRECEDING AND CURRENT ROW) AS sum10s,
       COUNT(*) OVER (PARTITION BY device_id ORDER BY ts RANGE BETWEEN INTERVAL '10' SECOND PRECEDING AND CURRENT ROW) AS n10s,
       MAX(temp) OVER (PARTITION BY device_id ORDER BY ts) AS running_max
FROM readings
WITH (connector = 'file', path = 'out/ranged.jsonl', format = 'json');
""", {'readings.jsonl': ov}, {'ranged': exp_range})

# ---- top-N per window: ROW_NUMBER over each closed window's rows ----
g5 = window_counts(acc, 'tumble', 60000)
per_win = {}
for (dev, s, e), v in g5.items():
    per_win.setdefault(s, []).append((dev, len(v)))
top = []
for s, lst in per_win.items():
    lst.sort(key=lambda x: (-x[1], x[0]))
    for i, (dev, n) in enumerate(lst[:2]):
        top.append({'window_start': iso(s), 'device_id': dev, 'n': n, 'place': i + 1})
write_case('top_n_per_window', SRC.format(delay=3, extra='') + """
CREATE MATERIALIZED VIEW per_minute AS
SELECT device_id, window_start, window_end, COUNT(*) AS n
FROM TUMBLE(readings, ts, INTERVAL '1' MINUTE)
GROUP BY device_id, window_start, window_end;

CREATE SINK top2 AS
SELECT window_start, device_id, n, place FROM (
    SELECT window_start, device_id, n,
           ROW_NUMBER() OVER (PARTITION BY window_start ORDER BY n DESC, device_id) AS place
    FROM per_minute
) WHERE place <= 2
WITH (connector = 'file', path = 'out/top2.jsonl', format = 'json');
""", {'readings.jsonl': rows}, {'top2': top})

ERR2 = {
    'err_over_without_time_order': (SRC.format(delay=2, extra='') + """
CREATE SINK s AS SELECT device_id, ROW_NUMBER() OVER (PARTITION BY device_id ORDER BY temp) AS r FROM readings
WITH (connector = 'console');""", "OVER needs ORDER BY an event-time column"),
    'err_order_by_on_stream': (SRC.format(delay=2, extra='') + """
CREATE SINK s AS SELECT * FROM readings ORDER BY temp WITH (connector = 'console');""", "ORDER BY is not supported on a stream"),
}
for name, (sql, err) in ERR2.items():
    write_case(name, sql, {'readings.jsonl': bad_rows}, {'error.txt': err})
print('over cases written')

# ---- nested JSON into STRUCT, and hostile input that must land in ERRORS() ----
nested = [
    {'device_id': 'dev-1', 'loc': {'lat': 52.5, 'lon': 13.4, 'floor': 'B2'}, 'ts': iso(T0)},
    {'device_id': 'dev-2', 'loc': None, 'ts': iso(T0 + 1000)},
    {'device_id': 'dev-3', 'ts': iso(T0 + 2000)},
]
write_case('struct_columns', """CREATE SOURCE r (
    device_id VARCHAR NOT NULL, loc STRUCT<lat DOUBLE, lon DOUBLE, floor VARCHAR>, ts TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts
) WITH (connector = 'file', path = 'r.jsonl');
CREATE SINK located AS SELECT device_id, loc['lat'] AS lat, loc['floor'] AS floor, loc FROM r
WITH (connector = 'file', path = 'out/located.jsonl');
""", {'r.jsonl': nested}, {'located': [
    {'device_id': 'dev-1', 'lat': 52.5, 'floor': 'B2', 'loc': {'lat': 52.5, 'lon': 13.4, 'floor': 'B2'}},
    {'device_id': 'dev-2', 'lat': None, 'floor': None, 'loc': None},
    {'device_id': 'dev-3', 'lat': None, 'floor': None, 'loc': None}]})

good = [{'device_id': 'dev-1', 'temp': 20.5, 'ts': iso(T0 + i * 3500)} for i in range(3)]
write_case('hostile_input', SRC.format(delay=2, extra='') + """
CREATE SINK ok AS SELECT device_id, temp FROM readings WITH (connector = 'file', path = 'out/ok.jsonl');
CREATE SINK bad AS SELECT error FROM ERRORS(readings) WITH (connector = 'file', path = 'out/bad.jsonl');
""", {'readings.jsonl': ''}, {
    'ok': [{'device_id': 'dev-1', 'temp': 20.5}] * 3 + [{'device_id': 'dev-2', 'temp': 1.0}],
    'bad': [{'error': 'not valid JSON: invalid UTF-8 at byte 15'},
            {'error': 'not valid JSON: expected value at line 1 column 1'},
            {'error': "column 'temp': expected DOUBLE, got string \"hot\""},
            {'error': "column 'temp': expected a scalar, got an array"},
            {'error': "event time 'ts' is missing"},
            {'error': 'not valid JSON: expected a JSON object, got null at line 1 column 4'}]})
with open(os.path.join(HERE, 'hostile_input', 'readings.jsonl'), 'wb') as f:
    lines = [json.dumps({k: v for k, v in r.items()}).encode() for r in good]
    f.write(lines[0] + b'\n')
    f.write(b'{"device_id": "\xff\xfe", "temp": 1, "ts": 0}\n')
    f.write(b'#' * 200_000 + b'\n')
    f.write(lines[1] + b'\n')
    f.write(b'{"device_id": "dev-1", "temp": "hot", "ts": "2026-03-01T08:00:05Z"}\n')
    f.write(b'[{"device_id": "dev-2", "temp": 1.0, "ts": "2026-03-01T08:00:06Z"}, {"device_id": "dev-2", "temp": [1], "ts": "2026-03-01T08:00:06Z"}]\n')
    f.write(b'{"device_id": "dev-1", "temp": 3}\n')
    f.write(b'null\n\n   \n')
    f.write(lines[2])  # last line without a newline
print('struct and hostile cases written')

# ---- a state limit stops the pipeline with a clear error ----
write_case('err_limit_open_windows', SRC.format(delay=3, extra='') + """
CREATE SINK per_second AS SELECT device_id, window_start, COUNT(*) AS n
FROM TUMBLE(readings, ts, INTERVAL '1' SECOND) GROUP BY device_id, window_start, window_end
WITH (connector = 'file', path = 'out/per_second.jsonl');
""", {'readings.jsonl': rows}, {'error.txt': "limit reached: 3 open windows in one aggregation (limits.max_open_windows)"},
    args='--max-open-windows 3')

# ---- FIRST/LAST over a view's time column: 1-minute OHLC bars -> 5-minute bars ----
# The 5-minute close is the close of the window's last 1-minute bar (largest window_start), the
# open the open of its first; the same ordered by window_end; and an updating GROUP BY over the
# view (one source row a batch, so each step closes at most one minute and the upserts are fixed).
rnd = random.Random(18)
trades, seen = [], set()
for i in range(900):
    sym = ['ACME', 'GLOBEX', 'INITECH'][rnd.randrange(3)]
    ms = T0 + i * 1000 - rnd.randrange(2500)
    while (sym, ms) in seen:
        ms += 1
    seen.add((sym, ms))
    trades.append({'symbol': sym, 'price': round(100 + rnd.random() * 20, 2), 'volume': rnd.randrange(1, 50), 'ts': iso(ms), '_ms': ms})
acc_t = [r for r, _ in accept(trades, 2000)]
bars = {}
for r in acc_t:
    m = r['_ms'] - r['_ms'] % 60000
    bars.setdefault((r['symbol'], m), []).append(r)
bar_rows = {}
for (sym, m), rs in bars.items():
    first = min(rs, key=lambda r: r['_ms'])
    last = max(rs, key=lambda r: r['_ms'])
    bar_rows[(sym, m)] = {'open': first['price'], 'high': max(r['price'] for r in rs), 'low': min(r['price'] for r in rs),
                          'close': last['price'], 'volume': sum(r['volume'] for r in rs)}
# A 1-minute bar closes when the watermark passes its end; every bar is final (no late bars: the
# view's watermark is its source's).
def five_minute(by_end):
    out = {}
    for (sym, m), b in bars_sorted:
        t = m + 60000 if by_end else m
        out.setdefault((sym, t - t % 300000), []).append((m, b))
    rows5 = []
    for (sym, s), bs in out.items():
        bs.sort(key=lambda x: x[0])
        rows5.append({'symbol': sym, 'window_start': iso(s), 'open': bs[0][1]['open'], 'high': max(b['high'] for _, b in bs),
                      'low': min(b['low'] for _, b in bs), 'close': bs[-1][1]['close'], 'volume': sum(b['volume'] for _, b in bs)})
    return rows5
bars_sorted = sorted(bar_rows.items(), key=lambda kv: (kv[0][0], kv[0][1]))
# The updating GROUP BY sees bars in the order their minutes close (all symbols' bars of a minute
# close in one step); each bar upserts its symbol's running first open, last close and count.
latest, running = [], {}
for (sym, m), b in sorted(bar_rows.items(), key=lambda kv: kv[0][1]):
    first_open, n = running.get(sym, (b['open'], 0))
    running[sym] = (first_open, n + 1)
    latest.append({'symbol': sym, 'first_open': first_open, 'last_close': b['close'], 'bars': n + 1, '_op': 'upsert'})
write_case('cascade_first_last', """CREATE SOURCE trades (
    symbol VARCHAR NOT NULL,
    price  DOUBLE,
    volume BIGINT,
    ts     TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'file', path = 'trades.jsonl', format = 'json', batch_rows = '1');

CREATE MATERIALIZED VIEW bars_1m AS
SELECT symbol, window_start, window_end,
       FIRST_VALUE(price) AS open, MAX(price) AS high, MIN(price) AS low, LAST_VALUE(price) AS close,
       SUM(volume) AS volume
FROM TUMBLE(trades, ts, INTERVAL '1' MINUTE)
GROUP BY symbol, window_start, window_end;

CREATE SINK bars_5m AS
SELECT symbol, window_start, FIRST_VALUE(open) AS open, MAX(high) AS high, MIN(low) AS low,
       LAST_VALUE(close) AS close, SUM(volume) AS volume
FROM TUMBLE(bars_1m, window_start, INTERVAL '5' MINUTE)
GROUP BY symbol, window_start, window_end
WITH (connector = 'file', path = 'out/bars_5m.jsonl', format = 'json');

CREATE SINK bars_5m_by_end AS
SELECT symbol, window_start, FIRST_VALUE(open) AS open, MAX(high) AS high, MIN(low) AS low,
       LAST_VALUE(close) AS close, SUM(volume) AS volume
FROM TUMBLE(bars_1m, window_end, INTERVAL '5' MINUTE)
WHERE volume > 0
GROUP BY symbol, window_start, window_end
WITH (connector = 'file', path = 'out/bars_5m_by_end.jsonl', format = 'json');

CREATE SINK latest AS
SELECT symbol, FIRST_VALUE(open) AS first_open, LAST_VALUE(close) AS last_close, COUNT(*) AS bars
FROM bars_1m
GROUP BY symbol
WITH (connector = 'file', path = 'out/latest.jsonl', format = 'json', type = 'upsert');
""", {'trades.jsonl': trades}, {
    'bars_5m': five_minute(False),
    'bars_5m_by_end': five_minute(True),
    'latest': latest})
print('cascade first/last case written')

# ---- FIRST/LAST with equal event times: ties go to the first / last arrival (spec) ----
rnd = random.Random(7)
tied = []
for i in range(240):
    # Timestamps on whole seconds with disorder, so many rows of a device share one.
    ms = T0 + (i // 3) * 1000 - rnd.randrange(3) * 1000
    tied.append({'device_id': f'dev-{rnd.randrange(2)}', 'temp': float(i), 'ts': iso(ms), '_ms': ms})
acc_tied = [r for r, _ in accept(tied, 2000)]
def first_last(rows):
    lo = min(r['_ms'] for r in rows)
    hi = max(r['_ms'] for r in rows)
    first = next(r for r in rows if r['_ms'] == lo)
    last = [r for r in rows if r['_ms'] == hi][-1]
    return first['temp'], last['temp']
g = {}
for r in acc_tied:
    s = r['_ms'] - r['_ms'] % 10000
    g.setdefault((r['device_id'], s), []).append(r)
tumble_fl = []
for (dev, s), rows_ in g.items():
    f, l = first_last(rows_)
    tumble_fl.append({'device_id': dev, 'window_start': iso(s), 'first_temp': f, 'last_temp': l, 'n': len(rows_)})
write_case('first_last_ties', SRC.format(delay=2, extra='') + """
CREATE SINK per_10s AS
SELECT device_id, window_start, FIRST_VALUE(temp) AS first_temp, LAST_VALUE(temp) AS last_temp, COUNT(*) AS n
FROM TUMBLE(readings, ts, INTERVAL '10' SECOND)
GROUP BY device_id, window_start, window_end
WITH (connector = 'file', path = 'out/per_10s.jsonl', format = 'json');
""", {'readings.jsonl': tied}, {'per_10s': tumble_fl})
print('first/last ties case written')

# ---- COUNT(DISTINCT) of one argument under several FILTERs (one shared set in the engine) ----
rnd = random.Random(11)
coded = []
for i in range(90):
    ms = T0 + i * 1000
    code = None if rnd.randrange(8) == 0 else rnd.randrange(7)
    temp = None if rnd.randrange(6) == 0 else round(14 + rnd.random() * 12, 2)
    coded.append({'device_id': f'dev-{rnd.randrange(3)}', 'code': code, 'temp': temp, 'ts': iso(ms), '_ms': ms})
seen = {}
distinct_ups = []
for r in coded:
    s = seen.setdefault(r['device_id'], {'codes': set(), 'cold': set(), 'warm': set(), 'whole': set()})
    if r['code'] is not None:
        s['codes'].add(r['code'])
        # A FILTER over a NULL temp is NULL, which does not take the row.
        if r['temp'] is not None and r['temp'] < 20:
            s['cold'].add(r['code'])
        if r['temp'] is not None and r['temp'] >= 20:
            s['warm'].add(r['code'])
    if r['temp'] is not None and r['code'] is not None and r['code'] > 2:
        s['whole'].add(math.trunc(r['temp']))
    distinct_ups.append({'device_id': r['device_id'], 'codes': len(s['codes']), 'cold_codes': len(s['cold']),
                         'warm_codes': len(s['warm']), 'whole_temps': len(s['whole']), '_op': 'upsert'})
write_case('count_distinct_filters', """CREATE SOURCE readings (
    device_id VARCHAR NOT NULL,
    code      BIGINT,
    temp      DOUBLE,
    ts        TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'file', path = 'readings.jsonl', format = 'json', batch_rows = '1');

CREATE SINK codes AS
SELECT device_id,
       COUNT(DISTINCT code) AS codes,
       COUNT(DISTINCT code) FILTER (WHERE temp < 20) AS cold_codes,
       COUNT(DISTINCT code) FILTER (WHERE temp >= 20) AS warm_codes,
       COUNT(DISTINCT CAST(temp AS BIGINT)) FILTER (WHERE code > 2) AS whole_temps
FROM readings GROUP BY device_id
WITH (connector = 'file', path = 'out/codes.jsonl', format = 'json', type = 'upsert');
""", {'readings.jsonl': coded}, {'codes': distinct_ups})
print('count distinct filters case written')
