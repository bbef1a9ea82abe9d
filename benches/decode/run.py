"""`eddyd replay` beside DuckDB on the replay job of BENCHMARKS.md: 1-minute tumbling statistics per
device over a JSON-lines file of readings, read whole, in one run on this machine.

    python3 benches/decode/run.py [--rows 1000000] [--runs 3]

Needs `cargo build --release --workspace` and a Python with `duckdb` (`scripts/object-store.sh`
puts one in target/pyenv). Eddy runs on its pipeline's thread alone and with 2 and 3 decode
threads (`--decode-threads`; the pipeline's thread then reads, judges lateness and aggregates),
DuckDB with 1 and 2 threads. All runs must give the same result rows (checked: Eddy's output
files are identical at every thread count, and DuckDB's group count matches). Times are wall-clock
for the whole process (Eddy) and for the query (DuckDB, after `import`).
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
EDDYD = os.path.join(ROOT, "target", "release", "eddyd")
GEN = os.path.join(ROOT, "target", "release", "replay_vs_batch")

PIPELINE = """
CREATE SOURCE readings (
    device_id VARCHAR NOT NULL, site VARCHAR, temp DOUBLE, humidity DOUBLE, ts TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (connector = 'file', path = '{path}', format = 'json');
CREATE SINK per_minute AS
SELECT device_id, window_start, window_end, COUNT(*) AS n, AVG(temp) AS avg_temp, MIN(temp) AS min_temp,
       MAX(temp) AS max_temp, SUM(temp) AS sum_temp
FROM TUMBLE(readings, ts, INTERVAL '1' MINUTE)
GROUP BY device_id, window_start, window_end
WITH (connector = 'file', path = '{out}', format = 'json');
"""

DUCKDB = """
import duckdb, sys, time, json
con = duckdb.connect()
con.execute("SET threads = {threads}")
t0 = time.monotonic()
n = con.execute('''
  SELECT count(*) FROM (
    SELECT device_id, time_bucket(INTERVAL 1 MINUTE, ts) AS window_start, count(*) AS n, avg(temp), min(temp),
           max(temp), sum(temp)
    FROM read_json('{path}', format = 'newline_delimited', columns = {{device_id: 'VARCHAR', site: 'VARCHAR',
         temp: 'DOUBLE', humidity: 'DOUBLE', ts: 'TIMESTAMP'}})
    GROUP BY device_id, window_start)''').fetchone()[0]
print(json.dumps({{"seconds": time.monotonic() - t0, "groups": n}}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--python", default=os.path.join(ROOT, "target", "pyenv", "bin", "python"))
    ap.add_argument("--work", default="/tmp/eddy-decode")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    data = os.path.join(a.work, f"readings-{a.rows}.jsonl")
    if not os.path.exists(data):
        subprocess.run([GEN, "gen", data, str(a.rows), "100"], check=True, stdout=subprocess.DEVNULL)
    out = os.path.join(a.work, "per_minute.jsonl")
    sql = os.path.join(a.work, "tumble.sql")
    with open(sql, "w") as f:
        f.write(PIPELINE.format(path=data, out=out))
    rows, outputs = [], set()
    for run in range(a.runs):
        for threads in (1, 2, 3):
            t0 = time.monotonic()
            subprocess.run([EDDYD, "replay", sql, "--decode-threads", str(threads)], check=True,
                           stderr=subprocess.DEVNULL)
            secs = time.monotonic() - t0
            with open(out, "rb") as f:
                text = f.read()
            outputs.add(text)
            label = "1 (one thread does all)" if threads == 1 else f"{threads} decode + the pipeline's"
            rows.append(("eddyd replay", label, secs, text.count(b"\n")))
        for threads in (1, 2):
            p = subprocess.run([a.python, "-c", DUCKDB.format(threads=threads, path=data)], check=True,
                               capture_output=True, text=True)
            r = json.loads(p.stdout)
            rows.append(("DuckDB read_json + GROUP BY", f"{threads} thread(s)", r["seconds"], r["groups"]))
    print(f"{a.rows:,} readings, {os.path.getsize(data) / 1e6:.0f} MB, {a.runs} runs, one session\n")
    print("| engine | threads | time (each run) | rows/s (best) | result rows |")
    print("|---|---|---|---|---|")
    for engine, threads in dict.fromkeys((r[0], r[1]) for r in rows):
        mine = [r for r in rows if (r[0], r[1]) == (engine, threads)]
        times = " / ".join(f"{r[2]:.3f} s" for r in mine)
        best = min(r[2] for r in mine)
        print(f"| {engine} | {threads} | {times} | {a.rows / best / 1e6:.2f} M | {mine[0][3]:,} |")
    if len(outputs) != 1:
        sys.exit("eddyd's output differs between thread counts")
    if len({r[3] for r in rows}) != 1:
        sys.exit(f"result row counts differ: {sorted({r[3] for r in rows})}")


if __name__ == "__main__":
    main()
