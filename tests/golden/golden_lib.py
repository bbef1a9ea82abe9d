"""Helpers shared by the golden case generators: time formatting, the spec's lateness rule,
window assignment, and writing a case folder."""
import json, math, os, random, shutil, datetime as dt
HERE = os.path.dirname(os.path.abspath(__file__))
T0 = 1772352000000  # 2026-03-01T08:00:00Z

def iso(ms):
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.') + f'{ms % 1000:03d}Z'

def readings(n, seed, devices=3, disorder=4000, late_every=0, step=1500):
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        ts = T0 + i * step - rnd.randrange(disorder + 1)
        if late_every and i % late_every == late_every - 1:
            ts -= 20000
        rows.append({'device_id': f'dev-{rnd.randrange(devices)}', 'temp': round(15 + rnd.random() * 15, 2), 'ts': iso(ts), '_ms': ts})
    return rows

def accept(rows, delay):
    """The spec's lateness rule: (accepted rows, watermark after each accepted row)."""
    mx = None
    out = []
    for r in rows:
        w = None if mx is None else mx - delay
        if w is not None and r['_ms'] < w:
            continue
        mx = r['_ms'] if mx is None else max(mx, r['_ms'])
        out.append((r, mx - delay))
    return out

def write_case(name, sql, inputs, expected, args=None):
    d = os.path.join(HERE, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(os.path.join(d, 'expected'))
    with open(os.path.join(d, 'pipeline.sql'), 'w') as f:
        f.write(sql.strip() + '\n')
    for fn, rows in inputs.items():
        with open(os.path.join(d, fn), 'w') as f:
            if isinstance(rows, str):
                f.write(rows)
            else:
                for r in rows:
                    f.write(json.dumps({k: v for k, v in r.items() if not k.startswith('_')}) + '\n')
    for sink, rows in expected.items():
        if sink == 'error.txt':
            with open(os.path.join(d, 'expected', 'error.txt'), 'w') as f:
                f.write(rows.strip() + '\n')
            continue
        with open(os.path.join(d, 'expected', sink + '.jsonl'), 'w') as f:
            for r in rows:
                f.write(json.dumps(r) + '\n')
    if args:
        with open(os.path.join(d, 'args.txt'), 'w') as f:
            f.write(args + '\n')

def windows(kind, t, a, b=None):
    if kind == 'tumble':
        s = t - t % a
        return [(s, s + a)]
    if kind == 'hop':
        slide, size = a, b
        out, s = [], (t - size) // slide * slide
        while s <= t:
            if s + size > t:
                out.append((s, s + size))
            s += slide
        return out
    if kind == 'cumulate':
        step, mx = a, b
        s = t - t % mx
        return [(s, s + k * step) for k in range(1, mx // step + 1) if t < s + k * step]

