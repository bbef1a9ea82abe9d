#!/usr/bin/env python3
"""Writes the golden cases for joins (spec §6) and MATCH_RECOGNIZE (spec §7).

Expected rows come from the plain reference below: nested loops over the rows the lateness rule
accepts, and a backtracking matcher that tries alternatives in SQL's preference order. It shares
no code with the engine. Run: python3 tests/golden/make_join_cases.py
"""
import sys
sys.dont_write_bytecode = True
import random
from golden_lib import T0, iso, accept, write_case

def stream(n, seed, keys, step=1000, disorder=3000, key='device_id', extra=None):
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        ms = T0 + i * step - rnd.randrange(disorder + 1)
        r = {key: rnd.choice(keys), 'ts': iso(ms), '_ms': ms}
        if extra:
            r.update(extra(rnd, i))
        rows.append(r)
    return rows

def accepted(rows, delay_s):
    return [r for r, _ in accept(rows, delay_s * 1000)]

def src(name, cols, delay, path=None):
    return f"""CREATE SOURCE {name} (
    {cols},
    ts TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '{delay}' SECOND
) WITH (connector = 'file', path = '{path or name + '.jsonl'}', format = 'json');
"""

def sink(name):
    return f"WITH (connector = 'file', path = 'out/{name}.jsonl', format = 'json');\n"

# ---------------------------------------------------------------- lookup joins
DEVS = ['dev-0', 'dev-1', 'dev-2', 'dev-3']
readings = stream(60, 11, DEVS, extra=lambda rnd, i: {'temp': round(15 + rnd.random() * 20, 1)})
table = [  # dev-3 is missing; dev-1 appears twice (the last row wins); dev-2 is inactive
    {'device_id': 'dev-0', 'site': 'hall-a', 'limit_temp': 30.0, 'active': True},
    {'device_id': 'dev-1', 'site': 'hall-old', 'limit_temp': 10.0, 'active': True},
    {'device_id': 'dev-2', 'site': 'hall-b', 'limit_temp': 25.0, 'active': False},
    {'device_id': 'dev-1', 'site': 'hall-c', 'limit_temp': 28.0, 'active': True},
]
tab = {}
for t in table:
    tab[t['device_id']] = t
acc = accepted(readings, 3)
left_rows, over = [], []
for r in acc:
    d = tab.get(r['device_id'])
    hit = d if d is not None and d['active'] else None
    left_rows.append({'device_id': r['device_id'], 'site': hit and hit['site'], 'limit_temp': hit and hit['limit_temp'], 'temp': r['temp']})
    if d is not None and r['temp'] > d['limit_temp']:
        over.append({'device_id': r['device_id'], 'site': d['site'], 'temp': r['temp'], 'ts': r['ts']})
write_case('join_lookup_left_and_plain', src('readings', 'device_id VARCHAR NOT NULL, temp DOUBLE', 3) + """
CREATE TABLE devices (
    device_id  VARCHAR PRIMARY KEY,
    site       VARCHAR,
    limit_temp DOUBLE,
    active     BOOLEAN
) WITH (connector = 'file', path = 'devices.jsonl', format = 'json');

CREATE SINK enriched AS
SELECT r.device_id, d.site, d.limit_temp, r.temp
FROM readings AS r
LEFT JOIN devices FOR SYSTEM_TIME AS OF r.ts AS d ON r.device_id = d.device_id AND d.active
""" + sink('enriched') + """
CREATE SINK over_limit AS
SELECT r.device_id, d.site, r.temp, r.ts
FROM readings r JOIN devices d ON r.device_id = d.device_id
WHERE r.temp > d.limit_temp
""" + sink('over_limit'), {'readings.jsonl': readings, 'devices.jsonl': table}, {'enriched': left_rows, 'over_limit': over})

# An updating result through a lookup join: the key's rows stay keyed; no match deletes the key.
few = accepted(readings[:12], 3)
counts, ups = {}, []
for r in few:
    k = r['device_id']
    counts[k] = counts.get(k, 0) + 1
    d = tab.get(k)
    if d is None:
        ups.append({'device_id': k, 'n': counts[k], 'site': None, '_op': 'delete'})
    else:
        ups.append({'device_id': k, 'n': counts[k], 'site': d['site'], '_op': 'upsert'})
