#!/usr/bin/env bash
# Durable create latency and throughput of `skiff control` against etcd in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --bench
cargo build --release --bins
exec "${CARGO_TARGET_DIR:-target}/release/skiff-bench" store "$@"
