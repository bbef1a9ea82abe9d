"""eddyd's footprint on this machine: binary size, time to READY, idle RSS and idle CPU with one
durable MQTT pipeline (an MQTT source with nothing arriving, 10-second windows per device, a file
sink) against a local Mosquitto, the management API and metrics on.

    python3 benches/footprint/run.py [--eddyd target/release/eddyd] [--seconds 60] [--settle 5]
    python3 benches/footprint/run.py --env MALLOC_ARENA_MAX=1     # try a setting

Needs `cargo build --release --workspace` and `mosquitto`. RSS is read from /proc/PID/status
(VmRSS, with its anonymous and file-backed parts) at the end of the idle period, CPU from
/proc/PID/stat and bytes written to storage from /proc/PID/io over it. Prints one JSON object.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

PIPELINE = """
CREATE SOURCE readings (
    device_id VARCHAR NOT NULL, temp DOUBLE, ts TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (connector = 'mqtt', topic = 'plant/+/telemetry', format = 'json');
CREATE SINK per_10s AS
SELECT device_id, window_start, window_end, COUNT(*) AS n, AVG(temp) AS avg_temp
FROM TUMBLE(readings, ts, INTERVAL '10' SECOND)
GROUP BY device_id, window_start, window_end
WITH (connector = 'file', path = '{out}', format = 'json');
"""

CONFIG = """
state_dir = "{work}/state"
pipelines_dir = "{work}/pipelines"
log_level = "info"
[encryption]
key_file = "{work}/state.key"
[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"
[metrics]
listen = "127.0.0.1:{metrics_port}"
[api]
socket = "{work}/control.sock"
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_kb(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM", "Threads"):
                out[key] = int(rest.split()[0])
    return out


def top_mappings(pid, n=6):
    """The mappings holding the most resident memory: (kB, perms, what)."""
    out, cur = [], None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5 and not parts[0].endswith(":"):
                cur = [0, parts[1], parts[5] if len(parts) > 5 else "[anon]"]
                out.append(cur)
            elif parts[0] == "Rss:" and cur is not None:
                cur[0] = int(parts[1])
    out.sort(reverse=True)
    return [f"{kb} kB {perms} {os.path.basename(what)}" for kb, perms, what in out[:n]]


def written_bytes(pid):
    """Bytes this process caused to be written to storage (/proc/PID/io)."""
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def thread_ticks(pid):
    """CPU ticks per thread name (threads of one name summed)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                text = f.read()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0) + int(fields[11]) + int(fields[12])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--eddyd", default=os.path.join(ROOT, "target", "release", "eddyd"))
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--settle", type=float, default=5)
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for eddyd")
    a = ap.parse_args()
    if not shutil.which("mosquitto"):
        sys.exit("needs mosquitto")
    work = tempfile.mkdtemp(prefix="eddy-footprint-")
    mqtt_port, metrics_port = free_port(), free_port()
    with open(os.path.join(work, "mosquitto.conf"), "w") as f:
        f.write(f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = subprocess.Popen(["mosquitto", "-c", os.path.join(work, "mosquitto.conf")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.makedirs(os.path.join(work, "pipelines"))
    with open(os.path.join(work, "pipelines", "plant.sql"), "w") as f:
        f.write(PIPELINE.format(out=os.path.join(work, "out.jsonl")))
    with open(os.path.join(work, "eddyd.toml"), "w") as f:
        f.write(CONFIG.format(work=work, mqtt_port=mqtt_port, metrics_port=metrics_port))
    with open(os.path.join(work, "state.key"), "wb") as f:
        f.write(subprocess.run([a.eddyd, "keygen"], check=True, capture_output=True).stdout)
    os.chmod(os.path.join(work, "state.key"), 0o600)
    env = dict(os.environ, EDDY_LOG="info")
    env.update(kv.split("=", 1) for kv in a.env)
    log = open(os.path.join(work, "eddyd.log"), "w+")
    time.sleep(0.3)
    t0 = time.monotonic()
    eddyd = subprocess.Popen([a.eddyd, "run", "--config", os.path.join(work, "eddyd.toml")],
                             stdout=subprocess.DEVNULL, stderr=log, env=env)
    ready_ms = None
    try:
        while time.monotonic() - t0 < 30:
            log.seek(0)
            if "eddyd ready" in log.read():
                ready_ms = (time.monotonic() - t0) * 1000
                break
            if eddyd.poll() is not None:
                break
            time.sleep(0.002)
        if ready_ms is None:
            log.seek(0)
            sys.exit(f"eddyd did not get ready:\n{log.read()[-3000:]}")
        time.sleep(a.settle)
        ticks0, per0, written0 = cpu_ticks(eddyd.pid), thread_ticks(eddyd.pid), written_bytes(eddyd.pid)
        time.sleep(a.seconds)
        ticks = cpu_ticks(eddyd.pid) - ticks0
        written = written_bytes(eddyd.pid) - written0
        per = {n: t - per0.get(n, 0) for n, t in thread_ticks(eddyd.pid).items() if t - per0.get(n, 0)}
        mem = status_kb(eddyd.pid)
        maps = top_mappings(eddyd.pid)
    finally:
        eddyd.terminate()
        eddyd.wait()
        broker.terminate()
        broker.wait()
    hz = os.sysconf("SC_CLK_TCK")
    print(json.dumps({
        "binary_bytes": os.path.getsize(a.eddyd),
        "ready_ms": round(ready_ms, 1),
        "idle_rss_mb": round(mem["VmRSS"] / 1000, 1),
        "idle_rss_anon_mb": round(mem.get("RssAnon", 0) / 1000, 1),
        "idle_rss_file_mb": round(mem.get("RssFile", 0) / 1000, 1),
        "peak_rss_mb": round(mem["VmHWM"] / 1000, 1),
        "threads": mem.get("Threads"),
        "top_mappings": maps,
        "idle_cpu_ticks": ticks,
        "idle_cpu_percent": round(100 * ticks / hz / a.seconds, 2),
        "idle_cpu_ticks_by_thread": per,
        "idle_written_bytes": written,
        "seconds": a.seconds,
        "env": a.env,
    }))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