write_case('join_lookup_updating', src('readings', 'device_id VARCHAR NOT NULL, temp DOUBLE', 3).replace("format = 'json')", "format = 'json', batch_rows = '1')") + """
CREATE TABLE devices (device_id VARCHAR PRIMARY KEY, site VARCHAR, limit_temp DOUBLE, active BOOLEAN)
WITH (connector = 'file', path = 'devices.jsonl', format = 'json');

CREATE MATERIALIZED VIEW counts AS SELECT device_id, COUNT(*) AS n FROM readings GROUP BY device_id;

CREATE SINK sited AS
SELECT c.device_id, c.n, d.site FROM counts c JOIN devices d ON c.device_id = d.device_id
WITH (connector = 'file', path = 'out/sited.jsonl', format = 'json', type = 'upsert');
""", {'readings.jsonl': readings[:12], 'devices.jsonl': table}, {'sited': ups})

# ---------------------------------------------------------------- interval joins
CMDS = [f'c{i}' for i in range(40)]
commands = [{'cmd_id': f'c{i}', 'device_id': DEVS[i % 4], 'ts': iso(T0 + i * 2000 - (i % 3) * 700), '_ms': T0 + i * 2000 - (i % 3) * 700} for i in range(40)]
rnd = random.Random(5)
acks = []
for i in range(40):
    if i % 5 == 4:
        continue  # never acknowledged
    delay = rnd.choice([500, 3000, 9000, 14000])  # 14 s is too late for the 10 s bound
    for k in range(1 + (i % 7 == 0)):  # some commands are acknowledged twice
        ms = commands[i]['_ms'] + delay + k * 400
        acks.append({'cmd_id': f'c{i}', 'status': 'dup' if k else 'ok', 'ts': iso(ms), '_ms': ms})
acks.sort(key=lambda a: a['_ms'] + random.Random(a['cmd_id']).randrange(2500))
ca, aa = accepted(commands, 2), accepted(acks, 2)
left_out, full_out = [], []
matched_a = set()
for c in ca:
    hits = [a for a in aa if a['cmd_id'] == c['cmd_id'] and c['_ms'] <= a['_ms'] <= c['_ms'] + 10000 and a['status'] != 'dup']
    for a in hits:
        left_out.append({'cmd_id': c['cmd_id'], 'status': a['status'], 'sent_at': c['ts'], 'acked_at': a['ts']})
    if not hits:
        left_out.append({'cmd_id': c['cmd_id'], 'status': None, 'sent_at': c['ts'], 'acked_at': None})
    allh = [a for a in aa if a['cmd_id'] == c['cmd_id'] and c['_ms'] <= a['_ms'] <= c['_ms'] + 10000]
    for a in allh:
        matched_a.add(id(a))
        full_out.append({'c_cmd': c['cmd_id'], 'a_cmd': a['cmd_id'], 'sent_at': c['ts'], 'acked_at': a['ts']})
    if not allh:
        full_out.append({'c_cmd': c['cmd_id'], 'a_cmd': None, 'sent_at': c['ts'], 'acked_at': None})
for a in aa:
    if id(a) not in matched_a:
        full_out.append({'c_cmd': None, 'a_cmd': a['cmd_id'], 'sent_at': None, 'acked_at': a['ts']})
# Pairs within [-5 s, +2 s], then counted per 20 s window of the command time (a window over a join).
near = {}
for c in ca:
    for a in aa:
        if a['cmd_id'] == c['cmd_id'] and c['_ms'] - 5000 <= a['_ms'] <= c['_ms'] + 2000:
            s = c['_ms'] - c['_ms'] % 20000
            near[s] = near.get(s, 0) + 1
