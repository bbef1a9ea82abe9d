#!/usr/bin/env bash
# Sharding benchmark: one operator-heavy pipeline (per-device HOP windows with a t-digest, an HLL
# sketch and a variance, plus a sliding OVER average) over 2 M generated readings from 1,000
# devices, replayed on 1 and on N shard threads. Usage: benches/shards/run.sh [SHARDS ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=target/release/eddyd
[ -x "$bin" ] || cargo build --release --locked -p eddyd
"$bin" check benches/shards/heavy.sql | grep sharding
for s in 1 "${@:-2}"; do
    /usr/bin/time -f "shards=$s: %e s wall, %P CPU, peak RSS %M KB" "$bin" replay benches/shards/heavy.sql --shards "$s"
done
