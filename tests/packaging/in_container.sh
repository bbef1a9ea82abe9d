#!/usr/bin/env bash
# Runs inside the container tests/packaging/boot.sh boots: installs the .deb and checks what an
# operator relies on, then powers off. Ends with the line "N passed, N failed".
set -u
exec >>/results/log 2>&1
deb=$1
hub_deb="" rpm_pkg=""
for f in "${@:2}"; do
    case "$f" in
        *.rpm) rpm_pkg=$f ;;
        *) hub_deb=$f ;;
    esac
done
# boot.sh copies check.sh beside this script.
. "$(dirname "$0")/check.sh"

# Waits up to $1 seconds for the command after it to succeed.
within() {
    local s=$1
    shift
    for _ in $(seq $((s * 5))); do
        "$@" && return 0
        sleep 0.2
    done
    return 1
}

readyz() {
    curl -fsS --max-time 2 http://127.0.0.1:9187/readyz >/dev/null 2>&1
}

# The exposure score systemd gives the unit (its full table only when over the threshold;
# systemd < 250 has no --threshold, so its score is read off the last line).
security_ok() {
    local report
    if [ "$systemd_version" -lt 250 ]; then
        report=$(systemd-analyze security "${1:-eddyd.service}" 2>&1 | tail -1)
        echo "$report"
        echo "$report" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+\.[0-9]+$/) exit !($i <= 2.0); exit 1 }'
        return
    fi
    report=$(systemd-analyze security --threshold=20 "${1:-eddyd.service}" 2>&1) || {
        echo "$report"
        return 1
    }
    echo "$report" | tail -1
}

main_pid() {
    systemctl show -p MainPID --value eddyd.service
}

restarts() {
    systemctl show -p NRestarts --value eddyd.service
}

out=/var/lib/eddy/line.jsonl
rows() {
    if [ -f "$out" ]; then wc -l < "$out"; else echo 0; fi
}

rows_over() {
    [ "$(rows)" -gt "$1" ]
}

# One row per (device, window): a duplicate would be a row doubled by a restart.
no_duplicates() {
    local all unique
    all=$(grep -o '"device_id":"[^"]*","window_start":"[^"]*"' "$out" | wc -l)
    unique=$(grep -o '"device_id":"[^"]*","window_start":"[^"]*"' "$out" | sort -u | wc -l)
    [ "$all" -gt 0 ] && [ "$all" -eq "$unique" ]
}

systemctl is-system-running --wait >/dev/null 2>&1 || true
systemd_version=$(systemctl --version | head -1 | cut -d' ' -f2)
systemd_version=${systemd_version%%.*}
echo "== boot: $(systemctl is-system-running 2>&1), systemd $systemd_version"
# Where the package keeps the state key: an encrypted credential, or under systemd < 250 (no
# systemd-creds) a root-only file that a drop-in loads (packaging/make-state-key).
key=/etc/eddy/state-key.cred
if [ "$systemd_version" -lt 250 ]; then
    key=/etc/eddy/state-key
fi
export key

echo "== install"
check "dpkg -i installs the package" dpkg -i "$deb"
check "the state key was created, root-only" \
    bash -c '[ "$(stat -c %a $key)" = 600 ]'
check "the config is 0644 (readable by the dynamic user)" \
    bash -c '[ "$(stat -c %a /etc/eddy/eddyd.toml)" = 644 ]'
check "eddyd.service is enabled" systemctl is-enabled --quiet eddyd.service
check "eddyd reached READY=1 (Type=notify: active only after it)" within 60 systemctl is-active --quiet eddyd.service
check "/readyz answers" within 30 readyz
check "systemd-analyze verify" systemd-analyze verify /usr/lib/systemd/system/eddyd.service
check "systemd-analyze security: exposure at most 2.0" security_ok
check "eddyctl reaches the daemon on its default socket" eddyctl status

echo "== a pipeline dropped into /etc/eddy/pipelines, then systemctl reload"
cat > /results/line.sql <<'SQL'
CREATE SOURCE readings (device_id VARCHAR NOT NULL, temp DOUBLE, ts TIMESTAMP(3) NOT NULL,
  WATERMARK FOR ts AS ts - INTERVAL '0' SECOND)