IJ_SRC = src('commands', 'cmd_id VARCHAR NOT NULL, device_id VARCHAR', 2) + '\n' + src('acks', 'cmd_id VARCHAR NOT NULL, status VARCHAR', 2)
write_case('join_interval_outer', IJ_SRC + """
CREATE SINK acked AS
SELECT c.cmd_id, a.status, c.ts AS sent_at, a.ts AS acked_at
FROM commands c LEFT JOIN acks a
  ON c.cmd_id = a.cmd_id AND a.ts BETWEEN c.ts AND c.ts + INTERVAL '10' SECOND AND a.status <> 'dup'
""" + sink('acked') + """
CREATE SINK everything AS
SELECT c.cmd_id AS c_cmd, a.cmd_id AS a_cmd, c.ts AS sent_at, a.ts AS acked_at
FROM commands c FULL OUTER JOIN acks a
  ON c.cmd_id = a.cmd_id AND a.ts >= c.ts AND a.ts <= c.ts + INTERVAL '10' SECOND
""" + sink('everything') + """
CREATE MATERIALIZED VIEW near AS
SELECT c.cmd_id, c.ts AS sent_at FROM commands c JOIN acks a
  ON a.cmd_id = c.cmd_id AND a.ts BETWEEN c.ts - INTERVAL '5' SECOND AND c.ts + INTERVAL '2' SECOND;

CREATE SINK near_per_window AS
SELECT window_start, COUNT(*) AS n FROM TUMBLE(near, sent_at, INTERVAL '20' SECOND)
GROUP BY window_start, window_end
""" + sink('near_per_window'), {'commands.jsonl': commands, 'acks.jsonl': acks},
    {'acked': left_out, 'everything': full_out, 'near_per_window': [{'window_start': iso(s), 'n': n} for s, n in near.items()]})

# ---------------------------------------------------------------- window join
def minute_counts(rows, col):
    g = {}
    for r in rows:
        s = r['_ms'] - r['_ms'] % 60000
        k = (r['device_id'], s)
        g.setdefault(k, []).append(r[col])
    return g
power = stream(300, 21, DEVS[:3], step=700, extra=lambda rnd, i: {'watts': rnd.randrange(100, 900)})
temps = stream(200, 22, DEVS[1:], step=1000, extra=lambda rnd, i: {'temp': round(10 + rnd.random() * 30, 1)})
gp, gt = minute_counts(accepted(power, 3), 'watts'), minute_counts(accepted(temps, 3), 'temp')
inner, outer = [], []
for k in sorted(set(gp) | set(gt)):
    p, t = gp.get(k), gt.get(k)
    if p and t:
        inner.append({'device_id': k[0], 'window_start': iso(k[1]), 'watts': sum(p), 'max_temp': max(t)})
    outer.append({'p_dev': k[0] if p else None, 't_dev': k[0] if t else None, 'window_end': iso(k[1] + 60000),
                  'watts': sum(p) if p else None, 'max_temp': max(t) if t else None})
write_case('join_window', src('power', 'device_id VARCHAR NOT NULL, watts BIGINT', 3) + '\n' + src('temps', 'device_id VARCHAR NOT NULL, temp DOUBLE', 3) + """
CREATE MATERIALIZED VIEW p AS SELECT device_id, window_start, window_end, SUM(watts) AS watts
FROM TUMBLE(power, ts, INTERVAL '1' MINUTE) GROUP BY device_id, window_start, window_end;

CREATE MATERIALIZED VIEW t AS SELECT device_id, window_start, window_end, MAX(temp) AS max_temp
FROM TUMBLE(temps, ts, INTERVAL '1' MINUTE) GROUP BY device_id, window_start, window_end;

CREATE SINK both_sides AS
SELECT p.device_id, p.window_start, p.watts, t.max_temp
FROM p JOIN t ON p.device_id = t.device_id AND p.window_start = t.window_start AND p.window_end = t.window_end
""" + sink('both_sides') + """
CREATE SINK either_side AS
SELECT p.device_id AS p_dev, t.device_id AS t_dev, COALESCE(p.window_end, t.window_end) AS window_end, p.watts, t.max_temp
FROM p FULL JOIN t ON p.device_id = t.device_id AND p.window_start = t.window_start AND p.window_end = t.window_end
""" + sink('either_side'), {'power.jsonl': power, 'temps.jsonl': temps}, {'both_sides': inner, 'either_side': outer})

