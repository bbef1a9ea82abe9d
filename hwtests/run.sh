#!/usr/bin/env bash
# Hardware-fault tests: eddyd on a real ext4 filesystem on a loop device, with power cuts, I/O
# errors, a full disk, a memory limit, and the bytes written to the device measured. Root only.
# Each case prints PASS, FAIL or SKIP (with the reason); the last line is "N passed, N failed".
#
#   sudo hwtests/run.sh                 uses target/release/eddyd (EDDYD=... to choose)
#   CUTS=20 hwtests/run.sh              power cuts per mode (default 20)
set -uo pipefail
cd "$(dirname "$0")/.."
EDDYD=$(realpath "${EDDYD:-target/release/eddyd}")
CUTS=${CUTS:-20}
# Bytes written to the device per byte of input, at most, for the pipeline below (hwtests/README.md).
WEAR_BUDGET=${WEAR_BUDGET:-1.0}

passed=0
failed=0
skipped=0
pass() { echo "PASS $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1${2:+: $2}"; failed=$((failed + 1)); }
skip() { echo "SKIP $1: $2"; skipped=$((skipped + 1)); }
finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" = 0 ]
    exit $?
}

if [ "$(id -u)" != 0 ]; then
    skip "all cases" "they need root (loop devices, mounts, cgroups)"
    finish
fi
for tool in mkfs.ext4 losetup xfs_io; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        skip "all cases" "$tool is not installed (e2fsprogs, util-linux, xfsprogs)"
        finish
    fi
done
[ -x "$EDDYD" ] || { echo "hwtests: $EDDYD is not built" >&2; exit 2; }

