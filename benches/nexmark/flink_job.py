"""Runs one Nexmark query on Apache Flink (PyFlink's local mini-cluster) over the JSON-lines files
that `nexmark_gen` wrote, for the side-by-side in run.py.

    flink_job.py QUERY.sql DATA_DIR PARALLELISM (time | collect OUT.jsonl)

`time` writes into a blackhole sink and prints one JSON line: the seconds the job took (planning,
submission and run, not the JVM's start) the CPU seconds the JVM spent in that time, and
the JVM's peak RSS.
`collect` writes the final result rows to OUT.jsonl (an updating result: run in batch mode, which
gives only the final rows).
"""

import datetime
import decimal
import json
import math
import os
import sys
import time

import pandas as pd
from pyflink.table import EnvironmentSettings, TableEnvironment

# The queries with an updating result (a GROUP BY without a window).
UPDATING = {"q15.sql", "q16.sql", "q17.sql"}

SCHEMAS = {
    "person": "id BIGINT, name STRING, email_address STRING, credit_card STRING, city STRING, state STRING, "
    "date_time TIMESTAMP(3), extra STRING",
    "auction": "id BIGINT, item_name STRING, description STRING, initial_bid BIGINT, reserve BIGINT, "
    "date_time TIMESTAMP(3), expires TIMESTAMP(3), seller BIGINT, category BIGINT, extra STRING",
    "bid": "auction BIGINT, bidder BIGINT, price BIGINT, channel STRING, url STRING, date_time TIMESTAMP(3), "
    "extra STRING",
    # q13's bounded table (no event time).
    "side_input": "key BIGINT, `value` STRING",
}


def jvm_usage():
    """CPU seconds and peak RSS (bytes) of this process's children (the gateway JVM), from /proc."""
    cpu_s, peak = 0.0, 0
    me = str(os.getpid())
    tick = os.sysconf("SC_CLK_TCK")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if fields[1] != me:
                continue
            cpu_s += (int(fields[11]) + int(fields[12])) / tick
            with open(f"/proc/{pid}/status") as f:
                hwm = [l for l in f if l.startswith("VmHWM:")]
            peak += int(hwm[0].split()[1]) * 1024 if hwm else 0
        except OSError:
            continue
    return cpu_s, peak


def plain(v):
    """A value as Eddy's JSON sink writes it: timestamps as RFC 3339 UTC in milliseconds."""
    if isinstance(v, pd.Timestamp):
        v = v.to_pydatetime()
    if isinstance(v, datetime.datetime):
        return v.strftime("%Y-%m-%dT%H:%M:%S.") + f"{v.microsecond // 1000:03d}Z"
    if isinstance(v, decimal.Decimal):
        return float(v)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if hasattr(v, "item"):  # numpy scalars
        return v.item()
    return v


def main():
    query_file, data, parallelism, mode = sys.argv[1:5]
    query = open(query_file).read()
    updating = os.path.basename(query_file) in UPDATING
    # An updating result is checked in batch mode, which gives its final rows only: collecting
    # the whole changelog through Python takes minutes for q16/q17.
    batch = mode == "collect" and updating
    settings = EnvironmentSettings.in_batch_mode() if batch else EnvironmentSettings.in_streaming_mode()
    env = TableEnvironment.create(settings)
    conf = env.get_config()
    conf.set("parallelism.default", parallelism)
    conf.set("table.exec.resource.default-parallelism", parallelism)
    for name, cols in SCHEMAS.items():
        if f" {name}" not in query.replace("\n", " ").replace("TABLE ", " "):
            continue
        if name != "side_input":
            cols += ", WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND"
        env.execute_sql(
            f"CREATE TABLE {name} ({cols}) "
            f"WITH ('connector' = 'filesystem', 'path' = '{os.path.join(data, name + '.jsonl')}', "
            "'format' = 'json', 'json.fail-on-missing-field' = 'false')"
        )
    select = "\n".join(l for l in query.splitlines() if not l.startswith("--"))
    if mode == "time":
        cpu0, t0 = jvm_usage()[0], time.monotonic()
        t = env.sql_query(select)
        cols = ", ".join(f"`{c}` {str(d)}" for c, d in zip(t.get_schema().get_field_names(), t.get_schema().get_field_data_types()))
        env.execute_sql(f"CREATE TABLE out_sink ({cols}) WITH ('connector' = 'blackhole')")
        t.execute_insert("out_sink").wait()
        seconds = time.monotonic() - t0
        cpu_s, peak = jvm_usage()
        print(json.dumps({"seconds": seconds, "cpu_s": cpu_s - cpu0, "peak_rss_bytes": peak}))
        return
    out = sys.argv[5]
    # to_pandas moves the rows in Arrow batches: collecting them one by one through Python takes
    # minutes for 200,000 rows. (It needs an insert-only result: updating ones run in batch mode.)
    frame = env.sql_query(select).to_pandas()
    with open(out, "w") as f:
        for rec in frame.to_dict(orient="records"):
            f.write(json.dumps({k: plain(v) for k, v in rec.items()}) + "\n")


if __name__ == "__main__":
    main()