# ---------------------------------------------------------------- ASOF, strictly before
SYMS = ['AAA', 'BBB', 'CCC']
trades = stream(150, 31, SYMS, step=400, disorder=1500, key='symbol', extra=lambda rnd, i: {'price': round(100 + rnd.random() * 5, 2)})
quotes = stream(120, 32, SYMS, step=500, disorder=1500, key='symbol', extra=lambda rnd, i: {'bid': round(99 + rnd.random() * 5, 2)})
for q in quotes[::10]:  # some quotes at exactly a trade's time: `>` must not pick them
    q['_ms'] = trades[quotes.index(q)]['_ms']
    q['ts'] = iso(q['_ms'])
    q['symbol'] = trades[quotes.index(q)]['symbol']
ta, qa = accepted(trades, 2), accepted(quotes, 2)
asof = []
for t in ta:
    best = None
    for q in qa:  # latest before, the last to arrive among equal times
        if q['symbol'] == t['symbol'] and q['_ms'] < t['_ms'] and (best is None or q['_ms'] >= best['_ms']):
            best = q
    if best:
        asof.append({'symbol': t['symbol'], 'ts': t['ts'], 'price': t['price'], 'bid': best['bid'], 'quoted_at': best['ts']})
write_case('join_asof_strict', src('trades', 'symbol VARCHAR NOT NULL, price DOUBLE', 2) + '\n' + src('quotes', 'symbol VARCHAR NOT NULL, bid DOUBLE', 2) + """
CREATE SINK priced AS
SELECT t.symbol, t.ts, t.price, q.bid, q.ts AS quoted_at
FROM trades t ASOF JOIN quotes q ON q.symbol = t.symbol AND t.ts > q.ts
""" + sink('priced'), {'trades.jsonl': trades, 'quotes.jsonl': quotes}, {'priced': asof})

# ---------------------------------------------------------------- join errors
ERR = {
    'err_join_unbounded': ("SELECT c.cmd_id FROM commands c JOIN acks a ON c.cmd_id = a.cmd_id", "a join of two streams needs a time bound"),
    'err_join_one_sided': ("SELECT c.cmd_id FROM commands c JOIN acks a ON c.cmd_id = a.cmd_id AND a.ts >= c.ts", "on one side only"),
    'err_asof_extra': ("SELECT c.cmd_id FROM commands c ASOF JOIN acks a ON c.cmd_id = a.cmd_id AND c.ts >= a.ts AND a.status = 'ok'", "ASOF JOIN takes equal keys and one time comparison"),
    'err_asof_direction': ("SELECT c.cmd_id FROM commands c ASOF JOIN acks a ON c.cmd_id = a.cmd_id AND c.ts <= a.ts", "ASOF JOIN needs the left time at or after the right one"),
}
for name, (q, err) in ERR.items():
    write_case(name, IJ_SRC + "CREATE SINK s AS " + q + "\nWITH (connector = 'console');", {'commands.jsonl': commands, 'acks.jsonl': acks}, {'error.txt': err})
print('join cases written')

# ---------------------------------------------------------------- MATCH_RECOGNIZE reference
def match_from(rows, start, pat, defs, within):
    """First match from `start` in preference order: ('match', end, assign), or ('fail', longest cut)."""
    cuts = []
    first = rows[start]['_ms']
    def m(p, pos, assign):
        kind = p[0]
        if kind == 'var':
            if pos >= len(rows) or (within is not None and rows[pos]['_ms'] > first + within):
                if within is not None and assign:
                    cuts.append(assign)
                return
            a2 = assign + [p[1]]
            f = defs.get(p[1])
            if f is None or f(rows, start, pos, a2):
                yield pos + 1, a2
        elif kind == 'seq':
            def go(i, pos, assign):
                if i == len(p[1]):
                    yield pos, assign
                    return
                for pos2, a2 in m(p[1][i], pos, assign):
                    yield from go(i + 1, pos2, a2)
            yield from go(0, pos, assign)
        elif kind == 'alt':
            for q in p[1]:
                yield from m(q, pos, assign)
        else:  # ('rep', q, lo, hi, greedy)
            _, q, lo, hi, greedy = p
            def rep(k, pos, assign):
                more = hi is None or k < hi
                if not greedy and k >= lo:
                    yield pos, assign
                if more:
                    for pos2, a2 in m(q, pos, assign):
                        if pos2 > pos:
                            yield from rep(k + 1, pos2, a2)
                if greedy and k >= lo:
                    yield pos, assign
            yield from rep(0, pos, assign)
    for end, assign in m(pat, start, []):
        return ('match', end, assign)
    best = None
    for c in cuts:
        if best is None or len(c) > len(best):
            best = c
    return ('fail', best)