WITH (connector = 'datagen', shape = 'iot', devices = '4', rate = '200', seed = '3');
CREATE SINK per_device AS
SELECT device_id, window_start, COUNT(*) AS n FROM TUMBLE(readings, ts, INTERVAL '1' SECOND)
GROUP BY device_id, window_start
WITH (connector = 'file', path = '/var/lib/eddy/line.jsonl', format = 'json');
SQL
cp /results/line.sql /etc/eddy/pipelines/line.sql
check "systemctl reload" systemctl reload eddyd.service
check "the pipeline runs and writes rows (published at checkpoints)" within 30 rows_over 8

echo "== restart: durable state recovered, nothing doubled"
before=$(rows)
check "systemctl restart" systemctl restart eddyd.service
check "active again" within 60 systemctl is-active --quiet eddyd.service
check "rows continue after the restart" within 30 rows_over $((before + 8))
check "no window row written twice" no_duplicates

echo "== a pipeline file that does not start does not keep the gateway down, even across a restart"
echo "CREATE SINK oops AS SELEC 1;" > /etc/eddy/pipelines/broken.sql
before=$(rows)
check "systemctl restart with a broken pipeline file" systemctl restart eddyd.service
check "active with it" within 60 systemctl is-active --quiet eddyd.service
check "the other pipeline runs on" within 30 rows_over $((before + 8))
check "eddyctl shows it held (start-failed)" within 10 bash -c "eddyctl status | grep -q '^broken *start-failed'"
not_ready() { ! readyz; }
check "/readyz is 503 while it is held" not_ready
rm -f /etc/eddy/pipelines/broken.sql
check "systemctl reload without it" systemctl reload eddyd.service
check "/readyz again" within 30 readyz

echo "== the watchdog restarts a hung eddyd (WatchdogSec=3s for this test)"
mkdir -p /etc/systemd/system/eddyd.service.d
printf '[Service]\nWatchdogSec=3s\n' > /etc/systemd/system/eddyd.service.d/watchdog.conf
systemctl daemon-reload
systemctl restart eddyd.service
within 60 systemctl is-active --quiet eddyd.service
pid=$(main_pid)
n0=$(restarts)
kill -STOP "$pid"
check "a stopped eddyd is restarted by the watchdog" within 40 bash -c "[ \$(systemctl show -p NRestarts --value eddyd.service) -gt $n0 ] && [ \$(systemctl show -p MainPID --value eddyd.service) != $pid ]"
check "active again after the watchdog" within 60 systemctl is-active --quiet eddyd.service
check "still nothing doubled" no_duplicates
rm -rf /etc/systemd/system/eddyd.service.d
systemctl daemon-reload

echo "== an upgrade (reinstall) keeps the edited config and the key, and restarts eddyd"
echo "# edited by the operator" >> /etc/eddy/eddyd.toml
key_sum=$(sha256sum $key)
pid=$(main_pid)
check "dpkg -i again" dpkg -i "$deb"
check "the operator's config edit survived" grep -q "edited by the operator" /etc/eddy/eddyd.toml
check "the state key was kept" bash -c "[ \"\$(sha256sum $key)\" = \"$key_sum\" ]"
check "eddyd was restarted and is active" within 60 bash -c "systemctl is-active --quiet eddyd.service && [ \$(systemctl show -p MainPID --value eddyd.service) != $pid ]"
check "no window row written twice across the upgrade" within 30 no_duplicates

echo "== remove keeps state, purge removes it"
check "dpkg -r stops and removes eddyd" dpkg -r eddy
check "stopped" bash -c '! systemctl is-active --quiet eddyd.service'
check "state and key kept after remove" bash -c '[ -d /var/lib/private/eddy ] && [ -e $key ]'
check "dpkg --purge" dpkg --purge eddy
check "purge removed the state, the key and the config" \
    bash -c '[ ! -e /var/lib/private/eddy ] && [ ! -e /var/lib/eddy ] && [ ! -e $key ] && [ ! -e /etc/eddy/eddyd.toml ]'
check "purge left the operator's own pipeline files" test -f /etc/eddy/pipelines/line.sql
check "purge removed make-state-key's drop-in (if any)" test ! -e /etc/systemd/system/eddyd.service.d/state-key.conf

# Debian's rpm installs only with --force-debian (a patch of its own); elsewhere there is no such
# option. Dependencies name RPM distributions' packages, which this container's rpm database lacks.
rpm_install() {
    local force=""
    rpm --help 2>/dev/null | grep -q -- --force-debian && force=--force-debian
    rpm "$@" --nodeps $force
}