work=$(mktemp -d /tmp/eddy-hw.XXXXXX)
mnt=$work/mnt
mkdir -p "$mnt"
pid=
cleanup() {
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null
    umount "$mnt" 2>/dev/null
    [ -n "${cgroup:-}" ] && rmdir "$cgroup" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# What this machine can do: loop-mounted ext4 (every case), and shutting a filesystem down
# (the power cut and I/O error cases).
truncate -s 16M "$work/probe.img"
mkfs.ext4 -q -F "$work/probe.img" 2>/dev/null
if ! mount -o loop "$work/probe.img" "$mnt" 2>/dev/null; then
    skip "all cases" "cannot mount a loop device here"
    finish
fi
can_cut=true
xfs_io -x -c "shutdown -f" "$mnt" >/dev/null 2>&1 || can_cut=false
umount "$mnt"
rm -f "$work/probe.img"

"$EDDYD" keygen > "$work/state.key"
chmod 600 "$work/state.key"

# A pipeline over generated input (seeded; without a rate, event times are synthetic, so a run
# and a replay see the same rows) with an exactly-once file sink on the device: per-device counts
# over 1-second windows. Its input is logged to the WAL like a device's messages.
pipeline() { # pipeline NAME ROWS RATE OUT  (RATE empty: as fast as it goes)
    local rate=
    [ -n "$3" ] && rate="rate = '$3', "
    cat <<SQL
CREATE SOURCE readings (device_id VARCHAR NOT NULL, temp DOUBLE, ts TIMESTAMP(3) NOT NULL,
  WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
WITH (connector = 'datagen', shape = 'iot', devices = '50', rows = '$2', $rate
      interval = '1ms', seed = '11');
CREATE SINK per_device AS
SELECT device_id, window_start, COUNT(*) AS n, MAX(temp) AS hottest
FROM TUMBLE(readings, ts, INTERVAL '1' SECOND) GROUP BY device_id, window_start
WITH (connector = 'file', path = '$4', format = 'json');
SQL
}

# The expected rows: the same pipeline replayed in one go, off the device.
expect() { # expect NAME ROWS: $work/NAME.sql (on the device) and $work/NAME.expected
    pipeline "$1" "$2" "" "$mnt/out.jsonl" > "$work/$1.sql"
    pipeline "$1" "$2" "" "$work/unused.jsonl" > "$work/$1.replay.sql"
    "$EDDYD" replay "$work/$1.replay.sql" --output "per_device=$work/$1.expected" >/dev/null 2>&1 ||
        { echo "hwtests: eddyd replay failed" >&2; exit 1; }
}
rows=${ROWS:-3000000}
expect plant "$rows"
use() { # use NAME: the pipeline eddyd runs and the output it must give
    config "$work/$1.sql"
    expected=$work/$1.expected
    expected_rows=$(wc -l < "$expected")
}
# The input's size as JSON: what a device would have sent.
cat > "$work/raw.sql" <<SQL
CREATE SOURCE readings (device_id VARCHAR NOT NULL, temp DOUBLE, ts TIMESTAMP(3) NOT NULL)
WITH (connector = 'datagen', shape = 'iot', devices = '50', rows = '$rows', interval = '1ms', seed = '11');
CREATE SINK raw AS SELECT * FROM readings WITH (connector = 'file', path = '$work/raw.jsonl', format = 'json');
SQL
"$EDDYD" replay "$work/raw.sql" >/dev/null 2>&1
input_bytes=$(stat -c %s "$work/raw.jsonl")

config() { # config SQL_FILES...
    {
        echo "state_dir = \"$mnt/state\""
        printf 'pipelines = ['
        local sep=
        for f in "$@"; do printf '%s"%s"' "$sep" "$f"; sep=", "; done
        echo ']'
        echo "[encryption]"
        echo "key_file = \"$work/state.key\""
        echo "[checkpoint]"
        echo "interval_ms = 200"
        echo "[api]"
        echo "enabled = false"
    } > "$work/eddyd.toml"
}

fs_new() { # fs_new SIZE: a fresh ext4 image, mounted at $mnt
    umount "$mnt" 2>/dev/null
    rm -f "$work/disk.img"
    truncate -s "$1" "$work/disk.img"
    mkfs.ext4 -q -F "$work/disk.img"
    fs_mount
}
fs_umount() {
    # A killed eddyd's io_uring requests may still hold the filesystem for a moment.
    for _ in $(seq 50); do
        umount "$mnt" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "hwtests: cannot unmount $mnt" >&2
    exit 1
}
fs_mount() {
    mount -o loop "$work/disk.img" "$mnt"
    loopdev=$(findmnt -n -o SOURCE "$mnt")
}
# Power cut: the filesystem stops where it is; nothing not yet synced survives the remount.
fs_cut() {
    xfs_io -x -c "shutdown -f" "$mnt" >/dev/null 2>&1
}

start() { # start [ENV=VALUE...]
    env "$@" EDDY_LOG=warn "$EDDYD" run --config "$work/eddyd.toml" >> "$work/eddyd.log" 2>&1 &
    pid=$!
}
stop_hard() {
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    pid=
}
out_rows() {
    if [ -f "$mnt/out.jsonl" ]; then wc -l < "$mnt/out.jsonl"; else echo 0; fi
}
# Waits for eddyd to have published every expected row, then stops it.
run_to_end() {
    local t=0
    while [ "$(out_rows)" -lt "$expected_rows" ] && [ $t -lt 600 ] && kill -0 "$pid" 2>/dev/null; do
        sleep 0.2
        t=$((t + 1))
    done
    kill -TERM "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    pid=
}
same_as_replay() {
    sort "$mnt/out.jsonl" > "$work/got.sorted"
    sort "$expected" > "$work/want.sorted"
    cmp -s "$work/got.sorted" "$work/want.sorted"
}
# Waits up to $1 tenths of a second for eddyd to stop by itself; sets $code. False if it runs on.
stops_within() {
    local t=0
    while kill -0 "$pid" 2>/dev/null && [ $t -lt "$1" ]; do sleep 0.1; t=$((t + 1)); done
    kill -0 "$pid" 2>/dev/null && return 1
    wait "$pid"
    code=$?
    pid=
}
# After stops_within: passes NAME if eddyd stopped non-zero with PATTERN in its log.
stopped_saying() { # stopped_saying NAME PATTERN
    if [ "$code" != 0 ] && grep -qi "$2" "$work/eddyd.log"; then
        pass "$1: eddyd stopped (exit $code) and said why"
    else
        fail "$1: exit $code" "$(tail -3 "$work/eddyd.log" | tr '\n' ' ')"
    fi
}
sectors_written() {
    awk '{print $7}' "/sys/block/$(basename "$loopdev")/stat"
}

echo "== $(uname -r), $EDDYD; $rows rows ($input_bytes bytes as JSON)"

# 1. Power cuts at random moments, with io_uring and with the pwrite path. A cut counts only if
# it lands while eddyd still works; on a fast machine a run ends before CUTS of them, and the next
# run (on a fresh filesystem) takes the rest. Every run's output must equal the replay's.
power_cuts() { # power_cuts MODE [ENV=VALUE...]
    local mode=$1 cuts=0 runs=0
    shift
    while [ $cuts -lt "$CUTS" ] && [ $runs -lt 20 ]; do
        runs=$((runs + 1))
        fs_new 512M
        : > "$work/eddyd.log"
        while [ $cuts -lt "$CUTS" ]; do
            start "$@"
            # Anywhere from recovery to full flow: 0.1 to 1 s after the start.
            sleep "0.$((RANDOM % 9 + 1))$((RANDOM % 10))"
            [ "$(out_rows)" -ge "$expected_rows" ] && break
            fs_cut
            stop_hard
            fs_umount
            fs_mount
            cuts=$((cuts + 1))
        done
        [ -n "$pid" ] || start "$@"
        run_to_end
        if ! same_as_replay; then
            fail "power cuts ($mode): run $runs's output differs from replay after $cuts cuts" \
                "$(diff "$work/want.sorted" "$work/got.sorted" | head -5 | tr '\n' ' ')"
            return
        fi
    done
    if [ $cuts -lt "$CUTS" ]; then
        fail "power cuts ($mode): only $cuts cuts landed while eddyd worked, in $runs runs"
    else
        pass "$cuts power cuts ($mode), in $runs runs: each run's output equals replay ($expected_rows rows)"
    fi
}
use plant
if $can_cut; then
    power_cuts io_uring
    power_cuts pwrite EDDY_NO_IO_URING=1
else
    skip "power cuts" "this kernel cannot shut an ext4 filesystem down (xfs_io shutdown)"
fi

# 2. The device fails under a running eddyd (every write and fsync gets EIO): fail-stop.
io_errors() {
    fs_new 512M
    : > "$work/eddyd.log"
    start
    sleep 1.5
    fs_cut
    if ! stops_within 100; then
        fail "I/O errors: eddyd is still running 10 s after its device failed"
        stop_hard
    else
        stopped_saying "I/O errors" "input/output error\|EIO\|I/O error"
    fi
    fs_umount
}
if $can_cut; then
    io_errors
else
    skip "I/O errors" "this kernel cannot shut an ext4 filesystem down (xfs_io shutdown)"
fi

# 3. A full disk: a clear error and no damage; once space is freed, eddyd continues exactly.
fs_new 512M
fallocate -l $(( $(df --output=avail -B1 "$mnt" | tail -1) - 256 * 1024 )) "$mnt/ballast"
: > "$work/eddyd.log"
start
if ! stops_within 300; then
    skip "full disk" "eddyd did not fill 256 KiB in 30 s"
    stop_hard
else
    stopped_saying "full disk" "no space left"
    rm -f "$mnt/ballast"
    start
    run_to_end
    if same_as_replay; then
        pass "full disk: after freeing space, output equals replay"
    else
        fail "full disk: after freeing space, output differs from replay"
    fi
fi

# 4. Flash wear: bytes written to the device per byte of input, for a clean run.
fs_new 512M
sync
before=$(sectors_written)
start
run_to_end
sync
after=$(sectors_written)
written=$(( (after - before) * 512 ))
ratio=$(awk -v w="$written" -v i="$input_bytes" 'BEGIN { printf "%.3f", w / i }')
echo "     wear: $written bytes written for $input_bytes input bytes: $ratio per input byte"
if awk -v r="$ratio" -v b="$WEAR_BUDGET" 'BEGIN { exit !(r <= b) }'; then
    pass "flash wear: $ratio bytes written per input byte (budget $WEAR_BUDGET)"
else
    fail "flash wear: $ratio bytes written per input byte, over the budget of $WEAR_BUDGET"
fi
fs_umount

# 5. Low memory: 10 pipelines in a 64 MiB memory cgroup, no OOM kill.
cgroot=/sys/fs/cgroup/memory
if [ -w "$cgroot" ] && [ -f "$cgroot/memory.limit_in_bytes" ]; then
    cgroup=$cgroot/eddy-hwtest-$$
elif [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw memory /sys/fs/cgroup/cgroup.controllers; then
    cgroup=/sys/fs/cgroup/eddy-hwtest-$$
else
    cgroup=
fi
if [ -z "$cgroup" ] || ! mkdir "$cgroup" 2>/dev/null; then
    cgroup=
    skip "low memory" "no writable memory cgroup here"
else
    if [ -f "$cgroup/memory.limit_in_bytes" ]; then
        echo $((64 << 20)) > "$cgroup/memory.limit_in_bytes"
        events=$cgroup/memory.oom_control
    else
        echo $((64 << 20)) > "$cgroup/memory.max"
        events=$cgroup/memory.events
    fi
    fs_new 512M
    files=()
    for k in $(seq 10); do
        pipeline "p$k" 100000000 2000 "$mnt/out$k.jsonl" > "$work/p$k.sql"
        files+=("$work/p$k.sql")
    done
    config "${files[@]}"
    : > "$work/eddyd.log"
    sh -c "echo \$\$ > $cgroup/cgroup.procs && exec env EDDY_LOG=warn $EDDYD run --config $work/eddyd.toml" \
        >> "$work/eddyd.log" 2>&1 &
    pid=$!
    sleep 20
    kills=$(awk '/oom_kill / {print $2}' "$events" 2>/dev/null)
    peak=$(cat "$cgroup/memory.max_usage_in_bytes" 2>/dev/null || cat "$cgroup/memory.peak" 2>/dev/null || echo "?")
    if kill -0 "$pid" 2>/dev/null && [ "${kills:-0}" = 0 ]; then
        pass "low memory: 10 pipelines ran 20 s in 64 MiB (peak $peak bytes), no OOM kill"
    else
        fail "low memory: eddyd died or was OOM-killed (oom_kill ${kills:-?}, peak $peak)" \
            "$(tail -3 "$work/eddyd.log" | tr '\n' ' ')"
    fi
    kill -TERM "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    pid=
    fs_umount
fi

# 6. A slow SD card (a throttled device).
skip "slow device" "needs cgroup v2 io.max to throttle buffered writes (cgroup v1 blkio throttles direct I/O only); see hwtests/lab/"

finish