def recognize(rows, part, pat, defs, measures, skip='past', within=None, timeouts=False):
    parts = {}
    for r in rows:  # event-time order, arrival order among equal times
        parts.setdefault(r[part], []).append(r)
    out = []
    for key, prow in parts.items():
        prow = sorted(prow, key=lambda r: r['_ms'])
        s = 0
        while s < len(prow):
            res = match_from(prow, s, pat, defs, within)
            if res[0] == 'match':
                _, end, assign = res
                out.append(dict({part: key}, **{k: f(prow, s, assign, 'match') for k, f in measures.items()}))
                if skip == 'past':
                    nxt = end
                elif skip == 'next':
                    nxt = s + 1
                else:
                    var, which = skip
                    idx = [j for j, a in enumerate(assign) if a == var]
                    nxt = s + (idx[0] if which == 'first' else idx[-1]) if idx else s + 1
                s = max(nxt, s + 1)
            else:
                if timeouts and res[1]:
                    out.append(dict({part: key}, **{k: f(prow, s, res[1], 'timeout') for k, f in measures.items()}))
                s += 1
    return out

def V(v):
    return ('var', v)
def rows_of(rows, start, assign, v):
    return [rows[start + j] for j, a in enumerate(assign) if v is None or a == v]
def prev(rows, pos, k=1):
    return rows[pos - k] if pos - k >= 0 else None
def gt(a, b):
    return a is not None and b is not None and a > b
def last_of(v, col):
    return lambda rows, s, a, st: (rows_of(rows, s, a, v) or [{col: None}])[-1][col]
def first_of(v, col):
    return lambda rows, s, a, st: (rows_of(rows, s, a, v) or [{col: None}])[0][col]

walk = []
rnd = random.Random(41)
level = {d: 20.0 for d in DEVS[:3]}
for i in range(240):
    d = DEVS[i % 3]
    level[d] = round(level[d] + rnd.choice([-1.5, -0.5, 0, 0.5, 1.0, 1.5]), 1)
    ms = T0 + i * 1000 - rnd.randrange(2500)
    walk.append({'device_id': d, 'temp': level[d], 'ts': iso(ms), '_ms': ms})
wa = accepted(walk, 3)
P_SRC = src('readings', 'device_id VARCHAR NOT NULL, temp DOUBLE', 3)
up = lambda rows, s, pos, a: gt(rows[pos]['temp'], (prev(rows, pos) or {}).get('temp'))
down = lambda rows, s, pos, a: gt((prev(rows, pos) or {}).get('temp'), rows[pos]['temp'])
flat = lambda rows, s, pos, a: prev(rows, pos) is not None and prev(rows, pos)['temp'] == rows[pos]['temp']

def mr(measures, pattern, define, skip='PAST LAST ROW', extra=''):
    return f"""SELECT * FROM readings MATCH_RECOGNIZE (
    PARTITION BY device_id ORDER BY ts
    MEASURES {measures}
    ONE ROW PER MATCH
    AFTER MATCH SKIP {skip}
    PATTERN ({pattern}) {extra}
    DEFINE {define}
)
"""