if [ -n "$rpm_pkg" ]; then
    echo "== the .rpm, installed with rpm (its scriptlets under this systemd)"
    rm -f /etc/eddy/pipelines/line.sql
    check "rpm -i installs the package" rpm_install -i "$rpm_pkg"
    check "the state key credential was created, root-only (rpm)" \
        bash -c '[ "$(stat -c %a $key)" = 600 ]'
    check "the config is 0644 (rpm)" bash -c '[ "$(stat -c %a /etc/eddy/eddyd.toml)" = 644 ]'
    check "systemd-analyze verify (rpm)" systemd-analyze verify /usr/lib/systemd/system/eddyd.service
    check "systemctl start eddyd (rpm)" systemctl start eddyd.service
    check "eddyd reached READY=1 (rpm)" within 60 systemctl is-active --quiet eddyd.service
    check "/readyz answers (rpm)" within 30 readyz
    cp /results/line.sql /etc/eddy/pipelines/line.sql
    check "systemctl reload (rpm)" systemctl reload eddyd.service
    check "the pipeline runs and writes rows (rpm)" within 30 rows_over 8
    pid=$(main_pid)
    echo "# edited by the operator" >> /etc/eddy/eddyd.toml
    check "rpm -U of the package again (an upgrade)" rpm_install -U --replacepkgs "$rpm_pkg"
    check "the upgrade restarted eddyd (try-restart)" within 60 bash -c "systemctl is-active --quiet eddyd.service && [ \$(systemctl show -p MainPID --value eddyd.service) != $pid ]"
    check "the operator's config edit survived the upgrade (rpm)" grep -q "edited by the operator" /etc/eddy/eddyd.toml
    check "no window row written twice across the upgrade (rpm)" within 30 no_duplicates
    check "rpm -e stops and removes eddyd" rpm_install -e eddy
    check "stopped (rpm)" bash -c '! systemctl is-active --quiet eddyd.service'
    check "the binary is gone, state and key kept (rpm has no purge)" \
        bash -c '[ ! -e /usr/bin/eddyd ] && [ -d /var/lib/private/eddy ] && [ -e $key ]'
fi

# A one-machine hub: a CA and the hub's certificate, the key root-only (the unit hands it over
# as a credential), a file store in the unit's state directory.
configure_hub() {
    local d=/etc/eddy-hub t
    t=$(mktemp -d)
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=fleet-ca \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign \
        -keyout "$t/ca.key" -out "$d/fleet-ca.pem" 2>/dev/null &&
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
            -keyout "$d/hub.key" -out "$t/hub.csr" 2>/dev/null &&
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$t/ext" &&
        openssl x509 -req -in "$t/hub.csr" -CA "$d/fleet-ca.pem" -CAkey "$t/ca.key" -CAcreateserial \
            -days 2 -extfile "$t/ext" -out "$d/hub.pem" 2>/dev/null &&
        chmod 600 "$d/hub.key" && chmod 644 "$d/hub.pem" "$d/fleet-ca.pem" &&
        sed -i -e 's|^listen = .*|listen = "127.0.0.1:7443"|' \
            -e 's|^url = .*|url = "file:///var/lib/eddy-hub/bucket"|' "$d/hub.toml"
}

if [ -n "$hub_deb" ]; then
    echo "== eddy-hub"
    check "dpkg -i installs eddy-hub" dpkg -i "$hub_deb"
    check "not started before it is configured" bash -c '! systemctl is-active --quiet eddy-hub.service'
    check "systemd-analyze verify (eddy-hub)" systemd-analyze verify /usr/lib/systemd/system/eddy-hub.service
    check "systemd-analyze security (eddy-hub): exposure at most 2.0" security_ok eddy-hub.service
    check "configured: certificates, a one-machine store" configure_hub
    check "eddy-hub starts, its TLS key handed over as a credential" systemctl start eddy-hub.service
    check "it listens" within 30 bash -c 'exec 3<>/dev/tcp/127.0.0.1/7443'
    check "and says so in the journal" within 10 bash -c 'journalctl -u eddy-hub.service | grep -q "eddy-hub listening on 127.0.0.1:7443"'
    check "dpkg --purge eddy-hub stops it" dpkg --purge eddy-hub
    check "stopped" bash -c '! systemctl is-active --quiet eddy-hub.service'
fi

summary || true
systemctl poweroff --no-block
