#!/usr/bin/env bash
# The whole test suite: unit, golden (data-driven), property and integration tests, then the shared
# replay conformance cases against the eddyd binary the tests built. One build profile (release), so
# the binary and the tests share every compiled dependency.
set -euo pipefail
cd "$(dirname "$0")/.."

# Formatting (rustfmt.toml) first: it fails in a second, before anything is built.
cargo fmt --all -- --check

# The Apache Kafka broker's jars for the Kafka tests (fetched once into target/kafka-libs).
bash scripts/kafka-libs.sh
# SeaweedFS, the S3 store the hub tests start (installed once into target/pyenv).
bash scripts/object-store.sh

# The whole workspace in one cargo invocation, so DataFusion's crates are resolved with one feature
# set and built once. This includes benches/tests/join_check.rs: join results against DataFusion's
# batch joins over the same accepted rows.
# The eddyctl and eddy-hub binaries first: the daemon's API and hub tests drive them, and cargo
# builds only a test's own package's binaries for it. Same profile and feature set, so nothing
# builds twice.
cargo build --release --locked --workspace --bin eddyctl --bin eddy-hub
cargo test --release --locked --workspace

# Lints over everything the tests built (same profile, so dependencies are not checked again).
cargo clippy --release --locked --workspace --all-targets -- -D warnings

# The systemd unit's hardening, as systemd itself scores it (exposure at most 2.0).
if command -v systemd-analyze >/dev/null 2>&1; then
    systemd-analyze security --offline=yes --threshold=20 systemd/eddyd.service >/dev/null
    echo "systemd/eddyd.service: systemd-analyze security passed (threshold 20)"
elif [ "${CI:-}" = "true" ]; then
    echo "scripts/test.sh: systemd-analyze not found; CI must check the unit" >&2
    exit 1
fi

# A generic gRPC client (Python grpcio-reflection, as grpcurl would) lists eddyd's services
# through server reflection. Its packages go into a venv under target/ (made once).
if [ ! -x target/pyenv/bin/python ] || ! target/pyenv/bin/python -c 'import grpc_reflection' 2>/dev/null; then
    python3 -m venv target/pyenv
    target/pyenv/bin/pip install -q grpcio grpcio-reflection
fi
target/pyenv/bin/python tests/api/reflection_check.py target/release/eddyd

conformance=../shared/conformance
if [ -f "$conformance/run.py" ]; then
    python3 "$conformance/run.py" --bin target/release/eddyd
    python3 "$conformance/run.py" --bin target/release/eddyd --cases "$conformance/joins"
    # Again with keyed state split over 3 shard threads: the same results.
    python3 "$conformance/run.py" --bin scripts/eddyd-sharded
    python3 "$conformance/run.py" --bin scripts/eddyd-sharded --cases "$conformance/joins"
elif [ "${CI:-}" = "true" ]; then
    echo "scripts/test.sh: $conformance/run.py not found; CI must run the conformance cases" >&2
    exit 1
else
    echo "scripts/test.sh: $conformance not found beside this checkout; conformance cases skipped" >&2
fi

# The Yocto layer without bitbake: crates file vs Cargo.lock, oelint-adv, BitBake's parser.
bash tests/yocto/check.sh

# Hardware faults on a loop-mounted ext4: power cuts, EIO, a full disk, wear, a memory limit
# (hwtests/README.md). Without root each case skips, saying so.
bash hwtests/run.sh

# Packages: the .deb and .rpm built and linted, then both installed and exercised under a real
# systemd booted in a container (packaging/README.md). First the state key script's every
# branch, with stubs (systemd < 250 is what the container here does not have).
bash tests/packaging/state_key.sh
bash scripts/package.sh --prebuilt
if [ "$(id -u)" = 0 ] && command -v systemd-nspawn >/dev/null 2>&1; then
    # 77: this machine cannot boot a container; boot.sh has said why.
    bash tests/packaging/boot.sh target/packages/eddy_*.deb target/packages/eddy-hub_*.deb target/packages/eddy-[0-9]*.rpm || [ $? = 77 ]
elif [ "${CI:-}" = "true" ]; then
    echo "scripts/test.sh: the package boot test needs root and systemd-nspawn; CI must run it" >&2
    exit 1
else
    echo "scripts/test.sh: package boot test skipped: it needs root and systemd-nspawn (systemd-container)" >&2
fi