cnt = lambda v: (lambda rows, s, a, st: len(rows_of(rows, s, a, v)))
cases = {
    'greedy': (mr("FIRST(UP.ts) AS start_ts, LAST(UP.ts) AS peak_ts, COUNT(UP.*) AS ups, LAST(DOWN.temp) AS after_temp",
                  "UP+ DOWN", "UP AS UP.temp > PREV(UP.temp), DOWN AS DOWN.temp < PREV(DOWN.temp)"),
               (('seq', [('rep', V('UP'), 1, None, True), V('DOWN')]), {'UP': up, 'DOWN': down},
                {'start_ts': first_of('UP', 'ts'), 'peak_ts': last_of('UP', 'ts'), 'ups': cnt('UP'), 'after_temp': last_of('DOWN', 'temp')})),
    'reluctant_range': (mr("FIRST(A.ts) AS a_ts, COUNT(A.*) AS a_n, LAST(B.temp) AS b_temp",
                           "A{1,4}? B", "A AS A.temp >= 19, B AS B.temp > PREV(B.temp)"),
                        (('seq', [('rep', V('A'), 1, 4, False), V('B')]), {'A': lambda r, s, p, a: r[p]['temp'] >= 19, 'B': up},
                         {'a_ts': first_of('A', 'ts'), 'a_n': cnt('A'), 'b_temp': last_of('B', 'temp')})),
    'alternation_group': (mr("FIRST(ts) AS start_ts, COUNT(*) AS n, COUNT(F.*) AS flats",
                             "(U | F){2} D", "U AS U.temp > PREV(U.temp), F AS F.temp = PREV(F.temp), D AS D.temp < PREV(D.temp)"),
                          (('seq', [('rep', ('alt', [V('U'), V('F')]), 2, 2, True), V('D')]), {'U': up, 'F': flat, 'D': down},
                           {'start_ts': first_of(None, 'ts'), 'n': cnt(None), 'flats': cnt('F')})),
    'history_define': (mr("FIRST(X.ts) AS x_ts, AVG(X.temp) AS x_avg, Y.temp AS y_temp",
                          "X+ Y", "X AS AVG(X.temp) < 21, Y AS Y.temp > LAST(X.temp) + 0.9 AND Y.temp > FIRST(X.temp)"),
                       (('seq', [('rep', V('X'), 1, None, True), V('Y')]),
                        {'X': lambda r, s, p, a: sum(x['temp'] for x in rows_of(r, s, a, 'X')) / len(rows_of(r, s, a, 'X')) < 21,
                         'Y': lambda r, s, p, a: r[p]['temp'] > rows_of(r, s, a, 'X')[-1]['temp'] + 0.9 and r[p]['temp'] > rows_of(r, s, a, 'X')[0]['temp']},
                        {'x_ts': first_of('X', 'ts'),
                         'x_avg': lambda r, s, a, st: sum(x['temp'] for x in rows_of(r, s, a, 'X')) / len(rows_of(r, s, a, 'X')),
                         'y_temp': last_of('Y', 'temp')})),
    'optional_star_exact': (mr("FIRST(ts) AS start_ts, COUNT(S.*) AS steady, COUNT(*) AS n",
                               "D{2} S* U?  X", "D AS D.temp < PREV(D.temp), S AS S.temp = PREV(S.temp), U AS U.temp > PREV(U.temp), X AS X.temp >= 20"),
                            (('seq', [('rep', V('D'), 2, 2, True), ('rep', V('S'), 0, None, True), ('rep', V('U'), 0, 1, True), V('X')]),
                             {'D': down, 'S': flat, 'U': up, 'X': lambda r, s, p, a: r[p]['temp'] >= 20},
                             {'start_ts': first_of(None, 'ts'), 'steady': cnt('S'), 'n': cnt(None)})),
    'at_most': (mr("FIRST(ts) AS start_ts, COUNT(*) AS n", "H{,3} C", "H AS H.temp >= 21, C AS C.temp < 19.5"),
                (('seq', [('rep', V('H'), 0, 3, True), V('C')]), {'H': lambda r, s, p, a: r[p]['temp'] >= 21, 'C': lambda r, s, p, a: r[p]['temp'] < 19.5},
                 {'start_ts': first_of(None, 'ts'), 'n': cnt(None)})),
}
sql, exp = P_SRC, {}
for name, (q, (pat, defs, meas)) in cases.items():
    sql += f"\nCREATE SINK {name} AS\n{q}" + sink(name)
    exp[name] = recognize(wa, 'device_id', pat, defs, meas)
write_case('pattern_quantifiers', sql, {'readings.jsonl': walk}, exp)

