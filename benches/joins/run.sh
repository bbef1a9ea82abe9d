#!/usr/bin/env bash
# End-to-end join and pattern benchmarks: eddyd replay over generated data (the datagen connector),
# timed with /usr/bin/time (wall seconds, peak RSS). Usage: benches/joins/run.sh [ROWS ...]
# (default 1000000 10000000: the same queries at two sizes show whether memory stays flat).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=target/release/eddyd
[ -x "$bin" ] || cargo build --release --locked -p eddyd
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
awk 'BEGIN { print "device_id,site,limit_temp"; for (i = 0; i < 100000; i++) printf "dev-%02d,site-%d,%.1f\n", i, i % 50, 20 + (i % 17) }' > "$work/devices.csv"

iot() { # name seed rows devices
    echo "CREATE SOURCE $1 (device_id VARCHAR NOT NULL, temp DOUBLE, ts TIMESTAMP(3) NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)
WITH (connector = 'datagen', shape = 'iot', seed = '$2', rows = '$3', devices = '$4', interval = '10ms');"
}
trades() { # name seed rows
    echo "CREATE SOURCE $1 (symbol VARCHAR NOT NULL, price DOUBLE, ts TIMESTAMP(3) NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)
WITH (connector = 'datagen', shape = 'trades', seed = '$2', rows = '$3', devices = '500', interval = '10ms');"
}
out="WITH (connector = 'file', path = '/dev/null', format = 'json')"

run() { # label rows-in sql
    echo "$3" > "$work/q.sql"
    local t
    t=$( { /usr/bin/time -f "%e %M" "$bin" replay "$work/q.sql" >/dev/null; } 2>&1 | tail -1)
    read -r secs kb <<<"$t"
    awk -v l="$1" -v n="$2" -v s="$secs" -v kb="$kb" 'BEGIN { printf "%-28s %11d rows  %7.2f s  %9.0f rows/s  peak RSS %5.0f MiB\n", l, n, s, n / s, kb / 1024 }'
}

for n in "${@:-1000000 10000000}"; do
    run "lookup join (100k table)" "$n" "$(iot readings 1 "$n" 100000)
CREATE TABLE devices (device_id VARCHAR PRIMARY KEY, site VARCHAR, limit_temp DOUBLE)
WITH (connector = 'file', path = '$work/devices.csv', format = 'csv');
CREATE SINK s AS SELECT r.device_id, d.site, r.temp FROM readings r
JOIN devices FOR SYSTEM_TIME AS OF r.ts AS d ON r.device_id = d.device_id WHERE r.temp > d.limit_temp + 8 $out;"
    half=$((n / 2))
    run "interval join (+-1 s)" "$n" "$(iot a 1 "$half" 200)
$(iot b 2 "$half" 200)
CREATE SINK s AS SELECT a.device_id, a.temp, b.temp AS other FROM a JOIN b
ON a.device_id = b.device_id AND b.ts BETWEEN a.ts - INTERVAL '1' SECOND AND a.ts + INTERVAL '1' SECOND $out;"
    run "asof join" "$n" "$(trades t 1 "$half")
$(trades q 2 "$half")
CREATE SINK s AS SELECT t.symbol, t.price, q.price AS quote FROM t ASOF JOIN q ON t.symbol = q.symbol AND t.ts >= q.ts $out;"
    run "pattern, 1k partitions" "$n" "$(iot readings 3 "$n" 1000)
CREATE SINK s AS SELECT * FROM readings MATCH_RECOGNIZE (
  PARTITION BY device_id ORDER BY ts
  MEASURES FIRST(UP.ts) AS start_ts, LAST(DOWN.ts) AS end_ts, LAST(UP.temp) AS peak
  ONE ROW PER MATCH AFTER MATCH SKIP PAST LAST ROW
  PATTERN (UP{3} DOWN)
  DEFINE UP AS UP.temp > PREV(UP.temp), DOWN AS DOWN.temp < PREV(DOWN.temp)
) $out;"
done