# Every AFTER MATCH SKIP mode, on a pattern whose matches can overlap.
sk_pat = ('seq', [('rep', V('A'), 2, None, True), ('rep', V('B'), 1, None, True)])
sk_defs = {'A': lambda r, s, p, a: r[p]['temp'] <= 21, 'B': lambda r, s, p, a: r[p]['temp'] > 20}
sk_meas = {'start_ts': first_of(None, 'ts'), 'end_ts': last_of(None, 'ts'), 'n': cnt(None)}
sql, exp = P_SRC, {}
for name, (skip_sql, skip) in {'past_last': ('PAST LAST ROW', 'past'), 'to_next': ('TO NEXT ROW', 'next'),
                               'to_first_b': ('TO FIRST B', ('B', 'first')), 'to_last_a': ('TO LAST A', ('A', 'last'))}.items():
    sql += f"\nCREATE SINK {name} AS\n" + mr("FIRST(ts) AS start_ts, LAST(ts) AS end_ts, COUNT(*) AS n", "A{2,} B+",
                                            "A AS A.temp <= 21, B AS B.temp > 20", skip=skip_sql) + sink(name)
    exp[name] = recognize(wa, 'device_id', sk_pat, sk_defs, sk_meas, skip=skip)
write_case('pattern_skip_modes', sql, {'readings.jsonl': walk}, exp)

# Absence: an alarm and no ack within 30 s (WITHIN ... EMIT TIMEOUTS), and WITHIN alone.
rnd = random.Random(51)
events = []
for i in range(150):
    ms = T0 + i * 1500 - rnd.randrange(2000)
    events.append({'device_id': DEVS[i % 2], 'kind': rnd.choice(['alarm', 'info', 'info', 'info', 'ack']), 'ts': iso(ms), '_ms': ms})
ea = accepted(events, 2)
is_kind = lambda k: (lambda r, s, p, a: r[p]['kind'] == k)
ab_pat = ('seq', [V('A'), ('rep', V('N'), 0, None, False), V('K')])
status = lambda r, s, a, st: st
ab_meas = {'alarm_at': last_of('A', 'ts'), 'acked_at': last_of('K', 'ts'), 'n_between': cnt('N'), 'status': status}
timeouts = recognize(ea, 'device_id', ab_pat, {'A': is_kind('alarm'), 'K': is_kind('ack')}, ab_meas, within=30000, timeouts=True)
within_only = [dict(r) for r in recognize(ea, 'device_id', ab_pat, {'A': is_kind('alarm'), 'K': is_kind('ack')}, ab_meas, within=30000)]
assert any(r['status'] == 'timeout' for r in timeouts) and any(r['status'] == 'match' for r in timeouts)
E_SRC = src('events', 'device_id VARCHAR NOT NULL, kind VARCHAR NOT NULL', 2)
def absence(extra):
    return f"""SELECT * FROM events MATCH_RECOGNIZE (
    PARTITION BY device_id ORDER BY ts
    MEASURES A.ts AS alarm_at, K.ts AS acked_at, COUNT(N.*) AS n_between, MATCH_STATUS() AS status
    ONE ROW PER MATCH
    PATTERN (A N*? K) {extra}
    DEFINE A AS kind = 'alarm', K AS kind = 'ack'
)
"""
write_case('pattern_within_timeouts', E_SRC + "\nCREATE SINK unacked AS\n" + absence("WITHIN INTERVAL '30' SECOND EMIT TIMEOUTS") + sink('unacked')
           + "\nCREATE SINK acked_in_time AS\n" + absence("WITHIN INTERVAL '30' SECOND") + sink('acked_in_time'),
           {'events.jsonl': events}, {'unacked': timeouts, 'acked_in_time': within_only})

P_ERR = {
    'err_pattern_empty': (mr("COUNT(*) AS n", "A*", "A AS A.temp > 1"), "can match no rows"),
    'err_pattern_unknown_var': (mr("COUNT(*) AS n", "A B", "A AS A.temp > 1, C AS C.temp > 1"), "DEFINE C names no variable"),
    'err_pattern_all_rows': (mr("COUNT(*) AS n", "A B", "A AS A.temp > 1").replace("ONE ROW PER MATCH", "ALL ROWS PER MATCH"), "ALL ROWS PER MATCH is not supported"),
    'err_pattern_not_bool': (mr("COUNT(*) AS n", "A B", "A AS A.temp + 1"), "must be a condition"),
}
for name, (q, err) in P_ERR.items():
    write_case(name, P_SRC + "CREATE SINK s AS " + q + "WITH (connector = 'console');", {'readings.jsonl': walk}, {'error.txt': err})
print('pattern cases written')
